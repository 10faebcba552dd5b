"""`up` and its parts: the embedded Redis, the mail sink, the hardened dashboard, the demo, the children."""

"""RQ's own test suite, run with the toolkit's worker classes in place of RQ's (tests/test_rq_suite.py)."""

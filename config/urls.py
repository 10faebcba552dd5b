"""Credentials in connection URLs: the one place that finds them, and hides them for pages and logs."""

from __future__ import annotations

import re
from urllib.parse import unquote

# Query parameters that carry a credential: redis-py's `password` and `sentinel_password` (its form for
# unix sockets and Sentinel), and the like for database URLs (`sslpassword`, `token`, `auth`...).
SECRET_PARAMETER = re.compile(r"pass|secret|token|auth|key", re.IGNORECASE)


def redacted_url(url: str) -> str:
    """The URL with every credential (a userinfo password, a secret query parameter) replaced by ***,
    the rest as written."""
    head, question, rest = url.partition("?")
    query, hash_, fragment = rest.partition("#")
    scheme, slashes, tail = head.partition("://")
    if slashes:
        authority, slash, path = tail.partition("/")
        if "@" in authority:
            userinfo, _, host = authority.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            authority = f"{user}:***@{host}" if colon else authority
        head = f"{scheme}://{authority}{slash}{path}"
    pairs = query.split("&")
    query = "&".join(f"{pair.partition('=')[0]}=***" if is_secret(pair) else pair for pair in pairs)
    return f"{head}{question}{query}{hash_}{fragment}"


def has_credentials(url: str) -> bool:
    """Whether the URL carries a password or another secret (in its userinfo or its query)."""
    return redacted_url(url) != url


def is_secret(pair: str) -> bool:
    name, equals, _ = pair.partition("=")
    return bool(equals) and bool(SECRET_PARAMETER.search(unquote(name.replace("+", " "))))

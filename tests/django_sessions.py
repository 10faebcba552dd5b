"""Django's own session store on one database, in a process of its own (Django's settings are global).

`python -m tests.django_sessions URL write LIVE EXPIRED` makes `django_session` with Django's migrations
and saves sessions through `SessionStore`: LIVE that expire later (every other one within the hour), and
EXPIRED that expired a minute to a month ago; it prints {"live": {key: data}, "expired": [key, ...]}.
`python -m tests.django_sessions URL load KEY...` prints {key: what SessionStore(key).load() gives}.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import make_url

BACKENDS = {
    "sqlite": "django.db.backends.sqlite3",
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
}


def django_database(url: str) -> dict[str, Any]:
    """Django's DATABASES entry for a SQLAlchemy URL."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "mysql":  # Django's MySQL backend takes PyMySQL in place of mysqlclient
        import pymysql

        pymysql.install_as_MySQLdb()
    return {
        "ENGINE": BACKENDS[backend],
        "NAME": parsed.database,
        "USER": parsed.username or "",
        "PASSWORD": parsed.password or "",
        "HOST": parsed.host or "",
        "PORT": str(parsed.port or ""),
        "OPTIONS": {"charset": "utf8mb4"} if backend == "mysql" else {},
    }


def setup(url: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": django_database(url)},
        INSTALLED_APPS=["django.contrib.sessions"],
        SECRET_KEY="rqkit-test-only",
        USE_TZ=True,
    )
    django.setup()


def write(live: int, expired: int) -> dict[str, Any]:
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", "sessions", verbosity=0)
    written: dict[str, Any] = {"live": {}, "expired": []}
    for i in range(live + expired):
        store = SessionStore()
        store["user_id"] = i
        if i >= live:
            store.set_expiry(timezone.now() - timedelta(minutes=1 + (i - live) * 2000))
        elif i % 2:
            store.set_expiry(3600)
        store.save()
        if i < live:
            written["live"][store.session_key] = dict(store.items())
        else:
            written["expired"].append(store.session_key)
    return written


def load(keys: list[str]) -> dict[str, Any]:
    from django.contrib.sessions.backends.db import SessionStore

    return {key: SessionStore(session_key=key).load() for key in keys}


def main(url: str, command: str, *args: str) -> None:
    setup(url)
    found = write(int(args[0]), int(args[1])) if command == "write" else load(list(args))
    print(json.dumps(found))


if __name__ == "__main__":
    main(*sys.argv[1:])

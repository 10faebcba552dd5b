"""The thumbnail and email checks, fuzzed: any input is accepted or refused with a one-line JobInputError,
never another exception; and what is accepted runs without failing for its input."""

from __future__ import annotations

import io
from email import policy
from email.generator import BytesGenerator
from email.parser import BytesParser
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from redis import Redis

from config import get_settings
from jobs.email import Message, build_message, check_email, prepare
from jobs.errors import JobInputError
from jobs.images import check_thumbnail, thumbnail
from tests.conftest import Media
from tests.pictures import photo

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NAMES = [
    "cat.jpg",
    "photos",
    "var",
    ".git",
    "config",
    "link",
    "..",
    ".",
    "",
    "content.db",
    "x" * 260,
    "a.pdf",
]
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` four times in five: enough accepted inputs to run, enough bad ones to refuse."""
    return st.integers(0, 4).flatmap(lambda n: bad if n == 0 else good)


tempting = ["var/cat.jpg", ".git/cat.jpg", ".git/config", "photos/.cat.jpg", "link/cat.jpg", "var/content.db"]
paths = st.one_of(
    st.sampled_from([*tempting, "x" * 300, "a/" * 2100 + "b", "caf\udce9.jpg", "/etc/passwd"]),
    st.lists(st.sampled_from(NAMES) | st.text(max_size=12), min_size=1, max_size=4).map("/".join),
    st.text(),
    json_values,
)
good_paths = st.sampled_from(["cat.jpg", "photos/cat.jpg", "./photos/../cat.jpg", "a.pdf"])
addresses = st.sampled_from(["a@example.com", "b@exämple.com", "ünï@example.com", "x" * 64 + "@example.com"])
address_fields = mostly(
    st.none() | addresses | st.lists(addresses, max_size=3), st.text(max_size=30) | json_values
)
texts = mostly(
    st.text(),
    st.none()
    | st.sampled_from(["Hi\x0bBcc: e@example.com", "a\u2028b", "é" * 1200, "w" * 2000])
    | json_values,
)
contexts = st.dictionaries(st.sampled_from(["name", "site", "login_url", "reset_url"]), st.text(), max_size=4)


@pytest.fixture
def tree(media: Media, monkeypatch: pytest.MonkeyPatch, connection: Redis) -> Path:
    """A media root that is the toolkit's own folder, with a little of everything in it."""
    monkeypatch.setenv("RQKIT_VAR_DIR", str(media.root / "var"))
    for folder in ("photos", "var", ".git"):
        (media.root / folder).mkdir()
    for name in ("cat.jpg", "photos/cat.jpg", "var/cat.jpg", ".git/cat.jpg", "photos/.cat.jpg"):
        photo(media.root / name, (40, 30))
    (media.root / "a.pdf").write_bytes(b"%PDF")
    (media.root / "var" / "content.db").write_bytes(b"SQLite")
    (media.root / ".git" / "config").write_text("[core]")
    (media.root / "link").symlink_to(media.root / "photos")
    return media.root


def one_line_refusal_or_none(check: Any, *args: Any, **kwargs: Any) -> bool:
    """Whether the check accepted; a refusal must be one JobInputError line."""
    try:
        check(*args, **kwargs)
    except JobInputError as exc:
        assert "\n" not in str(exc) and str(exc)
        return False
    return True


@FUZZ
@given(
    path=mostly(good_paths, paths),
    sizes=mostly(st.none() | st.lists(st.integers(1, 64), min_size=1, max_size=3), json_values),
    fmt=mostly(st.sampled_from([None, "auto", "png", "webp", "jpeg"]), json_values),
)
def test_thumbnail_checks(tree: Path, path: Any, sizes: Any, fmt: Any) -> None:
    if event_of(one_line_refusal_or_none(check_thumbnail, path, sizes, fmt)):
        if path.endswith(".pdf"):  # the check doesn't decode: that is the job's, and fails it cleanly
            with pytest.raises(JobInputError, match="not an image"):
                thumbnail(path, sizes, fmt)
            return
        report = thumbnail(path, sizes, fmt)  # what the worker runs: no failure for an accepted input
        assert report["written"] or report["skipped"]
        assert not Path(report["source"]).parts[0].startswith((".", "var"))


@FUZZ
@given(
    to=mostly(addresses | st.lists(addresses, min_size=1, max_size=3), address_fields),
    cc=address_fields,
    reply_to=address_fields,
    subject=texts,
    text=texts,
    html=texts,
    template=mostly(st.none(), st.sampled_from(["welcome", "password_reset", "nope", "../x"]) | json_values),
    context=st.none() | contexts | json_values,
    attachments=mostly(
        st.none() | st.lists(good_paths, max_size=3), st.lists(paths, max_size=3) | json_values
    ),
    key=mostly(st.none() | st.text(min_size=1), json_values),
)
def test_email_checks(tree: Path, **fields: Any) -> None:
    fields["idempotency_key"] = fields.pop("key")
    if event_of(one_line_refusal_or_none(check_email, **fields)):
        settings_ = get_settings()
        draft = prepare(settings_, Message(**fields))
        sent = flatten_as_smtplib(build_message(draft, settings_), settings_.email_sender, draft.recipients)
        assert all(len(line) <= 998 for line in sent.split(b"\r\n"))
        parsed = BytesParser(policy=policy.default).parsebytes(sent)
        assert parsed["Subject"] == draft.subject  # nothing injected
        assert [name.lower() for name in parsed.keys()].count("bcc") == 0


def flatten_as_smtplib(message: Any, sender: str, recipients: list[str]) -> bytes:
    """The bytes smtplib.send_message would send (SMTPUTF8 when an address needs it)."""
    international = not all(address.isascii() for address in [parseaddr(sender)[1], *recipients])
    out = io.BytesIO()
    chosen = message.policy.clone(utf8=True) if international else message.policy
    BytesGenerator(out, policy=chosen).flatten(message, linesep="\r\n")
    return out.getvalue()


def event_of(accepted: bool) -> bool:
    event("accepted" if accepted else "refused")
    return accepted

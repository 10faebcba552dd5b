"""The email job against real SMTP servers on loopback: TLS and AUTH, retries, at most once, bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import trustme
from click.testing import CliRunner
from redis import Redis
from rq import Queue

from cli import cli
from config import get_settings
from jobs import enqueue, submit
from jobs.errors import JobInputError
from launcher.redis_server import free_port
from ops.outcomes import wait_for
from tests.conftest import Media
from tests.smtp_servers import PASSWORD, USER, Server, smtp_server

A, B = "ann@example.com", "bob@example.com"


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[trustme.CA, Path]]:
    authority = trustme.CA()
    pem = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(pem))
    yield authority, pem


def point_at(monkeypatch: pytest.MonkeyPatch, server: Server, security: str, **extra: str) -> None:
    monkeypatch.setenv("RQKIT_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("RQKIT_SMTP_PORT", str(server.port))
    monkeypatch.setenv("RQKIT_SMTP_SECURITY", security)
    monkeypatch.setenv("RQKIT_EMAIL_RETRY_INTERVALS", "0,0,0")
    for name, value in extra.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def plain(monkeypatch: pytest.MonkeyPatch, connection: Redis) -> Iterator[Server]:
    with smtp_server("none") as server:
        point_at(monkeypatch, server, "none")
        yield server


def parsed(raw: bytes) -> EmailMessage:
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def sent(run_jobs: Any, *args: Any, **kwargs: Any) -> Any:
    job = enqueue("email", *args, **kwargs)
    run_jobs()
    outcome = wait_for(job, timeout=5)
    job.refresh()
    return outcome, job


def test_a_message_with_text_html_and_an_attachment(plain: Server, run_jobs: Any, media: Media) -> None:
    (media.root / "invoice.pdf").write_bytes(b"%PDF-1.4 fake")
    outcome, _ = sent(
        run_jobs, [A], "Your invoice", text="Hello", html="<p>Hello</p>", attachments=["invoice.pdf"]
    )
    assert outcome.status == "finished" and outcome.result["status"] == "sent"
    [(envelope, raw)] = plain.handler.received
    message = parsed(raw)
    assert envelope == [A] and message["To"] == A and message["Subject"] == "Your invoice"
    assert message["Message-ID"] == outcome.result["message_id"] and message["Date"]
    assert message.get_body(("plain",)).get_content().strip() == "Hello"
    assert message.get_body(("html",)).get_content().strip() == "<p>Hello</p>"
    [attached] = list(message.iter_attachments())
    assert (attached.get_filename(), attached.get_content()) == ("invoice.pdf", b"%PDF-1.4 fake")


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_with_auth(
    security: str,
    ca: tuple[trustme.CA, Path],
    monkeypatch: pytest.MonkeyPatch,
    connection: Redis,
    run_jobs: Any,
) -> None:
    with smtp_server(security, ca[0]) as server:
        point_at(
            monkeypatch,
            server,
            security,
            RQKIT_SMTP_CA_FILE=str(ca[1]),
            RQKIT_SMTP_USERNAME=USER,
            RQKIT_SMTP_PASSWORD=PASSWORD,
        )
        outcome, _ = sent(run_jobs, A, "Hi", text="over TLS")
        assert outcome.status == "finished", outcome.reason
        assert server.handler.envelopes() == [[A]]
        monkeypatch.setenv("RQKIT_SMTP_PASSWORD", "wrong")
        get_settings.cache_clear()
        refused, job = sent(run_jobs, A, "Hi again", text="bad password")
        assert refused.status == "failed", refused
        assert refused.reason.startswith("RejectedError: email: 127.0.0.1:")
        assert "535" in refused.reason and PASSWORD not in refused.reason
        assert job.retries_left == 0


def test_a_certificate_not_signed_by_a_trusted_ca_is_refused(
    ca: tuple[trustme.CA, Path], monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    with smtp_server("starttls", ca[0]) as server:
        point_at(monkeypatch, server, "starttls", RQKIT_SMTP_USERNAME=USER, RQKIT_SMTP_PASSWORD=PASSWORD)
        outcome, job = sent(run_jobs, A, "Hi", text="to an untrusted server")
    assert (
        outcome.status == "failed"
        and "is not trusted: unable to get local issuer certificate" in outcome.reason
    )
    assert job.retries_left == 0 and server.handler.received == []


def test_transient_replies_are_retried_and_the_message_goes_once(plain: Server, run_jobs: Any) -> None:
    plain.handler.data_replies = ["421 4.3.2 shutting down", "451 4.3.0 try again later"]
    outcome, job = sent(run_jobs, [A, B], "Retry me", text="third time lucky")
    assert outcome.status == "finished"
    assert plain.handler.envelopes() == [[A, B]]
    assert job.retries_left == 1  # two of the three retries used


def test_a_recipient_deferred_with_451_gets_it_on_retry_and_the_other_only_once(
    plain: Server, run_jobs: Any
) -> None:
    plain.handler.rcpt_replies[B] = ["451 4.2.1 mailbox busy", "250 OK"]
    outcome, _ = sent(run_jobs, [A, B], "Partial", text="...")
    assert outcome.status == "finished" and outcome.result["accepted"] == [A, B]
    assert plain.handler.envelopes() == [[A], [B]]


def test_a_recipient_deferred_every_time_fails_after_the_retries(plain: Server, run_jobs: Any) -> None:
    plain.handler.rcpt_replies[B] = ["451 4.2.1 mailbox busy"]
    outcome, _ = sent(run_jobs, [A, B], "Partial", text="...")
    assert outcome.status == "failed"  # B stays busy: retried 3 times, then failed
    assert plain.handler.envelopes() == [[A]]
    assert outcome.reason == "UpstreamError: email: will retry bob@example.com: 451 4.2.1 mailbox busy"


def test_a_permanent_550_fails_at_once_with_the_servers_reply(plain: Server, run_jobs: Any) -> None:
    plain.handler.rcpt_replies[B] = ["550 5.1.1 no such user"]
    outcome, job = sent(run_jobs, [B], "Nobody home", text="...")
    assert outcome.status == "failed" and job.retries_left == 0
    assert outcome.reason == "RejectedError: email: refused bob@example.com: 550 5.1.1 no such user"
    assert plain.handler.received == []


def test_a_partial_permanent_refusal_is_reported_and_never_resent(
    plain: Server, run_jobs: Any, connection: Redis
) -> None:
    plain.handler.rcpt_replies[B] = ["550 5.1.1 no such user"]
    outcome, job = sent(run_jobs, [A, B], "Half", text="...")
    assert outcome.reason == (
        "RejectedError: email: refused bob@example.com: 550 5.1.1 no such user (delivered to ann@example.com)"
    )
    job.requeue()
    run_jobs()
    assert wait_for(job, timeout=5).result["status"] == "already sent"
    assert plain.handler.envelopes() == [[A]]


def test_a_duplicate_enqueue_with_the_same_key_is_delivered_once(plain: Server, run_jobs: Any) -> None:
    first = enqueue("email", A, "Receipt", text="Thanks", idempotency_key="order-42")
    second = enqueue("email", A, "Receipt (again)", text="Thanks!", idempotency_key="order-42")
    same_content = enqueue("email", A, "Receipt", text="Thanks", idempotency_key="order-42")
    run_jobs()
    statuses = [wait_for(job, timeout=5).result["status"] for job in (first, second, same_content)]
    assert statuses == ["sent", "already sent", "already sent"]
    assert len(plain.handler.received) == 1


def test_without_a_key_the_same_content_to_the_same_people_is_one_message(
    plain: Server, run_jobs: Any
) -> None:
    enqueue("email", [A], "Same", text="body")
    enqueue("email", [A], "Same", text="body")
    enqueue("email", [B], "Same", text="body")
    run_jobs()
    assert plain.handler.envelopes() == [[A], [B]]


def test_an_unreachable_server_is_retried_then_fails(
    monkeypatch: pytest.MonkeyPatch, connection: Redis, run_jobs: Any
) -> None:
    monkeypatch.setenv("RQKIT_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("RQKIT_SMTP_PORT", str(free_port()))
    monkeypatch.setenv("RQKIT_SMTP_SECURITY", "none")
    monkeypatch.setenv("RQKIT_EMAIL_RETRY_INTERVALS", "0,0")
    outcome, job = sent(run_jobs, A, "Hi", text="nobody listens")
    assert outcome.status == "failed" and outcome.reason.startswith(
        "UpstreamError: email: cannot talk to 127.0.0.1:"
    )
    assert job.retries_left == 0  # the two retries used


def test_templates_escape_html_but_not_text(plain: Server, run_jobs: Any) -> None:
    context = {"name": "<b>Ann</b> & co", "site": "Shop", "login_url": "https://shop.example.com/login"}
    outcome, _ = sent(run_jobs, A, template="welcome", context=context)
    assert outcome.status == "finished", outcome.reason
    message = parsed(plain.handler.received[0][1])
    assert message["Subject"] == "Welcome to Shop, <b>Ann</b> & co"
    assert "&lt;b&gt;Ann&lt;/b&gt; &amp; co" in message.get_body(("html",)).get_content()
    assert "Hello <b>Ann</b> & co," in message.get_body(("plain",)).get_content()


def test_a_subject_goes_without_the_blanks_around_it(plain: Server, run_jobs: Any) -> None:
    """A reader drops the blanks that start a header's text: the subject is sent as it is read. A blank
    subject beside a template takes the template's."""
    outcome, _ = sent(run_jobs, A, "  Hi  there ", text="x")
    assert outcome.status == "finished", outcome.reason
    context = {"name": "Ann", "site": "Shop", "login_url": "https://shop.example.com/login"}
    outcome, _ = sent(run_jobs, A, " ", template="welcome", context=context)
    assert outcome.status == "finished", outcome.reason
    subjects = [parsed(raw)["Subject"] for _, raw in plain.handler.received]
    assert subjects == ["Hi  there", "Welcome to Shop, Ann"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"to": A, "subject": "Hi\nBcc: eve@example.com", "text": "x"}, "subject must be one line"),
        ({"to": f"{A}\r\nBcc: eve@example.com", "subject": "Hi", "text": "x"}, "is not a valid address"),
        (
            {"to": "not-an-address", "subject": "Hi", "text": "x"},
            "to: 'not-an-address' is not a valid address",
        ),
        ({"to": "Ann <ann@example.com>", "subject": "Hi", "text": "x"}, "is not a valid address"),
        ({"to": [], "subject": "Hi", "text": "x"}, "to: at least one address is needed"),
        ({"to": A, "cc": ["x@"], "subject": "Hi", "text": "x"}, "cc: 'x@' is not a valid address"),
        ({"to": A, "subject": "Hi"}, "give text, html or a template"),
        ({"to": A, "text": "x"}, "a subject is needed"),
        ({"to": A, "subject": " \u3000 ", "text": "x"}, "a subject is needed"),  # blank: none
        ({"to": A, "template": "nope"}, "no template 'nope' \\(known: password_reset, welcome\\)"),
        ({"to": A, "template": "../../etc"}, "no template"),
        ({"to": A, "template": "welcome", "context": {"name": "Ann"}}, "'site' is undefined"),
        ({"to": A, "subject": "Hi", "text": "x", "attachments": ["../secret.txt"]}, "outside the media root"),
        (
            {"to": A, "subject": "Hi", "text": "x", "attachments": ["missing.pdf"]},
            "email: attachment: no such file: missing.pdf",
        ),
        ({"to": A, "subject": "Hi", "text": "x", "idempotency_key": " "}, "must be a non-empty string"),
    ],
)
def test_bad_input_is_refused_at_enqueue(
    media: Media, connection: Redis, kwargs: dict[str, Any], message: str
) -> None:
    (media.root.parent / "secret.txt").write_text("no")
    with pytest.raises(JobInputError, match=message):
        submit("email", (), kwargs)
    assert Queue("email", connection=connection).count == 0


def test_the_local_sink_stores_eml_files_that_mail_list_and_show_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, connection: Redis, run_jobs: Any
) -> None:
    from aiosmtpd.controller import Controller

    from launcher.mail_sink import SaveToFolder

    port, folder = free_port(), tmp_path / "var" / "mail"
    monkeypatch.setenv("RQKIT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RQKIT_SMTP_SINK_PORT", str(port))
    controller = Controller(SaveToFolder(folder), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        result = CliRunner().invoke(
            cli, ["enqueue", "email", "--to", A, "--bcc", B, "--subject", "Hi", "--text", "Hello", "--json"]
        )
        assert result.exit_code == 0, result.output
        run_jobs()
    finally:
        controller.stop()
    [stored] = json.loads(CliRunner().invoke(cli, ["mail", "list", "--json"]).stdout)
    assert (stored["to"], stored["subject"]) == (f"{A}, {B}", "Hi")
    shown = json.loads(CliRunner().invoke(cli, ["mail", "show", "latest", "--json"]).stdout)
    assert shown["body"].strip() == "Hello" and "Bcc" not in shown["headers"]
    assert CliRunner().invoke(cli, ["mail", "show", "nope"]).exit_code == 2


def test_the_cli_builds_the_call(media: Media, connection: Redis) -> None:
    (media.root / "a.pdf").write_bytes(b"pdf")
    args = [
        "enqueue",
        "email",
        "--to",
        A,
        "--to",
        B,
        "--template",
        "welcome",
        "--var",
        "name=Ann",
        "--var",
        "site=Shop",
        "--var",
        "login_url=https://x.example.com",
        "--attach",
        "a.pdf",
        "--key",
        "k1",
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    [job] = Queue("email", connection=connection).jobs
    assert job.kwargs == {
        "to": [A, B],
        "template": "welcome",
        "attachments": ["a.pdf"],
        "idempotency_key": "k1",
        "context": {"name": "Ann", "site": "Shop", "login_url": "https://x.example.com"},
    }
    bad = CliRunner().invoke(
        cli, ["enqueue", "email", "--to", A, "--subject", "x", "--text", "y", "--var", "oops"]
    )
    assert bad.exit_code == 2 and "expected NAME=VALUE" in bad.output


def test_a_bad_goodbye_after_the_message_was_accepted_does_not_send_it_twice(
    plain: Server, run_jobs: Any
) -> None:
    plain.handler.quit_reply = "421 4.3.0 closing badly"
    first, _ = sent(run_jobs, A, "Once", text="only once", idempotency_key="k-quit")
    second, _ = sent(run_jobs, A, "Once", text="only once", idempotency_key="k-quit")
    assert (first.result["status"], second.result["status"]) == ("sent", "already sent")
    assert len(plain.handler.received) == 1


def test_a_changed_attachment_is_a_new_message(plain: Server, run_jobs: Any, media: Media) -> None:
    invoice = media.root / "invoice.pdf"
    invoice.write_bytes(b"%PDF invoice 1")
    sent(run_jobs, A, "Your invoice", text="attached", attachments=["invoice.pdf"])
    invoice.write_bytes(b"%PDF invoice 2")
    again, _ = sent(run_jobs, A, "Your invoice", text="attached", attachments=["invoice.pdf"])
    assert again.result["status"] == "sent" and len(plain.handler.received) == 2

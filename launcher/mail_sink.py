"""The local SMTP sink for development: every message it receives becomes a .eml file in a folder."""

from __future__ import annotations

import argparse
import os
import re
import signal
import tempfile
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from jobs.errors import JobInputError
from jobs.files import Tree
from jobs.media import TEMP_PREFIX


class SaveToFolder:
    """aiosmtpd handler: write the message, with its envelope recipients, atomically into `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        header = f"X-Sink-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n".encode()
        handle, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.folder)
        with os.fdopen(handle, "wb") as stream:
            stream.write(header + envelope.original_content)
        os.replace(temp, self.folder / name)
        return "250 OK: saved as " + name


@dataclass(frozen=True)
class Stored:
    """One message in the sink: its id (the file name without .eml) and headers."""

    id: str
    sender: str
    to: str
    subject: str
    date: str

    @classmethod
    def of(cls, message_id: str, message: EmailMessage) -> Stored:
        return cls(
            message_id,
            str(message["From"] or ""),
            str(message["X-Sink-Envelope-To"] or ""),
            str(message["Subject"] or ""),
            str(message["Date"] or ""),
        )


MESSAGE_ID = re.compile(r"^\d{1,25}-[0-9a-f]{8}\Z")  # as handle_DATA names them


def sink(folder: Path) -> Tree:
    """The sink's folder as the commands read it: each message through the folder's descriptor, never
    through a symlink."""
    return Tree(folder.resolve(), "mail", "the mail folder")


def load(tree: Tree, message_id: str) -> EmailMessage:
    with tree.reading((f"{message_id}.eml",)) as (stream, _):
        message = message_from_bytes(stream.read(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def stored_messages(folder: Path) -> list[Stored]:
    """Every message in the sink, newest first (a name that isn't the sink's, or a link, is passed over)."""
    ids = sorted((p.stem for p in folder.glob("*.eml") if MESSAGE_ID.match(p.stem)), reverse=True)
    tree, stored = sink(folder), []
    for message_id in ids:
        with suppress(JobInputError):  # gone meanwhile, or not a regular file of its own
            stored.append(Stored.of(message_id, load(tree, message_id)))
    return stored


def message_view(folder: Path, message_id: str) -> dict[str, Any]:
    """One stored message (by id, or `latest`): its headers, its body (text, else HTML), its attachments."""
    stored = stored_messages(folder)
    chosen = stored[0].id if message_id == "latest" and stored else message_id
    if not MESSAGE_ID.match(chosen) or not (folder / f"{chosen}.eml").exists():
        raise JobInputError(f"no message {message_id!r} in {folder}")
    message = load(sink(folder), chosen)
    body = message.get_body(("plain", "html"))
    text = body.get_content().replace("\r\n", "\n") if body else ""  # its lines, as a reader sees them
    return {
        "id": chosen,
        "headers": {name: str(value) for name, value in message.items()},
        "body": text,
        "attachments": [part.get_filename() for part in message.iter_attachments()],
    }


def run(port: int, folder: Path) -> None:
    """Serve on 127.0.0.1:`port` until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    controller = Controller(SaveToFolder(folder), hostname="127.0.0.1", port=port)
    controller.start()
    print(f"SMTP sink on 127.0.0.1:{port}, saving to {folder}", flush=True)
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    arguments = parser.parse_args()
    run(arguments.port, arguments.dir)

"""The local SMTP sink for development: every message it receives becomes a .eml file in a folder."""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from jobs.errors import JobInputError
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
    def read(cls, path: Path) -> Stored:
        message = load(path)
        return cls(
            path.stem,
            str(message["From"] or ""),
            str(message["X-Sink-Envelope-To"] or ""),
            str(message["Subject"] or ""),
            str(message["Date"] or ""),
        )


def load(path: Path) -> EmailMessage:
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def stored_messages(folder: Path) -> list[Stored]:
    """Every message in the sink, newest first."""
    paths = sorted(folder.glob("*.eml"), reverse=True) if folder.is_dir() else []
    return [Stored.read(path) for path in paths]


def message_view(folder: Path, message_id: str) -> dict[str, Any]:
    """One stored message (by id, or `latest`): its headers, its body (text, else HTML), its attachments."""
    stored = stored_messages(folder)
    chosen = stored[0].id if message_id == "latest" and stored else message_id
    path = folder / f"{chosen}.eml"
    if not path.is_file() or "/" in chosen:
        raise JobInputError(f"no message {message_id!r} in {folder}")
    message = load(path)
    body = message.get_body(("plain", "html"))
    return {
        "id": chosen,
        "headers": {name: str(value) for name, value in message.items()},
        "body": body.get_content() if body else "",
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

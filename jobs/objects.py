"""Objects under a prefix of an S3-compatible bucket, as jobs reach them: the bucket counterpart of
jobs/files.Tree. Keys are checked as paths are (no escaping the prefix, nothing hidden, names on one
line), the toolkit's own prefixes are never read, and the store's failures come out as the toolkit's
errors: a refusal fails the job at once, a store that is down, slow or answering 5xx is an
UpstreamError, which the job's retries take.

boto3 is optional: a local-only install never imports it (`pip install rqkit[s3]`).
"""

from __future__ import annotations

import functools
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from pathlib import PurePosixPath
from typing import Any, TypeVar, cast
from uuid import uuid4

from config import Settings
from config.storage import S3Location, is_s3
from jobs.errors import ConfigError, JobInputError, UpstreamError
from jobs.files import Names, check_name, shown

DELETE_BATCH = 1000  # keys per DeleteObjects request: S3's limit
PARALLEL = 8  # requests of one job at once (a thumbnail's HEADs and PUTs), and the client's connections
WRITE_MARK = "rqkit-write"  # metadata: which put_all wrote an object, so that it takes back only its own
READ_CHUNK = 1 << 20
# Error codes that a retry may get past (throttling, a store busy or restarting); any other refusal is
# for good (access denied, no such bucket, a bad request) and fails the job at once.
Item = TypeVar("Item")
Result = TypeVar("Result")
TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable", "InternalError"}
)


@dataclass(frozen=True)
class Head:
    """What a HEAD (or a listing) says of an object."""

    key: str
    size: int
    etag: str
    modified: datetime
    content_type: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Put:
    """One object to write: its content, content type and user metadata."""

    data: bytes
    content_type: str
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class ObjectTree:
    """A bucket prefix that job paths point into. `off_limits`: prefixes never read from it (the
    thumbnails' own, when they share the bucket)."""

    location: S3Location
    label: str  # what the errors start with: "thumbnail", "email: attachment"
    title: str  # "the media root"
    settings: Settings
    off_limits: tuple[S3Location, ...] = ()

    @property
    def root(self) -> S3Location:
        return self.location

    def names(self, path: object) -> Names:
        """The names below the prefix to `path` (relative to it, or an s3:// URL inside it), as text."""
        if not isinstance(path, str) or not path:
            raise JobInputError(f"{self.label}: a path is needed, got {path!r}")
        if "\x00" in path:
            raise JobInputError(f"{self.label}: a path cannot hold a NUL character: {shown(path)}")
        relative = path
        if is_s3(path):
            whole = path[len("s3://") :]
            inside = f"{self.location.bucket}/{self.location.prefix}"
            if not (whole + "/").startswith(inside):
                raise JobInputError(f"{self.label}: {shown(path)} is outside {self.title} {self.location}")
            relative = whole[len(inside) :] or "."
        elif path.startswith("/"):
            raise JobInputError(f"{self.label}: {shown(path)} is outside {self.title} {self.location}")
        normal = PurePosixPath(posixpath.normpath(relative))
        names = normal.parts if normal.parts != (".",) else ()
        if names[:1] == ("..",):
            raise JobInputError(f"{self.label}: {shown(path)} is outside {self.title} {self.location}")
        for name in names:
            check_name(name, path, self.label)
        key = self.location.key(names) + "/"
        for forbidden in self.off_limits:
            if forbidden.bucket == self.location.bucket and key.startswith(forbidden.prefix):
                raise JobInputError(
                    f"{self.label}: {self.display(names)} is the toolkit's own data ({forbidden})"
                )
        return names

    def display(self, names: Names) -> str:
        return shown(f"{self.location}{'/'.join(names)}")

    def head(self, names: Names) -> Head | None:
        """The object at `names`, or None if there is none."""
        key = self.location.key(names)
        with self.failures(names):
            try:
                reply = client(self.settings).head_object(Bucket=self.location.bucket, Key=key)
            except client_error() as exc:
                if status(exc) == 404:
                    return None
                raise
        return Head(
            key,
            reply["ContentLength"],
            reply["ETag"],
            reply["LastModified"],
            reply.get("ContentType", ""),
            reply.get("Metadata", {}),
        )

    def read(self, names: Names, room: int, etag: str = "") -> tuple[bytes, Head] | None:
        """The object's content and what it is (one GET, read in chunks), or None if it is over `room`
        bytes. `etag`: the version expected (a newer one meanwhile is an UpstreamError, retried)."""
        key = self.location.key(names)
        with self.failures(names):
            extra = {"IfMatch": etag} if etag else {}
            try:
                reply = client(self.settings).get_object(Bucket=self.location.bucket, Key=key, **extra)
            except client_error() as exc:
                if status(exc) == 404:
                    raise JobInputError(f"{self.label}: no such object: {self.display(names)}") from None
                if status(exc) == 412:
                    raise UpstreamError(
                        f"{self.label}: {self.display(names)} changed as it was read"
                    ) from None
                raise
            body = reply["Body"]
            try:
                size = reply["ContentLength"]
                if size > room:
                    return None
                chunks, total = [], 0
                while chunk := body.read(min(READ_CHUNK, room + 1 - total)):
                    chunks.append(chunk)
                    total += len(chunk)
                    if total > room:
                        return None
            finally:
                body.close()
        head = Head(key, size, reply["ETag"], reply["LastModified"], reply.get("ContentType", ""))
        return b"".join(chunks), head

    def heads(self, many: list[Names]) -> list[Head | None]:
        """`head` of each, the requests at once (a round trip for all, not one each)."""
        found = at_once(self.head, many)
        for result in found:
            if isinstance(result, Exception):
                raise result
        return cast("list[Head | None]", found)

    def put_all(self, contents: dict[Names, Put]) -> None:
        """Write every object (one PUT each, all at once), or none: if one fails, those this call
        wrote are deleted again (best effort; not those another job wrote meanwhile, which its write
        mark tells apart) before the error goes on."""
        mark = uuid4().hex
        items = list(contents.items())
        results = at_once(lambda item: self.put(item[0], item[1], mark), items)
        errors = [result for result in results if isinstance(result, Exception)]
        if errors:
            written = [names for (names, _), result in zip(items, results, strict=True) if result is None]
            with suppress(Exception):
                self.take_back(written, mark)
            raise errors[0]

    def put(self, names: Names, put: Put, mark: str) -> None:
        with self.failures(names):
            client(self.settings).put_object(
                Bucket=self.location.bucket,
                Key=self.location.key(names),
                Body=put.data,
                ContentType=put.content_type,
                Metadata={**put.metadata, WRITE_MARK: mark},
            )

    def take_back(self, written: list[Names], mark: str) -> None:
        """Delete what one put_all wrote, where its mark is still the object's."""
        heads = self.heads(written)
        self.delete([head.key for head in heads if head and head.metadata.get(WRITE_MARK) == mark])

    def walk(self, names: Names = (), recursive: bool = True) -> Iterator[Head]:
        """The objects below `names`, a page (up to 1,000 keys) at a time, in key order; without
        `recursive`, those directly in it. Hidden names (and anything below them) are left out."""
        prefix = self.location.key(names) + ("/" if names else "")
        options: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": prefix}
        if not recursive:
            options["Delimiter"] = "/"
        with self.failures(names):
            pages = client(self.settings).get_paginator("list_objects_v2").paginate(**options)
            for page in pages:
                for entry in page.get("Contents", []):
                    below = entry["Key"][len(prefix) :].split("/")
                    if not below[-1] or any(name.startswith(".") for name in below):
                        continue
                    yield Head(entry["Key"], entry["Size"], entry.get("ETag", ""), entry["LastModified"])

    def delete(self, keys: list[str]) -> int:
        """Delete the keys (all under the prefix: anything else is a bug) in batches of DeleteObjects;
        how many went. A key the store could not delete is an UpstreamError naming it."""
        outside = [key for key in keys if not key.startswith(self.location.prefix)]
        assert not outside, f"keys outside {self.location}: {outside[:3]}"
        deleted = 0
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            with self.failures(()):
                reply = client(self.settings).delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            errors = reply.get("Errors", [])
            if errors:
                first = errors[0]
                raise UpstreamError(
                    f"{self.label}: {len(errors)} of {len(batch)} objects not deleted "
                    f"(first: {shown(first.get('Key', ''))}: {first.get('Code')} {first.get('Message', '')})"
                )
            deleted += len(batch)
        return deleted

    @contextmanager
    def failures(self, names: Names) -> Iterator[None]:
        """The store's errors as the toolkit's: a refusal for good is a JobInputError, the rest (down,
        slow, 5xx, throttled) an UpstreamError; either says where, in one line."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = self.display(names) if names else str(self.location)
        try:
            yield
        except NoCredentialsError:
            raise ConfigError(
                f"{self.label}: no credentials for the store where this runs: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or an AWS profile or role) in the workers' environment"
            ) from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "")), str(error.get("Message", ""))
            if code.isdigit():  # a reply without a body (to a HEAD): its status says it all
                code = HTTPStatus(int(code)).phrase if int(code) in HTTPStatus._value2member_map_ else ""
            text = f"{self.label}: {where}: the store answered {status(exc)} {code}".rstrip()
            text += f": {message}" if message and message != code else ""
            if status(exc) >= 500 or code in TRANSIENT_CODES:
                raise UpstreamError(text) from None
            raise JobInputError(text) from None
        except BotoCoreError as exc:  # could not connect, timed out, a reply cut short
            raise UpstreamError(f"{self.label}: {where}: {type(exc).__name__}: {exc}") from None


def at_once(call: Callable[[Item], Result], items: list[Item]) -> list[Result | Exception]:
    """`call` of each item, in threads (one after another where none can be had: a tight memory cap
    denies their stacks); an exception in the place of its item's result."""

    def safely(item: Item) -> Result | Exception:
        try:
            return call(item)
        except Exception as exc:  # noqa: BLE001 - handed back, in its place
            return exc

    if len(items) > 1:
        try:
            with ThreadPoolExecutor(min(PARALLEL, len(items))) as pool:
                return list(pool.map(safely, items))
        except RuntimeError:  # "can't start new thread": the calls are idempotent, made again below
            pass
    return [safely(item) for item in items]


def status(exc: Any) -> int:
    """The HTTP status of a botocore ClientError (0 if it has none)."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def client_error() -> type[Exception]:
    from botocore.exceptions import ClientError

    return ClientError


def uses_buckets(settings: Settings) -> bool:
    """Whether the media root or the thumbnails root is a bucket prefix."""
    return any(isinstance(where, S3Location) for where in (settings.media_root, settings.thumbnails_root))


def warm_up(settings: Settings) -> None:
    """Load boto3 and make the S3 client now (a worker, before it forks): each work-horse then uses
    it as it is, with connections of its own (see `forget_connections`)."""
    client(settings)


def client(settings: Settings) -> Any:
    """The boto3 S3 client for the settings' store, made once per process (or inherited from the
    worker a work-horse was forked from)."""
    store = store_of(settings)
    made = _clients.get(store)
    if made is None:
        made = _clients[store] = new_client(*store)
    return made


def store_of(settings: Settings) -> tuple[str, str, float, int]:
    return settings.s3_endpoint_url, settings.s3_region, settings.s3_timeout, settings.s3_max_attempts


_clients: dict[tuple[str, str, float, int], Any] = {}


def new_client(endpoint: str, region: str, timeout: float, attempts: int) -> Any:
    from botocore.config import Config

    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path" if endpoint else "auto"},
        user_agent_extra="rqkit",
        max_pool_connections=PARALLEL,
    )
    return session().client("s3", endpoint_url=endpoint or None, region_name=region or None, config=config)


def forget_connections() -> None:
    """In a forked child: the clients stay (a new one costs 15 ms), their parent's connections don't
    (two processes on one socket would read each other's replies)."""
    for store, made in list(_clients.items()):
        pool = getattr(getattr(made, "_endpoint", None), "http_session", None)
        if pool is None:  # botocore's inside changed: a client of our own, then
            del _clients[store]
        else:
            pool.close()


os.register_at_fork(after_in_child=forget_connections)


@functools.cache
def session() -> Any:
    """boto3's session: credentials from the environment (or a profile, or a role), the service
    models it loads cached in it."""
    try:
        import boto3
    except ImportError:
        raise ConfigError(
            "an s3:// location needs boto3: install the toolkit with its s3 extra (pip install -e '.[s3]')"
        ) from None
    return boto3.session.Session()

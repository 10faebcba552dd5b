"""Where media and thumbnails live: a local folder, or a prefix of an S3-compatible bucket written as
`s3://bucket/prefix` (credentials never in it: they come from the environment, as boto3 reads them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from config.errors import ConfigError

BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's rules for a bucket's name
SCHEME = "s3://"


@dataclass(frozen=True)
class S3Location:
    """A bucket and a prefix in it ("" for the whole bucket, else ending with "/")."""

    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"

    def key(self, names: tuple[str, ...]) -> str:
        """The object key of `names` below the prefix."""
        return self.prefix + "/".join(names)

    def holds(self, other: S3Location) -> bool:
        """Whether `other` lies within this location (the same bucket, under this prefix)."""
        return other.bucket == self.bucket and other.prefix.startswith(self.prefix)


Location = Path | S3Location


def is_s3(text: str) -> bool:
    return text.lower().startswith(SCHEME)


def parse_s3(text: str, source: str) -> S3Location:
    """`s3://bucket/prefix` as a location; anything else it could mean (a key, a query, an address
    with a user) is refused, naming `source`."""
    rest = text[len(SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        raise ConfigError(
            f"{source}: no credentials or ports in an s3:// location (credentials come from the "
            "environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the store's address from "
            "RQKIT_S3_ENDPOINT_URL)"
        )
    if not BUCKET_NAME.match(bucket):
        raise ConfigError(
            f"{source}: {bucket!r} is not a bucket name (3 to 63 lower-case letters, digits, dots and "
            "hyphens; s3://bucket/prefix)"
        )
    if any(char in prefix for char in "?#\\") or not prefix.isprintable():
        raise ConfigError(f"{source}: a prefix of letters, digits and /-_. only is safest; got {prefix!r}")
    parts = [part for part in prefix.split("/") if part]
    if any(part in (".", "..") or part.startswith(".") for part in parts):
        raise ConfigError(f"{source}: no '.', '..' or hidden names in the prefix {prefix!r}")
    return S3Location(bucket, "".join(f"{part}/" for part in parts))


def check_endpoint(url: str) -> None:
    """RQKIT_S3_ENDPOINT_URL: empty (AWS), or a store's address and nothing else."""
    if url and (not re.match(r"^https?://[^/?#@]+/?$", url)):
        raise ConfigError(
            "RQKIT_S3_ENDPOINT_URL: the store's address, http(s)://host:port and nothing else "
            "(credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )

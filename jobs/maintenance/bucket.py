"""The bucket cache sweep: the objects under a prefix of an S3-compatible bucket, aged on the store's
own clock, deleted in DeleteObjects batches and never outside the prefix (jobs/objects.ObjectTree).

Memory: the listing is read a page at a time and expired objects go in batches as it is read, so
nothing is kept but one batch. Only a size cap needs more: a first listing adds up what is left; if
that is over the cap, a second listing keeps the oldest objects that make up the excess in a heap,
dropping the newest as older ones come, so what it holds adds up to less than the excess and one
object more: never the whole prefix, unless the cap deletes (nearly) all of it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from config import Settings
from config.storage import S3Location
from jobs.errors import JobInputError
from jobs.maintenance.report import Report
from jobs.objects import DELETE_BATCH, Head, ObjectTree, client


def bucket_tree(location: S3Location, target: str, settings: Settings) -> ObjectTree:
    """The target's prefix as the sweep reaches it; refused if the media root lies within it."""
    label, media = f"cache target {target!r}", settings.media_root
    if isinstance(media, S3Location) and location.holds(media):
        raise JobInputError(f"{label}: {location} holds the media root {media}: a sweep would delete media")
    return ObjectTree(location, label, "the cache target", settings)


def sweep_bucket(tree: ObjectTree, config: dict[str, Any], report: Report) -> None:
    """Objects older than max_age_days go; then, while the rest is over max_size_mb, the oldest.
    Objects with a hidden name (or below one) are left alone."""
    max_age, limit = float(config.get("max_age_days", 0)), float(config.get("max_size_mb", 0)) * 2**20
    cutoff = store_clock(tree) - timedelta(days=max_age) if max_age else None
    deletions, kept = Deletions(tree, report), 0
    for head in tree.walk():
        report.examined += 1
        if expired(head, cutoff):
            deletions.add(head)
        else:
            kept += head.size
    if limit and kept > limit:
        rest = (head for head in tree.walk() if not expired(head, cutoff))
        for head in oldest(rest, kept - limit, limit):
            deletions.add(head)
    deletions.flush()


def store_clock(tree: ObjectTree) -> datetime:
    """The store's time: the Date of its reply to a listing of the prefix. Ages are told on the clock
    that set LastModified, so a host whose clock runs ahead deletes nothing early."""
    with tree.failures(()):
        reply = client(tree.settings).list_objects_v2(
            Bucket=tree.location.bucket, Prefix=tree.location.prefix, MaxKeys=1
        )
    try:
        date = parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"])
    except (KeyError, TypeError, ValueError):
        raise JobInputError(
            f"{tree.label}: the store's reply has no Date to age objects by: set max_age_days = 0 and "
            "expire them with the store's lifecycle rules"
        ) from None
    return date if date.tzinfo else date.replace(tzinfo=UTC)  # "-0000": UTC, by RFC 5322


def expired(head: Head, cutoff: datetime | None) -> bool:
    return cutoff is not None and head.modified < cutoff


def oldest(heads: Iterable[Head], excess: float, limit: float) -> list[Head]:
    """The fewest of the oldest objects whose sizes add up to `excess`; fewer if objects went since it
    was measured (then only what the rest is over `limit`). Ties go in key order, as listed."""
    newest_on_top: list[tuple[float, int, Head]] = []
    held = total = 0
    for order, head in enumerate(heads):
        heapq.heappush(newest_on_top, (-head.modified.timestamp(), -order, head))
        held, total = held + head.size, total + head.size
        held = drop_newest(newest_on_top, held, excess)
    drop_newest(newest_on_top, held, min(excess, total - limit))
    return [head for _, _, head in newest_on_top]


def drop_newest(heap: list[tuple[float, int, Head]], held: int, excess: float) -> int:
    """Drop the newest while the others still add up to `excess`; the bytes still held."""
    while heap and held - heap[0][2].size >= excess:
        held -= heapq.heappop(heap)[2].size
    return held


@dataclass
class Deletions:
    """Objects to delete, sent a DeleteObjects request (1,000 keys) at a time; a dry run counts them."""

    tree: ObjectTree
    report: Report
    batch: list[Head] = field(default_factory=list)

    def add(self, head: Head) -> None:
        self.batch.append(head)
        if len(self.batch) == DELETE_BATCH:
            self.flush()

    def flush(self) -> None:
        batch, self.batch = self.batch, []
        if not batch:
            return
        if not self.report.dry_run:
            self.report.timed(lambda: self.tree.delete([head.key for head in batch]))
            self.report.batches += 1
        self.report.deleted += len(batch)
        self.report.bytes_freed += sum(head.size for head in batch)

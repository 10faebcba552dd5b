"""The disk sweep stays inside its root: folders swapped for symlinks mid-walk, symlinks, a root that
is a symlink, special files. Real folders, a real racing thread, no mocks."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis import Redis

from jobs.errors import JobInputError
from jobs.maintenance import Report, sweep_cache, sweep_disk

OLD = datetime.now(UTC).timestamp() - 400 * 86400
FILES = 150  # per swapped folder
RUNS = 30


def old_files(folder: Path, count: int) -> None:
    """`count` files a year old in `folder` and in `folder/deep`, named alike everywhere."""
    for sub in (folder, folder / "deep"):
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = sub / f"{i}.jpg"
            path.write_bytes(b"x" * 10)
            os.utime(path, (OLD, OLD))


def files_under(folder: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(folder))


class Swapper(threading.Thread):
    """Swaps `victim` (a real folder) for a symlink to the outside folder and back, as fast as it can."""

    def __init__(self, victim: Path, link: Path, parked: Path) -> None:
        super().__init__(daemon=True)
        self.victim, self.link, self.parked = victim, link, parked
        self.stop, self.swapped = threading.Event(), threading.Event()
        self.swaps = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                os.rename(self.victim, self.parked)
            except OSError:  # the sweep removed the emptied folder: keep swapping the link in
                pass
            os.rename(self.link, self.victim)
            os.rename(self.victim, self.link)
            if self.parked.exists():
                os.rename(self.parked, self.victim)
            self.swaps += 1
            self.swapped.set()


RULES = {
    "age": {"max_age_days": 30},
    "size": {"max_size_mb": 1 / 2**20},  # one byte: every file goes, least recently used first
    "dry": {"max_age_days": 30, "max_size_mb": 1 / 2**20},
}


@pytest.mark.slow
@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_folder_swapped_for_a_symlink_mid_sweep_never_leads_outside(tmp_path: Path, rule: str) -> None:
    root, outside = tmp_path / "cache", tmp_path / "outside"
    old_files(outside, FILES)
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    swaps = 0
    for _ in range(RUNS):
        old_files(root / "victim", FILES)
        old_files(root / "steady", 10)
        swapper = Swapper(root / "victim", tmp_path / "link", tmp_path / "parked")
        swapper.start()
        assert swapper.swapped.wait(timeout=10)  # the race is on before the sweep starts
        try:
            report = Report("t", dry_run=rule == "dry")
            sweep_disk(root, RULES[rule], report, datetime.now(UTC).timestamp())
        finally:
            swapper.stop.set()
            swapper.join(timeout=10)
        swaps += swapper.swaps
        assert files_under(outside) == 2 * FILES, f"the sweep deleted outside its root ({report})"
        assert (tmp_path / "link").is_symlink()
        if rule == "dry":
            assert files_under(root) == 2 * FILES + 20 and report.deleted > 0
            assert (report.folders_removed, report.bytes_freed) == (0, report.bytes_freed)
    assert swaps >= RUNS


def configure(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    target = {"t": {"kind": "disk", "path": str(path), "max_age_days": 30}}
    monkeypatch.setenv("RQKIT_CACHE_TARGETS", json.dumps(target))


def test_a_root_that_is_a_symlink_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    old_files(tmp_path / "real", 3)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    configure(monkeypatch, tmp_path / "link")
    with pytest.raises(JobInputError, match=r"cache target 't': .*link is a symlink .*set its path"):
        sweep_cache("t")
    assert files_under(tmp_path / "real") == 6


def test_a_root_that_is_a_file_is_refused_and_a_missing_one_is_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connection: Redis
) -> None:
    (tmp_path / "file").write_text("x")
    configure(monkeypatch, tmp_path / "file")
    with pytest.raises(JobInputError, match=r"cache target 't': .*file is not a folder"):
        sweep_cache("t")
    report = Report("t", dry_run=False)
    sweep_disk(tmp_path / "missing", {"max_age_days": 30}, report, datetime.now(UTC).timestamp())
    assert report.examined == 0 and not (tmp_path / "missing").exists()


def test_links_and_special_files_are_left_as_they_are(tmp_path: Path) -> None:
    root, outside = tmp_path / "cache", tmp_path / "outside"
    old_files(outside, 2)
    old_files(root / "a", 2)
    (root / "a" / "to-folder").symlink_to(outside, target_is_directory=True)
    (root / "a" / "to-file.jpg").symlink_to(outside / "0.jpg")
    (root / "a" / "dangling.jpg").symlink_to(tmp_path / "nothing")
    os.mkfifo(root / "a" / "fifo")
    report = Report("t", dry_run=False)
    sweep_disk(root, {"max_age_days": 30}, report, datetime.now(UTC).timestamp())
    assert (report.examined, report.deleted) == (4, 4)
    assert sorted(path.name for path in (root / "a").iterdir()) == [
        "dangling.jpg",
        "fifo",
        "to-file.jpg",
        "to-folder",
    ]
    assert files_under(outside) == 4

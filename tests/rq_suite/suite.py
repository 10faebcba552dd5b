"""RQ's own test suite from the source distribution of the installed RQ, run with RQ's worker classes or
the toolkit's, each time in network and PID namespaces of its own with a fresh redis-server on
127.0.0.1:6379 (the address RQ's tests hard-code); its outcomes read from the JUnit XML it writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rqkit" / "rq-suite"
DEVIATIONS = HERE / "deviations.toml"
# Every process a run starts dies with it: PID 1 of the new PID namespace is namespace.py.
NAMESPACE = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
# Not passed on: RQ's CLI tests would take REDIS_URL over their own server.
CLEARED = ("REDIS_URL", "RQ_REDIS_URL", "DATABASE_URL", "RQ_CONFIG")
PYTEST_OPTIONS = ["-p", "swap_classes", "-p", "no:cacheprovider", "--timeout", "120", "--tb=short"]
RUN_TIMEOUT = 900  # s for one run of RQ's whole suite (under 2 minutes on 2 cores)
NOT_RUN = "no result in the JUnit XML (a collection error? see the log)"


@dataclass
class Outcome:
    """One run: the tests that passed, the failure text of those that failed or errored, and its log."""

    passed: set[str]
    failures: dict[str, str]
    log: Path


@dataclass(frozen=True)
class Deviation:
    """An RQ test that fails with the toolkit's classes on purpose, why, and our test of the intent."""

    reason: str
    covered_by: str  # tests/FILE.py::test_name


def namespace() -> list[str]:
    """The unshare command line: for a user other than root, in a user namespace where it is root."""
    return NAMESPACE if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", *NAMESPACE[1:]]


def namespace_refused() -> str | None:
    """Why RQ's suite can't get namespaces of its own here (None: it can)."""
    try:
        done = subprocess.run([*namespace(), "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "RQ's suite runs under unshare (util-linux), which is not installed"
    if done.returncode:
        return (
            f"RQ's suite needs `{' '.join(namespace())}`: run as root (as CI does), or where unprivileged "
            f"user namespaces are allowed ({done.stderr.strip()})"
        )
    return None


def source_tree(version: str) -> Path:
    """RQ `version`'s source distribution, downloaded with pip and unpacked once, in the cache."""
    tree = CACHE / f"rq-{version}"
    if not (tree / "tests").is_dir():
        unpack(download(version), tree)
    return tree


def download(version: str) -> Path:
    """The sdist of RQ `version` in the cache (pip downloads it the first time)."""
    archive = CACHE / f"rq-{version}.tar.gz"
    if not archive.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(CACHE)]
        done = subprocess.run([*pip, f"rq=={version}"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and archive.exists(), f"pip download of RQ {version}:\n{done.stderr}"
    return archive


def unpack(archive: Path, tree: Path) -> None:
    """Unpack the sdist (one top folder) to `tree`, all at once: a run stopped midway leaves nothing."""
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch, tarfile.open(archive) as tar:
        tar.extractall(scratch, filter="data")
        (top,) = Path(scratch).iterdir()
        top.rename(tree)


def rq_test_files(tree: Path) -> list[Path]:
    """The Python files of RQ's test suite."""
    return sorted((tree / "tests").rglob("*.py"))


def environment(classes: str, workdir: Path) -> dict[str, str]:
    """The run's environment: ours without Redis URLs, pytest's or the toolkit's settings."""
    config = workdir / "empty.toml"
    config.write_text("")
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in CLEARED and not name.startswith(("RQKIT_", "PYTEST_"))
    }
    return env | {
        "RQKIT_RQ_SUITE_CLASSES": classes,
        "RQKIT_VAR_DIR": str(workdir / "var"),
        "RQKIT_CONFIG": str(config),
        "RQKIT_JOB_FUNCTIONS": "*",  # RQ's tests run functions of their own and of the stdlib, as RQ does
        # The plugin. Not the repo root: its tests/ would hide RQ's from the processes RQ's tests start;
        # the toolkit's packages come from the editable install (the plugin checks it is this tree).
        "PYTHONPATH": str(HERE),
        # RQ's tests start `rqworker`: this venv's (whose Worker is RQ's: the swap is in pytest's process).
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)]),
    }


def run(tree: Path, classes: str, workdir: Path, ids: Sequence[str] = ()) -> Outcome:
    """One run of RQ's suite (or of just `ids`) with `classes`: "rq" (RQ's own) or "toolkit"."""
    workdir.mkdir(parents=True)
    log, report = workdir / "pytest.log", workdir / "junit.xml"
    command = [*namespace(), sys.executable, str(HERE / "namespace.py"), str(workdir)]
    with log.open("wb") as output:
        try:
            subprocess.run(
                [*command, *(ids or ["tests"]), *PYTEST_OPTIONS],
                cwd=tree,
                env=environment(classes, workdir),
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=RUN_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            output.write(f"\nkilled after {RUN_TIMEOUT} s\n".encode())
    assert report.exists(), f"RQ's suite wrote no report; the end of {log}:\n{tail(log)}"
    return outcome(tree, report, log)


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def outcome(tree: Path, report: Path, log: Path) -> Outcome:
    """The tests that passed and those that failed, by node id, from a JUnit XML report."""
    passed: set[str] = set()
    failures: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test = node_id(tree, case.get("classname") or "", case.get("name") or "")
        problems = [child for child in case if child.tag in ("failure", "error")]
        if problems:
            failures[test] = "\n".join(f"{p.get('message') or ''}\n{p.text or ''}" for p in problems)
        elif not any(child.tag == "skipped" for child in case):
            passed.add(test)
    return Outcome(passed - failures.keys(), failures, log)


def node_id(tree: Path, classname: str, name: str) -> str:
    """pytest's node id (tests/test_x.py::Class::test) for JUnit's classname (tests.test_x.Class) and name."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        module = "/".join(parts[:cut]) + ".py"
        if (tree / module).is_file():
            return "::".join([module, *parts[cut:], name])
    return "::".join(filter(None, [classname, name]))


def confirmed_failures(
    tree: Path, classes: str, workdir: Path, first: Outcome, tests: set[str]
) -> dict[str, str]:
    """Of `tests`, those that did not pass in `first` nor when run again on their own: {id: failure text}.
    A test that `first` has no result for is not run again (pytest would refuse the whole list)."""
    failed = tests - first.passed
    missing = {test: NOT_RUN for test in sorted(failed - first.failures.keys())}
    again = sorted(failed & first.failures.keys())
    second = run(tree, classes, workdir, again) if again else Outcome(set(), {}, workdir)
    return missing | {test: first.failures[test] for test in again if test not in second.passed}


def reference_run(tree: Path, workdir: Path) -> set[str]:
    """The tests that pass with RQ's own classes: those of one run, and those that pass when run again."""
    first = run(tree, "rq", workdir / "reference")
    failed = set(first.failures)
    flaky = failed - set(confirmed_failures(tree, "rq", workdir / "reference-again", first, failed))
    return first.passed | flaky


def reference_file(version: str) -> Path:
    return HERE / f"reference-rq-{version}.txt"


def read_reference(version: str) -> set[str] | None:
    """The committed reference for RQ `version`, if there is one."""
    path = reference_file(version)
    if not path.exists():
        return None
    lines = (line.strip() for line in path.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


def write_reference(version: str, passed: set[str]) -> Path:
    """Write the reference for RQ `version`: one passing test id a line, under a header."""
    header = [
        f"# The tests of RQ {version}'s own suite that pass with RQ's own worker classes: the reference",
        "# for tests/test_rq_suite.py, which fails on any of them that fails with the toolkit's classes.",
        "# Made by a run of RQ's suite, failures run again once. To regenerate (e.g. for a new RQ; as root):",
        "#   .venv/bin/python -m tests.rq_suite.reference",
    ]
    path = reference_file(version)
    path.write_text("\n".join([*header, *sorted(passed)]) + "\n")
    return path


def deviations() -> dict[str, Deviation]:
    """The deliberate deviations: {RQ test id: Deviation}."""
    listed = tomllib.loads(DEVIATIONS.read_text())
    return {test: Deviation(entry["reason"], entry["covered_by"]) for test, entry in listed.items()}


def covered(deviation: Deviation) -> bool:
    """Whether the test of ours that a deviation names exists."""
    path, _, name = deviation.covered_by.partition("::")
    source = REPO / path
    return path.startswith("tests/") and source.is_file() and f"def {name}(" in source.read_text()


def summary(text: str, lines: int = 4) -> list[str]:
    """The first lines of a failure that say what broke: where in the test, and the error."""
    rows = text.splitlines()
    where = [
        f"{row}  {rows[i + 1].strip()}" for i, row in enumerate(rows[:-1]) if re.match(r"tests/\S+:\d+", row)
    ]
    errors = [row for row in rows if row.startswith("E ")]
    return (where[:1] + errors)[:lines] or rows[:1]

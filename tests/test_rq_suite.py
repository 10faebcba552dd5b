"""RQ's own test suite with the toolkit's ForkingWorker and InProcessWorker in place of RQ's Worker and
SimpleWorker (issue 16): every RQ test that passes with RQ's classes passes with ours, but for the
deliberate deviations in tests/rq_suite/deviations.toml. RQ's tests hard-code localhost:6379, so each run
gets network and PID namespaces of its own (unshare, as root: CI) with a fresh redis-server there."""

from __future__ import annotations

from pathlib import Path

import pytest
import rq

from tests.rq_suite import suite
from tests.test_layout import declared, undeclared


def test_each_deviation_says_why_and_names_a_test_of_ours_that_exists() -> None:
    listed = suite.deviations()
    assert listed, "no deviations: the heartbeat's grace at least differs from RQ's"
    wrong = {test: d.covered_by for test, d in listed.items() if not d.reason.strip() or not suite.covered(d)}
    assert wrong == {}, "each needs a reason, and covered_by: tests/FILE.py::test_name of a test that exists"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a run of RQ's suite takes 2-3 minutes, and 5 more without a committed reference
def test_rq_suite_passes_with_the_toolkit_classes(tmp_path: Path) -> None:
    if refused := suite.namespace_refused():
        pytest.skip(refused)
    tree = suite.source_tree(rq.__version__)
    missing = undeclared(suite.rq_test_files(tree), declared("test"))
    assert missing == {}, "RQ's tests import these: add them to the test extra in pyproject.toml"
    reference = suite.read_reference(rq.__version__) or suite.reference_run(tree, tmp_path)
    deviations = suite.deviations()
    ours = suite.run(tree, "toolkit", tmp_path / "toolkit")
    expected = reference - deviations.keys()
    regressions = suite.confirmed_failures(tree, "toolkit", tmp_path / "toolkit-again", ours, expected)
    passing = sorted(deviations.keys() & ours.passed)
    stale = sorted(deviations.keys() - reference)
    if regressions or passing or stale:
        pytest.fail(report(regressions, passing, stale, ours.log), pytrace=False)


def report(regressions: dict[str, str], passing: list[str], stale: list[str], log: Path) -> str:
    """What broke, for a CI log: each regression with the first lines of its failure."""
    lines = [f"RQ {rq.__version__}'s own suite with the toolkit's worker classes (log: {log}):"]
    if regressions:
        lines.append(
            f"{len(regressions)} tests pass with RQ's classes and fail with the toolkit's, twice, and are "
            f"not deliberate deviations ({suite.DEVIATIONS.relative_to(suite.REPO)}):"
        )
        for test, text in sorted(regressions.items()):
            lines += [f"  {test}", *(f"      {line}" for line in suite.summary(text))]
    if passing:
        lines += ["Listed as deviations, but pass with the toolkit's classes (take them off the list):"]
        lines += [f"  {test}" for test in passing]
    if stale:
        lines += ["Listed as deviations, but don't pass with RQ's own classes (not a deviation of ours):"]
        lines += [f"  {test}" for test in stale]
    return "\n".join(lines)

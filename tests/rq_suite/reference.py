"""Regenerate tests/rq_suite/reference-rq-<version>.txt for the installed RQ: run RQ's own suite with
RQ's own classes (failures run again once) and write the tests that pass. Needs root, as the test does.
Usage, from the repo root: .venv/bin/python -m tests.rq_suite.reference"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import rq

from tests.rq_suite import suite


def main() -> int:
    """Write the reference file; say where and how many tests it holds."""
    if refused := suite.namespace_refused():
        print(refused, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        passed = suite.reference_run(suite.source_tree(rq.__version__), Path(scratch))
    path = suite.write_reference(rq.__version__, passed)
    print(f"{path}: {len(passed)} tests pass with RQ {rq.__version__}'s own classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

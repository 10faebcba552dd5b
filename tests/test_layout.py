"""The layout holds: imports point one way, modules stay small, every third-party import is declared,
one job's module loads only what that job needs, and the worker preloads exactly the jobs' modules."""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from config.settings import PROJECT_ROOT
from tests.support import python

PACKAGES = ("config", "workers", "jobs", "scheduler", "ops", "launcher", "commands", "rqkit")
# What each part may import besides itself: entry points (cli.py, commands/) -> launcher -> ops ->
# scheduler -> jobs -> config, and launcher -> workers -> config. config/rq.py, the module that RQ's
# CLI imports (`rq worker -c config.rq`), is an entry point too: it preloads through the engine. The web
# apps' client, rqkit/__init__.py, imports none of them (nor anything but the standard library, below):
# its gateway process, rqkit/gateway.py, is the entry point that reaches the toolkit.
MAY_IMPORT = {
    "cli": {"commands", "config", "jobs"},
    "commands": {"launcher", "ops", "scheduler", "jobs", "config"},
    "launcher": {"ops", "scheduler", "jobs", "workers", "config"},
    "ops": {"scheduler", "jobs", "config"},
    "scheduler": {"jobs", "config"},
    "jobs": {"config"},
    "workers": {"config"},
    "config": set(),
    "config/rq.py": {"workers", "config"},
    "rqkit": set(),
    "rqkit/gateway.py": {"ops", "jobs", "config"},
}
EXAMPLES = PROJECT_ROOT / "examples"
FRAMEWORKS = {"flask", "django", "rqkit"}  # all an example may import besides the standard library and itself
LONGEST_MODULE = 400
# Third-party packages that only some jobs need, and the job modules that may load them.
HEAVY = (
    *("PIL", "sqlalchemy", "httpx", "jinja2", "email_validator", "prometheus_client", "flask", "aiosmtpd"),
    *("boto3", "botocore"),  # the s3 extra's: imported only where a bucket is configured
)
JOB_NEEDS = {
    "jobs.demo": set(),
    "jobs.tags": set(),
    "jobs.images": {"PIL"},
    "jobs.email": {"jinja2", "email_validator"},
    "jobs.api": {"httpx"},
    "jobs.maintenance": {"sqlalchemy"},
    "jobs.stats": {"sqlalchemy"},
}


def sources() -> list[Path]:
    return [
        PROJECT_ROOT / "cli.py",
        *(p for pkg in PACKAGES for p in sorted((PROJECT_ROOT / pkg).rglob("*.py"))),
    ]


def part_of(path: Path) -> str:
    relative = path.relative_to(PROJECT_ROOT).as_posix()
    return relative if relative in MAY_IMPORT else relative.split("/")[0].removesuffix(".py")


def imported(source: str) -> set[str]:
    """The top-level names of every module a source imports, at any depth (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def backward_imports(part: str, source: str) -> set[str]:
    """The project's packages that `source`, in `part`, imports against the direction."""
    ours = set(PACKAGES) | {"cli"}
    return {name for name in imported(source) & ours if name != part.split("/")[0]} - MAY_IMPORT[part]


def test_imports_point_one_way() -> None:
    wrong = {
        path.relative_to(PROJECT_ROOT).as_posix(): sorted(found)
        for path in sources()
        if (found := backward_imports(part_of(path), path.read_text()))
    }
    assert wrong == {}


def test_the_import_rule_catches_an_import_that_runs_back() -> None:
    assert backward_imports("jobs", "from ops.views import overview\nimport jobs.errors\n") == {"ops"}
    assert backward_imports("config", "def f():\n    from launcher import stack\n") == {"launcher"}
    assert backward_imports("workers", "import jobs.demo\n") == {"jobs"}
    assert backward_imports("config/rq.py", "from workers.preload import preload\n") == set()


def test_the_web_apps_client_imports_only_the_standard_library() -> None:
    found = imported((PROJECT_ROOT / "rqkit" / "__init__.py").read_text())
    assert found - set(sys.stdlib_module_names) == set()


def test_examples_import_only_their_framework_rqkit_and_themselves() -> None:
    """A web app reaches the toolkit through rqkit alone; the names of its own modules are its own."""
    wrong = {}
    for example in sorted(path for path in EXAMPLES.iterdir() if path.is_dir()):
        own = {path.stem for path in example.iterdir() if path.suffix == ".py" or path.is_dir()}
        for path in sorted(example.rglob("*.py")):
            if found := imported(path.read_text()) - set(sys.stdlib_module_names) - FRAMEWORKS - own:
                wrong[path.relative_to(PROJECT_ROOT).as_posix()] = sorted(found)
    assert wrong == {}


def test_no_module_is_long() -> None:
    long = {
        path.relative_to(PROJECT_ROOT).as_posix(): lines
        for path in sources()
        if (lines := len(path.read_text().splitlines())) > LONGEST_MODULE
    }
    assert long == {}


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [
        r for extra in extras for r in project["optional-dependencies"][extra]
    ]
    names = (re.match(r"[A-Za-z0-9_.-]+", requirement) for requirement in requirements)
    return {normalized(name[0]) for name in names if name}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def undeclared(paths: list[Path], allowed: set[str]) -> dict[str, str]:
    """Third-party imports whose distribution is not among `allowed`: {module: distribution}."""
    distributions = packages_distributions()
    ours = set(PACKAGES) | {"cli", "tests", "bench"}
    found = set().union(*(imported(path.read_text()) for path in paths)) - ours - set(sys.stdlib_module_names)
    missing = {}
    for module in sorted(found):
        names = {normalized(name) for name in distributions.get(module, [module])}
        if not names & allowed:
            missing[module] = ", ".join(sorted(names))
    return missing


def test_every_third_party_import_is_declared() -> None:
    assert undeclared(sources(), declared("s3")) == {}
    tests = sorted((PROJECT_ROOT / "tests").glob("*.py"))
    assert undeclared(tests, declared("test", "s3")) == {}


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running `statement` from the repo root."""
    code = f"{statement}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    done = python("-c", code)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module", sorted(JOB_NEEDS))
def test_one_jobs_module_loads_only_what_that_job_needs(module: str) -> None:
    modules = loaded_after(f"import {module}")
    assert {name for name in HEAVY if name in modules} == JOB_NEEDS[module]
    other_jobs = {name for name in JOB_NEEDS if name in modules and name != module}
    assert other_jobs <= ({"jobs.content"} & JOB_NEEDS.keys())  # no other job area comes along
    assert not {"jobs.registry", "jobs.submission", "ops", "launcher", "scheduler"} & modules


def test_the_worker_preloads_exactly_the_modules_of_the_registered_jobs() -> None:
    """`rq worker -c config.rq` imports every module a job of the registry (or the schedule's trigger)
    runs from, before it forks; and only those."""
    from jobs import JOBS
    from workers.preload import MODULES

    job_modules = {spec.func.__module__ for spec in JOBS.values()}
    assert set(MODULES) == job_modules | {"scheduler.periodic"}
    preloaded = loaded_after("import config.rq")
    assert set(MODULES) <= preloaded
    assert {"PIL", "sqlalchemy", "httpx", "jinja2"} <= preloaded


def test_the_dotted_paths_stored_in_redis_resolve() -> None:
    """Jobs queued before the layout changed name these functions; they must still import."""
    from jobs import JOBS

    stored = {name: f"{spec.func.__module__}.{spec.func.__name__}" for name, spec in JOBS.items()}
    assert stored == {
        "sleep": "jobs.demo.sleep",
        "thumbnail": "jobs.images.thumbnail",
        "email": "jobs.email.send_email",
        "api-call": "jobs.api.call_api",
        "webhook": "jobs.api.deliver_webhook",
        "expire-sessions": "jobs.maintenance.expire_sessions",
        "sweep-cache": "jobs.maintenance.sweep_cache",
        "release-due": "jobs.scheduled.release_due",
        "prune-tags": "jobs.tags.prune_tags",
        "word-count": "jobs.stats.word_count",
    }

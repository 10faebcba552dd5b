"""The dashboard shows each worker's host beside its name (issue 19: a fleet's workers told apart by host):
workers.json gives each worker's hostname and pid, the workers page a Host and a PID column, in a real
headless Chromium; markup in a hostname stays text."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from markupsafe import escape
from redis import Redis

from config.rq_classes import Worker
from tests import test_dashboard
from tests.test_dashboard import get

# test_dashboard's fixtures: its app's test client, `python cli.py dashboard`, and a page in Chromium.
client, served, browser_page = test_dashboard.client, test_dashboard.served, test_dashboard.browser_page

# name -> (hostname, pid): one plain host, one whose name is as hostile as a Redis write can make it.
FLEET = {
    "worker-a": ("host-a.fleet", 4242),
    "worker-b": ('<img src=/pwned-host data-pwned onerror="window.pwned = 1">"\'&amp;', 4343),
}


@pytest.fixture
def fleet(connection: Redis) -> dict[str, tuple[str, int]]:
    """Workers registered as if from two hosts (RQ writes a worker's hostname and pid at its birth)."""
    for name, (hostname, pid) in FLEET.items():
        worker = Worker(["default"], name=name, connection=connection)
        worker.hostname, worker.pid = hostname, pid
        worker.register_birth()
    return FLEET


def test_workers_json_gives_each_workers_host_and_pid(client: FlaskClient, fleet: dict[str, Any]) -> None:
    answer = get(client, "/0/data/workers.json")
    assert answer.status_code == 200 and "<img" not in answer.get_data(as_text=True)
    listed = {worker["name"]: (worker["hostname"], worker["pid"]) for worker in answer.get_json()["workers"]}
    # Escaped as every string of the JSON is: the page writes it raw into its table, as it does the name.
    assert listed == {name: (str(escape(hostname)), pid) for name, (hostname, pid) in fleet.items()}


def test_the_workers_page_shows_each_workers_host_beside_its_name(
    served: str, browser_page: Any, fleet: dict[str, Any]
) -> None:
    page, fetched = browser_page, []
    page.on("request", lambda request: fetched.append(request.url))
    response = page.goto(served + "/0/view/workers")
    assert "'nonce-" in response.headers["content-security-policy"]
    rows = page.locator("#workers tr[data-role=worker]")
    rows.nth(len(fleet) - 1).wait_for()
    assert page.locator("#workers th").all_inner_texts()[:3] == ["Worker", "Host", "PID"]
    shown = {}
    for index in range(rows.count()):
        name, host, pid = rows.nth(index).locator("td").all_inner_texts()[:3]
        shown[name.strip()] = (host, int(pid))
    assert shown == fleet  # the hostile hostname as text, escaped once (its "&amp;" shown as typed)
    assert page.locator("[data-pwned]").count() == 0 and page.evaluate("window.pwned") is None
    assert not [url for url in fetched if "pwned" in url]

"""Operations against real workers: one job's details, failed jobs, workers killed and stopped."""

from __future__ import annotations

import re
from typing import Any

from redis import Redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.job import Job, JobStatus
from rq.utils import now, utcformat

from jobs import enqueue
from ops.outcomes import wait_for
from tests.support import run, run_json, wait_until


def failing(connection: Redis, seconds: float) -> Job:
    """A job the registry would refuse, enqueued with plain RQ: it fails when it runs."""
    return Queue("default", connection=connection).enqueue(
        "jobs.demo.sleep", seconds, meta={"rqkit_job": "sleep"}
    )


def test_jobs_show_gives_the_result_or_the_traceback(connection: Redis, run_jobs: Any) -> None:
    good, bad = enqueue("sleep", 0), failing(connection, -1)
    run_jobs()
    shown = run_json("jobs", "show", good.id)
    assert (shown["status"], shown["result"], shown["job"], shown["args"]) == (
        "finished",
        {"slept": 0},
        "sleep",
        [0],
    )
    assert shown["worker"] and shown["started_at"] and shown["timeout"] == 3660
    broken = run_json("jobs", "show", bad.id)
    assert broken["status"] == "failed" and broken["traceback"].strip().endswith("got -1")
    missing = run("jobs", "show", "no-such-id")
    assert missing.exit_code == 2 and "no job 'no-such-id'" in missing.output


def test_failed_jobs_are_grouped_requeued_with_their_ids_and_deleted(
    connection: Redis, run_jobs: Any
) -> None:
    bad = [failing(connection, -1) for _ in range(3)] + [failing(connection, -2)]
    run_jobs()
    groups = run_json("failed", "list")
    assert [(g["count"], g["job"]) for g in groups] == [(3, "sleep"), (1, "sleep")]
    assert groups[0]["reason"] == "JobInputError: sleep: SECONDS must be a number from 0 to 3600, got -1"

    requeued = run_json("failed", "requeue", bad[0].id)
    assert requeued == {"requeued": [bad[0].id]}
    assert Queue("default", connection=connection).job_ids == [bad[0].id]
    again = run("failed", "requeue", bad[0].id)
    assert again.exit_code == 2 and "is not failed (it is queued)" in again.output
    assert run("failed", "requeue", "no-such-id").exit_code == 2
    assert run("failed", "requeue", "--all", bad[1].id).exit_code == 2
    assert run("failed", "requeue").exit_code == 2

    assert run_json("failed", "requeue", "--all", "--job", "email") == {"requeued": []}
    deleted = run_json("failed", "delete", "--all", "--job", "sleep")
    assert sorted(deleted["deleted"]) == sorted(job.id for job in bad[1:])
    assert run_json("failed", "list") == [] and not connection.exists(bad[1].key)


def test_workers_are_listed_killed_and_stopped(connection: Redis, start_worker: Any) -> None:
    process = start_worker("default")
    [worker] = wait_until(lambda: [w for w in run_json("workers") if w["state"] == "idle"])  # past "started"
    assert (worker["pid"], worker["state"], worker["queues"]) == (process.pid, "idle", ["default"])
    assert worker["rss_mb"] > 10 and worker["last_heartbeat"]
    idle = run("workers", "kill", worker["name"])
    assert idle.exit_code == 2 and "is not running a job" in idle.output

    long = enqueue("sleep", 60)
    # The worker names its current job a moment before the job records when it started.
    assert wait_until(
        lambda: [w for w in run_json("workers") if w["current_job"] == long.id and w["job_started_at"]]
    )
    header, row = run("workers").output.splitlines()
    assert header.split()[-6:] == ["failed", "RSS", "MB", "heartbeat", "current", "job"]
    assert re.search(rf"  busy .* \d+ +\d+s ago  {long.id} for \d+s$", row), row
    assert run("workers", "kill", worker["name"]).exit_code == 0
    assert wait_for(long, timeout=20).status in ("failed", "stopped")
    assert wait_for(enqueue("sleep", 0), timeout=20).status == "finished"  # the worker goes on

    assert run("workers", "kill", "nobody").exit_code == 2
    assert run("workers", "stop", "nobody").exit_code == 2
    assert run("workers", "stop", worker["name"]).exit_code == 0
    assert process.wait(20) == 0


def test_a_half_written_worker_entry_is_listed(connection: Redis) -> None:
    """A worker's key that expired and came back with a late heartbeat holds no host, pid or queues."""
    connection.sadd("rq:workers", "rq:worker:gone")
    connection.hset("rq:worker:gone", mapping={"state": "idle", "last_heartbeat": utcformat(now())})
    listed = run("workers")
    assert listed.exit_code == 0, listed.output
    assert re.search(r"^gone +- +- +idle", listed.output.splitlines()[1])
    assert run("info").exit_code == 0


def test_tags_and_jobs_list(connection: Redis, run_jobs: Any) -> None:
    first = run_json("enqueue", "sleep", "0", "--tag", "customer:42", "--tag", "batch:7")
    second = run_json("enqueue", "sleep", "1", "--tag", "customer:42")
    later = run_json("enqueue", "sleep", "2", "--in", "1h")
    assert run("enqueue", "sleep", "1", "--tag", "bad tag!").exit_code == 2
    tagged = run_json("jobs", "list", "--tag", "customer:42")
    assert [row["id"] for row in tagged] == [second["id"], first["id"]]  # newest first
    assert tagged[1]["tags"] == ["customer:42", "batch:7"]
    assert [row["id"] for row in run_json("jobs", "list", "--status", "scheduled")] == [later["id"]]
    assert len(run_json("jobs", "list", "--queue", "default", "--limit", "2")) == 2
    Job.fetch(first["id"], connection=connection).delete()
    assert [row["id"] for row in run_json("jobs", "list", "--tag", "customer:42")] == [second["id"]]
    assert connection.zcard("rqkit:tag:customer:42") == 1  # the deleted job's tag entry was pruned


def test_pending_jobs_are_steered_in_place_and_started_ones_refused(
    connection: Redis, start_worker: Any
) -> None:
    a, b, c = (run_json("enqueue", "sleep", str(n))["id"] for n in (1, 2, 3))
    queue = Queue("default", connection=connection)
    assert run_json("jobs", "front", c)["done"] == "moved to the front"
    assert queue.job_ids == [c, a, b]
    assert run_json("jobs", "move", b, "--to", "maintenance")["done"] == "moved to maintenance"
    assert queue.job_ids == [c, a] and Queue("maintenance", connection=connection).job_ids == [b]
    edited = run_json("jobs", "edit", a, "--arg", "0", "--timeout", "30")
    assert edited["done"] == "now sleep 0 (time-out 30s)"
    job = Job.fetch(a, connection=connection)
    assert (list(job.args), job.timeout) == ([0], 30)
    refused = run("jobs", "edit", a, "--arg", "-4")
    assert refused.exit_code == 2 and "SECONDS must be a number" in refused.output
    assert run_json("jobs", "cancel", c)["done"] == "canceled"
    assert queue.job_ids == [a] and Job.fetch(c, connection=connection).get_status() == "canceled"

    long = run_json("enqueue", "sleep", "30")["id"]
    start_worker("default")
    started = Job.fetch(long, connection=connection)
    wait_until(lambda: started.get_status() == "started")
    for command in (
        ["edit", long, "--timeout", "5"],
        ["cancel", long],
        ["move", long, "--to", "email"],
        ["front", long],
    ):
        result = run("jobs", *command)
        assert result.exit_code == 2 and f"job {long} is started" in result.output, command
    assert run("jobs", "move", a, "--to", "nowhere").exit_code == 2
    # Stopped here: the fixture's warm stop would wait for it, 15 s, before killing the worker
    send_stop_job_command(connection, long)
    assert wait_for(started, timeout=20).status == "stopped"


def test_a_dead_worker_and_its_abandoned_job_are_shown_as_such(connection: Redis, start_worker: Any) -> None:
    from launcher.children import kill_tree

    process = start_worker("default")
    long = run_json("enqueue", "sleep", "60")["id"]
    job = Job.fetch(long, connection=connection)
    wait_until(lambda: job.get_status() == "started")
    [worker] = run_json("workers")
    kill_tree(process.pid)  # kill -9: no chance to deregister
    process.wait()
    # Its heartbeat lapses after the worker TTL (420 s): stand in for that wait.
    connection.hset(f"rq:worker:{worker['name']}", "last_heartbeat", "2020-01-01T00:00:00.000000Z")
    [dead] = run_json("workers")
    assert (dead["name"], dead["state"]) == (worker["name"], "dead")
    [row] = run_json("jobs", "list", "--status", "started")
    assert (row["id"], row["status"]) == (long, "abandoned")


def test_tag_indexes_lose_deleted_and_expired_jobs(connection: Redis, run_jobs: Any, media: Any) -> None:
    (media.root / "notes.txt").write_text("not a picture")
    broken = run_json("enqueue", "thumbnail", "notes.txt", "--tag", "batch:7")
    kept = run_json("enqueue", "sleep", "0", "--tag", "batch:7")
    expired = [run_json("enqueue", "sleep", "0", "--tag", "batch:7", "--tag", f"one:{i}") for i in range(3)]
    run_jobs()
    assert run_json("failed", "delete", broken["id"])["deleted"] == [broken["id"]]
    assert connection.zcard("rqkit:tag:batch:7") == 4  # deleting through the toolkit unindexes the job
    for row in expired:
        Job.fetch(row["id"], connection=connection).delete()  # what RQ's result TTL does, unseen by us

    sweep = enqueue("prune-tags")
    run_jobs()
    assert sweep.return_value() == {"tags": 4, "entries": 7, "pruned": 6}
    assert [job_id.decode() for job_id in connection.zrange("rqkit:tag:batch:7", 0, -1)] == [kept["id"]]
    assert not connection.keys("rqkit:tag:one:*")


def test_jobs_found_abandoned_at_different_times_make_one_group(connection: Redis) -> None:
    """RQ's reason for an abandoned job says when it was found: that time doesn't split the group."""
    queue = Queue("default", connection=connection)
    for _ in range(3):
        job = enqueue("sleep", 0)
        job.set_status(JobStatus.STARTED)
        connection.zadd(queue.started_job_registry.key, {f"{job.id}:execution": 1})  # expired long ago
        queue.started_job_registry.cleanup()  # as a worker's sweep finds it, a moment after the last
    [group] = run_json("failed", "list")
    assert group["count"] == 3 and "due to AbandonedJobError, at <time>" in group["reason"]

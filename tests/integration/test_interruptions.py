"""Runs that are interrupted, on a real redis-server with the background worker:
what an interrupted run returns is never its result, the handler learns why it was
stopped, progress survives a Redis outage, and scripts strand no jobs.

Every wait has a deadline; handlers synchronise with the test through events.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask

from async_endpoints import AsyncContext, AsyncEndpoints, HandBack, Job, JobStatus
from tests.conftest import RedisServer, wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.redis]


def make_app(url: str, **config: Any) -> tuple[Flask, AsyncEndpoints]:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        ASYNC_ENDPOINTS_STORE_URL=url,
        ASYNC_ENDPOINTS_KEY_PREFIX="interrupt",
        ASYNC_ENDPOINTS_RETRY_DELAY_BASE_SECONDS=0,
        ASYNC_ENDPOINTS_RETRY_JITTER_SECONDS=0,
        **{f"ASYNC_ENDPOINTS_{k}": v for k, v in config.items()},
    )
    return app, AsyncEndpoints(app)


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    redis.Redis.from_url(redis_server.url).flushdb()
    return redis_server.url


@pytest.fixture
def apps() -> Iterator[list[tuple[Flask, AsyncEndpoints]]]:
    """Apps a test made; their workers are stopped at the end."""
    made: list[tuple[Flask, AsyncEndpoints]] = []
    yield made
    for app, ae in made:
        with app.app_context():
            ae.shutdown(grace=0)


def job(app: Flask, ae: AsyncEndpoints, job_id: str) -> Job:
    with app.app_context():
        found = ae.get_job(job_id)
    assert found is not None
    return found


def idle(app: Flask, ae: AsyncEndpoints) -> bool:
    """Whether the app's worker has no run left (each handler returned and what
    it returned was recorded or dropped)."""
    worker = ae._states[app].worker
    assert worker is not None
    return not worker.held_claims() and not worker._runs


def post(app: Flask, path: str, body: object = None) -> str:
    """POST through the app (its first request starts its worker); the job id."""
    response = app.test_client().post(path, json=body or {})
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


def test_a_timed_out_run_returns_nothing_that_is_recorded(
    url: str, apps: list[tuple[Flask, AsyncEndpoints]]
) -> None:
    app, ae = make_app(url, JOB_TIMEOUT_SECONDS=0.3, MAX_RETRIES=0)
    apps.append((app, ae))
    told: list[str | None] = []

    @ae.post("/slow", name="Slow")
    def slow(ctx: AsyncContext) -> dict[str, int]:
        for step in range(1000):
            if ctx.cancelled.wait(0.01):
                told.append(ctx.cancel_reason)
                return {"stopped_at_step": step}
        return {"steps": 1000}

    job_id = post(app, "/slow")
    wait_until(lambda: job(app, ae, job_id).status.is_finished, 10, "the timeout")
    wait_until(lambda: bool(told), 5, "the handler to be told")
    wait_until(lambda: idle(app, ae), 5, "the handler's return to be dealt with")
    ended = job(app, ae, job_id)
    assert ended.status is JobStatus.FAILED
    assert ended.result is None
    assert ended.error is not None
    assert "Timeout" in ended.error.type
    assert told == ["timeout"]


def test_a_run_that_lost_its_lease_is_told_and_not_recorded(
    url: str, apps: list[tuple[Flask, AsyncEndpoints]]
) -> None:
    app, ae = make_app(url, CLAIM_TIMEOUT_SECONDS=1.5, SWEEP_INTERVAL_SECONDS=600)
    apps.append((app, ae))
    told: list[str | None] = []
    running = threading.Event()

    @ae.post("/slow", name="Slow")
    def slow(ctx: AsyncContext) -> dict[str, int]:
        running.set()
        if ctx.cancelled.wait(20):
            told.append(ctx.cancel_reason)
            return {"stopped": 1}
        return {"steps": 1}

    job_id = post(app, "/slow")
    assert running.wait(10)
    # Another process's sweeper takes the lease over, as if this one had stalled.
    _, other = make_app(url, START_WORKER=False)
    store = other._states[next(iter(other._states))].store
    taken = store.recover_expired("thief", limit=10, lease=60, now=time.time() + 100)
    assert [c.job_id for c in taken] == [job(app, ae, job_id).id]
    wait_until(lambda: bool(told), 5, "the handler to learn it lost its lease")
    wait_until(lambda: idle(app, ae), 5, "the handler's return to be dealt with")
    held = job(app, ae, job_id)
    assert told == ["lease_lost"]
    assert held.status is JobStatus.IN_PROGRESS
    assert held.result is None


def test_hand_back_requeues_without_counting_an_attempt(
    url: str, apps: list[tuple[Flask, AsyncEndpoints]]
) -> None:
    app, ae = make_app(url, MAX_RETRIES=0)
    apps.append((app, ae))
    seen: list[tuple[int, int]] = []

    @ae.post("/picky", name="Picky")
    def picky(ctx: AsyncContext) -> str:
        seen.append((ctx.attempt, len(seen)))
        if len(seen) == 1:
            raise HandBack("not on this machine")
        return "done"

    job_id = post(app, "/picky")
    wait_until(lambda: job(app, ae, job_id).status.is_finished, 10, "the job")
    ended = job(app, ae, job_id)
    assert (ended.status, ended.result, ended.retry_count) == (
        JobStatus.COMPLETED,
        "done",
        0,
    )
    assert seen == [(1, 0), (1, 1)]  # the hand-back counted no attempt


def test_too_many_hand_backs_in_a_row_count_as_a_failed_attempt(
    url: str, apps: list[tuple[Flask, AsyncEndpoints]]
) -> None:
    app, ae = make_app(url, MAX_RETRIES=0, MAX_HANDBACKS=2)
    apps.append((app, ae))
    runs: list[int] = []

    @ae.post("/never", name="Never")
    def never(ctx: AsyncContext) -> str:
        runs.append(1)
        raise HandBack()

    job_id = post(app, "/never")
    wait_until(lambda: job(app, ae, job_id).status.is_finished, 10, "the job")
    ended = job(app, ae, job_id)
    assert ended.status is JobStatus.FAILED
    assert ended.error is not None
    assert ended.error.type == "HandedBack"
    assert len(runs) == 3  # two hand-backs allowed, the third fails the attempt


def test_progress_is_not_fatal_while_redis_is_down(
    redis_server_aof: RedisServer,
    apps: list[tuple[Flask, AsyncEndpoints]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, ae = make_app(redis_server_aof.url, CLAIM_TIMEOUT_SECONDS=60)
    apps.append((app, ae))
    running, down, reported, back = (threading.Event() for _ in range(4))
    raised: list[BaseException] = []
    runs: list[int] = []

    @ae.post("/report", name="Report")
    def report(ctx: AsyncContext) -> str:
        runs.append(1)
        ctx.report_progress(0.1, "started")
        running.set()
        assert down.wait(10)
        try:
            for n in range(3):
                ctx.report_progress(0.2 + n / 10, "while Redis is down")
        except BaseException as exc:  # what the fix forbids
            raised.append(exc)
            raise
        finally:
            reported.set()
        assert back.wait(20)
        ctx.report_progress(0.9, "Redis is back")
        return "done"

    job_id = post(app, "/report")
    assert running.wait(10)
    redis_server_aof.stop()
    down.set()
    assert reported.wait(15)
    redis_server_aof.start()
    back.set()
    wait_until(
        lambda: job(app, ae, job_id).status.is_finished, 30, "the job after the outage"
    )
    ended = job(app, ae, job_id)
    assert raised == []
    assert (ended.status, ended.result, ended.retry_count) == (
        JobStatus.COMPLETED,
        "done",
        0,
    )
    assert runs == [1]
    dropped = [r for r in caplog.records if "could not be stored" in r.getMessage()]
    assert len(dropped) == 1, "one warning per outage, not one per report"


SCRIPT = """
import sys, threading, time
from flask import Flask
from async_endpoints import AsyncEndpoints

app = Flask("script")
app.config["ASYNC_ENDPOINTS_STORE_URL"] = sys.argv[1]
app.config["ASYNC_ENDPOINTS_KEY_PREFIX"] = "interrupt"
ae = AsyncEndpoints(app)

@ae.post("/work", name="Work")
def work(ctx):
    ctx.cancelled.wait(30)
    return "finished"

if sys.argv[2] == "submit":
    with app.app_context():
        print(ae.submit("Work", {}).id)
else:  # a request starts this process's worker, which is busy when the script ends
    job_id = app.test_client().post("/work", json={}).get_json()["id"]
    with app.app_context():
        deadline = time.monotonic() + 10
        while ae.get_job(job_id).status.value != "InProgress":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.01)
    print(job_id)
print(sorted(t.name for t in threading.enumerate() if t.name.startswith("async")))
"""


def run_script(url: str, mode: str) -> tuple[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), url, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    job_id, threads = done.stdout.strip().splitlines()
    return job_id, json.loads(threads.replace("'", '"'))


@pytest.mark.slow
def test_a_script_that_submits_starts_no_worker(url: str) -> None:
    app, ae = make_app(url, START_WORKER=False)
    with app.app_context():

        @ae.post("/work", name="Work")
        def work(ctx: AsyncContext) -> None:
            raise AssertionError("runs nowhere in this test")

        waiting = [str(ae.submit("Work", {}).id) for _ in range(5)]
    job_id, threads = run_script(url, "submit")
    assert threads == []
    for queued in [*waiting, job_id]:
        found = job(app, ae, queued)
        assert found.status is JobStatus.QUEUED, "a script claimed a job"


@pytest.mark.slow
def test_a_script_whose_worker_started_hands_its_jobs_back_at_exit(url: str) -> None:
    app, ae = make_app(url, START_WORKER=False)
    job_id, threads = run_script(url, "request")
    assert threads, "the request started no worker"
    handed_back = job(app, ae, job_id)
    assert handed_back.status is JobStatus.QUEUED
    assert handed_back.retry_count == 0
    assert handed_back.handbacks == 1


@pytest.mark.parametrize(
    "handbacks", [{"MAX_HANDBACKS": 3}, {}], ids=["set-to-3", "by-default"]
)
def test_a_job_handed_back_at_every_shutdown_ends_failed(
    url: str, handbacks: dict[str, int]
) -> None:
    """What a stopping worker does (``manager.release``), over and over: after
    MAX_HANDBACKS (default 3) hand-backs in a row the next one counts as a
    failed attempt."""
    app, ae = make_app(url, START_WORKER=False, MAX_RETRIES=0, **handbacks)

    @ae.post("/long", name="Long")
    def long(ctx: AsyncContext) -> None:
        raise AssertionError("never run: each claim is handed back at shutdown")

    manager = ae._states[app].manager
    with app.app_context():
        job_id = str(ae.submit("Long", {}).id)
    for shutdown in range(1, 5):
        (claim,) = manager.claim(f"worker-{shutdown}", 1)
        manager.release([claim])
        handed_back = job(app, ae, job_id)
        if shutdown <= 3:
            assert (handed_back.status, handed_back.handbacks) == (
                JobStatus.QUEUED,
                shutdown,
            )
    assert handed_back.status is JobStatus.FAILED
    assert handed_back.error is not None
    assert handed_back.error.type == "HandedBack"

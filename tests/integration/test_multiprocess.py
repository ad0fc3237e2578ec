"""Several worker processes drain one Redis queue: every job completes exactly once."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import redis
from flask import Flask

from async_endpoints import AsyncEndpoints, JobStatus
from tests.integration.processes import start_worker, worker_env

JOBS = 3000
PROCESSES = 3

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_processes_drain_a_shared_queue_exactly_once(
    redis_url: str, tmp_path: Path
) -> None:
    env = worker_env(
        redis_url,
        ASYNC_ENDPOINTS_MAX_CONCURRENCY="4",
        ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS="5",
    )
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_STORE_URL=redis_url,
        ASYNC_ENDPOINTS_KEY_PREFIX="itest",
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_MAX_QUEUE_SIZE=0,
    )
    ae = AsyncEndpoints(app)

    @ae.post("/count", name="Count")
    def count(ctx: object) -> None:  # runs in the worker processes, not here
        raise AssertionError("the submitting process must not run jobs")

    with app.app_context():
        ids = [ae.submit("Count", {"n": n}).id for n in range(JOBS)]
    logs = [tmp_path / f"worker{i}.log" for i in range(PROCESSES)]
    workers = [start_worker(env, log) for log in logs]
    try:
        deadline = time.monotonic() + 180
        with app.app_context():
            pending = list(ids)
            while pending:
                assert time.monotonic() < deadline, (
                    f"{len(pending)} jobs never finished"
                )
                for proc, log in zip(workers, logs, strict=True):
                    assert proc.poll() is None, log.read_text()
                statuses = [(i, ae.get_job(i)) for i in pending]
                pending = [
                    i
                    for i, job in statuses
                    if job is None or not job.status.is_finished
                ]
                if pending:
                    time.sleep(0.2)
            jobs = [ae.get_job(i) for i in ids]
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=30)

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    runs = client.hgetall("itest-runs")
    pids = client.hgetall("itest-pids")
    client.close()
    assert all(job is not None and job.status is JobStatus.COMPLETED for job in jobs)
    assert [job.result["n"] for job in jobs] == [2 * n for n in range(JOBS)]  # type: ignore[union-attr,index]
    assert len(runs) == JOBS
    assert set(runs.values()) == {"1"}, "some job ran more than once"
    assert sum(int(v) for v in runs.values()) == JOBS
    # The work was shared: every process ran some of it.
    assert len(set(pids.values())) == PROCESSES, json.dumps(
        {p: list(pids.values()).count(p) for p in set(pids.values())}
    )


@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm-twice"])
def test_cli_worker_hands_jobs_back_on_sigterm(
    redis_url: str, tmp_path: Path, signals: int
) -> None:
    """One SIGTERM waits out the grace period, a second cuts it short; either
    way the running jobs are handed back at once, without counting an attempt."""
    env = worker_env(
        redis_url,
        AE_TEST_JOB_SECONDS="30",
        PYTHONUNBUFFERED="1",  # the worker's messages reach the log at once
        ASYNC_ENDPOINTS_MAX_CONCURRENCY="2",
        ASYNC_ENDPOINTS_CLAIM_TIMEOUT_SECONDS="600",
        ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS="2" if signals == 1 else "60",
    )
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_STORE_URL=redis_url,
        ASYNC_ENDPOINTS_KEY_PREFIX="itest",
        ASYNC_ENDPOINTS_START_WORKER=False,
    )
    ae = AsyncEndpoints(app)

    @ae.post("/count", name="Count")
    def count(ctx: object) -> None:
        raise AssertionError("the submitting process must not run jobs")

    with app.app_context():
        ids = [ae.submit("Count", {"n": n}).id for n in range(3)]
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    client = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 30
        while client.hlen("itest-runs") < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if signals == 2:
            # The second signal once the first has started the graceful stop.
            deadline = time.monotonic() + 10
            while "stopping:" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        client.close()
    assert took < (8 if signals == 1 else 5), f"stop took {took:.1f}s"
    with app.app_context():
        jobs = [ae.get_job(i) for i in ids]
    assert all(j is not None and j.status is JobStatus.QUEUED for j in jobs)
    assert all(j.retry_count == 0 for j in jobs if j)

"""Admission control across real processes on a real Redis: a concurrency limit
that no number of processes and threads exceeds, a rate limit on starts, and
claims that are fair between owners."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from flask import Flask

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus
from tests.integration.processes import start_worker, stop_workers, worker_env

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def submitter(redis_url: str) -> tuple[Flask, AsyncEndpoints]:
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_STORE_URL=redis_url,
        ASYNC_ENDPOINTS_KEY_PREFIX="itest",
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_MAX_QUEUE_SIZE=0,
    )
    ae = AsyncEndpoints(app)

    @ae.post("/capped", name="Capped", concurrency=2)
    def capped(ctx: AsyncContext) -> None:
        raise AssertionError("the submitting process runs no job")

    @ae.post("/count", name="Count")
    def count(ctx: AsyncContext) -> None:
        raise AssertionError("the submitting process runs no job")

    @ae.post("/rated", name="Rated", rate_limit="5/second")
    def rated(ctx: AsyncContext) -> None:
        raise AssertionError("the submitting process runs no job")

    return app, ae


def all_done(app: Flask, ae: AsyncEndpoints, ids: list[object]) -> bool:
    with app.app_context():
        jobs = [ae.get_job(i) for i in ids]  # type: ignore[arg-type]
    return all(j is not None and j.status is JobStatus.COMPLETED for j in jobs)


def test_limits_hold_across_processes(redis_url: str, tmp_path: Path) -> None:
    env = worker_env(
        redis_url,
        AE_TEST_CONCURRENCY="2",
        AE_TEST_RATE="5/second",
        ASYNC_ENDPOINTS_MAX_CONCURRENCY="4",
        ASYNC_ENDPOINTS_MAX_QUEUE_SIZE="0",
    )
    client = redis.Redis.from_url(redis_url)
    app, ae = submitter(redis_url)
    procs = [start_worker(env, tmp_path / f"worker-{n}.log") for n in range(3)]
    try:
        with app.app_context():
            capped = [ae.submit("Capped", {"n": n}).id for n in range(40)]
            rated = [ae.submit("Rated", {"n": n}).id for n in range(15)]
        deadline = time.monotonic() + 60
        while not all_done(app, ae, capped + rated) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all_done(app, ae, capped + rated), "the jobs did not all run"
    finally:
        stop_workers(procs)
    # 3 processes x 4 threads, yet never more than 2 Capped jobs at once.
    peaks = [int(p) for p in client.zrange("itest-capped-peaks", 0, -1)]
    assert max(peaks) <= 2, peaks
    assert max(peaks) == 2  # and the limit was used
    # At most 5 Rated starts (their startedAt, the claims) in any second.
    with app.app_context():
        starts = sorted(ae.get_job(i).started_at for i in rated)  # type: ignore[union-attr,type-var]
    assert len(starts) == 15
    for i, s in enumerate(starts):
        in_window = [t for t in starts[i:] if t < s + 1.0]
        assert len(in_window) <= 5, (s, in_window)
    # 15 starts at 5 a second take at least 2 s.
    assert starts[-1] - starts[0] >= 1.9


def test_claims_are_fair_between_owners_across_processes(
    redis_url: str, tmp_path: Path
) -> None:
    """alice's backlog of 300 jobs is running on 2 processes x 4 threads when bob
    submits 3: bob's start within the next few claims, not after alice's."""
    env = worker_env(
        redis_url,
        AE_TEST_JOB_SECONDS="0.01",
        ASYNC_ENDPOINTS_MAX_CONCURRENCY="4",
        ASYNC_ENDPOINTS_MAX_QUEUE_SIZE="0",
    )
    client = redis.Redis.from_url(redis_url)
    app, ae = submitter(redis_url)
    with app.app_context():
        alice = [ae.submit("Count", {"n": n}, owner="alice").id for n in range(300)]
    procs = [start_worker(env, tmp_path / f"worker-{n}.log") for n in range(2)]
    try:
        deadline = time.monotonic() + 30
        while client.hlen("itest-runs") < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.hlen("itest-runs") >= 20, "the workers did not start"
        with app.app_context():
            bob = [ae.submit("Count", {"n": n}, owner="bob").id for n in range(3)]
        deadline = time.monotonic() + 60
        while not all_done(app, ae, alice + bob) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all_done(app, ae, alice + bob), "the jobs did not all run"
    finally:
        stop_workers(procs)
    with app.app_context():
        jobs = [ae.get_job(i) for i in alice + bob]
    starts = sorted((j.started_at, j.owner) for j in jobs if j is not None)  # type: ignore[type-var]
    owners = [owner for _, owner in starts]
    last_bob = max(i for i, owner in enumerate(owners) if owner == "bob")
    backlog = owners[: last_bob + 1].count("alice")
    # At submission, about 20-30 of alice's had started; without fairness bob
    # would wait for the other ~270. Each process claims for its free threads,
    # so a few claims' worth may go first.
    assert backlog < 20 + 60, (backlog, owners[:120])
    assert owners.count("alice") - backlog > 150  # most of alice's ran after

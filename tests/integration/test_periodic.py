"""Periodic jobs across real processes on a real Redis: one job per tick, with
no scheduler process, and a killed process loses no tick."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from tests.integration.processes import start_worker, stop_workers, worker_env

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def tick_jobs(client: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall("itest-ticks").items()}


def test_three_processes_make_one_job_per_tick_and_survive_a_kill(
    redis_url: str, tmp_path: Path
) -> None:
    env = worker_env(
        redis_url,
        AE_TEST_PERIODIC_SECONDS="1",
        ASYNC_ENDPOINTS_MAX_CONCURRENCY="2",
        ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS="2",
    )
    client = redis.Redis.from_url(redis_url)
    procs = [start_worker(env, tmp_path / f"worker-{n}.log") for n in range(3)]
    try:
        # Once every process runs (each has seen the schedule), count 10 s.
        deadline = time.monotonic() + 30
        while not tick_jobs(client) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tick_jobs(client), "no tick ran"
        began = len(tick_jobs(client))
        time.sleep(5)
        procs[0].send_signal(signal.SIGKILL)  # the others go on ticking
        procs[0].wait(10)
        time.sleep(5)
        made = len(tick_jobs(client)) - began
    finally:
        stop_workers(procs)
    runs = tick_jobs(client)
    assert 9 <= made <= 11, f"{made} tick jobs in 10 s"
    # One job per tick: every job ran once (a tick that made two jobs would show
    # as two ids for one second, which the store's tick record prevents).
    assert all(n == 1 for n in runs.values()), runs
    ticks = client.hgetall("{itest}:ticks")
    assert list(ticks) == [b"tick"]

"""An app for integration tests: Redis store, handlers that count their runs.

Configured from the environment: ``AE_TEST_REDIS_URL`` (required),
``AE_TEST_JOB_SECONDS`` (how long each run sleeps, default 0), and any
``ASYNC_ENDPOINTS_*`` variable, which is copied into ``app.config``.
"""

from __future__ import annotations

import json
import os
import time

import redis
from flask import Flask

from async_endpoints import AsyncContext, AsyncEndpoints

REDIS_URL = os.environ["AE_TEST_REDIS_URL"]
JOB_SECONDS = float(os.environ.get("AE_TEST_JOB_SECONDS", "0"))

app = Flask(__name__)
app.config["ASYNC_ENDPOINTS_STORE_URL"] = REDIS_URL
app.config["ASYNC_ENDPOINTS_KEY_PREFIX"] = "itest"
for key, value in os.environ.items():
    if key.startswith("ASYNC_ENDPOINTS_"):
        app.config[key] = json.loads(value)
ae = AsyncEndpoints(app)
_counter = redis.Redis.from_url(REDIS_URL)


@ae.post("/count", name="Count")
def count(ctx: AsyncContext) -> dict[str, object]:
    """Record this run in Redis (runs per job id), optionally take a while."""
    _counter.hincrby("itest-runs", str(ctx.job_id), 1)
    _counter.hset("itest-pids", str(ctx.job_id), os.getpid())
    if JOB_SECONDS:
        time.sleep(JOB_SECONDS)
    return {"n": ctx.request["n"] * 2, "pid": os.getpid()}


STEP_SECONDS = float(os.environ.get("AE_TEST_STEP_SECONDS", "0.05"))


@ae.post("/steps", name="Steps")
def steps(ctx: AsyncContext) -> dict[str, object]:
    """Work in steps, stopping early when told to, as the README advises; record
    each run and, when stopped, why."""
    total = int(ctx.request["steps"])
    _counter.hincrby("itest-runs", str(ctx.job_id), 1)
    for step in range(total):
        if ctx.cancelled.wait(STEP_SECONDS):
            _counter.hset("itest-reasons", str(ctx.job_id), str(ctx.cancel_reason))
            return {"stopped_at_step": step}
        ctx.report_progress((step + 1) / total)
    return {"steps": total, "pid": os.getpid()}


FIRST_RUN_SECONDS = float(os.environ.get("AE_TEST_FIRST_RUN_SECONDS", "0"))


@ae.post("/first-slow", name="FirstSlow")
def first_slow(ctx: AsyncContext) -> dict[str, object]:
    """Its job's first run takes a while (long enough to be killed in); any run
    after it returns at once. Records runs per job id."""
    run = _counter.hincrby("itest-runs", str(ctx.job_id), 1)
    if run == 1 and FIRST_RUN_SECONDS:
        ctx.cancelled.wait(FIRST_RUN_SECONDS)
    return {"run": run, "pid": os.getpid()}


if os.environ.get("AE_TEST_PERIODIC_SECONDS"):
    from datetime import timedelta

    @ae.periodic(every=timedelta(seconds=float(os.environ["AE_TEST_PERIODIC_SECONDS"])))
    def tick(ctx: AsyncContext) -> dict[str, object]:
        """Record which process ran which tick's job."""
        _counter.hincrby("itest-ticks", str(ctx.job_id), 1)
        return {"pid": os.getpid()}


CAPPED = int(os.environ.get("AE_TEST_CONCURRENCY", "2"))


@ae.post("/capped", name="Capped", concurrency=CAPPED)
def capped(ctx: AsyncContext) -> dict[str, object]:
    """Record how many of its kind run at once (the highest count seen)."""
    now_running = _counter.incr("itest-capped-running")
    _counter.zadd("itest-capped-peaks", {str(now_running): now_running})
    try:
        time.sleep(0.05)
    finally:
        _counter.decr("itest-capped-running")
    return {"pid": os.getpid()}


@ae.post("/rated", name="Rated", rate_limit=os.environ.get("AE_TEST_RATE", "5/second"))
def rated(ctx: AsyncContext) -> dict[str, object]:
    """Record when each run started."""
    _counter.rpush("itest-rated-starts", repr(time.time()))
    return {"pid": os.getpid()}

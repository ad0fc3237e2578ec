"""Section 3, drain: ``drain_jobs`` no-op jobs queued, then workers on both cores.

Each (configuration, round) gets a fresh Redis database. The jobs are queued
first (not timed), then the workers are started; the harness polls the system's
own bookkeeping every 5 ms (a queue length, a sorted-set or database size: one or
two O(1) commands) and times from the first job taken to the last one finished.
A configuration that has not finished after ``drain_cap_seconds`` is stopped
there and its rate is the jobs finished in that time (counted exactly), which the
report marks. Startup of the worker processes is not part of the rate (it is
reported apart as ``startup_s``). The CPU time of the worker processes and of
redis-server over the same window, per job finished in it, is what one job costs
each (claim, run and record; the workers' polling of an empty queue at the end
included).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import Plan, log, log_path, median
from bench.servers import Managed, ProcessGroup, RedisServer
from bench.systems import (
    PREFIX,
    RQ,
    Adapter,
    Celery,
    Dramatiq,
    Huey,
    Ours,
    celery_worker,
    dramatiq_worker,
    huey_consumer,
    ours_worker,
    rq_worker,
)

_POLL = 0.005


@dataclass(frozen=True)
class Config:
    """One drain configuration: how to queue, and which workers to start."""

    key: str
    label: str
    adapter: Callable[[str], Adapter]
    workers: Callable[[str], list[list[str]]]


CONFIGS = [
    Config(
        "ours",
        "async-endpoints, 2 worker processes (CLI worker, 2 threads each)",
        Ours,
        lambda url: [ours_worker() for _ in range(2)],
    ),
    Config(
        "rq-fork",
        "RQ, 2 x `rq worker` (default forking Worker)",
        RQ,
        lambda url: [rq_worker(url, "rq.worker.Worker") for _ in range(2)],
    ),
    Config(
        "rq-simple",
        "RQ, 2 x SimpleWorker",
        RQ,
        lambda url: [rq_worker(url, "rq.worker.SimpleWorker") for _ in range(2)],
    ),
    Config(
        "celery-prefork",
        "Celery, prefork pool, concurrency 2",
        Celery,
        lambda url: [celery_worker("prefork", 2)],
    ),
    Config(
        "celery-threads",
        "Celery, 2 x threads pool, concurrency 2",
        Celery,
        lambda url: [celery_worker("threads", 2) for _ in range(2)],
    ),
    Config(
        "huey",
        "Huey, 1 consumer `-k thread -w 8`",
        Huey,
        lambda url: [huey_consumer(8)],
    ),
    Config(
        "dramatiq",
        "Dramatiq, `--processes 2 --threads 8`",
        Dramatiq,
        lambda url: [dramatiq_worker(2, 8)],
    ),
]


def run(server: RedisServer, plan: Plan) -> dict[str, Any]:
    """Drain every configuration ``plan.rounds`` times; return the rates."""
    results: dict[str, list[dict[str, Any]]] = {c.key: [] for c in CONFIGS}
    db = 0
    order = list(CONFIGS)
    for n in range(plan.rounds):
        for config in order:
            db += 1
            result = _drain(server, db, config, plan)
            results[config.key].append(result)
            log(
                f"drain: round {n + 1} {config.key}: {result['jobs_per_s']:.0f} jobs/s"
                f" ({result['done']} jobs in {result['seconds']:.2f} s"
                + (", capped)" if result["capped"] else ")")
            )
            server.client(db).flushdb()
        order = order[1:] + order[:1]
    rows = {}
    for config in CONFIGS:
        rounds = results[config.key]
        rows[config.key] = {
            "label": config.label,
            "jobs_per_s": median([r["jobs_per_s"] for r in rounds]),
            "capped": any(r["capped"] for r in rounds),
            "startup_s": median([r["startup_s"] for r in rounds]),
            "worker_cpu_us": median([r["worker_cpu_us"] for r in rounds]),
            "redis_cpu_us": median([r["redis_cpu_us"] for r in rounds]),
            "rounds": rounds,
        }
    return {
        "jobs": plan.drain_jobs,
        "cap_seconds": plan.drain_cap_seconds,
        "rounds": plan.rounds,
        "rows": rows,
    }


def _drain(server: RedisServer, db: int, config: Config, plan: Plan) -> dict[str, Any]:
    url = server.url(db)
    adapter = config.adapter(url)
    try:
        ids = adapter.submit_many(plan.drain_jobs)
        total = len(ids)
        if adapter.waiting() != total:
            raise RuntimeError(f"{config.key}: {adapter.waiting()} of {total} queued")
        env = {
            "BENCH_REDIS_URL": url,
            "BENCH_PREFIX": PREFIX,
            "BENCH_SYSTEM": "ours-redis",
        }
        with ProcessGroup() as group:
            spawned = time.monotonic()
            workers = [
                group.start(
                    Managed(
                        f"drain-{config.key}-{i}",
                        argv,
                        env=env,
                        log=log_path(f"drain-{config.key}-{i}"),
                    )
                )
                for i, argv in enumerate(config.workers(url))
            ]

            def cpu() -> tuple[float, float]:
                return (
                    sum(w.cpu_seconds() for w in workers),
                    server.process.cpu_seconds(),
                )

            first = None
            cpu_first = cpu_end = (0.0, 0.0)
            done_first = 0
            deadline = spawned + 60.0  # startup allowance
            capped = False
            remaining = ids
            while True:
                now = time.monotonic()
                if first is None:
                    waiting = adapter.waiting()
                    if waiting < total:
                        first = now
                        cpu_first = cpu()
                        done_first = total - waiting  # taken, at most
                        deadline = first + plan.drain_cap_seconds
                    elif now > deadline:
                        raise RuntimeError(f"{config.key}: no worker took a job")
                elif adapter.done_count(ids) >= total:
                    # The cheap count says all: confirm exactly (then only the rest).
                    remaining = adapter.missing(remaining)
                    if not remaining:
                        end = time.monotonic()
                        cpu_end = cpu()
                        break
                if first is not None and now > deadline:
                    end = now
                    cpu_end = cpu()
                    capped = True
                    break
                time.sleep(_POLL)
            done = total - len(adapter.missing(ids))
            capped = capped and done < total
        assert first is not None
        seconds = end - first
        in_window = max(1, done - done_first)
        return {
            "done": done,
            "seconds": seconds,
            "jobs_per_s": done / seconds,
            "capped": capped,
            "startup_s": first - spawned,
            "worker_cpu_us": 1e6 * (cpu_end[0] - cpu_first[0]) / in_window,
            "redis_cpu_us": 1e6 * (cpu_end[1] - cpu_first[1]) / in_window,
        }
    finally:
        adapter.close()

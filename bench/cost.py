"""Section 4, cost per job, noise-free: Redis round trips, commands and memory.

Each system gets a redis-server of its own and one worker process run under
``bench.counting``, which counts, at the client, every request redis-py writes
(one ``EVALSHA`` = one round trip, one pipeline = one round trip). The harness
queues jobs from this process, its redis-py patched the same way, counting its
submit calls apart from its own polling. Commands executed by Redis come from
``INFO commandstats`` deltas (commands that scripts run included), less the
harness's own polling and ``INFO`` calls, which it counted exactly.

Phases, on the same processes:

``idle``
    all the workers idle at once for ``idle_seconds``: Redis calls per second
    of an idle worker process.
``trickle``
    ``cost_trickle_jobs`` jobs one at a time, each waited for: the worst case,
    every job wakes an idle worker.
``burst``
    ``cost_burst_jobs`` jobs queued back to back, then drained: the amortised case.

Then ``MEMORY USAGE`` of every key left (the finished jobs, kept as each system
keeps them by default) divided by the jobs run, and the growth of ``used_memory``.
Workers: async-endpoints' CLI worker (2 handler threads), RQ's SimpleWorker,
Celery's solo pool, a Huey consumer with 8 worker threads, and one Dramatiq worker
with 8 threads run in the started process (``python -m bench.dramatiq_app``: what
each process of the ``dramatiq`` CLI runs). These are in-process pools, so that the
counting sees every call; RQ's forking Worker, Celery's prefork and the
``dramatiq`` CLI make the same calls per job from child processes.
"""

from __future__ import annotations

import collections
import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench import counting
from bench.common import LOGS, Plan, log, log_path
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
    dramatiq_inprocess_worker,
    huey_consumer,
    ours_worker,
    rq_worker,
)


@dataclass(frozen=True)
class System:
    """A system of this section: its adapter and its one counted worker."""

    key: str
    label: str
    adapter: Callable[[str], Adapter]
    worker: Callable[[str, str], list[str]]


SYSTEMS = [
    System(
        "ours", "async-endpoints (CLI worker)", Ours, lambda url, out: ours_worker(out)
    ),
    System(
        "rq",
        "RQ (SimpleWorker)",
        RQ,
        lambda url, out: rq_worker(url, "rq.worker.SimpleWorker", out),
    ),
    System(
        "celery",
        "Celery (solo pool)",
        Celery,
        lambda url, out: celery_worker("solo", 1, out),
    ),
    System(
        "huey",
        "Huey (1 consumer, `-k thread -w 8`)",
        Huey,
        lambda url, out: huey_consumer(8, out),
    ),
    System(
        "dramatiq",
        "Dramatiq (1 worker in-process, 8 threads)",
        Dramatiq,
        lambda url, out: dramatiq_inprocess_worker(8, out),
    ),
]


@dataclass
class _Snap:
    worker: counting.Bucket
    submitter: counting.Bucket
    harness: counting.Bucket
    commandstats: collections.Counter[str]
    used_memory: int
    at: float


_admin: dict[int, Any] = {}


def _commandstats(server: RedisServer) -> tuple[collections.Counter[str], int]:
    client = _admin.get(server.port)
    if client is None:
        client = _admin[server.port] = server.client()
    stats = client.info("commandstats")
    memory = client.info("memory")
    calls: collections.Counter[str] = collections.Counter()
    for name, value in stats.items():
        calls[name.removeprefix("cmdstat_").upper().replace("|", " ")] = int(
            value["calls"]
        )
    return calls, int(memory["used_memory"])


def _snap(key: str, server: RedisServer, count_file: Path) -> _Snap:
    time.sleep(0.15)  # the worker's counter file is rewritten every 50 ms
    worker = counting.read(count_file).get("system", counting.Bucket())
    mine = counting.snapshot()
    with counting.bucket(f"harness:{key}"):
        harness = counting.snapshot().get(f"harness:{key}", counting.Bucket())
        stats, used = _commandstats(server)
    return _Snap(
        worker=worker,
        submitter=mine.get(f"system:{key}", counting.Bucket()),
        harness=harness,
        commandstats=stats,
        used_memory=used,
        at=time.monotonic(),
    )


def _window(a: _Snap, b: _Snap, jobs: int) -> dict[str, Any]:
    """Per-job (or, with ``jobs=0``, per-second) costs between two snapshots."""
    worker = b.worker.minus(a.worker)
    submitter = b.submitter.minus(a.submitter)
    harness = b.harness.minus(a.harness)
    server = collections.Counter(b.commandstats)
    server.subtract(a.commandstats)
    # INFO's command-stats names are "info", "evalsha", "client setinfo"...; the
    # harness's own calls (polling, INFO) are taken out by name.
    for name, count in harness.commands.items():
        server[name] -= count
    server = +server
    seconds = b.at - a.at
    per = jobs if jobs else seconds
    return {
        "jobs": jobs,
        "seconds": round(seconds, 3),
        "round_trips": (worker.round_trips + submitter.round_trips) / per,
        "round_trips_submit": submitter.round_trips / per,
        "round_trips_worker": worker.round_trips / per,
        "trips_by_kind": {
            k: v / per for k, v in (worker.trips + submitter.trips).most_common()
        },
        "commands_executed": sum(server.values()) / per,
        "commands_by_name": {k: v / per for k, v in server.most_common()},
        "used_memory_growth": (b.used_memory - a.used_memory) / per,
    }


_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}"
)


def _memory(server: RedisServer, jobs: int) -> dict[str, Any]:
    """``MEMORY USAGE`` of every key, summed by key pattern, per job run."""
    client = server.client()
    try:
        keys = list(client.scan_iter(count=1000))
        sizes: list[int] = []
        for start in range(0, len(keys), 1000):
            with client.pipeline(transaction=False) as pipe:
                for key in keys[start : start + 1000]:
                    pipe.memory_usage(key, samples=0)
                sizes += [int(s or 0) for s in pipe.execute()]
    finally:
        client.close()
    groups: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for key, size in zip(keys, sizes, strict=True):
        pattern = _ID.sub("<id>", key.decode(errors="replace"))
        groups[pattern] += size
        counts[pattern] += 1
    return {
        "bytes_per_job": sum(sizes) / jobs,
        "keys": len(keys),
        "by_pattern": {
            p: {"keys": counts[p], "bytes": b, "bytes_per_job": b / jobs}
            for p, b in groups.most_common(12)
        },
    }


def _wait(
    predicate: Callable[[], bool], timeout: float, what: str, pause: float
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(pause)


def run(plan: Plan) -> dict[str, Any]:
    """Run the three phases for every system; return per-job costs."""
    counting.install(default_bucket="harness:other")
    results: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            servers = {s.key: stack.enter_context(RedisServer()) for s in SYSTEMS}
            group = stack.enter_context(ProcessGroup())
            files = {}
            workers: dict[str, Managed] = {}
            for system in SYSTEMS:
                server = servers[system.key]
                files[system.key] = LOGS / f"cost-{system.key}-counts.json"
                files[system.key].unlink(missing_ok=True)
                env = {
                    "BENCH_REDIS_URL": server.url(0),
                    "BENCH_PREFIX": PREFIX,
                    "BENCH_SYSTEM": "ours-redis",
                }
                workers[system.key] = group.start(
                    Managed(
                        f"cost-{system.key}",
                        system.worker(server.url(0), str(files[system.key])),
                        env=env,
                        log=log_path(f"cost-{system.key}-worker"),
                    )
                )
            adapters = {}
            for system in SYSTEMS:
                with counting.bucket(f"harness:{system.key}"):
                    adapters[system.key] = system.adapter(servers[system.key].url(0))
            for adapter in adapters.values():
                stack.callback(adapter.close)
            # Startup: connect, register, go idle, and pass the first sweep (at half
            # the sweep interval), whose first use of its script costs a SCRIPT LOAD.
            time.sleep(7.0)
            log(f"cost: idle window of {plan.idle_seconds:g} s")
            before = {
                s.key: _snap(s.key, servers[s.key], files[s.key]) for s in SYSTEMS
            }
            time.sleep(plan.idle_seconds)
            after = {s.key: _snap(s.key, servers[s.key], files[s.key]) for s in SYSTEMS}
            for system in SYSTEMS:
                results[system.key] = {
                    "label": system.label,
                    "idle": _window(before[system.key], after[system.key], 0),
                }
            for system in SYSTEMS:
                results[system.key].update(
                    _lifecycle(
                        system,
                        servers[system.key],
                        files[system.key],
                        adapters[system.key],
                        workers[system.key],
                        plan,
                    )
                )
    finally:
        for client in _admin.values():
            client.close()
        _admin.clear()
        counting.uninstall()
    return {
        "trickle_jobs": plan.cost_trickle_jobs,
        "burst_jobs": plan.cost_burst_jobs,
        "idle_seconds": plan.idle_seconds,
        "rows": results,
    }


def _lifecycle(
    system: System,
    server: RedisServer,
    count_file: Path,
    adapter: Adapter,
    worker: Managed,
    plan: Plan,
) -> dict[str, Any]:
    key = system.key
    start = _snap(key, server, count_file)
    for _ in range(plan.cost_trickle_jobs):
        with counting.bucket(f"system:{key}"):
            job_id = adapter.submit()
        with counting.bucket(f"harness:{key}"):
            _wait(partial(adapter.is_done, job_id), 10.0, f"{key} job {job_id}", 0.0005)
    middle = _snap(key, server, count_file)
    ids: list[str] = []
    # The worker is paused (SIGSTOP) while the burst is queued, so that it finds
    # the whole burst waiting, as in the drain section, then resumed.
    worker.pause()
    try:
        with counting.bucket(f"system:{key}"):
            for _ in range(plan.cost_burst_jobs):
                ids.append(adapter.submit())
    finally:
        worker.resume()
    with counting.bucket(f"harness:{key}"):
        remaining = [ids]

        def drained() -> bool:
            if adapter.waiting() > 0:
                return False
            remaining[0] = adapter.missing(remaining[0])
            return not remaining[0]

        _wait(drained, 120.0, f"{key} burst", 0.02)
    end = _snap(key, server, count_file)
    jobs = plan.cost_trickle_jobs + plan.cost_burst_jobs
    with counting.bucket(f"harness:{key}"):
        memory = _memory(server, jobs)
    trickle = _window(start, middle, plan.cost_trickle_jobs)
    burst = _window(middle, end, plan.cost_burst_jobs)
    log(
        f"cost: {key}: {trickle['round_trips']:.2f} round trips/job one at a time, "
        f"{burst['round_trips']:.2f} in a burst; {memory['bytes_per_job']:.0f} B/job"
    )
    return {
        "trickle": trickle,
        "burst": burst,
        "memory": memory,
        "used_memory_growth_per_job": (end.used_memory - start.used_memory) / jobs,
    }

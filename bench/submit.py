"""Section 1, HTTP submit: requests/s and latency of POSTing a job under load.

Every row is a gunicorn with 2 gthread workers (4 threads each) on the same
machine, loaded for ``submit_seconds`` at ``connections`` keep-alive connections
with a small JSON POST (wrk when installed, else ``bench.loadgen``). All rows run
at once on their own Redis database and are measured in turns, round after round
(the order rotates each round), so slow drift of the machine hits every row
alike. Between two measurements the harness waits until the row's processes and
Redis are idle again, so that a backlog of jobs left by one row (an in-process
worker still running them) cannot slow the next. The ratio of a row is the median
over rounds of its requests/s divided by the ceiling's in the same round.

Each run also notes the CPU time the row's processes (gunicorn master, workers and
their job threads) and redis-server spent, from the start of the load until the
row is idle again (so the jobs it accepted have run), per request served, and how
many cores other processes of the machine kept busy meanwhile (``/proc/stat``).
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict
from typing import Any

from bench.common import Plan, log, log_path, median
from bench.http_load import load
from bench.loadgen import LoadResult
from bench.servers import (
    Managed,
    ProcessGroup,
    RedisServer,
    gunicorn,
    machine_busy_seconds,
    settle,
    start_gunicorn,
)
from bench.systems import PREFIX

ROWS: dict[str, str] = {
    "ceiling": "bare Flask view returning 202 (ceiling)",
    "ours-redis": "async-endpoints, Redis",
    "ours-redis-enqueue": "async-endpoints, Redis, enqueue only (START_WORKER=False)",
    "ours-memory": "async-endpoints, in memory",
    "rq": "Flask + RQ enqueue",
    "celery": "Flask + Celery delay()",
    "huey": "Flask + Huey task call (enqueue)",
    "dramatiq": "Flask + Dramatiq send()",
}


def _backlog(server: RedisServer, db: int) -> int:
    client = server.client(db)
    try:
        tag = "{" + PREFIX + "}"
        return int(client.zcard(f"{tag}:ready")) + int(client.zcard(f"{tag}:claimed"))
    finally:
        client.close()


def run(server: RedisServer, plan: Plan) -> dict[str, Any]:
    """Measure every row; return medians, ratios and each round's numbers."""
    dbs = {system: db for db, system in enumerate(ROWS, start=1)}
    rounds: dict[str, list[LoadResult]] = {system: [] for system in ROWS}
    others: dict[str, list[float]] = {system: [] for system in ROWS}
    cpu_us: dict[str, list[float]] = {system: [] for system in ROWS}
    waits: list[float] = []
    with ProcessGroup() as group:
        servers: dict[str, tuple[Managed, int]] = {}
        for system, db in dbs.items():
            proc, port = gunicorn(
                system,
                {"BENCH_REDIS_URL": server.url(db), "BENCH_PREFIX": PREFIX},
                log=log_path(f"submit-{system}"),
            )
            start_gunicorn(group, proc, port)
            servers[system] = (proc, port)
        for system, (_, port) in servers.items():
            log(f"submit: warm-up {system}")
            load(port, connections=plan.connections, duration=plan.warmup_seconds)
        order = list(ROWS)
        for n in range(plan.rounds):
            for system in order:
                proc, port = servers[system]
                waits.append(_quiet(server, proc, system, dbs[system]))
                ours = [p for p, _ in servers.values()] + [server.process]
                before = _cpu(ours)
                row_before = proc.cpu_seconds() + server.process.cpu_seconds()
                result = load(
                    port, connections=plan.connections, duration=plan.submit_seconds
                )
                others[system].append(_other_cores(before, _cpu(ours)))
                # The CPU a row spends includes running the jobs it accepted: wait
                # for its backlog (an in-process worker still at work) first.
                waits.append(_quiet(server, proc, system, dbs[system]))
                row_cpu = proc.cpu_seconds() + server.process.cpu_seconds() - row_before
                rounds[system].append(result)
                cpu_us[system].append(row_cpu / max(1, result.requests) * 1e6)
                log(
                    f"submit: round {n + 1} {system}: {result.rps:.0f} req/s, "
                    f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
                    + (f", {result.non_2xx} non-2xx" if result.non_2xx else "")
                    + (f", {result.errors} socket errors" if result.errors else "")
                )
            order = order[1:] + order[:1]
        http_job = _job_memory(server, dbs["ours-redis"])
        for system, (proc, _) in servers.items():
            _quiet(server, proc, system, dbs[system])
    return _summary(rounds, others, cpu_us, waits, http_job, plan)


def _cpu(ours: list[Managed]) -> tuple[float, float, float, float]:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        time.monotonic(),
        machine_busy_seconds(),
        sum(p.cpu_seconds() for p in ours),
        children.ru_utime + children.ru_stime,
    )


def _other_cores(
    before: tuple[float, float, float, float], after: tuple[float, float, float, float]
) -> float:
    """Cores kept busy by processes that are not ours (nor the load tool)."""
    wall, busy, ours, tool = (b - a for a, b in zip(before, after, strict=True))
    return max(0.0, (busy - ours - tool) / wall)


def _quiet(server: RedisServer, proc: Managed, system: str, db: int) -> float:
    waited = 0.0
    if system.startswith("ours-redis"):
        for _ in range(240):  # at most 2 minutes
            if system == "ours-redis-enqueue" or _backlog(server, db) == 0:
                break
            waited += settle([proc], timeout=0.5)
    return waited + settle([proc, server.process])


def _job_memory(server: RedisServer, db: int, sample: int = 200) -> dict[str, Any]:
    """MEMORY USAGE of finished jobs that came in over HTTP (headers stored)."""
    client = server.client(db)
    try:
        keys = []
        for key in client.scan_iter(match="{" + PREFIX + "}:job:*", count=1000):
            keys.append(key)
            if len(keys) >= sample:
                break
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
                pipe.hlen(key)
                pipe.hget(key, "h")
            replies = pipe.execute()
        sizes = [int(replies[i]) for i in range(0, len(replies), 3)]
        fields = [int(replies[i + 1]) for i in range(0, len(replies), 3)]
        headers = replies[2] if replies else None
        encodings = sorted({client.object("encoding", key).decode() for key in keys})
        return {
            "sampled_jobs": len(keys),
            "encodings": encodings,
            "memory_usage_bytes_median": median(sizes),
            "fields_median": median(fields),
            "stored_headers_example": headers.decode() if headers else None,
        }
    finally:
        client.close()


def _summary(
    rounds: dict[str, list[LoadResult]],
    others: dict[str, list[float]],
    cpu_us: dict[str, list[float]],
    waits: list[float],
    http_job: dict[str, Any],
    plan: Plan,
) -> dict[str, Any]:
    ceiling = rounds["ceiling"]
    rows = {}
    for system, results in rounds.items():
        ratios = [r.rps / c.rps for r, c in zip(results, ceiling, strict=True)]
        cpu_ratios = [
            c / r for r, c in zip(cpu_us[system], cpu_us["ceiling"], strict=True)
        ]
        rows[system] = {
            "label": ROWS[system],
            "rps": median([r.rps for r in results]),
            "p50_ms": median([r.p50_ms for r in results]),
            "p99_ms": median([r.p99_ms for r in results]),
            "ratio": median(ratios),
            "non_2xx": sum(r.non_2xx for r in results),
            "errors": sum(r.errors for r in results),
            "other_cores": median(others[system]),
            "cpu_us_per_request": median(cpu_us[system]),
            "cpu_ratio": median(cpu_ratios),
            "rounds": [
                {**asdict(r), "other_cores": o, "cpu_us_per_request": c}
                for r, o, c in zip(results, others[system], cpu_us[system], strict=True)
            ],
        }
    return {
        "tool": ceiling[0].tool if ceiling else None,
        "connections": plan.connections,
        "seconds": plan.submit_seconds,
        "rounds": plan.rounds,
        "rows": rows,
        "settle_seconds_total": sum(waits),
        "http_job_memory": http_job,
    }

"""Section 5, end to end: jobs accepted over HTTP *and run*, per second, on 2 cores.

Each row is a whole deployment on this machine: gunicorn with 2 gthread workers x 4
threads (``bench/gunicorn_conf.py``) serving ``POST /incr``, plus the system's own
workers, all sharing the same cores and one redis-server:

``ceiling``
    the bare Flask view answering 202 (runs no job): the base of the ratio.
``ours``
    async-endpoints on Redis with its in-process worker (the default deployment:
    the two gunicorn workers run the jobs too).
``ours-cli``
    async-endpoints with ``START_WORKER = False`` in gunicorn and 2 CLI worker
    processes (``flask async-endpoints worker``): laid out like the peers, for
    comparison; the targets use ``ours``.
``huey``
    the Huey view plus one consumer, ``-k thread -w 8`` (blocking pickup).
``dramatiq``
    the Dramatiq view plus ``dramatiq --processes 2 --threads 8``.
``celery``
    the Celery view plus one worker with the threads pool, concurrency 8.
``rq``
    the RQ view plus 2 SimpleWorkers.

Every job is one Redis ``INCR`` of ``bench.tasks.COUNTER_KEY``. wrk (or the bundled
generator) POSTs for ``e2e_seconds`` at ``connections`` connections; the clock
starts with the load and stops when the counter reaches its final value, i.e. when
every accepted job has run (polled every 5 ms after the load; the row is done when
the counter is at least the number of 202s the load tool received, has not moved
for 0.3 s and the system's own bookkeeping shows no job waiting or running). A
row not done ``e2e_cap_seconds`` after the load is cut there and marked capped.
The counter may exceed the 202s received by at most ``connections``: requests the
server accepted while the load tool was stopping (it does not count replies in
flight at its deadline); more than that, or fewer jobs than 202s, fails the check.

Reported per row, medians over rounds (rows measured in turns, order rotated each
round, every row idle before its turn): jobs accepted-and-run per second, its
ratio to the ceiling's 202/s in the same round, the 202/s during the load, how long
the backlog took to run after the load, and the server CPU per job: CPU time of
the row's gunicorn processes, its workers and redis-server, from the start of the
load until every job ran, divided by the jobs.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bench.common import Plan, log, log_path, median
from bench.http_load import load
from bench.servers import (
    Managed,
    ProcessGroup,
    RedisServer,
    gunicorn,
    machine_busy_seconds,
    settle,
    start_gunicorn,
)
from bench.systems import (
    PREFIX,
    celery_worker,
    dramatiq_worker,
    huey_consumer,
    ours_worker,
    rq_worker,
)
from bench.tasks import COUNTER_KEY

if TYPE_CHECKING:
    import redis

_POLL = 0.005
_STABLE = 0.3
_PATH = "/incr"


def _ours_pending(client: redis.Redis) -> int:
    tag = "{" + PREFIX + "}"
    with client.pipeline(transaction=False) as pipe:
        pipe.zcard(f"{tag}:ready")
        pipe.zcard(f"{tag}:claimed")
        return sum(int(n) for n in pipe.execute())


def _huey_pending(client: redis.Redis) -> int:
    from bench.huey_app import QUEUE_KEY

    return int(client.llen(QUEUE_KEY))


def _dramatiq_pending(client: redis.Redis) -> int:
    from bench.dramatiq_app import MESSAGES_KEY

    # Every message not yet acknowledged: waiting, fetched or running.
    return int(client.hlen(MESSAGES_KEY))


def _celery_pending(client: redis.Redis) -> int:
    # The queue, plus messages a worker reserved and has not acknowledged yet.
    with client.pipeline(transaction=False) as pipe:
        pipe.llen("celery")
        pipe.hlen("unacked")
        return sum(int(n) for n in pipe.execute())


def _rq_pending(client: redis.Redis) -> int:
    with client.pipeline(transaction=False) as pipe:
        pipe.llen("rq:queue:default")
        pipe.zcard("rq:wip:default")
        return sum(int(n) for n in pipe.execute())


@dataclass(frozen=True)
class Row:
    """One deployment: the app gunicorn serves, its workers, its bookkeeping."""

    key: str
    label: str
    app: str
    workers: Callable[[str], list[list[str]]]
    pending: Callable[[redis.Redis], int] | None
    """Jobs waiting or running (``None``: the row runs no job)."""


ROWS = [
    Row(
        "ceiling",
        "bare Flask view returning 202 (runs no job; the ratio's base)",
        "ceiling",
        lambda url: [],
        None,
    ),
    Row(
        "ours",
        "async-endpoints, Redis, in-process worker (default deployment)",
        "ours-redis",
        lambda url: [],
        _ours_pending,
    ),
    Row(
        "ours-cli",
        "async-endpoints, Redis, enqueue only + 2 CLI worker processes",
        "ours-redis-enqueue",
        lambda url: [ours_worker() for _ in range(2)],
        _ours_pending,
    ),
    Row(
        "huey",
        "Flask + Huey, 1 consumer `-k thread -w 8`",
        "huey",
        lambda url: [huey_consumer(8)],
        _huey_pending,
    ),
    Row(
        "dramatiq",
        "Flask + Dramatiq, `--processes 2 --threads 8`",
        "dramatiq",
        lambda url: [dramatiq_worker(2, 8)],
        _dramatiq_pending,
    ),
    Row(
        "celery",
        "Flask + Celery, threads pool, concurrency 8",
        "celery",
        lambda url: [celery_worker("threads", 8)],
        _celery_pending,
    ),
    Row(
        "rq",
        "Flask + RQ, 2 x SimpleWorker",
        "rq",
        lambda url: [rq_worker(url, "rq.worker.SimpleWorker") for _ in range(2)],
        _rq_pending,
    ),
]


@dataclass
class _Deployment:
    row: Row
    db: int
    gunicorn: Managed
    port: int
    workers: list[Managed]
    client: redis.Redis

    def processes(self, server: RedisServer) -> list[Managed]:
        return [self.gunicorn, *self.workers, server.process]


def run(server: RedisServer, plan: Plan) -> dict[str, Any]:
    """Measure every row ``plan.rounds`` times; return medians and each round."""
    results: dict[str, list[dict[str, Any]]] = {row.key: [] for row in ROWS}
    deployments: dict[str, _Deployment] = {}
    try:
        with ProcessGroup() as group:
            for db, row in enumerate(ROWS, start=1):
                url = server.url(db)
                env = {"BENCH_REDIS_URL": url, "BENCH_PREFIX": PREFIX}
                proc, port = gunicorn(row.app, env, log=log_path(f"e2e-{row.key}"))
                # The CLI worker's app (``bench.apps:create_app``) reads the system.
                env = {**env, "BENCH_SYSTEM": "ours-redis"}
                start_gunicorn(group, proc, port)
                workers = [
                    group.start(
                        Managed(
                            f"e2e-{row.key}-worker-{n}",
                            argv,
                            env=env,
                            log=log_path(f"e2e-{row.key}-worker-{n}"),
                        )
                    )
                    for n, argv in enumerate(row.workers(url))
                ]
                deployments[row.key] = _Deployment(
                    row, db, proc, port, workers, server.client(db)
                )
            everything = [p for d in deployments.values() for p in d.workers] + [
                d.gunicorn for d in deployments.values()
            ]
            everything.append(server.process)
            for deployment in deployments.values():
                log(f"e2e: warm-up {deployment.row.key}")
                _warm_up(server, deployment, plan)
            order = list(ROWS)
            for n in range(plan.rounds):
                for row in order:
                    result = _measure(server, deployments[row.key], everything, plan)
                    results[row.key].append(result)
                    log(
                        f"e2e: round {n + 1} {row.key}: "
                        f"{result['jobs_per_s']:.0f} jobs/s run "
                        f"({result['ran']} run, {result['accepted']} 202s at "
                        f"{result['accept_rps']:.0f}/s; backlog ran "
                        f"{result['after_load_s']:.2f} s after the load"
                        + (", capped" if result["capped"] else "")
                        + (", CHECK FAILED" if not result["check_ok"] else "")
                        + f"), {result['cpu_us_per_job']:.0f} µs CPU/job"
                    )
                order = order[1:] + order[:1]
    finally:
        for deployment in deployments.values():
            deployment.client.close()
    return _summary(results, plan)


def _warm_up(server: RedisServer, deployment: _Deployment, plan: Plan) -> None:
    load(
        deployment.port,
        path=_PATH,
        connections=plan.connections,
        duration=plan.warmup_seconds,
    )
    _quiet(server, deployment, plan)


def _quiet(server: RedisServer, deployment: _Deployment, plan: Plan) -> float:
    """Wait until the row has no job left and its processes are idle."""
    start = time.monotonic()
    pending = deployment.row.pending
    if pending is not None:
        deadline = start + plan.e2e_cap_seconds
        while pending(deployment.client) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    settle(deployment.processes(server))
    return time.monotonic() - start


def _counter(client: redis.Redis) -> int:
    return int(client.get(COUNTER_KEY) or 0)


def _usage(everything: list[Managed]) -> tuple[float, float, float, float]:
    """Wall clock, machine busy time, our servers' CPU, the harness's and its
    children's (the load tool) CPU."""
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        time.monotonic(),
        machine_busy_seconds(),
        sum(p.cpu_seconds() for p in everything),
        self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime,
    )


def _measure(
    server: RedisServer,
    deployment: _Deployment,
    everything: list[Managed],
    plan: Plan,
) -> dict[str, Any]:
    row = deployment.row
    client = deployment.client
    waited = _quiet(server, deployment, plan)
    mine = deployment.processes(server)
    base = _counter(client)
    cpu_before = sum(p.cpu_seconds() for p in mine)
    usage_before = _usage(everything)
    started = usage_before[0]
    result = load(
        deployment.port,
        path=_PATH,
        connections=plan.connections,
        duration=plan.e2e_seconds,
    )
    load_end = time.monotonic()
    accepted = result.requests - result.non_2xx
    capped = False
    if row.pending is None:
        ran, end = 0, load_end
    else:
        ran = _counter(client) - base
        end = time.monotonic()  # when the counter was first seen at ``ran``
        deadline = load_end + plan.e2e_cap_seconds
        while True:
            now = time.monotonic()
            value = _counter(client) - base
            if value != ran:
                ran, end = value, now
            elif ran >= accepted and now - end >= _STABLE and row.pending(client) == 0:
                break
            if now > deadline:
                capped, end = True, now
                break
            time.sleep(_POLL)
    cpu = sum(p.cpu_seconds() for p in mine) - cpu_before
    usage_after = _usage(everything)
    wall, busy, ours, tool = (
        b - a for a, b in zip(usage_before, usage_after, strict=True)
    )
    seconds = end - started
    jobs = ran if row.pending is not None else result.requests
    return {
        "accepted": accepted,
        "ran": ran,
        "extra": ran - accepted,
        "check_ok": row.pending is None
        or (not capped and accepted <= ran <= accepted + plan.connections),
        "capped": capped,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds if row.pending is not None else result.rps,
        "accept_rps": result.rps,
        "after_load_s": max(0.0, end - load_end),
        "cpu_us_per_job": cpu / max(1, jobs) * 1e6,
        "other_cores": max(0.0, (busy - ours - tool) / wall),
        "settle_s": waited,
        "load": asdict(result),
    }


def _summary(results: dict[str, list[dict[str, Any]]], plan: Plan) -> dict[str, Any]:
    ceiling = results["ceiling"]
    rows: dict[str, Any] = {}
    for row in ROWS:
        rounds = results[row.key]
        ratios = [
            r["jobs_per_s"] / c["jobs_per_s"]
            for r, c in zip(rounds, ceiling, strict=True)
        ]
        cpu_ratios = [
            c["cpu_us_per_job"] / r["cpu_us_per_job"]
            for r, c in zip(rounds, ceiling, strict=True)
        ]
        rows[row.key] = {
            "label": row.label,
            "runs_jobs": row.pending is not None,
            "jobs_per_s": median([r["jobs_per_s"] for r in rounds]),
            "ratio": median(ratios),
            "accept_rps": median([r["accept_rps"] for r in rounds]),
            "after_load_s": median([r["after_load_s"] for r in rounds]),
            "cpu_us_per_job": median([r["cpu_us_per_job"] for r in rounds]),
            "cpu_ratio": median(cpu_ratios),
            "other_cores": median([r["other_cores"] for r in rounds]),
            "capped": any(r["capped"] for r in rounds),
            "check_ok": all(r["check_ok"] for r in rounds),
            "errors": sum(r["load"]["non_2xx"] + r["load"]["errors"] for r in rounds),
            "rounds": rounds,
        }
    # async-endpoints over the better of Huey and Dramatiq, round by round.
    versus = [
        o["jobs_per_s"] / max(h["jobs_per_s"], d["jobs_per_s"])
        for o, h, d in zip(
            results["ours"], results["huey"], results["dramatiq"], strict=True
        )
    ]
    return {
        "tool": ceiling[0]["load"]["tool"] if ceiling else None,
        "connections": plan.connections,
        "seconds": plan.e2e_seconds,
        "cap_seconds": plan.e2e_cap_seconds,
        "rounds": plan.rounds,
        "rows": rows,
        "ours_vs_best_of_huey_dramatiq": median(versus),
    }

"""Section 2, pickup latency: idle workers, one job at a time.

Each configuration is an HTTP app under gunicorn (as in section 1) plus its
workers, all on their own Redis database and all running at once; the rounds visit
them in turn. For each job the harness POSTs ``/stamp`` on a keep-alive connection
and notes when the ``202`` has arrived; the job's code returns ``time.time()`` at its
start; a Redis keyspace-notification subscriber notes when the job's record first
reads as finished (the check runs the moment the notification for the job's key
arrives, so it sees what any client would see then). Between jobs the harness
waits ``pickup_gap_seconds`` so every worker is idle (blocked on Redis) again.

Latencies are measured from the 202's arrival at the client. A negative value
means the job started (or even finished) before the client had read its 202: the
worker was woken by the enqueue itself while the response was still on its way.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.common import Plan, log, log_path, median, percentile
from bench.servers import (
    HOST,
    Managed,
    ProcessGroup,
    RedisServer,
    gunicorn,
    start_gunicorn,
)
from bench.systems import (
    PREFIX,
    celery_worker,
    dramatiq_worker,
    huey_consumer,
    rq_worker,
)

if TYPE_CHECKING:
    import redis


@dataclass(frozen=True)
class Config:
    """One pickup configuration: an app and the workers that run its jobs."""

    key: str
    label: str
    app: str
    workers: list[list[str]]
    key_pattern: str
    """A glob matching the keys of finished jobs (keyspace notifications)."""
    done: Callable[[redis.Redis, str], bool]
    job_key: Callable[[str], str]
    """The key that tells a job finished, from its id."""


def _ours_done(client: redis.Redis, key: str) -> bool:
    return client.hget(key, "s") == b"Completed"


def _rq_done(client: redis.Redis, key: str) -> bool:
    return client.hget(key, "status") == b"finished"


def _celery_done(client: redis.Redis, key: str) -> bool:
    raw = client.get(key)
    return raw is not None and json.loads(raw).get("status") == "SUCCESS"


def _exists(client: redis.Redis, key: str) -> bool:
    return bool(client.exists(key))


def _prefixed(prefix: str) -> Callable[[str], str]:
    return lambda job_id: prefix + job_id


def _dramatiq_key(job_id: str) -> str:
    from bench.dramatiq_app import app

    return app.result_key("stamp", job_id)


def configs(server: RedisServer) -> list[Config]:
    """Every configuration, each on its own database (set later, by position)."""
    from bench.huey_app import RESULT_PREFIX

    ours_prefix = "{" + PREFIX + "}:job:"
    return [
        Config(
            "ours",
            "async-endpoints (in-process worker, 2 gunicorn workers)",
            "ours-redis",
            [],
            ours_prefix + "*",
            _ours_done,
            _prefixed(ours_prefix),
        ),
        Config(
            "rq-fork",
            "RQ, 2 x `rq worker` (default forking Worker)",
            "rq",
            [rq_worker("{url}", "rq.worker.Worker") for _ in range(2)],
            "rq:job:*",
            _rq_done,
            _prefixed("rq:job:"),
        ),
        Config(
            "rq-simple",
            "RQ, 2 x SimpleWorker",
            "rq",
            [rq_worker("{url}", "rq.worker.SimpleWorker") for _ in range(2)],
            "rq:job:*",
            _rq_done,
            _prefixed("rq:job:"),
        ),
        Config(
            "celery-prefork",
            "Celery, prefork pool, concurrency 2",
            "celery",
            [celery_worker("prefork", 2)],
            "celery-task-meta-*",
            _celery_done,
            _prefixed("celery-task-meta-"),
        ),
        Config(
            "celery-threads",
            "Celery, 2 x threads pool, concurrency 2",
            "celery",
            [celery_worker("threads", 2) for _ in range(2)],
            "celery-task-meta-*",
            _celery_done,
            _prefixed("celery-task-meta-"),
        ),
        Config(
            "huey",
            "Huey, 1 consumer `-k thread -w 8` (blocking: BRPOP wake-up)",
            "huey",
            [huey_consumer(8)],
            RESULT_PREFIX + "*",
            _exists,
            _prefixed(RESULT_PREFIX),
        ),
        Config(
            "dramatiq",
            "Dramatiq, `--processes 2 --threads 8` (polling consumers)",
            "dramatiq",
            [dramatiq_worker(2, 8)],
            "[0-9a-f]" * 32,  # the results backend's MD5 keys
            _exists,
            _dramatiq_key,
        ),
    ]


@dataclass
class _Watcher:
    """Keyspace notifications -> the first time each job reads as finished."""

    server: RedisServer
    patterns: dict[int, tuple[str, Callable[[redis.Redis, str], bool]]]
    finished: dict[tuple[int, str], float] = field(default_factory=dict)
    """When each finished job's key was first seen finished, by (db, key)."""
    cond: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        clients = {db: self.server.client(db) for db in self.patterns}
        pubsub = self.server.client(0).pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True
        )
        pubsub.psubscribe(
            *(f"__keyspace@{db}__:{p}" for db, (p, _) in self.patterns.items())
        )
        try:
            while not self.stop.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message is None:
                    continue
                arrived = time.time()
                channel = message["channel"].decode()
                head, _, key = channel.partition("__:")
                db = int(head.rsplit("@", 1)[1])
                _, done = self.patterns[db]
                if (db, key) in self.finished:
                    continue
                if done(clients[db], key):
                    with self.cond:
                        self.finished[(db, key)] = arrived
                        self.cond.notify_all()
        finally:
            pubsub.close()
            for client in clients.values():
                client.close()

    def wait(self, db: int, key: str, timeout: float) -> float | None:
        """When the job of ``key`` was first seen finished, or ``None`` after
        ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while (db, key) not in self.finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.finished.pop((db, key))


def _started_at(
    config: Config,
    server: RedisServer,
    db: int,
    job_id: str,
    conn: http.client.HTTPConnection,
) -> float:
    """The ``time.time()`` the job's code returned: its start."""
    if config.app == "ours-redis":
        conn.request("GET", f"/jobs/{job_id}")
        body = json.loads(conn.getresponse().read())
        return float(body["result"]["t"])
    if config.app == "huey":
        from bench.huey_app import make_huey

        huey = make_huey(server.url(db)).huey
        try:
            return float(huey.get(job_id, peek=True))
        finally:
            huey.storage.pool.disconnect()
    if config.app == "dramatiq":
        from bench.dramatiq_app import make_dramatiq

        dramatiq = make_dramatiq(server.url(db))
        try:
            return float(dramatiq.result("stamp", job_id))
        finally:
            dramatiq.backend.client.close()
            dramatiq.broker.close()
    client = server.client(db)
    try:
        if config.app == "rq":
            from rq.job import Job

            value: Any = Job.fetch(job_id, connection=client).return_value()
            return float(value)
        raw = client.get(f"celery-task-meta-{job_id}")
        assert raw is not None
        return float(json.loads(raw)["result"])
    finally:
        client.close()


def run(server: RedisServer, plan: Plan) -> dict[str, Any]:
    """Measure every configuration; return p50/p99 per configuration."""
    admin = server.client()
    # K: keyspace channel; g, h, $, l: generic, hash, string and list commands
    # (a Dramatiq result is a list).
    admin.config_set("notify-keyspace-events", "Kgh$l")
    samples: dict[str, dict[str, list[list[float]]]] = {}
    all_configs = configs(server)
    dbs = {c.key: db for db, c in enumerate(all_configs, start=1)}
    watcher = _Watcher(
        server, {dbs[c.key]: (c.key_pattern, c.done) for c in all_configs}
    )
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        with ProcessGroup() as group:
            ports = {}
            for config in all_configs:
                db = dbs[config.key]
                url = server.url(db)
                env = {"BENCH_REDIS_URL": url, "BENCH_PREFIX": PREFIX}
                proc, port = gunicorn(
                    config.app, env, log=log_path(f"pickup-{config.key}-gunicorn")
                )
                start_gunicorn(group, proc, port)
                ports[config.key] = port
                for n, argv in enumerate(config.workers):
                    argv = [a.replace("{url}", url) for a in argv]
                    group.start(
                        Managed(
                            f"{config.key}-worker-{n}",
                            argv,
                            env=env,
                            log=log_path(f"pickup-{config.key}-worker-{n}"),
                        )
                    )
                samples[config.key] = {
                    "start": [],
                    "visible": [],
                    "start_from_send": [],
                    "lost": [],
                }
            time.sleep(3.0)  # workers connect and go idle (Celery needs the longest)
            for config in all_configs:  # one warm-up job each
                _measure(
                    config,
                    server,
                    dbs[config.key],
                    ports[config.key],
                    watcher,
                    3,
                    plan.pickup_gap_seconds,
                )
            for n in range(plan.rounds):
                for config in all_configs:
                    got = _measure(
                        config,
                        server,
                        dbs[config.key],
                        ports[config.key],
                        watcher,
                        plan.pickup_jobs,
                        plan.pickup_gap_seconds,
                    )
                    for name, values in got.items():
                        samples[config.key][name].append(values)
                    log(
                        f"pickup: round {n + 1} {config.key}: start p50 "
                        f"{median(got['start']):.2f} ms, visible p50 "
                        f"{median(got['visible']):.2f} ms"
                    )
    finally:
        watcher.stop.set()
        thread.join(timeout=5)
        admin.config_set("notify-keyspace-events", "")
        admin.close()
    return _summary(all_configs, samples, plan)


def _measure(
    config: Config,
    server: RedisServer,
    db: int,
    port: int,
    watcher: _Watcher,
    jobs: int,
    gap: float,
) -> dict[str, list[float]]:
    """Send ``jobs`` jobs one at a time; latencies in ms from the 202."""
    start: list[float] = []
    visible: list[float] = []
    from_send: list[float] = []
    lost = 0
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    body = json.dumps({"data": "hello"})
    headers = {"Content-Type": "application/json"}
    try:
        for _ in range(jobs):
            time.sleep(gap)
            sent = time.time()
            conn.request("POST", "/stamp", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            accepted = time.time()
            if response.status != 202:
                raise RuntimeError(f"{config.key}: POST answered {response.status}")
            job_id = json.loads(payload)["id"]
            done = watcher.wait(db, config.job_key(job_id), timeout=10.0)
            if done is None:
                lost += 1
                continue
            began = _started_at(config, server, db, job_id, conn)
            start.append((began - accepted) * 1000)
            visible.append((done - accepted) * 1000)
            from_send.append((began - sent) * 1000)
    finally:
        conn.close()
    return {
        "start": start,
        "visible": visible,
        "start_from_send": from_send,
        "lost": [float(lost)],
    }


def _summary(
    all_configs: list[Config],
    samples: dict[str, dict[str, list[list[float]]]],
    plan: Plan,
) -> dict[str, Any]:
    rows = {}
    for config in all_configs:
        per_round = samples[config.key]
        row: dict[str, Any] = {"label": config.label}
        for name in ("start", "visible", "start_from_send"):
            rounds = per_round[name]
            row[f"{name}_p50_ms"] = median([percentile(r, 50) for r in rounds])
            row[f"{name}_p99_ms"] = median([percentile(r, 99) for r in rounds])
        row["lost"] = int(sum(sum(r) for r in per_round["lost"]))
        row["jobs"] = sum(len(r) for r in per_round["start"])
        rows[config.key] = row
    return {
        "jobs_per_round": plan.pickup_jobs,
        "rounds": plan.rounds,
        "gap_seconds": plan.pickup_gap_seconds,
        "rows": rows,
    }

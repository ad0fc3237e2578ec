"""The Flask apps under test, one per system, chosen by ``BENCH_SYSTEM``.

Every app answers ``POST /submit`` (queue a no-op job), ``POST /stamp`` (queue a
job that returns its start time) and ``POST /incr`` (queue a job that does one Redis
``INCR`` of ``bench.tasks.COUNTER_KEY``) with ``202`` and a small JSON body:

``ceiling``
    a bare Flask view: parse the JSON body, answer 202 with an id; queues nothing.
``ours-redis`` / ``ours-memory``
    async-endpoints on Redis / in memory, with the in-process worker running the
    jobs (the default deployment).
``ours-redis-enqueue``
    async-endpoints on Redis with ``ASYNC_ENDPOINTS_START_WORKER = False``: only
    the enqueue, like the RQ and Celery rows.
``rq``
    ``Queue.enqueue`` of RQ.
``celery``
    ``Task.delay`` of Celery (Redis broker and result backend).
``huey``
    calling a Huey task (``bench.huey_app``: Redis storage, results kept).
``dramatiq``
    ``Actor.send`` of Dramatiq (``bench.dramatiq_app``: Redis broker, results kept).

``BENCH_REDIS_URL`` names the Redis database; ``BENCH_PREFIX`` the key prefix of
async-endpoints.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any, Final

from flask import Flask, request

SYSTEMS: Final = (
    "ceiling",
    "ours-redis",
    "ours-redis-enqueue",
    "ours-memory",
    "rq",
    "celery",
    "huey",
    "dramatiq",
)


def ours_config(
    system: str, redis_url: str | None = None, start_worker: bool | None = None
) -> dict[str, Any]:
    """The ``ASYNC_ENDPOINTS_*`` configuration of an async-endpoints system."""
    url = "memory://"
    if system != "ours-memory":
        url = redis_url or os.environ["BENCH_REDIS_URL"]
    return {
        "ASYNC_ENDPOINTS_STORE_URL": url,
        "ASYNC_ENDPOINTS_KEY_PREFIX": os.environ.get("BENCH_PREFIX", "bench"),
        # No 429s: every row must accept every request of the run.
        "ASYNC_ENDPOINTS_MAX_QUEUE_SIZE": 0,
        "ASYNC_ENDPOINTS_START_WORKER": (
            system != "ours-redis-enqueue" if start_worker is None else start_worker
        ),
        "ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS": 5,
    }


def create_app(
    system: str | None = None,
    redis_url: str | None = None,
    *,
    start_worker: bool | None = None,
) -> Flask:
    """The app of ``system`` (default: ``BENCH_SYSTEM``) on ``redis_url`` (default:
    ``BENCH_REDIS_URL``); ``start_worker`` overrides the system's own choice."""
    system = system or os.environ["BENCH_SYSTEM"]
    app = Flask(f"bench-{system}")
    if system == "ceiling":
        _ceiling(app)
    elif system.startswith("ours-"):
        _ours(app, system, redis_url, start_worker)
    elif system == "rq":
        _rq(app, redis_url or os.environ["BENCH_REDIS_URL"])
    elif system == "celery":
        _celery(app)
    elif system == "huey":
        _huey(app)
    elif system == "dramatiq":
        _dramatiq(app)
    else:
        raise ValueError(f"unknown BENCH_SYSTEM {system!r}; one of {SYSTEMS}")
    return app


def _ceiling(app: Flask) -> None:
    @app.post("/submit")
    @app.post("/stamp")
    @app.post("/incr")
    def submit() -> tuple[dict[str, Any], int]:
        request.get_json()
        return {"id": str(uuid.uuid4()), "status": "Queued"}, 202


def _ours(
    app: Flask, system: str, redis_url: str | None, start_worker: bool | None
) -> None:
    from async_endpoints import AsyncContext, AsyncEndpoints
    from bench import tasks

    app.config.update(ours_config(system, redis_url, start_worker))
    ae = AsyncEndpoints(app)

    @ae.post("/submit", name="noop")
    def noop(ctx: AsyncContext) -> None:
        return None

    @ae.post("/stamp", name="stamp")
    def stamp(ctx: AsyncContext) -> dict[str, float]:
        return {"t": time.time()}

    @ae.post("/incr", name="incr")
    def incr(ctx: AsyncContext) -> None:
        tasks.incr()


def _rq(app: Flask, redis_url: str) -> None:
    import redis
    from rq import Queue

    from bench import tasks

    queue = Queue("default", connection=redis.Redis.from_url(redis_url))

    @app.post("/submit")
    def submit() -> tuple[dict[str, Any], int]:
        job = queue.enqueue(tasks.noop, request.get_json())
        return {"id": job.id, "status": "Queued"}, 202

    @app.post("/stamp")
    def stamp() -> tuple[dict[str, Any], int]:
        job = queue.enqueue(tasks.stamp, request.get_json())
        return {"id": job.id, "status": "Queued"}, 202

    @app.post("/incr")
    def incr() -> tuple[dict[str, Any], int]:
        job = queue.enqueue(tasks.incr, request.get_json())
        return {"id": job.id, "status": "Queued"}, 202


def _celery(app: Flask) -> None:
    from bench import celery_app

    @app.post("/submit")
    def submit() -> tuple[dict[str, Any], int]:
        result = celery_app.noop.delay(request.get_json())
        return {"id": result.id, "status": "Queued"}, 202

    @app.post("/stamp")
    def stamp() -> tuple[dict[str, Any], int]:
        result = celery_app.stamp.delay(request.get_json())
        return {"id": result.id, "status": "Queued"}, 202

    @app.post("/incr")
    def incr() -> tuple[dict[str, Any], int]:
        result = celery_app.incr.delay(request.get_json())
        return {"id": result.id, "status": "Queued"}, 202


def _huey(app: Flask) -> None:
    from bench.huey_app import app as huey

    @app.post("/submit")
    def submit() -> tuple[dict[str, Any], int]:
        result = huey.noop(request.get_json())
        return {"id": result.id, "status": "Queued"}, 202

    @app.post("/stamp")
    def stamp() -> tuple[dict[str, Any], int]:
        result = huey.stamp(request.get_json())
        return {"id": result.id, "status": "Queued"}, 202

    @app.post("/incr")
    def incr() -> tuple[dict[str, Any], int]:
        result = huey.incr(request.get_json())
        return {"id": result.id, "status": "Queued"}, 202


def _dramatiq(app: Flask) -> None:
    from bench.dramatiq_app import app as dramatiq

    @app.post("/submit")
    def submit() -> tuple[dict[str, Any], int]:
        message = dramatiq.noop.send(request.get_json())
        return {"id": message.message_id, "status": "Queued"}, 202

    @app.post("/stamp")
    def stamp() -> tuple[dict[str, Any], int]:
        message = dramatiq.stamp.send(request.get_json())
        return {"id": message.message_id, "status": "Queued"}, 202

    @app.post("/incr")
    def incr() -> tuple[dict[str, Any], int]:
        message = dramatiq.incr.send(request.get_json())
        return {"id": message.message_id, "status": "Queued"}, 202

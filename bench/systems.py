"""The systems under test seen from Python: queue jobs, see them finish, and the
commands that start their workers.

An adapter talks to one Redis database. It reads each system's own bookkeeping to
tell how far a run is (async-endpoints: its ``ready``/``claimed`` sorted sets; RQ:
its queue list and finished registry; Celery, Huey and Dramatiq: their queue list
and result keys).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

import redis

from bench.common import PAYLOAD
from bench.servers import HOST

PREFIX = "bench"
"""The async-endpoints key prefix of every run (``{bench}:...`` keys)."""


class Adapter(Protocol):
    """One system on one Redis database, from the harness's side."""

    name: str
    client: redis.Redis

    def submit(self) -> str:
        """Queue one no-op job the way the app's view does; return its id."""
        ...

    def submit_many(self, count: int) -> list[str]:
        """Queue ``count`` no-op jobs as fast as the system allows (not timed)."""
        ...

    def waiting(self) -> int:
        """How many jobs wait, not yet taken by a worker."""
        ...

    def done_count(self, submitted: list[str]) -> int:
        """How many of ``submitted`` have finished (cheap; may lag a little)."""
        ...

    def missing(self, submitted: list[str]) -> list[str]:
        """The ids of ``submitted`` that have not finished (exact)."""
        ...

    def is_done(self, job_id: str) -> bool:
        """Whether the job has finished."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


class Ours:
    """async-endpoints on Redis (the ``ours-redis`` app's configuration)."""

    name = "async-endpoints"

    def __init__(self, url: str) -> None:
        from bench.apps import create_app

        self.client = _client(url)
        self.app = create_app("ours-redis-enqueue", url)
        self.ext: Any = self.app.extensions["async_endpoints"]
        self._context: AbstractContextManager[Any] = self.app.app_context()
        self._context.__enter__()
        tag = "{" + PREFIX + "}"
        self._ready = f"{tag}:ready"
        self._claimed = f"{tag}:claimed"
        self._job = f"{tag}:job:"

    def submit(self) -> str:
        return str(self.ext.submit("noop", PAYLOAD).id)

    def submit_many(self, count: int) -> list[str]:
        return [self.submit() for _ in range(count)]

    def waiting(self) -> int:
        return int(self.client.zcard(self._ready))

    def pending(self) -> int:
        """Jobs waiting or running."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zcard(self._ready)
            pipe.zcard(self._claimed)
            ready, claimed = pipe.execute()
        return int(ready) + int(claimed)

    def done_count(self, submitted: list[str]) -> int:
        return len(submitted) - self.pending()

    def missing(self, submitted: list[str]) -> list[str]:
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in submitted:
                pipe.hget(self._job + job_id, "s")
            states = pipe.execute()
        return [j for j, s in zip(submitted, states, strict=True) if s != b"Completed"]

    def is_done(self, job_id: str) -> bool:
        return self.client.hget(self._job + job_id, "s") == b"Completed"

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self.ext.shutdown()
        self.client.close()


class RQ:
    """RQ's ``Queue.enqueue`` on the ``default`` queue."""

    name = "RQ"

    def __init__(self, url: str) -> None:
        from rq import Queue

        self.client = _client(url)
        self.queue = Queue("default", connection=self.client)

    def submit(self) -> str:
        from bench import tasks

        return str(self.queue.enqueue(tasks.noop, PAYLOAD).id)

    def submit_many(self, count: int) -> list[str]:
        from bench import tasks

        ids: list[str] = []
        while len(ids) < count:
            with self.client.pipeline() as pipe:
                for _ in range(min(500, count - len(ids))):
                    job = self.queue.enqueue(tasks.noop, PAYLOAD, pipeline=pipe)
                    ids.append(job.id)
                pipe.execute()
        return ids

    def waiting(self) -> int:
        return int(self.client.llen("rq:queue:default"))

    def done_count(self, submitted: list[str]) -> int:
        return int(self.client.zcard("rq:finished:default"))

    def missing(self, submitted: list[str]) -> list[str]:
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in submitted:
                pipe.hget(f"rq:job:{job_id}", "status")
            states = pipe.execute()
        return [j for j, s in zip(submitted, states, strict=True) if s != b"finished"]

    def is_done(self, job_id: str) -> bool:
        return self.client.hget(f"rq:job:{job_id}", "status") == b"finished"

    def close(self) -> None:
        self.client.close()


class Celery:
    """Celery's ``Task.delay`` with Redis as broker and result backend."""

    name = "Celery"

    def __init__(self, url: str) -> None:
        from bench.celery_app import make_app

        self.client = _client(url)
        self.app = make_app(url)
        self.task = self.app.tasks["bench.noop"]
        self._baseline: int | None = None

    def submit(self) -> str:
        return str(self.task.delay(PAYLOAD).id)

    def submit_many(self, count: int) -> list[str]:
        ids = []
        with self.app.producer_or_acquire() as producer:
            for _ in range(count):
                ids.append(str(self.task.apply_async((PAYLOAD,), producer=producer).id))
        self._baseline = int(self.client.dbsize())
        return ids

    def waiting(self) -> int:
        return int(self.client.llen("celery"))

    def done_count(self, submitted: list[str]) -> int:
        # One result key per finished task; the other keys (bindings, the queue
        # list, unacked bookkeeping) are few: counted once before the workers.
        baseline = self._baseline if self._baseline is not None else 0
        return max(0, int(self.client.dbsize()) - baseline)

    def missing(self, submitted: list[str]) -> list[str]:
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in submitted:
                pipe.exists(f"celery-task-meta-{job_id}")
            found = pipe.execute()
        return [j for j, f in zip(submitted, found, strict=True) if not f]

    def is_done(self, job_id: str) -> bool:
        return bool(self.client.exists(f"celery-task-meta-{job_id}"))

    def close(self) -> None:
        self.app.close()
        self.client.close()


class Huey:
    """Calling a Huey task (``bench.huey_app``: results kept, one key each)."""

    name = "Huey"

    def __init__(self, url: str) -> None:
        from bench.huey_app import make_huey

        self.client = _client(url)
        self.app = make_huey(url)
        self._fixed = 0

    def submit(self) -> str:
        return str(self.app.noop(PAYLOAD).id)

    def submit_many(self, count: int) -> list[str]:
        ids = [self.submit() for _ in range(count)]
        # Keys other than results and the queue (none expected), counted once.
        self._fixed = int(self.client.dbsize()) - int(self._queue_exists())
        return ids

    def _queue_exists(self) -> int:
        from bench.huey_app import QUEUE_KEY

        return int(self.client.exists(QUEUE_KEY))

    def waiting(self) -> int:
        from bench.huey_app import QUEUE_KEY

        return int(self.client.llen(QUEUE_KEY))

    def done_count(self, submitted: list[str]) -> int:
        # One result key per finished job: the database's size less the queue.
        from bench.huey_app import QUEUE_KEY

        with self.client.pipeline(transaction=False) as pipe:
            pipe.dbsize()
            pipe.exists(QUEUE_KEY)
            size, queue = pipe.execute()
        return max(0, int(size) - int(queue) - self._fixed)

    def _key(self, job_id: str) -> str:
        from bench.huey_app import RESULT_PREFIX

        return RESULT_PREFIX + job_id

    def missing(self, submitted: list[str]) -> list[str]:
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in submitted:
                pipe.exists(self._key(job_id))
            found = pipe.execute()
        return [j for j, f in zip(submitted, found, strict=True) if not f]

    def is_done(self, job_id: str) -> bool:
        return bool(self.client.exists(self._key(job_id)))

    def close(self) -> None:
        self.app.huey.storage.pool.disconnect()
        self.client.close()


class Dramatiq:
    """Dramatiq's ``Actor.send`` (``bench.dramatiq_app``: Redis broker, results)."""

    name = "Dramatiq"

    def __init__(self, url: str) -> None:
        from bench.dramatiq_app import make_dramatiq

        self.client = _client(url)
        self.app = make_dramatiq(url)

    def submit(self) -> str:
        return str(self.app.noop.send(PAYLOAD).message_id)

    def submit_many(self, count: int) -> list[str]:
        return [self.submit() for _ in range(count)]

    def waiting(self) -> int:
        from bench.dramatiq_app import QUEUE_KEY

        return int(self.client.llen(QUEUE_KEY))

    def done_count(self, submitted: list[str]) -> int:
        # One result key per finished job; the broker's own keys are the queue, the
        # messages hash, the heartbeats and one ack set per busy consumer: the
        # count may run a few ahead while jobs run (``missing`` is exact).
        from bench.dramatiq_app import FIXED_KEYS

        with self.client.pipeline(transaction=False) as pipe:
            pipe.dbsize()
            pipe.exists(*FIXED_KEYS)
            size, fixed = pipe.execute()
        return max(0, int(size) - int(fixed))

    def missing(self, submitted: list[str]) -> list[str]:
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in submitted:
                pipe.exists(self.app.result_key("noop", job_id))
            found = pipe.execute()
        return [j for j, f in zip(submitted, found, strict=True) if not f]

    def is_done(self, job_id: str) -> bool:
        return bool(self.client.exists(self.app.result_key("noop", job_id)))

    def close(self) -> None:
        self.app.broker.close()
        self.app.backend.client.close()
        self.client.close()


def ours_worker(counting: str | None = None) -> list[str]:
    """argv of one async-endpoints worker process (the CLI worker)."""
    return [
        *_python(counting, "flask"),
        *("--app", "bench.apps:create_app", "async-endpoints", "worker"),
    ]


def rq_worker(url: str, worker_class: str, counting: str | None = None) -> list[str]:
    """argv of one ``rq worker`` of ``worker_class`` on ``url``."""
    return [
        *_python(counting, "rq.cli"),
        *("worker", "-u", url, "-w", worker_class, "--logging_level", "WARNING"),
        *("-n", f"bench-{uuid.uuid4().hex[:8]}"),
    ]


def celery_worker(
    pool: str, concurrency: int, counting: str | None = None
) -> list[str]:
    """argv of one ``celery worker`` with ``pool`` (URL from ``BENCH_REDIS_URL``)."""
    return [
        *_python(counting, "celery"),
        *("-A", "bench.celery_app", "worker", "-P", pool, "-c", str(concurrency)),
        *("-n", f"bench-{uuid.uuid4().hex[:8]}@%h", "--loglevel", "WARNING"),
    ]


def huey_consumer(workers: int = 8, counting: str | None = None) -> list[str]:
    """argv of one Huey consumer with ``workers`` threads (URL from
    ``BENCH_REDIS_URL``; ``-q``: warnings only, no per-task log lines)."""
    return [
        *_python(counting, "huey.bin.huey_consumer"),
        *("bench.huey_app.huey", "-k", "thread", "-w", str(workers), "-q"),
    ]


def dramatiq_worker(processes: int = 2, threads: int = 8) -> list[str]:
    """argv of the ``dramatiq`` CLI: ``processes`` worker processes of ``threads``
    threads (URL from ``BENCH_REDIS_URL``)."""
    return [
        *_python(None, "dramatiq"),
        *("bench.dramatiq_app", "--processes", str(processes)),
        *("--threads", str(threads)),
    ]


def dramatiq_inprocess_worker(
    threads: int = 8, counting: str | None = None
) -> list[str]:
    """argv of one Dramatiq worker running in the started process itself (what one
    CLI worker process runs), so that :mod:`bench.counting` sees its calls."""
    return [*_python(counting, "bench.dramatiq_app"), "--threads", str(threads)]


def _python(counting: str | None, module: str) -> Iterator[str]:
    yield sys.executable
    if counting is not None:
        yield from ("-m", "bench.counting", counting)
    yield from ("-m", module)


def url_of(port: int, db: int) -> str:
    """The URL of database ``db`` on our redis-server."""
    return f"redis://{HOST}:{port}/{db}"

"""The Huey instance of the Huey rows: Redis storage, results kept, blocking pickup.

The consumer loads ``bench.huey_app.huey`` (``huey_consumer bench.huey_app.huey -k
thread -w 8``), whose URL comes from ``BENCH_REDIS_URL``; the harness makes
instances for other databases with :func:`make_huey`.

Choices, each what a user who needs a status API would make:

``RedisExpireHuey``
    the Redis storage that keeps each result under its own key with a time to live
    (a day here, as long as async-endpoints and Celery keep a finished job), and
    whose reads do not consume the result (a status endpoint can read it again).
    Plain ``RedisHuey`` keeps results in one hash without expiry and pops them on
    the first read.
``blocking=True``
    every worker thread waits in ``BRPOP`` (1 s timeout), so an enqueue wakes a
    worker at once: Huey's fast-pickup ("notify") mode, and the storage's default.
    With ``blocking=False`` workers poll with a growing sleep (0.1 s up to 10 s).
``store_none=True``
    keep a result even when the task returns ``None`` (the no-op does), or a
    finished no-op would leave no trace to report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Final

from huey import RedisExpireHuey

from bench import tasks

NAME: Final = "bench"
QUEUE_KEY: Final = f"huey.redis.{NAME}"
"""The list the jobs wait in."""
RESULT_PREFIX: Final = f"huey.r.{NAME}."
"""The prefix of each kept result's key (``huey.r.bench.<task id>``)."""
RESULT_SECONDS: Final = 86400


@dataclass(frozen=True)
class HueyApp:
    """A Huey instance and its tasks (calling a task enqueues a job)."""

    huey: RedisExpireHuey
    noop: Any
    stamp: Any
    incr: Any


def make_huey(url: str) -> HueyApp:
    """A Huey on ``url`` with the tasks ``noop``, ``stamp`` and ``incr``."""
    huey = RedisExpireHuey(
        NAME,
        url=url,
        blocking=True,
        store_none=True,
        expire_time=RESULT_SECONDS,
    )

    def noop(payload: Any = None) -> None:
        tasks.noop(payload)

    def stamp(payload: Any = None) -> float:
        return tasks.stamp(payload)

    def incr(payload: Any = None) -> None:
        tasks.incr(payload)

    return HueyApp(
        huey,
        huey.task(name="noop")(noop),
        huey.task(name="stamp")(stamp),
        huey.task(name="incr")(incr),
    )


app = make_huey(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
huey = app.huey
"""What the consumer loads."""

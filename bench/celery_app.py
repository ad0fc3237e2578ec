"""The Celery app of the Celery rows: Redis as broker and result backend.

Workers load ``bench.celery_app`` (its ``app`` reads the URL from
``BENCH_REDIS_URL``); the harness makes apps for other databases with
:func:`make_app`. Everything else is Celery's default, as a user who picks
``celery[redis]`` would have it.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from bench import tasks


def make_app(url: str) -> Celery:
    """A Celery app on ``url`` with the tasks ``bench.noop``, ``bench.stamp`` and
    ``bench.incr``."""
    celery = Celery("bench", broker=url, backend=url)
    celery.conf.broker_connection_retry_on_startup = True

    def noop(payload: Any = None) -> None:
        tasks.noop(payload)

    def stamp(payload: Any = None) -> float:
        return tasks.stamp(payload)

    def incr(payload: Any = None) -> None:
        tasks.incr(payload)

    celery.task(name="bench.noop", shared=False)(noop)
    celery.task(name="bench.stamp", shared=False)(stamp)
    celery.task(name="bench.incr", shared=False)(incr)

    return celery


app = make_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
noop = app.tasks["bench.noop"]
stamp = app.tasks["bench.stamp"]
incr = app.tasks["bench.incr"]

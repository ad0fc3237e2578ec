"""The jobs every system runs: a no-op, one that reports when it started, and one
Redis ``INCR`` (the end-to-end section's job: the counter it bumps checks the run)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Final

import redis

COUNTER_KEY: Final = "bench:e2e:counter"
"""The key every ``incr`` job increments, in the database of ``BENCH_REDIS_URL``."""

_client: redis.Redis | None = None
_client_lock = threading.Lock()


def noop(payload: Any = None) -> None:
    """Do nothing: the job whose cost is the queue's own."""


def stamp(payload: Any = None) -> float:
    """Return the time (epoch seconds) at which the job's code started."""
    return time.time()


def counter_client() -> redis.Redis:
    """This process's client of ``BENCH_REDIS_URL`` (made once, shared by threads;
    redis-py's pool starts afresh in a forked child)."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _client


def incr(payload: Any = None) -> None:
    """One Redis ``INCR`` of :data:`COUNTER_KEY`: the cheapest job that leaves a
    trace, so that a run can be checked (counter == jobs accepted)."""
    counter_client().incr(COUNTER_KEY)

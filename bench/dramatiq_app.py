"""The Dramatiq broker of the Dramatiq rows: Redis broker, results kept in Redis.

Workers load this module (``dramatiq bench.dramatiq_app --processes 2 --threads 8``),
whose broker reads the URL from ``BENCH_REDIS_URL`` and is made the global one; the
harness makes brokers for other databases with :func:`make_dramatiq`.

The ``Results`` middleware with a ``RedisBackend`` keeps each actor's return value
(``store_results=True``; ``None`` included) for the middleware's default ten
minutes, under an MD5 key of ``dramatiq-results:<queue>:<actor>:<message id>``
(the backend's default key format). Everything else is Dramatiq's default: its
default middleware, and the Redis broker's consumers, which poll with a growing
sleep (5 ms up to the worker timeout, 1 s) while their queue is empty.

``python -m bench.dramatiq_app [--threads N]`` runs one worker in this process (the
threads of one CLI worker process without the CLI's forked children): the cost
section counts its Redis calls, which it cannot do in a forked child.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Final

import dramatiq
from dramatiq import Message, Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench import tasks

QUEUE: Final = "default"
QUEUE_KEY: Final = f"dramatiq:{QUEUE}"
"""The list of waiting message ids."""
MESSAGES_KEY: Final = f"{QUEUE_KEY}.msgs"
"""The hash of messages not yet acknowledged (waiting or running)."""
FIXED_KEYS: Final = (QUEUE_KEY, MESSAGES_KEY, "dramatiq:__heartbeats__")
"""The broker's keys that are not results (besides one ack set per consumer)."""


@dataclass(frozen=True)
class DramatiqApp:
    """A broker, its results backend and its actors (``.send()`` enqueues)."""

    broker: RedisBroker
    backend: RedisBackend
    noop: Any
    stamp: Any
    incr: Any

    def result_key(self, actor_name: str, message_id: str) -> str:
        """The Redis key under which the backend keeps a message's result."""
        message: Message[Any] = Message(
            queue_name=QUEUE,
            actor_name=actor_name,
            args=(),
            kwargs={},
            options={},
            message_id=message_id,
        )
        return str(self.backend.build_message_key(message))

    def result(self, actor_name: str, message_id: str) -> Any:
        """The kept result of a message (raises if there is none)."""
        message: Message[Any] = Message(
            queue_name=QUEUE,
            actor_name=actor_name,
            args=(),
            kwargs={},
            options={},
            message_id=message_id,
        )
        return self.backend.get_result(message)


def make_dramatiq(url: str) -> DramatiqApp:
    """A Redis broker on ``url`` with results, and the actors ``noop``, ``stamp``
    and ``incr``."""
    broker = RedisBroker(url=url)  # type: ignore[no-untyped-call]
    backend = RedisBackend(url=url)
    broker.add_middleware(Results(backend=backend))  # type: ignore[no-untyped-call]

    def noop(payload: Any = None) -> None:
        tasks.noop(payload)

    def stamp(payload: Any = None) -> float:
        return tasks.stamp(payload)

    def incr(payload: Any = None) -> None:
        tasks.incr(payload)

    def declare(fn: Any, name: str) -> Any:
        decorate = dramatiq.actor(
            actor_name=name, queue_name=QUEUE, broker=broker, store_results=True
        )
        return decorate(fn)

    return DramatiqApp(
        broker,
        backend,
        declare(noop, "noop"),
        declare(stamp, "stamp"),
        declare(incr, "incr"),
    )


app = make_dramatiq(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(app.broker)


def main() -> None:
    """Run one in-process worker until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.dramatiq_app")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    app.broker.emit_after("process_boot")
    worker = Worker(app.broker, worker_threads=args.threads)
    worker.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        worker.stop(timeout=5000)
        app.broker.close()


if __name__ == "__main__":
    main()

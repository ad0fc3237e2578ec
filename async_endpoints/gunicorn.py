"""gunicorn server hooks: start the worker after the fork, hand jobs back on exit.

In ``gunicorn.conf.py``::

    from async_endpoints.gunicorn import post_fork, worker_exit

gunicorn is not imported here; the hooks only use the ``pid`` of its objects.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class _Server(Protocol):
    """What the hooks need of gunicorn's arbiter (nothing, so far)."""


class _GunicornWorker(Protocol):
    pid: int


_marked: int | None = None
_several_workers = False


def marked_pid() -> int | None:
    """The pid of the process that :func:`post_fork` ran in, if any."""
    return _marked


def warn_if_memory_store(store: object) -> None:
    """Log once per process that ``memory://`` does not span gunicorn workers."""
    from async_endpoints.stores.memory import MemoryStore

    if _several_workers and isinstance(store, MemoryStore):
        logger.warning(
            "async-endpoints uses memory:// under gunicorn with several workers: "
            "each worker process has its own jobs, so a status request that lands "
            "on another worker answers 404. Set ASYNC_ENDPOINTS_STORE_URL to a "
            "redis:// URL."
        )


def post_fork(server: _Server, worker: _GunicornWorker) -> None:
    """gunicorn ``post_fork`` hook: start the job worker in the new process.

    With ``preload_app = True`` the extensions exist already and their workers
    start now. Without it the app is imported later in this process; the mark set
    here makes ``init_app`` start the worker at once there. Either way the worker
    runs before the first request, so a process that gets no HTTP traffic still
    runs due jobs.
    """
    global _marked, _several_workers
    _marked = os.getpid()
    cfg: Any = getattr(server, "cfg", None)
    _several_workers = int(getattr(cfg, "workers", 1) or 1) > 1
    from async_endpoints.state import INSTANCES

    for ext in list(INSTANCES):
        ext._start_workers()


def worker_exit(server: _Server, worker: _GunicornWorker) -> None:
    """gunicorn ``worker_exit`` hook: stop claiming, let running jobs finish
    within ``ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS``, hand the rest back.

    gunicorn also calls it in the master for a worker that died; it then does
    nothing, since that process's jobs are recovered when their leases expire.
    """
    if worker.pid != os.getpid():
        return
    from async_endpoints.state import INSTANCES

    for ext in list(INSTANCES):
        ext.shutdown()

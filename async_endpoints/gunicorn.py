"""gunicorn server hooks: start the worker after the fork, hand jobs back on exit.

In ``gunicorn.conf.py``::

    from async_endpoints.gunicorn import post_fork, worker_exit

gunicorn is not imported here; the hooks only use the ``pid`` of its objects.
"""

from __future__ import annotations

import os
from typing import Protocol


class _Server(Protocol):
    """What the hooks need of gunicorn's arbiter (nothing, so far)."""


class _GunicornWorker(Protocol):
    pid: int


_marked: int | None = None


def marked_pid() -> int | None:
    """The pid of the process that :func:`post_fork` ran in, if any."""
    return _marked


def post_fork(server: _Server, worker: _GunicornWorker) -> None:
    """gunicorn ``post_fork`` hook: start the job worker in the new process.

    With ``preload_app = True`` the extensions exist already and their workers
    start now. Without it the app is imported later in this process; the mark set
    here makes ``init_app`` start the worker at once there. Either way the worker
    runs before the first request, so a process that gets no HTTP traffic still
    runs due jobs.
    """
    global _marked
    _marked = os.getpid()
    from async_endpoints.extension import _INSTANCES

    for ext in list(_INSTANCES):
        ext._start_workers()


def worker_exit(server: _Server, worker: _GunicornWorker) -> None:
    """gunicorn ``worker_exit`` hook: stop claiming, let running jobs finish
    within ``ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS``, hand the rest back.

    gunicorn also calls it in the master for a worker that died; it then does
    nothing, since that process's jobs are recovered when their leases expire.
    """
    if worker.pid != os.getpid():
        return
    from async_endpoints.extension import _INSTANCES

    for ext in list(_INSTANCES):
        ext.shutdown()

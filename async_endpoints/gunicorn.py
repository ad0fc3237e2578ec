"""gunicorn server hooks: start the worker after the fork, hand jobs back on exit,
and recover a dead worker's jobs at once.

In ``gunicorn.conf.py``::

    from async_endpoints.gunicorn import child_exit, post_fork, worker_exit

gunicorn is not imported here; the hooks only use the ``pid`` of its objects.

How the master knows a dead worker's jobs: each worker process, once its job
worker runs on a Redis store given by URL, writes a small file (store URL, key
prefix, the name its claims carry, its retry settings) in a private directory
named after the master's pid. ``child_exit`` reads and removes the file of the
child that exited, opens the store, fails that name's claims (``WorkerDied``,
retried as usual) and closes the store again: the master keeps no connection
between two deaths and hands none to the workers it forks.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Final, Protocol

logger = logging.getLogger(__name__)


class _Server(Protocol):
    """What the hooks need of gunicorn's arbiter (nothing, so far)."""


class _GunicornWorker(Protocol):
    pid: int


_HANDOFF_SETTINGS: Final = (
    "RETRY_DELAY_BASE_SECONDS",
    "RETRY_MAX_DELAY_SECONDS",
    "RETRY_JITTER_SECONDS",
    "RESULT_TTL_SECONDS",
    "CLAIM_TIMEOUT_SECONDS",
    "MAX_RETRIES",
)
_HOOK_SOCKET_TIMEOUT: Final = 2.0
"""The master's Redis timeouts inside ``child_exit``: gunicorn waits for it."""

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


def _registry(master_pid: int, uid: int) -> Path:
    """The directory where the workers (running as ``uid``) of one master
    describe themselves."""
    return Path(tempfile.gettempdir()) / f"async-endpoints-{uid}" / str(master_pid)


def _private(path: Path, uid: int) -> bool:
    """Whether ``path`` belongs to ``uid`` and nobody else may write it (another
    local user could otherwise plant a file for the master to trust)."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return info.st_uid == uid and not info.st_mode & 0o022 and not path.is_symlink()


def register_worker(store_url: object, settings: Any, owner: str) -> None:
    """In a gunicorn worker process: tell the master (through a file of ours)
    which store and name this process's claims use, so that ``child_exit`` can
    recover them at once if the process dies. Only for stores given by URL."""
    if _marked != os.getpid() or not isinstance(store_url, str):
        return
    if not store_url.startswith(("redis://", "rediss://", "unix://", "redis+")):
        return
    entry = {
        "url": store_url,
        "prefix": settings.key_prefix,
        "owner": owner,
        "config": {k: getattr(settings, k.lower()) for k in _HANDOFF_SETTINGS},
    }
    uid = os.getuid()
    folder = _registry(os.getppid(), uid)
    try:
        for directory in (folder.parent, folder):
            directory.mkdir(mode=0o700, exist_ok=True)
            if not _private(directory, uid):
                raise OSError(f"{directory} is not private to this user")
        path = folder / f"{os.getpid()}.json"
        entries = json.loads(path.read_text()) if path.exists() else []
        entries.append(entry)
        temporary = folder / f"{os.getpid()}.{owner.rsplit(':', 1)[-1]}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(json.dumps(entries))
        temporary.replace(path)
    except (OSError, ValueError) as exc:
        logger.warning(
            "cannot register this worker for crash recovery (%s); its jobs are "
            "recovered when their leases expire",
            exc,
        )


def child_exit(server: _Server, worker: _GunicornWorker) -> None:
    """gunicorn ``child_exit`` hook (runs in the master when it reaps a worker):
    the jobs the dead process still held are failed at once (``WorkerDied``)
    and retried with the usual backoff, instead of waiting for their leases.

    A worker that stopped cleanly handed its jobs back first, so nothing is
    left to recover. Any failure here (Redis down) is logged, and the lease
    sweeper recovers the jobs later; gunicorn's own handling goes on.
    """
    cfg: Any = getattr(server, "cfg", None)
    uid = getattr(cfg, "uid", None)
    uid = uid if isinstance(uid, int) else os.getuid()  # gunicorn's user= setting
    folder = _registry(os.getpid(), uid)
    path = folder / f"{worker.pid}.json"
    try:
        if not (_private(folder, uid) and _private(path, uid)):
            return  # not one of ours, or not to be trusted
        entries = json.loads(path.read_text())
        path.unlink(missing_ok=True)
        if not any(folder.iterdir()):
            folder.rmdir()  # the last worker of this master is gone
    except Exception as exc:  # never break the master
        logger.warning(
            "reading the registration of worker %s failed: %s", worker.pid, exc
        )
        return
    for entry in entries if isinstance(entries, list) else ():
        try:
            _recover(entry, worker.pid)
        except Exception as exc:  # never break the master
            logger.warning(
                "recovering the jobs of dead worker %s failed (%s); the lease "
                "sweeper will recover them",
                worker.pid,
                exc,
            )


def _recover(entry: dict[str, Any], pid: int) -> None:
    from async_endpoints.manager import JobManager, process_owner
    from async_endpoints.settings import PREFIX, Settings
    from async_endpoints.stores.redis import RedisStore

    config = {PREFIX + k: v for k, v in entry["config"].items()}
    config[PREFIX + "KEY_PREFIX"] = entry["prefix"]
    settings = Settings.from_config(config)
    store = RedisStore.from_url(
        entry["url"], prefix=entry["prefix"], socket_timeout=_HOOK_SOCKET_TIMEOUT
    )
    try:
        manager = JobManager(store, settings, {})
        count = manager.recover_owner(entry["owner"], f"master-{process_owner()}")
        store.unregister_worker(entry["owner"])  # not alive: leave the counts
    finally:
        store.close()
    if count:
        logger.warning(
            "worker %s died holding %d job(s): each failed as WorkerDied and is "
            "retried",
            pid,
            count,
        )

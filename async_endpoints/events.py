"""Following jobs as they change: one store subscription per process, shared by
every open event stream of the process (Flask-free).

A stream asks the :class:`EventsHub` to :meth:`~EventsHub.follow` its job, then
marks the job as watched in the store and reads it; from then on the hub's
thread, the only caller of :meth:`JobStore.wait_for_changes`, wakes the
stream's :class:`Follower` when the store announces a change of that job. A
stream whose job does not change costs the store nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Final
from uuid import UUID

from async_endpoints.errors import StoreUnavailableError
from async_endpoints.jobs import Job
from async_endpoints.stores import JobStore

logger = logging.getLogger(__name__)

_READY_WAIT: Final = 5.0
"""How long a new stream waits for the hub's subscription, in seconds."""
_OUTAGE_PAUSE: Final = 1.0
"""How long the hub waits before subscribing again after a store error."""
_BLOCK: Final = 1.0
"""One wait of the hub's thread for announcements, in seconds."""


class Follower:
    """One stream's interest in one job: receives each state the job takes, or
    ``None`` when it may have changed unseen (then the stream reads it)."""

    def __init__(self, hub: EventsHub, job_id: UUID, stopped: threading.Event) -> None:
        self.job_id = job_id
        self._hub = hub
        self._changed = threading.Event()
        self._stopped = stopped
        self._lock = threading.Lock()
        self._pending: list[Job | None] = []

    @property
    def stopped(self) -> bool:
        """The hub was closed (the process shuts down): the stream should end."""
        return self._stopped.is_set()

    def wait(self, timeout: float) -> list[Job | None]:
        """Block up to ``timeout`` seconds for news: the states the job took, in
        order, and ``None`` where the stream should read the job itself."""
        self._changed.wait(timeout)
        with self._lock:
            self._changed.clear()
            news, self._pending = self._pending, []
        return news

    def push(self, job: Job | None) -> None:
        """Hand the stream a state of its job (``None``: read it again)."""
        with self._lock:
            self._pending.append(job)
            self._changed.set()

    def wake(self) -> None:
        """Tell the stream to read its job again."""
        self.push(None)

    def close(self) -> None:
        """Stop following."""
        self._hub._forget(self)

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_HUBS: weakref.WeakKeyDictionary[JobStore, EventsHub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def hub_of(store: JobStore) -> EventsHub:
    """The one hub of ``store`` in this process (two apps may share a store; the
    store's announcements have one reader)."""
    with _HUBS_LOCK:
        hub = _HUBS.get(store)
        if hub is None:
            hub = _HUBS[store] = EventsHub(store)
        return hub


class EventsHub:
    """Wakes the followers of jobs whose changes the store announces.

    Its thread starts with the first follower of a process (again in a forked
    child) and keeps one subscription until :meth:`close`.
    """

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._followers: dict[UUID, set[Follower]] = {}
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()  # no thread yet
        self._running = threading.Lock()
        self._pid = 0

    def follow(self, job_id: UUID) -> Follower:
        """Follow ``job_id``; the store's announcements reach the follower from
        the moment this returns.

        :raises StoreUnavailableError: the hub cannot subscribe to the store.
        """
        with self._lock:
            if self._pid != os.getpid() or self._stopped.is_set():
                self._start()
            follower = Follower(self, job_id, self._stopped)
            self._followers.setdefault(job_id, set()).add(follower)
            ready = self._ready
        if not ready.wait(_READY_WAIT):
            follower.close()
            raise StoreUnavailableError(
                "Cannot subscribe to the job store's announcements of changes."
            )
        return follower

    def close(self) -> None:
        """End every stream and stop the hub's thread (at its next wake-up); a
        later :meth:`follow` starts it again."""
        with self._lock:
            self._stopped.set()
            everyone = [f for fs in self._followers.values() for f in fs]
            self._followers = {}
        for follower in everyone:
            follower.wake()

    def _start(self) -> None:
        # A forked child inherits no thread: start its own, with no followers.
        if self._pid != os.getpid():
            self._running = threading.Lock()
        self._pid = os.getpid()
        self._followers = {}
        self._ready = threading.Event()
        self._stopped = threading.Event()
        threading.Thread(
            target=self._run,
            args=(self._ready, self._stopped),
            name="async-endpoints-events",
            daemon=True,
        ).start()

    def _forget(self, follower: Follower) -> None:
        with self._lock:
            followers = self._followers.get(follower.job_id)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._followers[follower.job_id]

    def _all(self) -> Iterator[Follower]:
        with self._lock:
            everyone = [f for fs in self._followers.values() for f in fs]
        return iter(everyone)

    def _run(self, ready: threading.Event, stopped: threading.Event) -> None:
        # One caller of wait_for_changes at a time: a thread started after a
        # close waits for the one before it to notice.
        with self._running:
            self._listen(ready, stopped)

    def _listen(self, ready: threading.Event, stopped: threading.Event) -> None:
        # The first answer of this thread wakes nobody: every follower waits for
        # it in follow() and reads its job after it. (The store's subscription
        # may be older than the thread: then a later resubscription wakes all.)
        subscribed = False
        while not stopped.is_set():
            try:
                changed = self._store.wait_for_changes(_BLOCK)
            except StoreUnavailableError as exc:
                if ready.is_set():
                    logger.warning("following job changes failed: %s", exc)
                ready.clear()
                for follower in self._all():
                    follower.wake()  # each reads its job: an outage shows there
                stopped.wait(_OUTAGE_PAUSE)
                continue
            except Exception:  # pragma: no cover - a bug: keep streams going
                logger.exception("following job changes failed")
                stopped.wait(_OUTAGE_PAUSE)
                continue
            ready.set()  # the store answered: announcements reach us
            first, subscribed = not subscribed, True
            if changed is None:  # subscribed anew: anything may have changed
                if not first:
                    for follower in self._all():
                        follower.wake()
                continue
            with self._lock:
                news = [
                    (f, job) for job in changed for f in self._followers.get(job.id, ())
                ]
            for follower, job in news:
                follower.push(job)


def changed_since(job: Job, last_version: int | None) -> bool:
    """Whether a stream that last sent ``last_version`` sends ``job`` now: a
    newer version, or an ended job's final state (always sent)."""
    return last_version is None or job.version > last_version or job.status.is_finished

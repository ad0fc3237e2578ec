"""What the Flask shell shares: the state the extension keeps per app, and the
registry of extensions initialised in this process.

The shell's modules (``extension``, ``views``, ``cli``, ``gunicorn``, ``metrics``)
meet here rather than importing one another, so imports run one way: shell, then
core (``manager``, ``worker``), then stores, then the model (``jobs``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from flask import Flask, Response

from async_endpoints.events import EventsHub
from async_endpoints.jobs import Job
from async_endpoints.manager import JobManager, process_owner
from async_endpoints.settings import Settings
from async_endpoints.stores import JobStore
from async_endpoints.worker import Worker

__all__ = ["INSTANCES", "AppState", "Extension", "ResponseHook", "extension_of"]

ResponseHook = Callable[[Job, Response], Response]
"""Reshapes the response of a submission or a status request."""


@dataclass(eq=False)
class AppState:
    """What the extension holds for one app."""

    settings: Settings
    store: JobStore
    manager: JobManager
    events: EventsHub
    worker: Worker | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    sync_owner: str = field(default_factory=process_owner)
    # The ASYNC_ENDPOINTS_* keys as init_app read them, until the first request
    # compares them with the app's config (a key set later is not used).
    config_read: dict[str, object] | None = None


class Extension(Protocol):
    """What the views, the CLI and the gunicorn hooks use of an extension."""

    _submitted_response: ResponseHook | None
    _status_response: ResponseHook | None
    _states: weakref.WeakKeyDictionary[Flask, AppState]

    @property
    def _owner_func(self) -> Callable[[], object] | None: ...

    def _state(self) -> AppState: ...

    def _current_owner(self) -> str | None: ...

    def _ensure_worker(self, state: AppState) -> None: ...

    def _start_workers(self) -> None: ...

    def shutdown(self, grace: float | None = None) -> None: ...


INSTANCES: weakref.WeakSet[Extension] = weakref.WeakSet()
"""Every extension initialised in this process (for the gunicorn hooks)."""


def extension_of(app: Flask) -> Extension | None:
    """The extension initialised on ``app``, if any."""
    ext = app.extensions.get("async_endpoints")
    return ext if ext in INSTANCES else None

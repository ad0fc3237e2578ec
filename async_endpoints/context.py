"""``AsyncContext``: what a handler receives in place of the request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from uuid import UUID


class Headers(Mapping[str, str]):
    """A read-only, case-insensitive mapping of request headers."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items = {k.lower(): v for k, v in (items or {}).items()}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


#: Why a run's ``ctx.cancelled`` is set (:attr:`AsyncContext.cancel_reason`).
CANCEL_REASONS: Final = ("canceled", "timeout", "shutdown", "lease_lost")


class CancelEvent(threading.Event):
    """A :class:`threading.Event` that also says why it was set.

    The first reason wins: a run told to stop for one reason keeps it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    def cancel(self, reason: str) -> None:
        """Record ``reason`` (unless one is recorded already), then set the event.

        :param reason: one of :data:`CANCEL_REASONS`.
        """
        if self.reason is None:
            self.reason = reason
        self.set()


def _ignore_progress(fraction: float, message: str | None) -> None:
    """Progress reported where there is no job yet (in ``validate``)."""


@dataclass(kw_only=True, eq=False)
class AsyncContext:
    """The request a handler runs for, rebuilt from the stored job.

    :param request: the parsed JSON body, ``None`` without a body, or an instance
        of the handler's ``request_model``.
    :param headers: the request's headers (credentials removed), case-insensitive.
    :param route_params: the URL rule's variables, e.g. ``{"tenant": "acme"}``.
    :param query_params: each query parameter's values, e.g. ``{"tag": ["a"]}``.
    :param job_id: this job's id; ``None`` in ``validate`` (no job yet).
    :param attempt: 1 on the first run, 2 on the first retry, …; 0 in ``validate``.
    :param cancelled: set when the job is canceled, times out, is handed back on
        shutdown or loses its lease; a long handler should check it and return
        early. :attr:`cancel_reason` says why.
    """

    request: Any = None
    headers: Headers = field(default_factory=Headers)
    route_params: dict[str, str] = field(default_factory=dict)
    query_params: dict[str, list[str]] = field(default_factory=dict)
    job_id: UUID | None = None
    attempt: int = 0
    cancelled: threading.Event = field(default_factory=CancelEvent)
    _progress: Callable[[float, str | None], None] = field(
        default=_ignore_progress, repr=False
    )

    @property
    def cancel_reason(self) -> str | None:
        """Why :attr:`cancelled` is set, or ``None`` while it is not.

        ``"canceled"``: a user canceled the job (``DELETE``); what the handler
        returns then ends the job Canceled. ``"timeout"``: the run passed
        ``ASYNC_ENDPOINTS_JOB_TIMEOUT_SECONDS`` and was failed already.
        ``"shutdown"``: the process is stopping and has handed the job back to
        the queue. ``"lease_lost"``: another process took the job over. In the
        last three cases the job's outcome is decided already, and nothing the
        handler returns or raises is recorded.
        """
        if not self.cancelled.is_set():
            return None
        reason = getattr(self.cancelled, "reason", None)
        return reason if isinstance(reason, str) else "canceled"

    def report_progress(self, fraction: float, message: str | None = None) -> None:
        """Record how far the job has come; it shows in the job JSON.

        Progress is advisory: a report that cannot be stored (the store is
        unreachable) is logged and dropped, never raised into the handler, and a
        report from a run that lost its job is ignored.

        :param fraction: from 0 to 1.
        :param message: optional text, e.g. ``"3 of 10 files"``.
        :raises ValueError: ``fraction`` is outside ``[0, 1]`` (the only error).
        """
        if not 0 <= fraction <= 1:
            raise ValueError(f"progress fraction must be within [0, 1], not {fraction}")
        self._progress(float(fraction), message)

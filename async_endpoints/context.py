"""``AsyncContext``: what a handler receives in place of the request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
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
    :param cancelled: set when the job is canceled, times out or loses its lease;
        a long handler should check it and return early.
    """

    request: Any = None
    headers: Headers = field(default_factory=Headers)
    route_params: dict[str, str] = field(default_factory=dict)
    query_params: dict[str, list[str]] = field(default_factory=dict)
    job_id: UUID | None = None
    attempt: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    _progress: Callable[[float, str | None], None] = field(
        default=_ignore_progress, repr=False
    )

    def report_progress(self, fraction: float, message: str | None = None) -> None:
        """Record how far the job has come; it shows in the job JSON.

        :param fraction: from 0 to 1.
        :param message: optional text, e.g. ``"3 of 10 files"``.
        :raises ValueError: ``fraction`` is outside ``[0, 1]``.
        """
        if not 0 <= fraction <= 1:
            raise ValueError(f"progress fraction must be within [0, 1], not {fraction}")
        self._progress(float(fraction), message)

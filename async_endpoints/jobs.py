"""The job model: plain values shared by the manager, the stores and the views."""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeAlias
from uuid import UUID

JSONValue: TypeAlias = (
    dict[str, "JSONValue"] | list["JSONValue"] | str | int | float | bool | None
)
"""Any value that :func:`json.dumps` takes as it is."""


class JobStatus(enum.StrEnum):
    """Where a job is in its life. The values are the contract's status names."""

    QUEUED = "Queued"
    SCHEDULED = "Scheduled"
    IN_PROGRESS = "InProgress"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def is_finished(self) -> bool:
        """True for the statuses a job never leaves: Completed, Failed, Canceled."""
        return self in _FINISHED

    @property
    def is_waiting(self) -> bool:
        """True for Queued and Scheduled: the job waits for a worker."""
        return self in _WAITING


_FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})
_WAITING = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED})


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    """A failure recorded on a job: data, not an exception.

    :param type: the exception's class name, e.g. ``"ValueError"``.
    :param message: ``str(exception)``.
    :param stack_trace: the formatted traceback, or ``None``.
    """

    type: str
    message: str
    stack_trace: str | None = None

    def to_dict(self, *, expose_traceback: bool = True) -> dict[str, JSONValue]:
        """The ``error`` member of the job JSON."""
        return {
            "type": self.type,
            "message": self.message,
            "stackTrace": self.stack_trace if expose_traceback else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """What a handler reported through ``ctx.report_progress``.

    :param fraction: between 0 and 1.
    :param message: optional free text.
    """

    fraction: float
    message: str | None = None

    def to_dict(self) -> dict[str, JSONValue]:
        """The ``progress`` member of the job JSON."""
        return {"fraction": self.fraction, "message": self.message}


class CallbackStatus(enum.StrEnum):
    """Where a job's completion callback is: the contract's names."""

    PENDING = "Pending"
    DELIVERED = "Delivered"
    FAILED = "Failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Callback:
    """A job's completion callback (``Callback-Url``) and its delivery so far.

    :param url: where the signed ``POST`` goes when the job ends.
    :param status: Pending until a delivery succeeds (Delivered) or the last
        attempt fails (Failed).
    :param attempts: deliveries tried, the successful one included.
    :param last_error: why the latest attempt failed, or ``None``.
    """

    url: str
    status: CallbackStatus = CallbackStatus.PENDING
    attempts: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, JSONValue]:
        """The ``callback`` member of the job JSON."""
        return {
            "url": self.url,
            "status": self.status.value,
            "attempts": self.attempts,
            "lastError": self.last_error,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One submitted request and everything known about its execution.

    Times are epoch seconds (``time.time()``); :meth:`to_dict` renders them as
    ISO 8601 UTC. ``due_at`` is when a waiting job may next be claimed.
    """

    id: UUID
    name: str
    status: JobStatus
    max_retries: int
    created_at: float
    last_updated_at: float
    retry_count: int = 0
    started_at: float | None = None
    completed_at: float | None = None
    due_at: float | None = None
    payload: JSONValue = None
    headers: dict[str, str] = field(default_factory=dict)
    route_params: dict[str, str] = field(default_factory=dict)
    query_params: dict[str, list[str]] = field(default_factory=dict)
    owner: str | None = None
    result: JSONValue = None
    error: ErrorInfo | None = None
    progress: Progress | None = None
    cancel_requested: bool = False
    handbacks: int = 0
    """How many times in a row the job was handed back unfinished."""
    version: int = 0
    """Grows with every change of the job (1 once stored): the ``id`` of its
    events."""
    callback: Callback | None = None
    trace: dict[str, str] = field(default_factory=dict)
    """The submitting request's trace context (``traceparent``, ``tracestate``)."""
    concurrency: int | None = None
    """Its handler's limit of jobs running at once (all processes), if any."""
    rate_limit: str | None = None
    """Its handler's limit of starts, ``"N/W"``: at most N in any W seconds."""

    @property
    def attempt(self) -> int:
        """The number of the current (or next) attempt: ``retry_count + 1``."""
        return self.retry_count + 1

    def to_dict(self, *, expose_traceback: bool = True) -> dict[str, JSONValue]:
        """The job JSON of the HTTP API (camelCase keys, ``null`` where unset).

        :param expose_traceback: include ``error.stackTrace``; ``None`` otherwise.
        """
        waiting = self.status is JobStatus.SCHEDULED
        return {
            "id": str(self.id),
            "name": self.name,
            "status": self.status.value,
            "retryCount": self.retry_count,
            "maxRetries": self.max_retries,
            "createdAt": format_timestamp(self.created_at),
            "startedAt": format_timestamp(self.started_at),
            "completedAt": format_timestamp(self.completed_at),
            "lastUpdatedAt": format_timestamp(self.last_updated_at),
            "nextAttemptAt": format_timestamp(self.due_at) if waiting else None,
            "result": self.result,
            "error": (
                self.error.to_dict(expose_traceback=expose_traceback)
                if self.error
                else None
            ),
            "progress": self.progress.to_dict() if self.progress else None,
            "cancelRequested": self.cancel_requested,
            "version": self.version,
            "callback": self.callback.to_dict() if self.callback else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """A worker's lease on a job it runs.

    :param job: the job as it was claimed (status InProgress).
    :param token: the fencing token; only its holder may finish the job.
    :param lease_until: epoch seconds when the lease ends unless renewed.
    :param provisional: recovered from a claim whose worker never showed that
        it had the claim (no heartbeat, no end): it may never have run, so
        recovery hands it back instead of charging an attempt.
    """

    job: Job
    token: str
    lease_until: float
    provisional: bool = False

    @property
    def job_id(self) -> UUID:
        """The claimed job's id."""
        return self.job.id


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """A worker's lease on the delivery of an ended job's callback.

    :param job: the job, its ``callback.attempts`` counting this attempt.
    :param token: the fencing token; only its holder may record the outcome.
    :param lease_until: epoch seconds when the lease ends (then the delivery is
        due again, in any process).
    """

    job: Job
    token: str
    lease_until: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResult:
    """What a heartbeat learned about the claims it renewed.

    :param held: ids of jobs whose lease was renewed (the others were lost).
    :param cancel_requested: ids among ``held`` whose cancellation was asked for.
    :param held_tokens: the claim tokens renewed: one process may hold a job's
        retry while an earlier run of it, whose lease it lost, still executes;
        only the token tells the two apart.
    """

    held: frozenset[UUID]
    cancel_requested: frozenset[UUID] = frozenset()
    held_tokens: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStats:
    """A snapshot of a store, for operators.

    :param counts: how many jobs are in each status (finished ones until expiry).
    :param oldest_waiting_at: when the oldest Queued job (due, not yet started)
        was created, or ``None``.
    :param workers: each live worker's name and its last heartbeat (epoch s).
    """

    counts: dict[JobStatus, int]
    oldest_waiting_at: float | None
    workers: dict[str, float]

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a worker (Queued + Scheduled)."""
        return self.counts.get(JobStatus.QUEUED, 0) + self.counts.get(
            JobStatus.SCHEDULED, 0
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Idempotency:
    """An idempotency key as the store sees it.

    :param key: scoped by the manager to handler and owner.
    :param fingerprint: digest of the request; a repeat must match it.
    :param ttl: seconds the key is remembered.
    """

    key: str
    fingerprint: str
    ttl: float


_CANONICAL_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def parse_job_id(value: UUID | str) -> UUID | None:
    """The id in ``value`` if it is a UUID or its canonical text form, else ``None``.

    Only the canonical 36-character form is taken, so each job has one URL.
    """
    if isinstance(value, UUID):
        return value
    if not isinstance(value, str) or _CANONICAL_ID.fullmatch(value) is None:
        return None
    return UUID(value)


def format_timestamp(ts: float | None) -> str | None:
    """Render epoch seconds as ISO 8601 UTC with millisecond precision and ``Z``."""
    if ts is None:
        return None
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def retry_after_seconds(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))

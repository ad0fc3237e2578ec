"""``JobManager``: the job state machine, on top of a store. Flask-free.

The manager reads the clock once per operation and passes ``now`` down; the store
only persists each transition atomically. Submit -> claim -> run -> complete, or
fail -> (Scheduled, by the retry policy) | Failed; cancel; recover expired leases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from async_endpoints import tracing
from async_endpoints.callbacks import check_callback_url, deliver_due
from async_endpoints.context import AsyncContext, CancelEvent, Headers
from async_endpoints.errors import (
    ConfigurationError,
    HandBack,
    InvalidRequestError,
    JobTimeoutError,
    StoreUnavailableError,
)
from async_endpoints.jobs import (
    Callback,
    Claim,
    ErrorInfo,
    HeartbeatResult,
    Idempotency,
    Job,
    JobStatus,
    JSONValue,
    Progress,
    StoreStats,
)
from async_endpoints.log import current_job
from async_endpoints.models import parse_model, to_json
from async_endpoints.retry import RetryPolicy
from async_endpoints.schedules import Schedule
from async_endpoints.settings import Settings
from async_endpoints.stores.base import JobStore

logger = logging.getLogger(__name__)
# Never set: waits on it are plain pauses. An Event wait, unlike time.sleep, also
# works where the wall clock is shifted by libfaketime (clock-skew tests).
_PAUSE = threading.Event()
# Pauses between the tries of a submission the store did not answer (None: the
# last try); a short outage or a lost reply need not become a 503.
_SUBMIT_PAUSES: tuple[float | None, ...] = (0.05, 0.2, None)

Handler = Callable[[AsyncContext], object]
Validator = Callable[[AsyncContext], object]
EventHook = Callable[..., None]
"""``hook(event, job, **details)``: told of "submitted", "started", "succeeded",
"retrying" and "failed" (see :mod:`async_endpoints.signals`)."""

_T = TypeVar("_T")
_BATCH = 1 << 30  # "every due job" for run_due_jobs
_HANDLER_WAIT = 2.0
"""How long a run waits for its handler to be registered, in seconds."""
_DEAD_BATCH = 10_000
"""The most jobs recovered from one dead worker at once (it held fewer)."""

#: Headers about the request's transport, meaningless once the body is parsed:
#: never stored with a job (hop-by-hop headers, and the body's length and type).
TRANSPORT_HEADERS: frozenset[str] = frozenset(
    {
        "connection",
        "content-length",
        "content-type",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerSpec:
    """A registered handler and its options.

    :param name: the unique job name (``Job.name``).
    :param method: the HTTP method of its route.
    :param rule: the URL rule of its route.
    :param func: the handler itself.
    :param request_model: a dataclass or pydantic model for the body, or ``None``.
    :param validate: runs in the request before queuing; a response rejects it.
    :param max_retries: retries after the first attempt; ``None`` for the default.
    :param schedule: for a periodic job (no route), when it ticks.
    :param concurrency: the most of its jobs running at once, everywhere.
    :param rate_limit: the most starts in a window, ``"N/seconds"``.
    """

    name: str
    method: str
    rule: str
    func: Handler
    request_model: type[Any] | None = None
    validate: Validator | None = None
    max_retries: int | None = None
    schedule: Schedule | None = None
    concurrency: int | None = None
    rate_limit: str | None = None


def process_owner() -> str:
    """An id for this process's claims: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobManager:
    """Runs the job state machine for one app on one store.

    :param store: where jobs live.
    :param settings: the app's parsed configuration.
    :param handlers: the registered handlers by name (read at each use, so
        handlers added later are seen).
    :param app_context: returns the context manager a handler runs in (the Flask
        application context); the manager itself knows nothing of Flask.
    """

    def __init__(
        self,
        store: JobStore,
        settings: Settings,
        handlers: Mapping[str, HandlerSpec],
        app_context: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
        on_event: EventHook | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.handlers = handlers
        self._app_context = app_context
        self._on_event = on_event
        self._policies: dict[tuple[str, int], RetryPolicy] = {}
        # Every run of a job here: a timed-out run may still execute beside its
        # retry, and a user's cancel must reach both.
        self._running: dict[UUID, list[CancelEvent]] = {}
        self._running_lock = threading.Lock()
        # Set when a job with a callback ended here: its delivery is due.
        self.callbacks_due = threading.Event()
        # When each periodic schedule next ticks, as far as this process knows.
        self._next_tick: dict[str, float] = {}
        self._ticks_lock = threading.Lock()

    # -- submitting and reading ------------------------------------------------

    def spec(self, name: str) -> HandlerSpec:
        """The handler registered under ``name``.

        :raises ConfigurationError: no handler has that name.
        """
        try:
            return self.handlers[name]
        except KeyError:
            known = ", ".join(sorted(self.handlers)) or "none"
            raise ConfigurationError(
                f"No handler is named {name!r} (registered: {known}); declare it "
                "with @ae.post(rule, name=...)."
            ) from None

    def filter_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers to persist: lower-cased names, without credentials and
        without those that only described the request's transport."""
        redacted = self.settings.redacted_headers
        kept = {}
        for name, value in headers.items():
            lower = name.lower()
            if lower not in redacted and lower not in TRANSPORT_HEADERS:
                kept[lower] = value
        return kept

    def submit(
        self,
        name: str,
        payload: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        route_params: Mapping[str, str] | None = None,
        query_params: Mapping[str, list[str]] | None = None,
        owner: str | None = None,
        idempotency_key: str | None = None,
        payload_is_json: bool = False,
        callback_url: str | None = None,
        due_at: float | None = None,
    ) -> Job:
        """Queue a job for the handler ``name``; return it (or the idempotent twin).

        :param payload_is_json: the payload came from a strict JSON parser, so it
            need not be converted and checked again.
        :param callback_url: receives a signed POST when the job ends.
        :param due_at: when the job may run (epoch seconds); until then it is
            Scheduled. ``None``: at once.
        :raises CallbackRefusedError: the callback URL is not one to call.

        :raises QueueFullError: the queue is full.
        :raises IdempotencyConflictError: the key was used with another request.
        :raises InvalidRequestError: the payload cannot be stored as JSON.
        """
        spec = self.spec(name)
        callback = None
        if callback_url is not None:
            callback = Callback(url=check_callback_url(callback_url, self.settings))
        try:
            body = payload if payload_is_json else to_json(payload)
        except TypeError as exc:
            reason = exc.__cause__ or exc  # json's own words, e.g. about NaN
            raise InvalidRequestError(
                f"The request for {name!r} cannot be stored as JSON: {reason}."
            ) from exc
        now = time.time()
        route = {str(k): str(v) for k, v in (route_params or {}).items()}
        query = {str(k): [str(v) for v in vs] for k, vs in (query_params or {}).items()}
        job = Job(
            id=uuid.uuid4(),
            name=name,
            status=JobStatus.QUEUED,
            max_retries=self._max_retries(spec),
            created_at=now,
            last_updated_at=now,
            due_at=now if due_at is None else max(now, due_at),
            payload=body,
            headers=self.filter_headers(headers or {}),
            route_params=route,
            query_params=query,
            owner=owner,
            callback=callback,
            trace=tracing.submission_context(headers),
            concurrency=spec.concurrency,
            rate_limit=spec.rate_limit,
        )
        idempotency = None
        if idempotency_key is not None:
            idempotency = self._idempotency(
                name, idempotency_key, body, route, query, owner
            )
        for pause in _SUBMIT_PAUSES:
            try:
                stored = self.store.submit(
                    job,
                    max_queue_size=self.settings.max_queue_size,
                    idempotency=idempotency,
                    now=now,
                    max_per_owner=self.settings.max_queued_per_owner,
                )
                break
            except StoreUnavailableError:
                # Sent again, the same job changes nothing: a submission whose
                # reply was lost answers as it would have, and is signalled once.
                if pause is None:
                    raise
                _PAUSE.wait(pause)
        if stored.id == job.id:
            logger.debug("job %s (%s) queued", job.id, name)
            self._emit("submitted", stored)
        return stored

    def find_idempotent(
        self,
        name: str,
        key: str,
        payload: Any,
        *,
        route_params: Mapping[str, str],
        query_params: Mapping[str, list[str]],
        owner: str | None,
    ) -> Job | None:
        """The live job an ``Idempotency-Key`` made for this handler and owner.

        :raises IdempotencyConflictError: the key was used with another request.
        """
        try:
            body = to_json(payload)
        except TypeError:
            return None
        idempotency = self._idempotency(
            name, key, body, dict(route_params), dict(query_params), owner
        )
        return self.store.find_idempotent(idempotency, now=time.time())

    def _idempotency(
        self,
        name: str,
        key: str,
        body: JSONValue,
        route: dict[str, str],
        query: dict[str, list[str]],
        owner: str | None,
    ) -> Idempotency:
        # The key is scoped to handler and owner; the fingerprint covers the request.
        scope = hashlib.sha256(f"{name}\0{owner or ''}\0{key}".encode()).hexdigest()
        request = json.dumps([body, route, query], sort_keys=True).encode()
        return Idempotency(
            key=scope[:32],
            fingerprint=hashlib.sha256(request).hexdigest()[:32],
            ttl=self.settings.idempotency_ttl_seconds,
        )

    def get(self, job_id: UUID) -> Job | None:
        """The job, or ``None`` if it is unknown or has expired."""
        return self.store.get(job_id, now=time.time())

    def list_page(
        self,
        *,
        status: JobStatus | None = None,
        name: str | None = None,
        owner: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """One page of jobs, newest first (see :meth:`JobStore.list_page`)."""
        return self.store.list_page(
            status=status,
            name=name,
            owner=owner,
            limit=limit,
            cursor=cursor,
            now=time.time(),
        )

    def limit_usage(self) -> dict[str, str]:
        """For each handler with a limit, how it stands: ``"running 2/2"``,
        ``"started 37 in the last 60 s (limit 100)"``."""
        limited = {
            s.name: s
            for s in self.handlers.values()
            if s.concurrency is not None or s.rate_limit is not None
        }
        windows = {
            n: float(s.rate_limit.split("/")[1]) if s.rate_limit else 0.0
            for n, s in limited.items()
        }
        usage = self.store.limit_usage(windows, now=time.time())
        lines: dict[str, str] = {}
        for name, spec in sorted(limited.items()):
            running, started = usage.get(name, (0, 0))
            parts = []
            if spec.concurrency is not None:
                parts.append(f"running {running}/{spec.concurrency}")
            if spec.rate_limit is not None:
                cap, window = spec.rate_limit.split("/")
                parts.append(f"started {started} in the last {window} s (limit {cap})")
            lines[name] = ", ".join(parts)
        return lines

    def handler_counts(self) -> dict[str, int]:
        """How many jobs each registered handler has."""
        return self.store.handler_counts(sorted(self.handlers), now=time.time())

    def finished_per_minute(self, minutes: int = 60) -> dict[int, int]:
        """Jobs that ended in each of the last ``minutes`` minutes."""
        return self.store.finished_per_minute(now=time.time(), minutes=minutes)

    def find_by_idempotency_key(self, key: str, owner: str | None) -> Job | None:
        """The live job made with ``key`` by ``owner`` (for any handler)."""
        for name in sorted(self.handlers):
            scoped = self._idempotency(name, key, None, {}, {}, owner)
            job = self.store.idempotent_job(scoped.key, now=time.time())
            if job is not None:
                return job
        return None

    def prune_indexes(self) -> int:
        """Drop index entries of jobs that are gone (the sweeper calls it)."""
        return self.store.prune_indexes(sorted(self.handlers), now=time.time())

    def watch(self, job_id: UUID) -> Job | None:
        """Follow the job's changes (see :meth:`JobStore.watch`); the job as it
        is, or ``None``."""
        return self.store.watch(job_id, now=time.time())

    def cancel(self, job_id: UUID) -> Job:
        """Cancel a waiting job; ask a running one to stop.

        :raises JobNotFoundError: unknown job.
        :raises JobFinishedError: the job is Completed or Failed.
        """
        job = self.store.cancel(
            job_id, ttl=self.settings.result_ttl_seconds, now=time.time()
        )
        if job.status is JobStatus.IN_PROGRESS:
            self.signal_cancel([job_id])
        elif job.callback is not None:
            self.callbacks_due.set()
        return job

    def retry(self, job_id: UUID) -> Job:
        """Put a Failed job back in the queue with its retries reset."""
        return self.store.retry(job_id, now=time.time())

    def list_jobs(
        self, status: JobStatus | None = None, *, offset: int = 0, limit: int = 20
    ) -> list[Job]:
        """Jobs, newest first (all, or of one status)."""
        return self.store.list_jobs(
            status=status, offset=offset, limit=limit, now=time.time()
        )

    def purge(self, status: JobStatus, older_than: float) -> int:
        """Delete finished jobs of ``status`` that ended over ``older_than`` s ago."""
        now = time.time()
        return self.store.purge(status=status, older_than=now - older_than, now=now)

    def stats(self) -> StoreStats:
        """Counts per status, the oldest waiting job and the live workers.

        A worker counts as live while its last heartbeat is at most two
        heartbeat intervals (two thirds of ``CLAIM_TIMEOUT_SECONDS``) old: a live
        one beats every third of the lease.
        """
        now = time.time()
        stats = self.store.stats(now=now)
        horizon = now - 2 * self.settings.claim_timeout_seconds / 3
        live = {name: seen for name, seen in stats.workers.items() if seen >= horizon}
        return dataclasses.replace(stats, workers=live)

    def register_worker(self, owner: str) -> None:
        """Record that this process's worker is alive (for ``stats``)."""
        lease = self.settings.claim_timeout_seconds
        self.store.register_worker(owner, ttl=lease, now=time.time())

    def unregister_worker(self, owner: str) -> None:
        """Record that this process's worker stopped (for ``stats``)."""
        self.store.unregister_worker(owner)

    def wait_for_end(self, job_id: UUID, timeout: float) -> Job | None:
        """Wait up to ``timeout`` seconds for the job to end; return it as it is."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            remaining = deadline - time.monotonic()
            if job is None or job.status.is_finished or remaining <= 0:
                return job
            self.store.wait_for_end(job_id, remaining)

    # -- running ---------------------------------------------------------------

    def claim(
        self, owner: str, limit: int, *, request_id: str | None = None
    ) -> list[Claim]:
        """Lease up to ``limit`` due jobs to ``owner``; sent again with the same
        ``request_id`` (its reply was lost), answer with the same claims."""
        return self.store.claim(
            owner,
            limit=limit,
            lease=self.settings.claim_timeout_seconds,
            now=time.time(),
            request_id=request_id,
        )

    def wait_and_claim(
        self,
        owner: str,
        limit: int,
        timeout: float,
        *,
        request_id: str | None = None,
        confirm: Sequence[Claim] = (),
        on_sent: Callable[[], None] | None = None,
    ) -> list[Claim]:
        """Wait up to ``timeout`` seconds for work, then claim as :meth:`claim`
        does, in one store round trip where the store can; ``confirm``: the
        claims the last call returned (see :meth:`JobStore.wait_and_claim`)."""
        return self.store.wait_and_claim(
            owner,
            limit=limit,
            lease=self.settings.claim_timeout_seconds,
            now=time.time(),
            timeout=timeout,
            request_id=request_id,
            confirm=confirm,
            on_sent=on_sent,
        )

    def sync_clock(self) -> None:
        """Measure the store's clock again (a host's clock may be stepped)."""
        self.store.sync_clock()

    def heartbeat(self, claims: Sequence[Claim]) -> HeartbeatResult:
        """Renew the leases of ``claims``; signal the canceled ones."""
        result = self.store.heartbeat(
            claims, lease=self.settings.claim_timeout_seconds, now=time.time()
        )
        if result.cancel_requested:
            self.signal_cancel(result.cancel_requested)
        return result

    def release(self, claims: Sequence[Claim]) -> None:
        """Hand claims back to the queue without counting an attempt.

        A job already handed back ``ASYNC_ENDPOINTS_MAX_HANDBACKS`` times in a row
        is failed instead (a counted attempt), so that it cannot be handed back
        forever.
        """
        limit = self.settings.max_handbacks
        back = [c for c in claims if c.job.handbacks < limit]
        for claim in claims:
            if claim.job.handbacks >= limit:
                self.fail(
                    claim,
                    _HandedBackError(
                        f"The job was handed back unfinished {claim.job.handbacks + 1} "
                        "times in a row (more than ASYNC_ENDPOINTS_MAX_HANDBACKS = "
                        f"{limit}); this counts as a failed attempt."
                    ),
                )
        if back:
            self.store.release(
                back, ttl=self.settings.result_ttl_seconds, now=time.time()
            )

    def signal_cancel(self, job_ids: Any, reason: str = "canceled") -> None:
        """Set ``ctx.cancelled`` of the local runs of these jobs, for ``reason``."""
        with self._running_lock:
            for job_id in job_ids:
                for event in self._running.get(job_id, []):
                    event.cancel(reason)

    def run(
        self,
        claim: Claim,
        cancelled: CancelEvent | None = None,
        *,
        then_claim: int | Callable[[], int] = 0,
        owner: str = "",
    ) -> list[Claim] | None:
        """Run the claimed job's handler here and record the outcome.

        Never raises for the handler's sake: a failure is recorded on the job.
        A run that takes longer than the job timeout is recorded as a timeout and
        its result discarded. A run whose ``cancelled`` event was set for another
        reason than a user's cancel (``"timeout"``, ``"shutdown"``,
        ``"lease_lost"``) records nothing: whoever set it decided the outcome
        first. A handler that raises :class:`HandBack` hands its job back.

        :param then_claim: after a success, also claim up to this many due jobs
            for ``owner`` in the same store round trip (a callable is asked at
            completion time).
        :returns: the jobs claimed that way, or ``None`` if no claim was tried
            (``then_claim`` was 0, or the run did not succeed).
        """
        job = claim.job
        log = logging.LoggerAdapter(
            logger, {"job_id": str(job.id), "job_name": job.name}
        )
        event = cancelled if cancelled is not None else CancelEvent()
        with self._running_lock:
            self._running.setdefault(job.id, []).append(event)
        started = time.time()
        token = current_job.set(job)
        self._emit("started", job, attempt=job.attempt)
        try:
            try:
                with tracing.attempt_span(job):
                    value = self._call(claim, event)
                result = to_json(value, max_bytes=self.settings.max_result_bytes)
            except HandBack:
                if not _decided(event, log):
                    log.info("job %s handed back by its handler", job.id)
                    self._patiently(lambda: self.release([claim]))
                return None
            except BaseException as exc:
                if not _decided(event, log):
                    self._patiently(
                        functools.partial(
                            self.fail, claim, exc, log=log, started=started
                        )
                    )
                if isinstance(exc, KeyboardInterrupt) and (
                    threading.current_thread() is threading.main_thread()
                ):
                    raise
                return None
            if _decided(event, log):
                return None
            if time.time() - started > self.settings.job_timeout_seconds:
                self._patiently(
                    lambda: self.fail(
                        claim, self.timeout_error(), log=log, started=started
                    )
                )
                return None
            limit = then_claim() if callable(then_claim) else then_claim
            now = time.time()
            # One request id for every try: a completion whose reply was lost
            # answers "applied" when sent again, and its claim the same jobs.
            request_id = uuid.uuid4().hex if limit > 0 else None

            def record() -> tuple[bool, list[Claim]]:
                return self.store.complete_and_claim(
                    claim,
                    result,
                    ttl=self.settings.result_ttl_seconds,
                    owner=owner,
                    limit=limit,
                    lease=self.settings.claim_timeout_seconds,
                    now=time.time(),
                    request_id=request_id,
                )

            try:
                completed, claims = record()
            except StoreUnavailableError:
                # Tried again while the lease lasts: a short outage must not
                # make the job run again.
                log.warning("recording job %s failed; trying again", job.id)
                completed, claims = self._patiently(record, first_failed=True)
            if completed:
                log.debug("job %s completed", job.id)
                self._emit("succeeded", job, result=result, duration=now - started)
            else:
                log.warning(
                    "job %s finished after it lost its claim; result discarded", job.id
                )
            return claims if limit > 0 else None
        finally:
            current_job.reset(token)
            with self._running_lock:
                events = self._running.get(job.id, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._running.pop(job.id, None)

    def _patiently(
        self,
        record: Callable[[], _T],
        *,
        first_failed: bool = False,
    ) -> _T:
        """``record()``, tried again while the store is unavailable, for as long
        as the run's lease lasts (heartbeats keep renewing it meanwhile).

        Sent again until then even if the run was meanwhile marked as having
        lost its lease: a recording whose reply was lost makes the next heartbeat
        find the job no longer held, and only sending it again tells whether it
        applied (the token fences a run that really lost its lease).

        :raises StoreUnavailableError: the store stayed unreachable that long.
        """
        deadline = time.monotonic() + self.settings.claim_timeout_seconds
        failures = 1 if first_failed else 0
        while True:
            if failures:
                pause = min(2.0, 0.05 * 2**failures)
                if time.monotonic() + pause > deadline:
                    raise StoreUnavailableError(
                        "The job store stayed unreachable while the run's outcome "
                        "was being recorded."
                    )
                _PAUSE.wait(pause)  # not time.sleep: see _PAUSE
            try:
                return record()
            except StoreUnavailableError:
                failures += 1

    def timeout_error(self) -> JobTimeoutError:
        """The error recorded for a run past ``JOB_TIMEOUT_SECONDS``."""
        return JobTimeoutError(
            f"The run took longer than ASYNC_ENDPOINTS_JOB_TIMEOUT_SECONDS "
            f"({self.settings.job_timeout_seconds:g} s)."
        )

    def _call(self, claim: Claim, cancelled: CancelEvent) -> object:
        job = claim.job
        # A process's worker may start while its app module is still being
        # imported (gunicorn without preload_app: init_app starts it, the
        # decorators below it have not run yet): give the handlers a moment.
        deadline = time.monotonic() + _HANDLER_WAIT
        while job.name not in self.handlers and time.monotonic() < deadline:
            if cancelled.wait(0.02):
                break
        spec = self.spec(job.name)
        request: Any = job.payload
        if spec.request_model is not None:
            request = parse_model(spec.request_model, job.payload)

        failing = False  # logged once per outage, not once per report

        def progress(fraction: float, message: str | None) -> None:
            nonlocal failing
            report = Progress(fraction=fraction, message=message)
            try:
                self.store.report_progress(claim, report, now=time.time())
            except Exception:
                if not failing:
                    logger.warning(
                        "progress of job %s could not be stored; dropped (further "
                        "failures are not logged until a report is stored again)",
                        job.id,
                        exc_info=True,
                    )
                failing = True
            else:
                failing = False

        ctx = AsyncContext(
            request=request,
            headers=Headers(job.headers),
            route_params=dict(job.route_params),
            query_params={k: list(v) for k, v in job.query_params.items()},
            job_id=job.id,
            attempt=job.attempt,
            cancelled=cancelled,
            _progress=progress,
        )
        with self._app_context():
            return spec.func(ctx)

    def fail(
        self,
        claim: Claim,
        exc: BaseException,
        *,
        log: logging.LoggerAdapter[logging.Logger] | None = None,
        started: float | None = None,
    ) -> bool:
        """Record a failed attempt of ``claim``: retried by the policy, or Failed."""
        job = claim.job
        now = time.time()
        spec = self.handlers.get(job.name)
        policy = self._policy(spec, job.max_retries)
        retry_at = policy.next_attempt_at(
            attempt=job.attempt,
            error=exc,
            first_started_at=job.created_at,
            now=now,
        )
        stack = "".join(traceback.format_exception(exc))
        error = ErrorInfo(type=type(exc).__name__, message=str(exc), stack_trace=stack)
        applied = self.store.fail(
            claim,
            error,
            retry_at=retry_at,
            ttl=self.settings.result_ttl_seconds,
            now=now,
        )
        if log is None:
            log = logging.LoggerAdapter(
                logger, {"job_id": str(job.id), "job_name": job.name}
            )
        log.log(
            logging.WARNING if retry_at is not None else logging.ERROR,
            "job %s (%s) attempt %d failed%s:\n%s",
            job.id,
            job.name,
            job.attempt,
            "" if applied else " after losing its claim",
            stack,
            extra={"job_id": str(job.id), "job_name": job.name}
            if log is None
            else None,
        )
        if applied:
            duration = now - (started if started is not None else now)
            if retry_at is not None:
                self._emit(
                    "retrying", job, error=error, retry_at=retry_at, duration=duration
                )
            else:
                self._emit("failed", job, error=error, duration=duration)
        return applied

    def _emit(self, event: str, job: Job, **details: Any) -> None:
        if job.callback is not None and event in ("succeeded", "failed"):
            self.callbacks_due.set()
        if self._on_event is None:
            return
        try:
            self._on_event(event, job, **details)
        except Exception:
            logger.exception(
                "a receiver of the %r event of job %s failed", event, job.id
            )

    def recover_expired(
        self, owner: str, *, limit: int = 100, request_id: str | None = None
    ) -> int:
        """Fail the jobs whose lease expired (their process died); return how many.

        :param request_id: as for :meth:`claim`.
        """
        claims = self.store.recover_expired(
            owner,
            limit=limit,
            lease=self.settings.claim_timeout_seconds,
            now=time.time(),
            request_id=request_id,
        )
        for claim in claims:
            if claim.provisional:
                # Claimed behind a wait by a worker that never showed it had the
                # reply (its host vanished meanwhile): it may never have run.
                self.release([claim])
                continue
            lost = _LeaseExpiredError(
                "The worker running this job stopped renewing its lease "
                "(the process died or hung); the attempt counts as failed."
            )
            self.fail(claim, lost)
        return len(claims)

    def recover_owner(self, dead: str, owner: str) -> int:
        """Fail at once the jobs that worker ``dead`` held (its process died);
        each counts a failed attempt (``WorkerDied``) and is retried by its
        policy. Return how many."""
        claims = self.store.recover_owner(
            dead,
            owner,
            limit=_DEAD_BATCH,
            lease=self.settings.claim_timeout_seconds,
            now=time.time(),
        )
        for claim in claims:
            if claim.provisional:  # as in recover_expired
                self.release([claim])
                continue
            died = _WorkerDiedError(
                "The worker process running this job died (its gunicorn master "
                "saw it exit); the attempt counts as failed."
            )
            self.fail(claim, died)
        return len(claims)

    def fire_due_ticks(self) -> int:
        """Make the job of each periodic schedule whose tick is due (once per
        tick across every process; only the latest of several missed ticks).
        Costs no store call until a schedule's next tick comes. A schedule that
        fails (the store is down) is tried again a second later; the others go
        on. Return how many jobs this call made."""
        made = 0
        with self._ticks_lock:
            for spec in list(self.handlers.values()):
                if spec.schedule is None:
                    continue
                now = time.time()
                due = self._next_tick.get(spec.name)
                if due is not None and now < due:
                    continue
                try:
                    made += self._fire(spec, spec.schedule, now)
                except Exception as exc:
                    self._next_tick[spec.name] = now + 1.0
                    logger.warning(
                        "periodic job %s: making its tick's job failed (%s); "
                        "trying again in a second",
                        spec.name,
                        exc,
                    )
        return made

    def _fire(self, spec: HandlerSpec, schedule: Schedule, now: float) -> int:
        tick = schedule.latest(now)
        job = Job(
            id=uuid.uuid4(),  # random as every job's: ids are not to be guessed
            name=spec.name,
            status=JobStatus.QUEUED,
            max_retries=self._max_retries(spec),
            created_at=now,
            last_updated_at=now,
            due_at=now,
            concurrency=spec.concurrency,
            rate_limit=spec.rate_limit,
        )
        stored = self.store.submit_tick(job, schedule=spec.name, tick=tick, now=now)
        following = schedule.following(tick)
        # Never sooner than a moment from now: a schedule whose ticks cannot be
        # computed right does not ask the store at every round.
        self._next_tick[spec.name] = following if following > now else now + 1.0
        if stored is None:
            return 0
        logger.debug("periodic job %s: tick %s made job %s", spec.name, tick, job.id)
        self._emit("submitted", stored)
        return 1

    def next_tick(self, name: str) -> float | None:
        """When schedule ``name`` next ticks, as this process knows it."""
        spec = self.handlers.get(name)
        if spec is None or spec.schedule is None:
            return None
        return spec.schedule.following(spec.schedule.latest(time.time()))

    def run_due_jobs(self, owner: str) -> int:
        """Make the jobs of due periodic ticks, recover expired leases, then run
        every job due now in this thread, then send the callback deliveries due
        (once each)."""
        self.fire_due_ticks()
        self.recover_expired(owner, limit=_BATCH)
        claims = self.claim(owner, _BATCH)
        for claim in claims:
            self.run(claim)
        for _ in range(_BATCH):  # one at a time: each within its own lease
            if deliver_due(self.store, self.settings, owner, limit=1)[0] == 0:
                break
        return len(claims)

    # -- helpers ---------------------------------------------------------------

    def _max_retries(self, spec: HandlerSpec) -> int:
        if spec.max_retries is not None:
            return spec.max_retries
        return self.settings.max_retries

    def _policy(self, spec: HandlerSpec | None, max_retries: int) -> RetryPolicy:
        key = (spec.name if spec else "", max_retries)
        policy = self._policies.get(key)
        if policy is None:
            s = self.settings
            policy = RetryPolicy.exponential(
                max_retries=max_retries,
                base=s.retry_delay_base_seconds,
                max_delay=s.retry_max_delay_seconds,
                jitter=s.retry_jitter_seconds,
            )
            self._policies[key] = policy
        return policy


def _decided(event: CancelEvent, log: logging.LoggerAdapter[logging.Logger]) -> bool:
    """Whether the run's outcome was decided elsewhere (timed out, handed back on
    shutdown, lease lost): then nothing the handler did is recorded."""
    if event.reason in (None, "canceled"):
        return False
    log.info(
        "run ended after its job was %s; outcome not recorded",
        {
            "timeout": "failed for its timeout",
            "shutdown": "handed back on shutdown",
            "lease_lost": "taken over elsewhere",
        }.get(event.reason or "", event.reason),
    )
    return True


class _HandedBackError(Exception):
    """Recorded (as type ``HandedBack``) for a job handed back too often."""


_HandedBackError.__name__ = "HandedBack"
_HandedBackError.__qualname__ = "HandedBack"


class _LeaseExpiredError(Exception):
    """Recorded (as type ``LeaseExpired``) for a job whose lease ran out."""


_LeaseExpiredError.__name__ = "LeaseExpired"
_LeaseExpiredError.__qualname__ = "LeaseExpired"


class _WorkerDiedError(Exception):
    """Recorded (as type ``WorkerDied``) for a job whose process died."""


_WorkerDiedError.__name__ = "WorkerDied"
_WorkerDiedError.__qualname__ = "WorkerDied"

"""``MemoryStore``: the embedded, single-process job store."""

from __future__ import annotations

import collections
import dataclasses
import heapq
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from uuid import UUID

from async_endpoints.errors import (
    IdempotencyConflictError,
    JobFinishedError,
    JobNotFoundError,
    OwnerQuotaError,
    QueueFullError,
)
from async_endpoints.jobs import (
    Callback,
    CallbackStatus,
    Claim,
    Delivery,
    ErrorInfo,
    HeartbeatResult,
    Idempotency,
    Job,
    JobStatus,
    JSONValue,
    Progress,
    StoreStats,
)
from async_endpoints.stores.cursors import make_cursor, parse_cursor


@dataclasses.dataclass(slots=True)
class _Lease:
    token: str
    owner: str
    until: float


class MemoryStore:
    """Keeps jobs in this process's memory. **Single-process only.**

    Under gunicorn with several workers each process has its own jobs, so a status
    request that lands on another process answers 404: use the Redis store there.
    It is the default (``memory://``) for development and tests, and implements the
    whole :class:`~async_endpoints.stores.base.JobStore` contract with one lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[UUID, Job] = {}
        self._leases: dict[UUID, _Lease] = {}
        # Heaps with lazy deletion: an entry counts only while it matches the job
        # (for the waiting ones: while it is the job's place in _place).
        # Waiting jobs not yet due, or due but not yet tagged: (due, id, seq, id).
        self._timed: list[tuple[float, str, int, UUID]] = []
        # Due jobs by fair-claims tag (see claim.lua): (tag, seq, id).
        self._tagged: list[tuple[int, int, UUID]] = []
        # Each waiting job's place: (True, tag) or (False, due time).
        self._place: dict[UUID, tuple[bool, float]] = {}
        self._last_tag: dict[str, int] = {}  # owner ("" for none) -> latest tag
        self._served = 0  # the highest tag claimed
        self._expiry: list[tuple[float, UUID]] = []
        self._expires_at: dict[UUID, float] = {}
        self._idempotency: dict[str, tuple[UUID, str, float]] = {}
        # What each claim request took, to answer it again if it is re-sent.
        self._requests: dict[str, tuple[float, list[Claim]]] = {}
        self._request_of: dict[str, str] = {}  # claim token -> its request
        # "c:" or "f:" + the token of the complete/fail that applied last.
        self._finished_by: dict[UUID, str] = {}
        # Expiry heaps of the two maps above them, pruned in _purge.
        self._idem_expiry: list[tuple[float, str]] = []
        self._request_expiry: list[tuple[float, str]] = []
        self._seq = 0
        self._workers: dict[str, float] = {}
        self._owner_waiting: dict[str, int] = {}
        # Handler limits: jobs running, parked jobs (heaps), recent starts, and
        # the time a job set aside by the rate limit is due again.
        self._running: dict[str, int] = {}
        self._parked: dict[str, list[tuple[int, int, UUID]]] = {}
        self._starts: dict[str, collections.deque[float]] = {}
        self._notified = 0
        self._stopped_workers: set[str] = set()  # see stop_waiting
        self._waiting = 0
        self._generation = 0
        self._closes = 0
        # Its own condition: waking the cancel listener at every job change
        # would cost a thread switch per change for nothing.
        self._closing = threading.Condition(self._lock)
        # Jobs someone follows (their events), and their changes not yet taken.
        self._watched: set[UUID] = set()
        self._changes: list[Job] = []
        self._changes_ready = threading.Condition(self._lock)
        self._changes_taken = False
        # Each periodic schedule's last tick.
        self._ticks: dict[str, tuple[float, UUID | None]] = {}
        # Jobs that ended, per epoch minute.
        self._finished: dict[int, int] = {}
        # Callback deliveries by job: (due or lease end, token while leased).
        self._deliveries: dict[UUID, tuple[float, str | None]] = {}

    def __repr__(self) -> str:
        return "<MemoryStore>"

    # -- helpers (lock held) -------------------------------------------------

    def _put(self, job: Job) -> Job:
        old = self._jobs.get(job.id)
        was_waiting = old is not None and old.status.is_waiting
        if (
            old is not None
            and old.concurrency is not None
            and old.status is JobStatus.IN_PROGRESS
            and job.status is not JobStatus.IN_PROGRESS
        ):
            self._free_slot(old)
        job = dataclasses.replace(job, version=(old.version if old else 0) + 1)
        self._jobs[job.id] = job
        if job.id in self._watched:
            self._changes.append(job)
            self._changes_ready.notify_all()
        self._waiting += int(job.status.is_waiting) - int(was_waiting)
        if job.owner:
            change = int(job.status.is_waiting) - int(was_waiting)
            if change:
                count = self._owner_waiting.get(job.owner, 0) + change
                if count:
                    self._owner_waiting[job.owner] = count
                else:
                    del self._owner_waiting[job.owner]
        if not job.status.is_waiting:
            self._place.pop(job.id, None)
        elif not was_waiting or old is None or old.due_at != job.due_at:
            assert job.due_at is not None
            self._wait_until(job.id, job.due_at)
        self._generation += 1
        self._changed.notify_all()
        return job

    def _wait_until(self, job_id: UUID, due_at: float) -> None:
        """The job waits, untagged, until ``due_at``."""
        self._place[job_id] = (False, due_at)
        self._seq += 1
        heapq.heappush(self._timed, (due_at, str(job_id), self._seq, job_id))

    def _tag(self, job_id: UUID, owner: str | None, tag: int | None = None) -> None:
        """The job is due: it takes its turn among the owners' (a new tag
        unless it keeps ``tag``; see ``claim.lua`` for the rule)."""
        if tag is None:
            group = owner or ""
            tag = max(self._served, self._last_tag.get(group, 0)) + 1
            self._last_tag[group] = tag
        self._place[job_id] = (True, tag)
        self._seq += 1
        heapq.heappush(self._tagged, (tag, self._seq, job_id))

    def _promote(self, now: float) -> None:
        """Tag the waiting jobs that fell due, earliest due first."""
        while self._timed and self._timed[0][0] <= now:
            due_at, _, _, job_id = heapq.heappop(self._timed)
            job = self._jobs.get(job_id)
            if job is not None and self._place.get(job_id) == (False, due_at):
                self._tag(job_id, job.owner)

    def _finish(self, job: Job, ttl: float, now: float) -> Job:
        job = self._put(job)
        minute = int(now // 60)
        self._finished[minute] = self._finished.get(minute, 0) + 1
        if job.callback is not None and job.callback.status is CallbackStatus.PENDING:
            self._deliveries[job.id] = (now, None)  # due at once
        self._leases.pop(job.id, None)
        self._expires_at[job.id] = now + ttl
        heapq.heappush(self._expiry, (now + ttl, job.id))
        return job

    def _purge(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            at, job_id = heapq.heappop(self._expiry)
            if self._expires_at.get(job_id) == at:
                del self._expires_at[job_id]
                self._jobs.pop(job_id, None)
                self._finished_by.pop(job_id, None)
                self._watched.discard(job_id)
                self._deliveries.pop(job_id, None)
        while self._idem_expiry and self._idem_expiry[0][0] <= now:
            at, key = heapq.heappop(self._idem_expiry)
            known = self._idempotency.get(key)
            if known is not None and known[2] == at:
                del self._idempotency[key]
        while self._request_expiry and self._request_expiry[0][0] <= now:
            at, request_id = heapq.heappop(self._request_expiry)
            record = self._requests.get(request_id)
            if record is not None and record[0] == at:
                self._forget_request(request_id)

    def _forget_request(self, request_id: str) -> None:
        record = self._requests.pop(request_id, None)
        for claim in record[1] if record is not None else ():
            self._request_of.pop(claim.token, None)

    def _answer_again(
        self, request_id: str | None, lease: float, now: float
    ) -> list[Claim] | None:
        """The claims a request sent before took and still holds, if it was; their
        leases (and the record) renewed."""
        if request_id is None:
            return None
        record = self._requests.get(request_id)
        if record is None or record[0] <= now:
            return None
        held = [c for c in record[1] if self._held(c) is not None]
        for claim in held:
            self._leases[claim.job_id].until = now + lease
        self._remember(request_id, record[1], lease, now)
        return held

    def _remember(
        self, request_id: str | None, claims: list[Claim], lease: float, now: float
    ) -> None:
        if request_id is None or not claims:
            return
        self._requests[request_id] = (now + lease, claims)
        for claim in claims:
            self._request_of[claim.token] = request_id
        heapq.heappush(self._request_expiry, (now + lease, request_id))

    def _held(self, claim: Claim) -> Job | None:
        lease = self._leases.get(claim.job_id)
        if lease is None or lease.token != claim.token:
            return None
        return self._jobs.get(claim.job_id)

    def _lease(self, job: Job, owner: str, lease: float, now: float) -> Claim:
        token = uuid.uuid4().hex
        self._leases[job.id] = _Lease(token=token, owner=owner, until=now + lease)
        return Claim(job=job, token=token, lease_until=now + lease)

    # -- JobStore ------------------------------------------------------------

    def submit(
        self,
        job: Job,
        *,
        max_queue_size: int,
        idempotency: Idempotency | None = None,
        now: float,
        max_per_owner: int = 0,
    ) -> Job:
        """See :meth:`JobStore.submit`."""
        with self._lock:
            self._purge(now)
            if job.id in self._jobs:  # sent again: answered as the first time
                return self._jobs[job.id]
            if idempotency is not None:
                existing = self._idempotent(idempotency, now)
                if existing is not None:
                    return existing
            if 0 < max_queue_size <= self._waiting:
                raise QueueFullError(
                    f"The queue is full ({max_queue_size} jobs wait); try again later."
                )
            owner = job.owner
            if owner and 0 < max_per_owner <= self._owner_waiting.get(owner, 0):
                raise OwnerQuotaError(
                    "This owner has reached its limit of waiting jobs "
                    f"({max_per_owner}, "
                    "ASYNC_ENDPOINTS_MAX_QUEUED_PER_OWNER); try again later."
                )
            due = max(now, job.due_at if job.due_at is not None else now)
            status = JobStatus.SCHEDULED if due > now else JobStatus.QUEUED
            stored = self._put(
                dataclasses.replace(job, status=status, due_at=due, last_updated_at=now)
            )
            if status is JobStatus.QUEUED:
                self._tag(job.id, job.owner)
            if idempotency is not None:
                self._idempotency[idempotency.key] = (
                    job.id,
                    idempotency.fingerprint,
                    now + idempotency.ttl,
                )
                heapq.heappush(
                    self._idem_expiry, (now + idempotency.ttl, idempotency.key)
                )
            return stored

    def submit_tick(
        self, job: Job, *, schedule: str, tick: float, now: float
    ) -> Job | None:
        """See :meth:`JobStore.submit_tick`."""
        with self._lock:
            last = self._ticks.get(schedule)
            if last is None:
                self._ticks[schedule] = (tick, None)
                return None
            if last[0] >= tick:
                return None
            self._ticks[schedule] = (tick, job.id)
        return self.submit(job, max_queue_size=0, now=now)

    def last_ticks(self) -> dict[str, tuple[float, UUID | None]]:
        """See :meth:`JobStore.last_ticks`."""
        with self._lock:
            return dict(self._ticks)

    def _idempotent(self, idempotency: Idempotency, now: float) -> Job | None:
        known = self._idempotency.get(idempotency.key)
        if known is None or known[2] <= now or known[0] not in self._jobs:
            return None
        if known[1] != idempotency.fingerprint:
            raise IdempotencyConflictError(
                "This Idempotency-Key was already used with a different request; "
                "send a new key for a new request."
            )
        return self._jobs[known[0]]

    def find_idempotent(self, idempotency: Idempotency, *, now: float) -> Job | None:
        """See :meth:`JobStore.find_idempotent`."""
        with self._lock:
            self._purge(now)
            return self._idempotent(idempotency, now)

    def get(self, job_id: UUID, *, now: float) -> Job | None:
        """See :meth:`JobStore.get`."""
        with self._lock:
            expires_at = self._expires_at.get(job_id)
            if expires_at is not None and expires_at <= now:
                self._purge(now)
                return None
            return self._jobs.get(job_id)

    def claim(
        self,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float,
        request_id: str | None = None,
    ) -> list[Claim]:
        """See :meth:`JobStore.claim`."""
        claims: list[Claim] = []
        with self._lock:
            self._purge(now)
            again = self._answer_again(request_id, lease, now)
            if again is not None:
                return again
            self._promote(now)
            while self._tagged and len(claims) < limit:
                tag, _, job_id = heapq.heappop(self._tagged)
                job = self._jobs.get(job_id)
                if job is None or self._place.get(job_id) != (True, tag):
                    continue
                if not self._admit(job, tag, now):
                    continue
                self._served = max(self._served, tag)
                group = job.owner or ""
                if group and self._last_tag.get(group, 0) <= tag:
                    del self._last_tag[group]
                running = dataclasses.replace(
                    job,
                    status=JobStatus.IN_PROGRESS,
                    started_at=now,
                    due_at=None,
                    last_updated_at=now,
                )
                running = self._put(running)
                claims.append(self._lease(running, owner, lease, now))
            self._remember(request_id, claims, lease, now)
        return claims

    def _admit(self, job: Job, tag: int, now: float) -> bool:
        """Whether the limits of the job's handler let it start now; if not, it
        is set aside (parked until a slot frees, or due when the rate allows)."""
        name = job.name
        if (
            job.concurrency is not None
            and self._running.get(name, 0) >= job.concurrency
        ):
            self._place.pop(job.id)
            self._seq += 1
            heapq.heappush(self._parked.setdefault(name, []), (tag, self._seq, job.id))
            return False
        if job.rate_limit is not None:
            cap, window = job.rate_limit.split("/")
            log = self._starts.setdefault(name, collections.deque())
            while log and log[0] <= now - float(window):
                log.popleft()
            if len(log) >= int(cap):
                self._wait_until(job.id, log[0] + float(window))
                return False
            log.append(now)
        if job.concurrency is not None:
            self._running[name] = self._running.get(name, 0) + 1
        return True

    def _free_slot(self, job: Job) -> None:
        """A limited handler's job stopped running: one of its parked jobs, if
        any, goes back to the queue."""
        self._running[job.name] = max(0, self._running.get(job.name, 0) - 1)
        self._unpark_one(job.name)

    def _unpark_one(self, name: str) -> None:
        parked = self._parked.get(name)
        while parked:
            tag, _, job_id = heapq.heappop(parked)
            waiting = self._jobs.get(job_id)
            if waiting is not None and waiting.status.is_waiting:
                self._tag(job_id, waiting.owner, tag)  # its turn, kept
                self._notified += 1
                return

    def heartbeat(
        self, claims: Sequence[Claim], *, lease: float, now: float
    ) -> HeartbeatResult:
        """See :meth:`JobStore.heartbeat`."""
        held: set[UUID] = set()
        tokens: set[str] = set()
        canceling: set[UUID] = set()
        with self._lock:
            for claim in claims:
                job = self._held(claim)
                if job is None or self._leases[claim.job_id].until <= now:
                    continue  # lost; an ended lease is not revived, but swept
                self._leases[claim.job_id].until = now + lease
                held.add(claim.job_id)
                tokens.add(claim.token)
                if job.cancel_requested:
                    canceling.add(claim.job_id)
        return HeartbeatResult(
            held=frozenset(held),
            cancel_requested=frozenset(canceling),
            held_tokens=frozenset(tokens),
        )

    def complete(
        self, claim: Claim, result: JSONValue, *, ttl: float, now: float
    ) -> bool:
        """See :meth:`JobStore.complete`."""
        with self._lock:
            job = self._held(claim)
            if job is None:
                return self._finished_by.get(claim.job_id) == f"c:{claim.token}"
            self._finished_by[job.id] = f"c:{claim.token}"
            # Its claim's reply arrived: that request is not sent again.
            request_id = self._request_of.get(claim.token)
            if request_id is not None:
                self._forget_request(request_id)
            status = JobStatus.CANCELED if job.cancel_requested else JobStatus.COMPLETED
            done = dataclasses.replace(
                job,
                status=status,
                result=result if status is JobStatus.COMPLETED else None,
                error=None,
                completed_at=now,
                last_updated_at=now,
                handbacks=0,
            )
            self._finish(done, ttl, now)
            return True

    def complete_and_claim(
        self,
        claim: Claim,
        result: JSONValue,
        *,
        ttl: float,
        owner: str,
        limit: int,
        lease: float,
        now: float,
        request_id: str | None = None,
    ) -> tuple[bool, list[Claim]]:
        """See :meth:`JobStore.complete_and_claim`."""
        done = self.complete(claim, result, ttl=ttl, now=now)
        if limit <= 0:
            return done, []
        claims = self.claim(
            owner, limit=limit, lease=lease, now=now, request_id=request_id
        )
        return done, claims

    def fail(
        self,
        claim: Claim,
        error: ErrorInfo,
        *,
        retry_at: float | None,
        ttl: float,
        now: float,
    ) -> bool:
        """See :meth:`JobStore.fail`."""
        with self._lock:
            job = self._held(claim)
            if job is None:
                return self._finished_by.get(claim.job_id) == f"f:{claim.token}"
            self._finished_by[job.id] = f"f:{claim.token}"
            if job.cancel_requested:
                done = dataclasses.replace(
                    job,
                    status=JobStatus.CANCELED,
                    error=error,
                    completed_at=now,
                    last_updated_at=now,
                    handbacks=0,
                )
                self._finish(done, ttl, now)
            elif retry_at is None:
                done = dataclasses.replace(
                    job,
                    status=JobStatus.FAILED,
                    error=error,
                    completed_at=now,
                    last_updated_at=now,
                    handbacks=0,
                )
                self._finish(done, ttl, now)
            else:
                self._leases.pop(job.id, None)
                self._put(
                    dataclasses.replace(
                        job,
                        status=JobStatus.SCHEDULED,
                        retry_count=job.retry_count + 1,
                        error=error,
                        due_at=retry_at,
                        last_updated_at=now,
                        handbacks=0,
                    )
                )
            return True

    def report_progress(self, claim: Claim, progress: Progress, *, now: float) -> bool:
        """See :meth:`JobStore.report_progress`."""
        with self._lock:
            job = self._held(claim)
            if job is None:
                return False
            self._put(dataclasses.replace(job, progress=progress, last_updated_at=now))
            return True

    def release(self, claims: Sequence[Claim], *, ttl: float, now: float) -> None:
        """See :meth:`JobStore.release`."""
        with self._lock:
            for claim in claims:
                job = self._held(claim)
                if job is None:
                    continue
                self._leases.pop(job.id)
                if job.cancel_requested:
                    canceled = dataclasses.replace(
                        job,
                        status=JobStatus.CANCELED,
                        completed_at=now,
                        last_updated_at=now,
                    )
                    self._finish(canceled, ttl, now)
                    continue
                self._put(
                    dataclasses.replace(
                        job,
                        status=JobStatus.QUEUED,
                        due_at=now,
                        last_updated_at=now,
                        handbacks=job.handbacks + 1,
                    )
                )

    def cancel(self, job_id: UUID, *, ttl: float, now: float) -> Job:
        """See :meth:`JobStore.cancel`."""
        with self._lock:
            self._purge(now)
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFoundError(f"No job with id '{job_id}'.")
            if job.status is JobStatus.CANCELED:
                return job
            if job.status.is_finished:
                raise JobFinishedError(
                    f"Job {job_id} has already ended ({job.status.value})."
                )
            if job.status is JobStatus.IN_PROGRESS:
                if job.cancel_requested:  # asked again: nothing changes
                    return job
                return self._put(
                    dataclasses.replace(job, cancel_requested=True, last_updated_at=now)
                )
            done = dataclasses.replace(
                job,
                status=JobStatus.CANCELED,
                cancel_requested=True,
                due_at=None,
                completed_at=now,
                last_updated_at=now,
            )
            if (
                job.concurrency is not None
                and self._running.get(job.name, 0) < job.concurrency
            ):
                # It may have been the job let out for a free slot: let another.
                self._unpark_one(job.name)
            finished = self._finish(done, ttl, now)
            if job.owner and job.owner not in self._owner_waiting:
                # Its next job is not placed behind the ones it canceled.
                self._last_tag.pop(job.owner, None)
            return finished

    def recover_expired(
        self,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float,
        request_id: str | None = None,
    ) -> list[Claim]:
        """See :meth:`JobStore.recover_expired`."""
        claims: list[Claim] = []
        with self._lock:
            again = self._answer_again(request_id, lease, now)
            if again is not None:
                return again
            expired = sorted(
                (lease_.until, job_id)
                for job_id, lease_ in self._leases.items()
                if lease_.until <= now
            )
            for _, job_id in expired[:limit]:
                job = self._jobs.get(job_id)
                if job is None:
                    del self._leases[job_id]
                    continue
                claims.append(self._lease(job, owner, lease, now))
            self._remember(request_id, claims, lease, now)
        return claims

    def recover_owner(
        self,
        dead: str,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float,
    ) -> list[Claim]:
        """See :meth:`JobStore.recover_owner`."""
        claims: list[Claim] = []
        with self._lock:
            for job_id, held in list(self._leases.items()):
                job = self._jobs.get(job_id)
                if held.owner != dead or job is None or len(claims) >= limit:
                    continue
                claims.append(self._lease(job, owner, lease, now))
        return claims

    def sync_clock(self) -> float:
        """See :meth:`JobStore.sync_clock`: one process, one clock."""
        return 0.0

    def retry(self, job_id: UUID, *, now: float) -> Job:
        """See :meth:`JobStore.retry`."""
        with self._lock:
            self._purge(now)
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFoundError(f"No job with id '{job_id}'.")
            if job.status is not JobStatus.FAILED:
                raise JobFinishedError(
                    f"Only a Failed job can be retried; job {job_id} is "
                    f"{job.status.value}."
                )
            self._expires_at.pop(job_id, None)
            callback = job.callback
            if callback is not None:  # its next end is delivered anew
                callback = Callback(url=callback.url)
            self._deliveries.pop(job_id, None)
            queued = dataclasses.replace(
                job,
                callback=callback,
                status=JobStatus.QUEUED,
                retry_count=0,
                due_at=now,
                completed_at=None,
                last_updated_at=now,
            )
            return self._put(queued)

    def list_page(
        self,
        *,
        status: JobStatus | None = None,
        name: str | None = None,
        owner: str | None = None,
        limit: int,
        cursor: str | None = None,
        now: float,
    ) -> tuple[list[Job], str | None]:
        """See :meth:`JobStore.list_page` (here a scan of the jobs in memory)."""
        after = parse_cursor(cursor)
        with self._lock:
            self._purge(now)
            jobs = [
                j
                for j in self._jobs.values()
                if status in (None, j.status)
                and name in (None, j.name)
                and owner in (None, j.owner)
                and (after is None or (j.created_at, str(j.id)) < after)
            ]
        jobs.sort(key=lambda j: (j.created_at, str(j.id)), reverse=True)
        if len(jobs) <= limit:
            return jobs, None
        last = jobs[limit - 1]
        return jobs[:limit], make_cursor(last.created_at, str(last.id))

    def idempotent_job(self, key: str, *, now: float) -> Job | None:
        """See :meth:`JobStore.idempotent_job`."""
        with self._lock:
            self._purge(now)
            known = self._idempotency.get(key)
            if known is None or known[2] <= now:
                return None
            return self._jobs.get(known[0])

    def limit_usage(
        self, windows: dict[str, float], *, now: float
    ) -> dict[str, tuple[int, int]]:
        """See :meth:`JobStore.limit_usage`."""
        with self._lock:
            return {
                name: (
                    self._running.get(name, 0),
                    sum(1 for t in self._starts.get(name, ()) if t > now - window)
                    if window
                    else 0,
                )
                for name, window in windows.items()
            }

    def handler_counts(self, names: Sequence[str], *, now: float) -> dict[str, int]:
        """See :meth:`JobStore.handler_counts`."""
        counts = dict.fromkeys(names, 0)
        with self._lock:
            self._purge(now)
            for job in self._jobs.values():
                if job.name in counts:
                    counts[job.name] += 1
        return counts

    def prune_indexes(self, names: Sequence[str], *, now: float) -> int:
        """See :meth:`JobStore.prune_indexes`: no index here; old counts go."""
        with self._lock:
            self._purge(now)
            for minute in [m for m in self._finished if m < now // 60 - 24 * 60]:
                del self._finished[minute]
        return 0

    def finished_per_minute(self, *, now: float, minutes: int = 60) -> dict[int, int]:
        """See :meth:`JobStore.finished_per_minute`."""
        this_minute = int(now // 60)
        with self._lock:
            return {
                m: self._finished.get(m, 0)
                for m in range(this_minute - minutes + 1, this_minute + 1)
            }

    def list_jobs(
        self, *, status: JobStatus | None, offset: int, limit: int, now: float
    ) -> list[Job]:
        """See :meth:`JobStore.list_jobs`."""
        with self._lock:
            self._purge(now)
            jobs = [j for j in self._jobs.values() if status in (None, j.status)]
        jobs.sort(key=lambda j: (j.created_at, str(j.id)), reverse=True)
        return jobs[offset : offset + limit]

    def purge(self, *, status: JobStatus, older_than: float, now: float) -> int:
        """See :meth:`JobStore.purge`."""
        if not status.is_finished:
            raise ValueError(f"only finished jobs can be purged, not {status.value}")
        with self._lock:
            doomed = [
                j.id
                for j in self._jobs.values()
                if j.status is status
                and j.completed_at is not None
                and j.completed_at < older_than
            ]
            for job_id in doomed:
                del self._jobs[job_id]
                self._deliveries.pop(job_id, None)
                self._expires_at.pop(job_id, None)
                self._watched.discard(job_id)
            return len(doomed)

    def register_worker(self, owner: str, *, ttl: float, now: float) -> None:
        """See :meth:`JobStore.register_worker`."""
        with self._lock:
            self._workers[owner] = now
            for name, seen in list(self._workers.items()):
                if seen + ttl <= now:
                    del self._workers[name]

    def unregister_worker(self, owner: str) -> None:
        """See :meth:`JobStore.unregister_worker`."""
        with self._lock:
            self._workers.pop(owner, None)

    def wait_for_cancels(self, timeout: float) -> list[UUID]:
        """See :meth:`JobStore.wait_for_cancels`.

        In one process the manager tells its runs of a cancel directly, so this
        only waits (until :meth:`close` or the timeout) and returns nothing.
        """
        with self._lock:
            generation = self._closes
            self._closing.wait_for(lambda: self._closes != generation, timeout)
        return []

    def watch(self, job_id: UUID, *, now: float) -> Job | None:
        """See :meth:`JobStore.watch`."""
        with self._lock:
            job = self._jobs.get(job_id)
            expires_at = self._expires_at.get(job_id)
            if job is None or (expires_at is not None and expires_at <= now):
                return None
            self._watched.add(job_id)
            return job

    def wait_for_changes(self, timeout: float) -> list[Job] | None:
        """See :meth:`JobStore.wait_for_changes`. Nothing is ever missed here;
        the first call answers ``None`` at once, as a new subscription does."""
        with self._lock:
            if not self._changes_taken:
                self._changes_taken = True
                return None
            if not self._changes:
                generation = self._closes
                self._changes_ready.wait_for(
                    lambda: bool(self._changes) or self._closes != generation,
                    timeout,
                )
            changed, self._changes = self._changes, []
        return changed

    def claim_callbacks(
        self, owner: str, *, limit: int, lease: float, now: float
    ) -> list[Delivery]:
        """See :meth:`JobStore.claim_callbacks`."""
        deliveries: list[Delivery] = []
        with self._lock:
            self._purge(now)
            due = sorted(
                (at, str(job_id), job_id)
                for job_id, (at, _) in self._deliveries.items()
                if at <= now
            )
            for _, _, job_id in due[: max(0, limit)]:
                job = self._jobs.get(job_id)
                if job is None or job.callback is None:
                    del self._deliveries[job_id]
                    continue
                callback = dataclasses.replace(
                    job.callback, attempts=job.callback.attempts + 1
                )
                job = self._put(dataclasses.replace(job, callback=callback))
                token = uuid.uuid4().hex
                self._deliveries[job_id] = (now + lease, token)
                deliveries.append(
                    Delivery(job=job, token=token, lease_until=now + lease)
                )
        return deliveries

    def finish_callback(
        self,
        delivery: Delivery,
        *,
        error: str | None,
        retry_at: float | None,
        now: float,
    ) -> bool:
        """See :meth:`JobStore.finish_callback`."""
        job_id = delivery.job.id
        with self._lock:
            held = self._deliveries.get(job_id)
            job = self._jobs.get(job_id)
            if held is None or held[1] != delivery.token or job is None:
                return False
            assert job.callback is not None
            if error is None:
                status = CallbackStatus.DELIVERED
            elif retry_at is None:
                status = CallbackStatus.FAILED
            else:
                status = CallbackStatus.PENDING
            callback = dataclasses.replace(
                job.callback, status=status, last_error=error
            )
            self._put(dataclasses.replace(job, callback=callback))
            if status is CallbackStatus.PENDING:
                assert retry_at is not None
                self._deliveries[job_id] = (retry_at, None)
            else:
                del self._deliveries[job_id]
            return True

    def stats(self, *, now: float) -> StoreStats:
        """See :meth:`JobStore.stats`."""
        with self._lock:
            self._purge(now)
            counts = dict.fromkeys(JobStatus, 0)
            oldest: float | None = None
            for job in self._jobs.values():
                counts[job.status] += 1
                if job.status is JobStatus.QUEUED:
                    created = job.created_at
                    oldest = created if oldest is None else min(oldest, created)
            return StoreStats(
                counts=counts, oldest_waiting_at=oldest, workers=dict(self._workers)
            )

    def queue_size(self) -> int:
        """See :meth:`JobStore.queue_size`."""
        with self._lock:
            return self._waiting

    def wait_for_work(self, timeout: float) -> bool:
        """See :meth:`JobStore.wait_for_work`.

        Wakes on any change, or when the earliest scheduled job falls due.
        """
        return self._wait(timeout, None)

    def _wait(self, timeout: float, worker: str | None) -> bool:
        """:meth:`wait_for_work`; for ``worker``, also ended (at once, or as it
        comes) by :meth:`stop_waiting`, judged under the lock so that a stop
        between the check and the wait is not missed."""
        with self._lock:
            if worker is not None and worker in self._stopped_workers:
                return True
            if self._notified:
                self._notified -= 1
                return True
            due_first = False
            if self._tagged or self._timed:
                first = self._timed[0][0] if self._timed and not self._tagged else 0.0
                until_due = max(0.0, first - time.time())
                due_first = until_due <= timeout
                timeout = min(timeout, until_due)
            generation = self._generation
            changed = self._changed.wait_for(
                lambda: self._generation != generation
                or (worker is not None and worker in self._stopped_workers),
                timeout,
            )
            return changed or due_first

    def wait_and_claim(
        self,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float,
        timeout: float,
        request_id: str | None = None,
        confirm: Sequence[Claim] = (),
        on_sent: Callable[[], None] | None = None,
    ) -> list[Claim]:
        """See :meth:`JobStore.wait_and_claim` (a wait, then a claim; in one
        process, a claim is never provisional: ``confirm`` is not needed)."""
        if on_sent is not None:
            on_sent()
        started = time.monotonic()
        self._wait(timeout, owner)
        with self._lock:
            if owner in self._stopped_workers:
                return []
        return self.claim(
            owner,
            limit=limit,
            lease=lease,
            now=now + time.monotonic() - started,
            request_id=request_id,
        )

    def stop_waiting(self, owner: str) -> None:
        """See :meth:`JobStore.stop_waiting`."""
        with self._lock:
            self._stopped_workers.add(owner)
            self._generation += 1
            self._changed.notify_all()

    def notify(self) -> None:
        """See :meth:`JobStore.notify`."""
        with self._lock:
            self._notified += 1  # kept until a waiter takes it, like Redis's token
            self._generation += 1
            self._changed.notify_all()

    def wait_for_end(self, job_id: UUID, timeout: float) -> None:
        """See :meth:`JobStore.wait_for_end`."""

        def ended() -> bool:
            job = self._jobs.get(job_id)
            return job is None or job.status.is_finished

        with self._lock:
            self._changed.wait_for(ended, timeout)

    def close(self) -> None:
        """Wake every blocked waiter; the jobs stay."""
        with self._lock:
            self._closes += 1
            self._generation += 1
            self._changed.notify_all()
            self._closing.notify_all()
            self._changes_ready.notify_all()

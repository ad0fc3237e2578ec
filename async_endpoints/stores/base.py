"""The ``JobStore`` protocol: what a job store must do, and promise.

A store persists jobs and performs each state transition **atomically**. It holds
no clock: every method that depends on time takes ``now`` (epoch seconds), read once
by the caller. It decides nothing about retries either: the manager asks tenacity
and passes the answer (``retry_at``) down.

The contract, enforced by ``tests/stores/test_contract.py`` against every backend:

* ``submit`` stores a new job as Queued, due at ``now``; it raises
  :class:`~async_endpoints.errors.QueueFullError` when ``max_queue_size`` (> 0)
  jobs already wait (Queued + Scheduled). With an :class:`Idempotency`, a live key
  returns the job it made, without the queue check (and raises
  :class:`~async_endpoints.errors.IdempotencyConflictError` when the fingerprint
  differs); two racing submissions with one key make one job.
* ``claim`` atomically takes up to ``limit`` waiting jobs whose due time has come,
  fairly between owners (round robin between the owners with due jobs, jobs
  without an owner being one more; within one owner, in the order they became
  due), marks them InProgress with ``started_at = now``, and leases each
  one to the caller until ``now + lease`` under a fresh, unique token.
* Every change after a claim (``complete``, ``fail``, ``report_progress``,
  ``heartbeat``, ``release``) is accepted only with the job's current token
  (fencing) and returns whether it applied. A lost race is ``False``, not an error.
* ``complete``/``fail`` on a job whose cancellation was requested end it Canceled.
  ``fail`` with ``retry_at`` makes the job Scheduled, due then, one retry more;
  without it the job is Failed. Finished jobs expire ``ttl`` seconds after ``now``.
* ``release`` hands claimed jobs back as Queued, due at once, counting no attempt
  but one more hand-back in a row (``Job.handbacks``; ``complete`` and ``fail``
  reset it); a job whose cancellation was requested ends Canceled instead.
* ``cancel`` ends a waiting job Canceled at once, flags a running one
  (``cancel_requested``), answers a Canceled job as it is, and raises
  :class:`~async_endpoints.errors.JobFinishedError` for a Completed/Failed one and
  :class:`~async_endpoints.errors.JobNotFoundError` for an unknown one.
* ``recover_expired`` re-claims, for ``owner`` and under fresh tokens, jobs whose
  lease ended at or before ``now``; exactly one of several concurrent callers gets each
  one. The caller then fails them through ``fail`` (counted as an attempt).
* ``retry`` puts a Failed job back as Queued with its retry count reset;
  ``list_jobs``, ``stats`` and ``purge`` serve operators (they may scan every
  job); ``register_worker`` records a process's heartbeat for ``stats``.
* Infrastructure failures raise
  :class:`~async_endpoints.errors.StoreUnavailableError`.

On a real network a reply can be lost after the store applied the call, and the
caller (or its client library) sends the call again. So no transition's outcome
depends on whether its reply arrived:

* ``submit`` sent again for the same job id changes nothing and answers as before.
* ``claim``, ``complete_and_claim``, ``wait_and_claim`` and ``recover_expired``
  take a ``request_id``: sent again with the same one, they claim nothing new and
  answer with the jobs the first call claimed that are still held under its
  tokens.
* ``complete`` or ``fail`` sent again with the token that applied it answers
  ``True`` and changes nothing (``complete`` after a ``fail`` by that token, or
  the reverse, is still ``False``).
* ``heartbeat``, ``report_progress``, ``release`` and ``cancel`` are idempotent
  as they are.

Every change of a job raises its ``version`` by one (a stored job has version 1),
and a change of a job that somebody :meth:`~JobStore.watch`-es is announced to
:meth:`~JobStore.wait_for_changes` in every process.

Instants that decide between processes (due times, lease ends, heartbeats) may be
kept on the store's own clock (the Redis store does): each ``now`` is then read
as the caller's clock, and what is compared is ``now`` plus the caller's measured
offset to the store's clock, a constant within a process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol
from uuid import UUID

from async_endpoints.jobs import (
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


class JobStore(Protocol):
    """Persists jobs and performs each state transition atomically.

    See the module docstring for the contract every implementation keeps.
    """

    def submit(
        self,
        job: Job,
        *,
        max_queue_size: int,
        idempotency: Idempotency | None = None,
        now: float,
        max_per_owner: int = 0,
    ) -> Job:
        """Store ``job`` as Queued and due at ``now`` (Scheduled when its
        ``due_at`` is later); return the stored job.

        With ``idempotency`` whose key is live, return the job it made instead.

        :raises QueueFullError: ``max_queue_size`` > 0 jobs already wait.
        :raises OwnerQuotaError: the job's owner already has ``max_per_owner``
            (> 0) jobs waiting.
        :raises IdempotencyConflictError: the key was used with another fingerprint.
        """
        ...

    def submit_tick(
        self, job: Job, *, schedule: str, tick: float, now: float
    ) -> Job | None:
        """Store ``job`` (as :meth:`submit` does, with no queue limit) for the
        tick ``tick`` (epoch seconds) of periodic ``schedule``, atomically with
        making that tick the schedule's last; ``None`` (and no job) when the
        last tick is not older, so that one tick makes one job however many
        processes see it due. A schedule seen for the first time records the
        tick and makes no job: it starts with its next tick."""
        ...

    def last_ticks(self) -> dict[str, tuple[float, UUID | None]]:
        """Each periodic schedule's last tick (epoch seconds) and the id of the
        job it made (``None`` for a first tick, which makes none), by name."""
        ...

    def find_idempotent(self, idempotency: Idempotency, *, now: float) -> Job | None:
        """The live job that ``idempotency.key`` made, or ``None``.

        :raises IdempotencyConflictError: the key was used with another fingerprint.
        """
        ...

    def get(self, job_id: UUID, *, now: float) -> Job | None:
        """The job with this id, or ``None`` if unknown or expired."""
        ...

    def claim(
        self,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float,
        request_id: str | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` due jobs to ``owner``, fairly between the jobs'
        owners (see above); sent again with the same ``request_id``, answer with
        the same claims."""
        ...

    def heartbeat(
        self, claims: Sequence[Claim], *, lease: float, now: float
    ) -> HeartbeatResult:
        """Renew the leases of ``claims`` still held, in one operation."""
        ...

    def complete(
        self, claim: Claim, result: JSONValue, *, ttl: float, now: float
    ) -> bool:
        """Mark the job Completed with ``result`` (Canceled if cancel was asked)."""
        ...

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
        """:meth:`complete`, then :meth:`claim` up to ``limit`` jobs for ``owner``;
        each step atomic, both in one round trip where the store can.

        :returns: whether the completion applied, and the new claims.
        """
        ...

    def fail(
        self,
        claim: Claim,
        error: ErrorInfo,
        *,
        retry_at: float | None,
        ttl: float,
        now: float,
    ) -> bool:
        """Record a failed attempt: Scheduled at ``retry_at``, or Failed if ``None``."""
        ...

    def report_progress(self, claim: Claim, progress: Progress, *, now: float) -> bool:
        """Record the running job's progress."""
        ...

    def release(self, claims: Sequence[Claim], *, ttl: float, now: float) -> None:
        """Hand claimed jobs back to the queue without counting an attempt."""
        ...

    def cancel(self, job_id: UUID, *, ttl: float, now: float) -> Job:
        """Cancel a waiting job, or flag a running one; return the job.

        :raises JobNotFoundError: no such job.
        :raises JobFinishedError: the job is Completed or Failed.
        """
        ...

    def recover_expired(
        self,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float,
        request_id: str | None = None,
    ) -> list[Claim]:
        """Re-claim for ``owner`` up to ``limit`` jobs whose lease has expired; sent
        again with the same ``request_id``, answer with the same claims."""
        ...

    def recover_owner(
        self,
        dead: str,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float,
    ) -> list[Claim]:
        """Re-claim for ``owner``, under fresh tokens, up to ``limit`` jobs that
        worker ``dead`` holds (the name it claimed them under), whatever their
        leases: its process is known to be dead. The caller then fails them.
        """
        ...

    def sync_clock(self) -> float:
        """Measure the offset from this process's clock to the store's, and use
        it from now on; return it (0.0 for a store in this process)."""
        ...

    def retry(self, job_id: UUID, *, now: float) -> Job:
        """Put a Failed job back in the queue (Queued, due now, retry count 0).

        :raises JobNotFoundError: no such job.
        :raises JobFinishedError: the job is not Failed.
        """
        ...

    def list_jobs(
        self, *, status: JobStatus | None, offset: int, limit: int, now: float
    ) -> list[Job]:
        """Jobs (of one status, or all), newest first, paged."""
        ...

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
        """One page of the jobs that match every filter given, newest first
        (creation time, then id), and the opaque cursor of the next page
        (``None`` at the end). A page may hold fewer than ``limit`` jobs and
        still have a next one (a filter that matches few jobs). Pages follow
        creation order, so a job that changes status between two pages is
        neither lost nor repeated. On Redis a page costs O(log n + limit).

        :raises InvalidParameterError: the cursor is not one this store made.
        """
        ...

    def idempotent_job(self, key: str, *, now: float) -> Job | None:
        """The live job that an idempotency key (as the manager scopes it) made,
        whatever its fingerprint."""
        ...

    def limit_usage(
        self, windows: dict[str, float], *, now: float
    ) -> dict[str, tuple[int, int]]:
        """For each handler in ``windows`` (name -> its rate window in seconds,
        0 for none): how many of its jobs run now (counted for handlers with a
        concurrency limit), and how many started in the last window."""
        ...

    def handler_counts(self, names: Sequence[str], *, now: float) -> dict[str, int]:
        """How many jobs each handler in ``names`` has (every status)."""
        ...

    def prune_indexes(self, names: Sequence[str], *, now: float) -> int:
        """Drop index entries of jobs that are gone (the sweeper's share of
        keeping no entry older than its job); return how many."""
        ...

    def finished_per_minute(self, *, now: float, minutes: int = 60) -> dict[int, int]:
        """How many jobs ended in each of the last ``minutes`` minutes, by epoch
        minute (kept in the store: a restart loses none)."""
        ...

    def purge(self, *, status: JobStatus, older_than: float, now: float) -> int:
        """Delete finished jobs of ``status`` that ended before ``older_than``."""
        ...

    def register_worker(self, owner: str, *, ttl: float, now: float) -> None:
        """Record that worker ``owner`` is alive; forgotten ``ttl`` s after ``now``."""
        ...

    def unregister_worker(self, owner: str) -> None:
        """Forget worker ``owner`` at once (it stopped)."""
        ...

    def wait_for_cancels(self, timeout: float) -> list[UUID]:
        """Block up to ``timeout`` seconds for cancellations of running jobs
        requested in any process; return their ids (possibly none).

        A request made while nobody waited may be missed: heartbeats still
        report it (``HeartbeatResult.cancel_requested``), so this only makes the
        news faster.
        """
        ...

    def watch(self, job_id: UUID, *, now: float) -> Job | None:
        """Mark the job as followed, so that its changes are announced to
        :meth:`wait_for_changes` in every process; return it as it is now, or
        ``None`` if unknown or expired. A job nobody watches announces nothing
        (and costs nothing for it)."""
        ...

    def wait_for_changes(self, timeout: float) -> list[Job] | None:
        """Block up to ``timeout`` seconds for changes of watched jobs; return
        each changed job as that change left it, in the order of the changes
        (possibly none), or ``None`` when some may have been missed (a
        subscription made anew): then any watched job may have changed.

        One caller per store and process (the events hub): it shares the
        announcements among every stream of the process.
        """
        ...

    def claim_callbacks(
        self, owner: str, *, limit: int, lease: float, now: float
    ) -> list[Delivery]:
        """Lease up to ``limit`` due callback deliveries to ``owner``.

        A job that ends (Completed, Failed, Canceled) with a Pending callback is
        due for delivery at once, in the same atomic step that ends it. Each
        claim counts one more attempt (``callback.attempts``) under a fresh
        token; a delivery whose lease ends unfinished is due again (its process
        died).
        """
        ...

    def finish_callback(
        self,
        delivery: Delivery,
        *,
        error: str | None,
        retry_at: float | None,
        now: float,
    ) -> bool:
        """Record a delivery's outcome, only with its current token: delivered
        (``error`` is ``None``), due again at ``retry_at``, or Failed (an
        ``error`` and no ``retry_at``). Returns whether it applied."""
        ...

    def stats(self, *, now: float) -> StoreStats:
        """Counts per status, the oldest waiting job, the live workers."""
        ...

    def queue_size(self) -> int:
        """How many jobs wait (Queued + Scheduled)."""
        ...

    def wait_for_work(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds, or until new work may be due.

        Returns ``False`` only when the whole timeout passed with no wake-up and
        no waiting job falling due, so that an idle caller may skip a claim.
        Spurious wake-ups (``True``) are allowed; callers claim and wait again.
        """
        ...

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
        """:meth:`wait_for_work` for up to ``timeout`` seconds, then
        :meth:`claim` as of the wait's end (``now`` is when the wait began):
        in one round trip where the store can, so that an idle worker takes a
        new job as soon as it is submitted. Every wait claims, woken or not.
        ``confirm``: claims this worker has (those the last call returned),
        renewed first, as :meth:`heartbeat` does: a store whose claims behind
        a wait are provisional until their worker is heard from needs it.
        ``on_sent`` is called (once, whatever happens) when that renewal is on
        its way, before the wait: the caller starts those jobs then."""
        ...

    def stop_waiting(self, owner: str) -> None:
        """End the :meth:`wait_and_claim` of worker ``owner`` under way, if
        any, at once; it and every later one of ``owner`` claim nothing."""
        ...

    def notify(self) -> None:
        """Wake one waiter of :meth:`wait_for_work` (in any process): hands on a
        wake-up that its receiver could not use."""
        ...

    def wait_for_end(self, job_id: UUID, timeout: float) -> None:
        """Block up to ``timeout`` seconds, or until the job may have ended."""
        ...

    def close(self) -> None:
        """Release connections and wake blocked waiters."""
        ...

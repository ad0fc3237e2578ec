"""``RedisStore``: the job store every process of a deployment shares through
Redis; each state transition is one Lua script."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence

import redis
import redis.backoff
import redis.cluster
import redis.connection
import redis.exceptions
import redis.retry
import redis.sentinel

from async_endpoints.errors import (
    IdempotencyConflictError,
    JobFinishedError,
    JobNotFoundError,
    OwnerQuotaError,
    QueueFullError,
    StoreError,
    StoreUnavailableError,
)
from async_endpoints.jobs import (
    Claim,
    ErrorInfo,
    Idempotency,
    Job,
    JobStatus,
    JSONValue,
    Progress,
)
from async_endpoints.stores.redis.codec import (
    _decode_job,
    _dump,
    _dump_progress,
    _encode_job,
    _int,
    _list,
    _num,
    _plain,
    _str,
    _ttl_seconds,
)
from async_endpoints.stores.redis.deliveries import _Deliveries
from async_endpoints.stores.redis.keys import _ScriptName
from async_endpoints.stores.redis.leases import _Leases
from async_endpoints.stores.redis.queries import _Queries
from async_endpoints.stores.redis.waits import _BeforeUnloaded, _Waits

logger = logging.getLogger(__name__)


class RedisStore(_Waits, _Queries, _Leases, _Deliveries):
    """Keeps jobs in Redis, shared by every process and host that uses the prefix.

    :param client: a ``redis.Redis`` client (one server, or the master through
        Sentinel: ``Sentinel(...).master_for(...)``) or a
        ``redis.cluster.RedisCluster``; the store never closes it.
    :param prefix: the key namespace (``ASYNC_ENDPOINTS_KEY_PREFIX``); it becomes the
        ``{prefix}`` hash tag, so it may not contain braces.
    :raises ConfigurationError: the prefix is empty or contains braces.
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
        """Store ``job`` as Queued, due at ``now`` (Scheduled if its ``due_at`` is
        later), and wake one idle worker.

        :param job: the new job.
        :param max_queue_size: how many jobs may wait; 0 means no limit.
        :param idempotency: a key whose live job is returned instead.
        :param now: epoch seconds.
        :returns: the stored job, or the one the idempotency key made.
        :param max_per_owner: how many jobs one owner may have waiting; 0 means
            no limit.
        :raises QueueFullError: ``max_queue_size`` jobs already wait.
        :raises OwnerQuotaError: the job's owner has ``max_per_owner`` waiting.
        :raises IdempotencyConflictError: the key was used with another fingerprint.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        stored = self._submit(
            job, max_queue_size, idempotency, None, now, max_per_owner
        )
        assert stored is not None
        return stored

    def submit_tick(
        self, job: Job, *, schedule: str, tick: float, now: float
    ) -> Job | None:
        """Store the job of a periodic schedule's tick, once (see
        :meth:`JobStore.submit_tick`).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        return self._submit(job, 0, None, (schedule, tick), now, 0)

    def _submit(
        self,
        job: Job,
        max_queue_size: int,
        idempotency: Idempotency | None,
        tick: tuple[str, float] | None,
        now: float,
        max_per_owner: int,
    ) -> Job | None:
        due = max(now, job.due_at if job.due_at is not None else now)
        status = JobStatus.SCHEDULED if due > now else JobStatus.QUEUED
        stored = dataclasses.replace(
            job, status=status, due_at=due, last_updated_at=now, version=1
        )
        record = ttl_ms = idem = ""
        if idempotency is not None:
            idem = idempotency.key
            record = f"{job.id}:{idempotency.fingerprint}"
            ttl_ms = str(max(1, math.ceil(idempotency.ttl * 1000)))
        args = [
            str(max_queue_size),
            _num(self._server(due)),
            str(job.id),
            record,
            ttl_ms,
            job.owner or "",
            _num(job.created_at),
            tick[0] if tick else "",
            _num(tick[1]) if tick else "",
            str(max_per_owner),
            "1" if status is JobStatus.QUEUED else "",
            idem,
            job.name,
        ]
        keys = self._declared(
            self._keys.job(job.id),
            self._keys.ready,
            self._keys.wake,
            self._keys.idem(idem),
            self._keys.job_prefix,
            self._keys.status_index(status.value),
            self._keys.name_index(job.name),
            self._keys.owner_index(job.owner or ""),
            self._keys.owners,
            self._keys.ticks,
            self._keys.owner_waiting_prefix + (job.owner or ""),
            self._keys.status_prefix,
            self._keys.fair,
        )
        # Not grouped (see _grouped): measured, submits sent together cost the
        # web process more CPU than they save.
        reply = _list(self._call("submit", keys, args + _encode_job(stored)))
        code = _int(reply[0])
        if code == -1:
            raise QueueFullError(
                f"The queue is full ({max_queue_size} jobs wait); try again later.",
                retry_after=1.0,
            )
        if code == -2:
            raise IdempotencyConflictError(
                "This Idempotency-Key was already used with a different request; "
                "send a new key for a new request."
            )
        if code == -3:
            return None
        if code == -4:
            raise OwnerQuotaError(
                "This owner has reached its limit of waiting jobs "
                f"({max_per_owner}, "
                "ASYNC_ENDPOINTS_MAX_QUEUED_PER_OWNER); try again later.",
                retry_after=1.0,
            )
        if code == 1:
            return _decode_job(_str(reply[1]), reply[2])
        return stored

    def last_ticks(self) -> dict[str, tuple[float, uuid.UUID | None]]:
        """Each periodic schedule's last tick and the job it made (see
        :meth:`JobStore.last_ticks`).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            raw: object = self._redis().hgetall(self._keys.ticks)
        ticks: dict[str, tuple[float, uuid.UUID | None]] = {}
        for key, value in raw.items() if isinstance(raw, dict) else ():
            tick, _, job_id = _str(_plain(value)).partition(" ")
            ticks[_str(_plain(key))] = (
                float(tick),
                uuid.UUID(job_id) if job_id else None,
            )
        return ticks

    def find_idempotent(self, idempotency: Idempotency, *, now: float) -> Job | None:
        """The live job that ``idempotency.key`` made, or ``None``.

        A read, not a transition: the key, then the job it names (a job that
        expired in between reads as no job). Redis expires both keys itself, so
        ``now`` is not consulted.

        :raises IdempotencyConflictError: the key was used with another fingerprint.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            raw: object = self._redis().get(self._keys.idem(idempotency.key))
        record = _plain(raw)
        if record is None:
            return None
        record = _str(record)
        job = self.get(uuid.UUID(record[:36]), now=now)
        if job is not None and record[37:] != idempotency.fingerprint:
            raise IdempotencyConflictError(
                "This Idempotency-Key was already used with a different request; "
                "send a new key for a new request."
            )
        return job

    def complete(
        self, claim: Claim, result: JSONValue, *, ttl: float, now: float
    ) -> bool:
        """Mark the job Completed with ``result`` (Canceled if cancel was asked).

        :param claim: the worker's claim; its token must still be current.
        :param result: the handler's JSON result.
        :param ttl: seconds the finished job is kept.
        :param now: epoch seconds.
        :returns: whether the claim was still held (and the job finished).
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        keys, args = self._complete_call(claim, result, ttl, now)
        return _int(self._grouped([("complete", keys, args)])[0]) == 1

    def _complete_call(
        self, claim: Claim, result: JSONValue, ttl: float, now: float
    ) -> tuple[list[str], list[str]]:
        encoded = "" if result is None else _dump(result)
        args = [str(claim.job_id), claim.token, _num(now), encoded, _ttl_seconds(ttl)]
        keys = self._declared(
            self._keys.job(claim.job_id),
            self._keys.claimed,
            self._keys.request(claim.token.rpartition(":")[0]),
            self._keys.callbacks,
            self._keys.status_prefix,
            self._keys.finished,
            self._keys.running,
            self._keys.parked_prefix,
            self._keys.ready,
            self._keys.wake,
            self._keys.name_prefix,
            self._keys.names,
        )
        return keys, args

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
        """:meth:`complete`, then :meth:`claim`, in one round trip (a pipeline of
        the two scripts; each is atomic, the pair need not be).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if limit <= 0:
            return self.complete(claim, result, ttl=ttl, now=now), []
        with self._translate_errors():
            client = self._redis()
        if isinstance(client, redis.cluster.RedisCluster):
            done = self.complete(claim, result, ttl=ttl, now=now)
            claims = self.claim(
                owner, limit=limit, lease=lease, now=now, request_id=request_id
            )
            return done, claims
        complete_keys, complete_args = self._complete_call(claim, result, ttl, now)
        claim_keys, claim_args = self._claim_call(owner, limit, lease, now, request_id)
        calls: list[tuple[_ScriptName, list[str], list[str]]] = [
            ("complete", complete_keys, complete_args),
            ("claim", claim_keys, claim_args),
        ]
        completed, claimed = self._grouped(calls)
        return _int(completed) == 1, self._claimed(claimed, now, lease)

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
        """:meth:`wait_for_work`, then :meth:`claim`, in one round trip: the
        claim is sent behind the ``BLPOP`` and Redis runs it the moment the
        wait ends (a job submitted meanwhile is leased before its submitter
        has read the reply). The claim's instants are moved on by the time the
        wait took, on Redis's clock. On a Cluster, two round trips. When the
        last claim left jobs due, it claims at once, without a wait. After
        :meth:`stop_waiting` for ``owner``, it claims nothing.

        A job claimed behind a wait is provisional until its worker shows it
        has the claim: ``confirm`` (the claims the last call returned) renews
        their leases in the same write, ahead of the wait, which does so;
        ``on_sent`` is called once that write is out (start those jobs then).

        :raises StoreUnavailableError: Redis cannot be reached (the claim may
            have run: send it again with the same ``request_id``).
        """
        if owner in self._stopped_workers:
            if on_sent is not None:
                on_sent()
            return []
        with self._translate_errors():
            client = self._redis()
        cluster = isinstance(client, redis.cluster.RedisCluster)
        next_due = self._next_due
        due_now = next_due is not None and next_due <= now
        if due_now or cluster or limit <= 0:
            try:
                if confirm:
                    self.heartbeat(confirm, lease=lease, now=now)
            finally:
                if on_sent is not None:
                    on_sent()
            if due_now:  # the last claim left jobs due: no wait
                self._next_due = None
            else:  # a Cluster: the wait, then the claim
                started = time.monotonic()
                self._wait_for_work(timeout, worker=owner)
                now += time.monotonic() - started
                if owner in self._stopped_workers:
                    return []
            return self.claim(
                owner, limit=limit, lease=lease, now=now, request_id=request_id
            )
        keys, args = self._claim_call(owner, limit, lease, now, request_id)
        script = self._scripts["claim"]
        waited = [*args, "1", _num(self._sent_at())]
        command = ("EVALSHA", script.sha, len(keys), *keys, *waited)
        before = None
        if confirm:
            beat_keys, beat_args = self._heartbeat_call(confirm, lease, now)
            before = (
                "EVALSHA",
                self._scripts["heartbeat"].sha,
                len(beat_keys),
                *beat_keys,
                *beat_args,
            )
        started = time.monotonic()
        _, reply = self._wait_for_work(
            timeout, then=command, worker=owner, before=before, on_sent=on_sent
        )
        if isinstance(reply, _BeforeUnloaded):
            # The confirmation was not run (NOSCRIPT): on its own, which loads
            # it; if that fails too, the heartbeat thread renews them soon.
            reply = reply.reply
            try:
                self.heartbeat(confirm, lease=lease, now=now)
            except StoreError:
                logger.warning("could not confirm claims", exc_info=True)
        if reply is None:  # closed before or during the wait
            if self._closed.is_set():
                raise StoreUnavailableError(
                    "The store was closed during a wait; the claim sent behind it "
                    "may have run (send it again with the same request id)."
                )
            return []
        if isinstance(reply, redis.exceptions.NoScriptError):
            # Not run (a first use, a flush, a failover): run it on its own,
            # which loads it (its instants moved on the same way).
            reply = self._call("claim", keys, waited)
        elif isinstance(reply, Exception):
            with self._translate_errors():
                raise reply
        # The claim ran when the wait ended: its instants are moved on as much.
        return self._claimed(_plain(reply), now + time.monotonic() - started, lease)

    def fail(
        self,
        claim: Claim,
        error: ErrorInfo,
        *,
        retry_at: float | None,
        ttl: float,
        now: float,
    ) -> bool:
        """Record a failed attempt: Scheduled at ``retry_at``, or Failed if ``None``.

        A job whose cancellation was requested ends Canceled instead.

        :param claim: the worker's claim; its token must still be current.
        :param error: what went wrong.
        :param retry_at: epoch seconds of the next attempt, or ``None`` to give up.
        :param ttl: seconds a finished job is kept.
        :param now: epoch seconds.
        :returns: whether the claim was still held.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        keys, args = self._fail_call(
            str(claim.job_id), claim.token, error, retry_at, ttl, now
        )
        return _int(self._call("fail", keys, args)) == 1

    def report_progress(self, claim: Claim, progress: Progress, *, now: float) -> bool:
        """Record the running job's progress.

        :param claim: the worker's claim; its token must still be current.
        :param progress: the fraction done and an optional message.
        :param now: epoch seconds.
        :returns: whether the claim was still held.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        keys = [self._keys.job(claim.job_id)]
        args = [
            claim.token,
            _num(now),
            _dump_progress(progress),
            str(claim.job_id),
            self._keys.events,
        ]
        return _int(self._call("report_progress", keys, args)) == 1

    def cancel(self, job_id: uuid.UUID, *, ttl: float, now: float) -> Job:
        """Cancel a waiting job, or flag a running one; return the job.

        :param job_id: the job to cancel.
        :param ttl: seconds a canceled job is kept.
        :param now: epoch seconds.
        :raises JobNotFoundError: no such job.
        :raises JobFinishedError: the job is Completed or Failed.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        keys = [
            self._keys.job(job_id),
            self._keys.ready,
            self._keys.callbacks,
            self._keys.status_prefix,
            self._keys.finished,
            self._keys.owner_waiting_prefix,
            self._keys.parked_prefix,
            self._keys.running,
            self._keys.wake,
            self._keys.name_prefix,
            self._keys.names,
            self._keys.fair,
        ]
        args = [
            str(job_id),
            _num(now),
            _ttl_seconds(ttl),
            self._keys.ended(job_id),
            self._keys.cancels,
            self._keys.events,
        ]
        reply = _list(self._call("cancel", keys, args))
        code = _int(reply[0])
        if code == -1:
            raise JobNotFoundError(f"No job with id '{job_id}'.")
        if code == -2:
            raise JobFinishedError(
                f"Job {job_id} has already ended ({_str(reply[1])})."
            )
        return _decode_job(str(job_id), reply[1])

    def watch(self, job_id: uuid.UUID, *, now: float) -> Job | None:
        """Mark the job as followed and read it (see :meth:`JobStore.watch`).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        reply = _list(self._call("watch", [self._keys.job(job_id)], []))
        return _decode_job(str(job_id), reply) if reply else None

    def retry(self, job_id: uuid.UUID, *, now: float) -> Job:
        """Put a Failed job back in the queue (Queued, due now, retry count 0).

        :raises JobNotFoundError: no such job.
        :raises JobFinishedError: the job is not Failed.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        keys = [
            self._keys.job(job_id),
            self._keys.ready,
            self._keys.wake,
            self._keys.callbacks,
            self._keys.status_prefix,
            self._keys.owner_waiting_prefix,
            self._keys.name_prefix,
        ]
        args = [
            str(job_id),
            _num(now),
            _num(self._server(now)),
            self._keys.events,
        ]
        reply = _list(self._call("retry", keys, args))
        code = _int(reply[0])
        if code == -1:
            raise JobNotFoundError(f"No job with id '{job_id}'.")
        if code == -2:
            raise JobFinishedError(
                f"Only a Failed job can be retried; job {job_id} is {_str(reply[1])}."
            )
        return _decode_job(str(job_id), reply[1])

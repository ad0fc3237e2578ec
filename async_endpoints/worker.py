"""``Worker``: this process's dispatcher, handler threads and housekeeping.

One dispatcher thread claims only as many jobs as there are free handler threads
(so a claimed job never waits in an executor queue while its lease ticks), then
blocks in the store until work may be due. One housekeeping thread renews every
held lease in one store call, fails runs that pass the job timeout, and sweeps
expired leases of dead processes. Flask-free.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import tenacity

from async_endpoints.callbacks import deliver_due
from async_endpoints.context import CancelEvent
from async_endpoints.errors import StoreError
from async_endpoints.jobs import Claim
from async_endpoints.manager import JobManager, process_owner

logger = logging.getLogger(__name__)

# How long to back off after a store failure: 0.1 s doubling up to 5 s.
# How long stop() waits, after telling handlers ``shutdown``, for those that stop
# early to return (to log or save what they must); their results are not recorded.
_JITTER = random.Random()
"""The workers' own generator: background threads leave the global one (which
an application or its tests may seed) alone."""
_TOLD_GRACE = 1.0
_STOP_WAITING_BOUND = 2.0
"""How long stop() waits for the store to end the dispatcher's wait, in seconds."""
_PRUNE_EVERY = 6
"""Sweeps between two prunings of the listing indexes (a read prunes too)."""
_CALLBACK_THREADS = 4
"""Callback deliveries one process sends at once."""
_CALLBACK_BATCH = 1
"""Callback deliveries claimed at once: one, sent within its lease (a claim of
several, sent one after another, could outlast the later ones' leases)."""
# How often a worker measures the store's clock again (its own may be stepped).
_CLOCK_SYNC_SECONDS = 60.0
_BACKOFF = tenacity.wait_exponential(multiplier=0.1, max=5.0)


@dataclass(slots=True)
class _Run:
    claim: Claim
    cancelled: CancelEvent = field(default_factory=CancelEvent)
    started: float = field(default_factory=time.monotonic)
    timed_out: bool = False
    running: bool = False  # a handler thread took it up
    returned: threading.Event = field(default_factory=threading.Event)


class Worker:
    """Runs jobs of one :class:`JobManager` in a thread pool of this process.

    :param manager: the manager whose jobs it runs.
    :param name: a label for thread names and logs.
    """

    def __init__(self, manager: JobManager, *, name: str = "async-endpoints") -> None:
        settings = manager.settings
        self.manager = manager
        self.pid = os.getpid()
        self.owner = process_owner()
        self._name = name
        self._concurrency = settings.max_concurrency
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        # By claim token: a job can be run here twice at once (a timed-out run
        # still executing, and its retry), and each run holds a thread.
        self._runs: dict[str, _Run] = {}
        self._claiming = False  # the dispatcher has a claim in flight
        self._stopping = threading.Event()
        self._hurry = threading.Event()
        # Set by a handler thread whose follow-up claim found nothing due: the
        # dispatcher then waits for a wake-up instead of claiming in vain.
        self._drained = False
        # Daemon threads, not a ThreadPoolExecutor: the interpreter joins an
        # executor's threads at exit, so one stuck handler would keep a gunicorn
        # worker (or the CLI worker) alive past its shutdown grace period.
        self._queue: queue.SimpleQueue[_Run | None] = queue.SimpleQueue()
        self._handler_threads = [
            threading.Thread(target=self._serve, name=f"{name}-{n}", daemon=True)
            for n in range(1, self._concurrency + 1)
        ]
        self._threads = [
            threading.Thread(
                target=self._dispatch, name=f"{name}-dispatcher", daemon=True
            ),
            threading.Thread(
                target=self._housekeep, name=f"{name}-housekeeping", daemon=True
            ),
            threading.Thread(
                target=self._listen_for_cancels, name=f"{name}-cancels", daemon=True
            ),
            # Heartbeats on their own thread: the housekeeping thread records
            # timeouts and expired leases, whose signals run user receivers.
            threading.Thread(
                target=self._keep_alive, name=f"{name}-heartbeat", daemon=True
            ),
        ]
        if settings.callback_hosts:
            # Deliveries on threads of their own: a slow receiver (up to the
            # timeout) holds up no job, and no more than one of the deliveries.
            self._threads += [
                threading.Thread(
                    target=self._deliver_callbacks,
                    name=f"{name}-callbacks-{n}",
                    daemon=True,
                )
                for n in range(1, _CALLBACK_THREADS + 1)
            ]
        self._started = False

    def __repr__(self) -> str:
        return f"<Worker owner={self.owner} running={len(self._runs)}>"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._started and not self._stopping.is_set()

    def held_claims(self) -> list[Claim]:
        """The claims of the jobs running now."""
        with self._lock:
            return [run.claim for run in self._runs.values() if not run.timed_out]

    def start(self) -> None:
        """Start the dispatcher and housekeeping threads (once)."""
        if self._started:
            return
        self._started = True
        for thread in [*self._handler_threads, *self._threads]:
            thread.start()
        # An interpreter that exits (a script, `flask run` stopped, a reload)
        # kills daemon threads: hand their jobs back first, without a grace
        # period, so they do not wait for their leases to expire.
        atexit.register(self._at_exit)
        logger.info(
            "async-endpoints worker %s started (%d threads)",
            self.owner,
            self._concurrency,
        )

    def stop(self, grace: float | None = None) -> None:
        """Stop claiming, let running jobs finish within ``grace`` seconds, and
        hand the unfinished ones back to the queue at once.

        A thread cannot be killed: a handed-back job whose handler still runs is
        fenced out by its claim token, so its late outcome is discarded.
        """
        if grace is None:
            grace = self.manager.settings.shutdown_grace_seconds
        self._stopping.set()
        self.manager.callbacks_due.set()  # the delivery thread sees the stop
        if not self._started:
            return
        # The dispatcher's wait ends now, and the claim sent behind it takes
        # nothing (stop() waits for a claim in flight); before any hand-back,
        # whose wake-up would otherwise let that claim take the job again. On a
        # thread of its own, waited for briefly: a store that does not answer
        # must not hold the stop for long.
        ending = threading.Thread(
            target=self._stop_waiting, name=f"{self._name}-stop", daemon=True
        )
        ending.start()
        ending.join(_STOP_WAITING_BOUND)
        atexit.unregister(self._at_exit)
        deadline = time.monotonic() + grace
        with self._lock:
            while (
                (self._runs or self._claiming)
                and time.monotonic() < deadline
                and not self._hurry.is_set()
            ):
                # Short slices, so that hurry() (e.g. from a signal handler) is seen.
                self._slot_free.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            leftover = list(self._runs.values())
            # Handed back: a queued run that a thread has not started yet is
            # skipped (it is no longer in _runs), so it runs only where reclaimed.
            self._runs.clear()
        if leftover:
            # The hand-back is decided (and fenced) before the handlers are told,
            # so an early return cannot reach the store as a result first.
            try:
                self.manager.release(
                    [run.claim for run in leftover if not run.timed_out]
                )
                logger.warning(
                    "handed %d unfinished job(s) back to the queue", len(leftover)
                )
            except StoreError:
                logger.exception(
                    "could not hand %d job(s) back; their leases will expire and "
                    "the sweeper will recover them",
                    len(leftover),
                )
            for run in leftover:
                run.cancelled.cancel("shutdown")
            told_until = time.monotonic() + _TOLD_GRACE
            for run in leftover:
                if run.running and not self._hurry.is_set():
                    run.returned.wait(max(0.0, told_until - time.monotonic()))
        # The dispatcher may sit in a blocking store wait; it checks the stop flag
        # before it claims again (and hands back a claim that raced the stop), so
        # only the housekeeping thread is joined.
        for thread in (self._threads[1], self._threads[3]):  # housekeeping, beats
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        for _ in self._handler_threads:
            self._queue.put(None)
        try:
            self.manager.unregister_worker(self.owner)
        except Exception:
            logger.warning("could not unregister worker %s", self.owner, exc_info=True)

    def _stop_waiting(self) -> None:
        try:
            self.manager.store.stop_waiting(self.owner)
        except StoreError:
            logger.warning(
                "could not end the worker's wait for work; it ends within "
                "POLL_INTERVAL_SECONDS",
                exc_info=True,
            )

    def _at_exit(self) -> None:
        if self.pid == os.getpid():  # not in a forked child that inherited it
            self.stop(grace=0)

    def hurry(self) -> None:
        """Cut short the grace period of a :meth:`stop` under way (safe to call
        from a signal handler): unfinished jobs are handed back at once."""
        self._hurry.set()

    # -- threads -----------------------------------------------------------------

    def _free_slots(self) -> tuple[int, bool]:
        """Free handler threads, once there is one; and whether the thread that
        freed it found nothing due (then a claim now would come back empty)."""
        with self._lock:
            waited = False
            while len(self._runs) >= self._concurrency and not self._stopping.is_set():
                waited = True
                self._slot_free.wait(1.0)
            drained, self._drained = waited and self._drained, False
            return self._concurrency - len(self._runs), drained

    def _dispatch(self) -> None:
        failures = 0
        # A claim whose reply was lost is sent again under the same request id
        # while its leases last: it answers with the jobs it took.
        request: str | None = None
        request_until = 0.0
        lease = self.manager.settings.claim_timeout_seconds
        poll = self.manager.settings.poll_interval_seconds
        # Whether the next claim waits first: the last one got fewer jobs than
        # asked (none is due), or came from a wait (a job that came alone).
        short = False
        # Jobs claimed behind a wait are provisional until this process is heard
        # from (see RedisStore.wait_and_claim): they start once the write of the
        # next wait, which confirms them, is out; so a run never starts
        # unconfirmed, and the confirmation costs no round trip of its own.
        pending: list[_Run] = []
        waited = False  # the claim in flight (or lost) was sent behind a wait

        def start_pending() -> None:
            runs, pending[:] = list(pending), []
            for run in runs:
                self._queue.put(run)

        while not self._stopping.is_set():
            free, drained = self._free_slots()
            if self._stopping.is_set():
                break
            try:
                resend = request is not None and time.monotonic() <= request_until
                if not resend:
                    request = uuid.uuid4().hex
                    # Sent again (its leases renewed) while they last.
                    request_until = time.monotonic() + 0.8 * lease
                with self._lock:
                    self._claiming = True
                waits = (drained or short) and not resend
                if not resend:
                    waited = waits
                if waits:
                    # A wait for a wake-up (or a known job falling due, or the
                    # poll interval) with the claim sent behind it, in one round
                    # trip; at once if the last claim said more jobs are due.
                    # stop() ends the wait.
                    try:
                        claims = self.manager.wait_and_claim(
                            self.owner,
                            free,
                            poll,
                            request_id=request,
                            confirm=[run.claim for run in pending],
                            on_sent=start_pending,
                        )
                    finally:
                        if pending and not self._stopping.is_set():
                            # The write was never made: confirmed on their own.
                            self._confirm([run.claim for run in pending])
                            start_pending()
                else:
                    if pending:
                        self._confirm([run.claim for run in pending])
                        start_pending()
                    # Jobs are due, or a claim's reply was lost: at once (jobs
                    # claimed by a lost reply get no heartbeat until they are here).
                    claims = self.manager.claim(self.owner, free, request_id=request)
                request = None
                failures = 0  # answered: the store is reachable
                short = waits or len(claims) < free
                if not claims:
                    with self._lock:
                        self._claiming = False
                        self._slot_free.notify_all()
                    continue
            except Exception:
                with self._lock:
                    self._claiming = False
                if self._stopping.is_set():
                    break
                failures += 1
                delay = self._backoff(failures)
                if request is not None:
                    # A claim whose reply may have been lost is sent again before
                    # the leases it may have taken end.
                    delay = min(delay, max(0.0, request_until - time.monotonic()))
                logger.exception("claiming jobs failed; retrying in %.1f s", delay)
                self._stopping.wait(delay)
                continue
            with self._lock:
                stopped = self._stopping.is_set()
                if not stopped:
                    runs = [_Run(claim=claim) for claim in claims]
                    for run in runs:
                        self._runs[run.claim.token] = run
                    self._claiming = False
                    left = self._concurrency - len(self._runs)
            if stopped:
                # Stopped between claim and start: hand them back (stop() waits
                # for this, as a claim is still in flight), outside the lock.
                self._release_quietly(claims)
                with self._lock:
                    self._claiming = False
                    self._slot_free.notify_all()
                break
            if waits and left > 0:
                pending[:] = runs  # confirmed by the next wait, sent at once
                continue
            if waited:
                # No slot left for a wait, or a lost reply sent again: the
                # claims are confirmed first.
                self._confirm(claims)
            for run in runs:
                self._queue.put(run)
        # Stopped with jobs claimed but not started: handed back (stop() hands
        # back only what is still in _runs when its grace period ends).
        with self._lock:
            unstarted = [r for r in pending if self._runs.pop(r.claim.token, None)]
            self._slot_free.notify_all()
        if unstarted:
            self._release_quietly([r.claim for r in unstarted])

    def _backoff(self, failures: int) -> float:
        """The pause after ``failures`` store errors in a row: exponential, but
        never longer than a third of the lease, so that after an outage work
        resumes while leases taken before it may still be renewed."""
        return min(_backoff(failures), self.manager.settings.claim_timeout_seconds / 3)

    def _confirm(self, claims: list[Claim]) -> None:
        """Tell the store this process has ``claims`` (a heartbeat); if it
        cannot be reached, the heartbeat thread does it within a third of
        the lease."""
        try:
            self.manager.heartbeat(claims)
        except StoreError:
            logger.warning("could not confirm %d claim(s)", len(claims), exc_info=True)

    def _release_quietly(self, claims: list[Claim]) -> None:
        try:
            self.manager.release(claims)
        except Exception:
            logger.exception("could not hand back %d claimed job(s)", len(claims))

    def _serve(self) -> None:
        run = self._queue.get()
        while run is not None:
            # A thread that finishes a job claims its next one in the same round
            # trip as the completion, and runs it without a dispatcher hop.
            run = self._execute(run) or self._queue.get()

    def _execute(self, run: _Run) -> _Run | None:
        with self._lock:
            if run.claim.token not in self._runs:
                return None  # handed back by stop() before it started
            run.running = True
        try:
            return self._run_and_follow(run)
        finally:
            run.returned.set()

    def _run_and_follow(self, run: _Run) -> _Run | None:
        claims: list[Claim] | None = None
        try:
            claims = self.manager.run(
                run.claim,
                run.cancelled,
                # Decided at completion time: no follow-up once stop() began.
                then_claim=lambda: 0 if self._stopping.is_set() else 1,
                owner=self.owner,
            )
        except Exception:
            logger.exception(
                "recording the outcome of job %s failed; its lease will expire and "
                "it will run again",
                run.claim.job_id,
            )
        with self._lock:
            if claims and not self._stopping.is_set():
                del self._runs[run.claim.token]
                follow = _Run(claim=claims[0])
                self._runs[follow.claim.token] = follow
                return follow
        if claims:
            # Stopped meanwhile: hand them back before this run leaves _runs,
            # so that stop() does not return before the hand-back.
            self._release_quietly(claims)
        with self._lock:
            self._runs.pop(run.claim.token, None)
            self._drained = claims == []  # a follow-up claim found nothing due
            self._slot_free.notify_all()
        return None

    def _housekeep(self) -> None:
        """Timeouts and the lease sweeper (both may run signal receivers)."""
        settings = self.manager.settings
        next_sweep = time.monotonic() + _jittered(settings.sweep_interval_seconds) / 2
        failures = 0
        # Kept until a sweep's reply arrives: sent again, it answers with what the
        # lost reply held, instead of leaving those jobs leased to nobody.
        sweep_request: str | None = None
        sweeps = 0
        while not self._stopping.wait(min(0.5, settings.claim_timeout_seconds / 3)):
            now = time.monotonic()
            self.manager.fire_due_ticks()  # logs its own failures
            try:
                self._expire_timeouts(now)
                if now >= next_sweep:
                    sweep_request = sweep_request or uuid.uuid4().hex
                    self.manager.recover_expired(self.owner, request_id=sweep_request)
                    sweep_request = None
                    sweeps += 1
                    if sweeps % _PRUNE_EVERY == 0:
                        self.manager.prune_indexes()
                    next_sweep = now + _jittered(settings.sweep_interval_seconds)
                failures = 0
            except Exception:
                failures += 1
                delay = self._backoff(failures)
                logger.exception(
                    "worker housekeeping failed; retrying in %.1f s", delay
                )
                self._stopping.wait(delay)

    def _keep_alive(self) -> None:
        """Renew the leases of the running jobs and this worker's registration,
        every third of the lease; measure the store's clock now and then."""
        beat_every = self.manager.settings.claim_timeout_seconds / 3
        failures = 0
        next_sync = time.monotonic() + _CLOCK_SYNC_SECONDS
        wait = 0.0  # register at once, for `stats`
        while not self._stopping.wait(wait):
            try:
                self._beat()
                self.manager.register_worker(self.owner)
                if time.monotonic() >= next_sync:
                    self.manager.sync_clock()
                    next_sync = time.monotonic() + _CLOCK_SYNC_SECONDS
                failures = 0
                wait = beat_every
            except Exception:
                failures += 1
                wait = min(_backoff(failures), beat_every)
                logger.warning(
                    "renewing leases failed; retrying in %.1f s",
                    wait,
                    exc_info=failures == 1,
                )

    def _deliver_callbacks(self) -> None:
        """Send the callback deliveries that are due: at once when a job with a
        callback ends here, when a retry this process scheduled falls due, and
        every sweep interval (deliveries of other processes, and of dead ones)."""
        settings = self.manager.settings
        due = self.manager.callbacks_due
        retry_at: float | None = None
        failures = 0
        while not self._stopping.is_set():
            due.clear()
            try:
                tried, soonest = deliver_due(
                    self.manager.store, settings, self.owner, limit=_CALLBACK_BATCH
                )
            except Exception:
                failures += 1
                delay = _backoff(failures)
                logger.warning(
                    "claiming callback deliveries failed; retrying in %.1f s",
                    delay,
                    exc_info=failures == 1,
                )
                self._stopping.wait(delay)
                continue
            failures = 0
            if soonest is not None:
                retry_at = soonest if retry_at is None else min(retry_at, soonest)
            if tried:
                continue  # more may be due
            wait = _jittered(settings.sweep_interval_seconds)
            if retry_at is not None:
                wait = min(wait, max(0.0, retry_at - time.time()))
            due.wait(wait)
            if retry_at is not None and retry_at <= time.time():
                retry_at = None

    def _listen_for_cancels(self) -> None:
        """Tell this process's runs of a cancel made in another process at once,
        rather than at the next heartbeat."""
        failures = 0
        while not self._stopping.is_set():
            try:
                canceled = self.manager.store.wait_for_cancels(1.0)
            except Exception:
                failures += 1
                delay = _backoff(failures)
                logger.warning(
                    "listening for cancellations failed; retrying in %.1f s "
                    "(heartbeats still carry them)",
                    delay,
                    exc_info=failures == 1,
                )
                self._stopping.wait(delay)
                continue
            failures = 0
            if canceled:
                self.manager.signal_cancel(canceled)

    def _beat(self) -> None:
        claims = self.held_claims()
        if not claims:
            return
        result = self.manager.heartbeat(claims)
        for claim in claims:
            if claim.token not in result.held_tokens:
                logger.warning(
                    "job %s lost its claim (lease expired or handed over); its "
                    "outcome will be discarded",
                    claim.job_id,
                )
                with self._lock:
                    run = self._runs.get(claim.token)
                if run is not None:
                    run.cancelled.cancel("lease_lost")

    def _expire_timeouts(self, now: float) -> None:
        limit = self.manager.settings.job_timeout_seconds
        with self._lock:
            late = [
                run
                for run in self._runs.values()
                if now - run.started > limit and not run.timed_out
            ]
        for run in late:
            try:
                self.manager.fail(run.claim, self.manager.timeout_error())
            except Exception:
                # Tried again at the next tick: the run is not marked yet.
                logger.exception("failing timed-out job %s failed", run.claim.job_id)
                continue
            run.timed_out = True
            # Told only now that the failure is recorded: what the handler
            # returns after this is discarded.
            run.cancelled.cancel("timeout")


def _backoff(failures: int) -> float:
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = failures
    return float(_BACKOFF(state))


def _jittered(interval: float) -> float:
    # ±10% so that many processes do not sweep in step.
    return interval * _JITTER.uniform(0.9, 1.1)

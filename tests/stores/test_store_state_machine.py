"""A Hypothesis state machine that drives a JobStore through random interleavings.

It submits (with and without idempotency keys, against a small queue limit),
claims (several owners, limits), heartbeats, completes, fails (with or without a
retry, by the manager's rule), reports progress, cancels, releases and recovers
expired leases, with claims both current and stale, while its own clock moves
forward by random amounts (the store takes ``now`` as an argument), sometimes
exactly to, or past, a lease's end.

The machine keeps a model: the exact :class:`Job` each job must be, its current
claim token and lease end. After every step it checks that the store agrees:

* every job is what the model says, in exactly one status (and, in the store's
  own indexes, in exactly the one place that status implies);
* ``queue_size()`` is the number of Queued + Scheduled jobs;
* a Completed, Failed or Canceled job never changes again;
* a stale claim token never wins: such calls return ``False`` and change nothing;
* ``retry_count`` never exceeds ``max_retries`` (the store applies whatever
  ``retry_at`` it gets, so the machine passes one only while the manager would:
  while ``retry_count < max_retries``);
* a claimed job is not claimable again until it is released, retried or
  recovered, and ``recover_expired`` takes back only leases that have ended;
* claims take due jobs in their fair-claims turn (every job here has no owner,
  so one group: in the order they became due, a job due at once when it was
  submitted, a job that fell due later at the first claim after, by due time
  and id), recovery the earliest lease end first, under fresh, unique tokens.

It runs against the memory store, fakeredis (real Lua through lupa) and the real
redis-server of the test session. Finished jobs and idempotency keys get a TTL
far beyond any clock the machine reaches: Redis expires keys on its own clock,
not on ``now``, so expiry is left to the contract suite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from async_endpoints.errors import (
    IdempotencyConflictError,
    JobFinishedError,
    JobNotFoundError,
    QueueFullError,
)
from async_endpoints.jobs import Claim, ErrorInfo, Idempotency, Job, JobStatus, Progress
from async_endpoints.stores import JobStore, MemoryStore
from async_endpoints.stores.redis import RedisStore
from tests.stores.conftest import make_job

START = 1000.0
TTL = 1e7  # seconds; far beyond the machine's clock (see the module docstring)
WAITING = (JobStatus.QUEUED, JobStatus.SCHEDULED)
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)

MACHINE_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=50,
    derandomize=True,
    deadline=None,
    database=None,
)

owners = st.sampled_from(["w1", "w2", "w3"])
leases = st.sampled_from([1.0, 5.0, 30.0])
# Text without lone surrogates: those are a known Redis-store bug, see
# test_any_json_payload_round_trips below.
safe_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
payloads = st.one_of(
    st.none(),
    st.integers(-5, 5),
    safe_text,
    st.dictionaries(safe_text, st.one_of(st.integers(), safe_text), max_size=3),
)
results = st.one_of(
    st.none(), st.integers(), safe_text, st.lists(st.integers(), max_size=3)
)
errors = st.builds(
    ErrorInfo,
    type=st.sampled_from(["ValueError", "LeaseExpired", "TryAgain"]),
    message=safe_text,
    stack_trace=st.one_of(st.none(), safe_text),
)
progresses = st.builds(
    Progress,
    fraction=st.floats(0, 1),
    message=st.one_of(st.none(), safe_text),
)


@dataclasses.dataclass
class Expected:
    """The model of one job: what ``store.get`` must return, and its lease."""

    job: Job
    token: str | None = None
    lease_until: float | None = None


class StoreMachine(RuleBasedStateMachine):
    """Random interleavings of every JobStore operation, checked against a model."""

    def __init__(self, store: JobStore) -> None:
        super().__init__()
        self.store = store
        self.now = START
        self.jobs: dict[UUID, Expected] = {}
        self.claims: list[Claim] = []  # every claim ever issued, current or stale
        self.tokens: set[str] = set()
        self.keys: dict[str, tuple[str, UUID]] = {}  # key -> (fingerprint, job)
        self.finished: dict[UUID, Job] = {}  # snapshots taken when a job ended
        # "c:"/"f:" + the token of the complete/fail that applied last: sent again
        # (a lost reply), that same call answers applied and changes nothing.
        self.finished_by: dict[UUID, str] = {}
        self.next_id = 0
        # Fair-claims tags of the due waiting jobs (one group: a counter).
        self.tags: dict[UUID, int] = {}
        self.last_tag = 0

    # -- model helpers -------------------------------------------------------------

    def in_status(self, *statuses: JobStatus) -> list[Expected]:
        return [e for e in self.jobs.values() if e.job.status in statuses]

    def is_current(self, claim: Claim) -> bool:
        expected = self.jobs[claim.job_id]
        return (
            expected.job.status is JobStatus.IN_PROGRESS
            and expected.token == claim.token
        )

    def update(self, job_id: UUID, token: str | None = None, **changes: Any) -> None:
        expected = self.jobs[job_id]
        assert expected.job.status not in FINISHED, "the model changed a finished job"
        # Every change raises the version by one.
        version = expected.job.version + (1 if changes else 0)
        expected.job = dataclasses.replace(expected.job, version=version, **changes)
        expected.token = token
        if token is None:
            expected.lease_until = None
        if expected.job.status in FINISHED:
            self.finished[job_id] = expected.job

    def pick_claim(self, data: st.DataObject) -> Claim:
        live = [c for c in self.claims if self.is_current(c)]
        if live and data.draw(st.integers(0, 3), label="prefer a live claim") > 0:
            return data.draw(st.sampled_from(live), label="live claim")
        return data.draw(st.sampled_from(self.claims), label="any claim")

    def take_token(self, claim: Claim) -> None:
        assert claim.token not in self.tokens, "a claim token was issued twice"
        self.tokens.add(claim.token)
        self.claims.append(claim)

    def lease_live(self, claim: Claim) -> bool:
        until = self.jobs[claim.job_id].lease_until
        return until is not None and until > self.now

    def get(self, job_id: UUID) -> Job | None:
        return self.store.get(job_id, now=self.now)

    def fail_as_the_manager_would(
        self, claim: Claim, error: ErrorInfo, wants_retry: bool, delay: float
    ) -> None:
        """``fail`` with a ``retry_at`` only while retries are left."""
        current = self.is_current(claim)
        before = self.get(claim.job_id)
        job = self.jobs[claim.job_id].job
        retry_at = None
        if wants_retry and job.retry_count < job.max_retries:
            retry_at = self.now + delay
        applied = self.store.fail(
            claim, error, retry_at=retry_at, ttl=TTL, now=self.now
        )
        resent = self.finished_by.get(claim.job_id) == f"f:{claim.token}"
        assert applied == (current or resent)
        if not current:
            assert self.get(claim.job_id) == before, "a stale fail changed the job"
            return
        self.finished_by[claim.job_id] = f"f:{claim.token}"
        common: dict[str, Any] = {
            "error": error,
            "last_updated_at": self.now,
            "handbacks": 0,
        }
        if job.cancel_requested:
            self.update(
                claim.job_id,
                status=JobStatus.CANCELED,
                completed_at=self.now,
                **common,
            )
        elif retry_at is None:
            self.update(
                claim.job_id, status=JobStatus.FAILED, completed_at=self.now, **common
            )
        else:
            self.update(
                claim.job_id,
                status=JobStatus.SCHEDULED,
                retry_count=job.retry_count + 1,
                due_at=retry_at,
                **common,
            )

    # -- the clock -----------------------------------------------------------------

    @rule(seconds=st.one_of(st.sampled_from([0.0, 0.5, 1.0, 5.0]), st.floats(0, 40)))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @precondition(
        lambda self: any(e.lease_until is not None for e in self.jobs.values())
    )
    @rule(data=st.data(), past=st.sampled_from([0.0, 0.001, 1.0]))
    def jump_to_a_lease_end(self, data: st.DataObject, past: float) -> None:
        ends = sorted(
            e.lease_until for e in self.jobs.values() if e.lease_until is not None
        )
        end = data.draw(st.sampled_from(ends), label="lease end")
        self.now = max(self.now, end + past)

    # -- submitting ---------------------------------------------------------------

    @initialize(retries=st.lists(st.integers(0, 2), min_size=1, max_size=3))
    def some_jobs(self, retries: list[int]) -> None:
        """Start every example with a few queued jobs, so that claims, leases and
        retries come within its steps."""
        for max_retries in retries:
            self.submit(None, "", max_retries, 0, None)

    @rule(
        key=st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
        fingerprint=st.sampled_from(["f1", "f2"]),
        max_retries=st.integers(0, 2),
        max_queue_size=st.sampled_from([2, 4, 0]),
        payload=payloads,
    )
    def submit(
        self,
        key: str | None,
        fingerprint: str,
        max_retries: int,
        max_queue_size: int,
        payload: Any,
    ) -> None:
        # Ids in submission order: the stores break ties (same due time, same
        # lease end) by id, and a replayed example must make the same choices.
        self.next_id += 1
        job = make_job(
            now=self.now,
            max_retries=max_retries,
            payload=payload,
            id=UUID(int=(0xA5 << 120) + self.next_id),
        )
        idempotency = None
        if key is not None:
            idempotency = Idempotency(key=key, fingerprint=fingerprint, ttl=TTL)
        known = self.keys.get(key) if key is not None else None
        waiting = len(self.in_status(*WAITING))
        if known is not None and known[0] != fingerprint:
            with pytest.raises(IdempotencyConflictError):
                self.store.submit(
                    job,
                    max_queue_size=max_queue_size,
                    idempotency=idempotency,
                    now=self.now,
                )
            return
        if known is not None:
            # A live key returns its job, as it is now, without the queue check.
            stored = self.store.submit(
                job,
                max_queue_size=max_queue_size,
                idempotency=idempotency,
                now=self.now,
            )
            assert stored == self.jobs[known[1]].job
            return
        if 0 < max_queue_size <= waiting:
            with pytest.raises(QueueFullError):
                self.store.submit(
                    job,
                    max_queue_size=max_queue_size,
                    idempotency=idempotency,
                    now=self.now,
                )
            return
        stored = self.store.submit(
            job, max_queue_size=max_queue_size, idempotency=idempotency, now=self.now
        )
        expected = dataclasses.replace(
            job,
            status=JobStatus.QUEUED,
            due_at=self.now,
            last_updated_at=self.now,
            version=1,
        )
        assert stored == expected
        self.jobs[job.id] = Expected(expected)
        self.last_tag += 1
        self.tags[job.id] = self.last_tag
        if key is not None:
            self.keys[key] = (fingerprint, job.id)

    @rule(
        key=st.sampled_from(["a", "b", "c"]),
        fingerprint=st.sampled_from(["f1", "f2"]),
    )
    def find_idempotent(self, key: str, fingerprint: str) -> None:
        idempotency = Idempotency(key=key, fingerprint=fingerprint, ttl=TTL)
        known = self.keys.get(key)
        if known is None:
            assert self.store.find_idempotent(idempotency, now=self.now) is None
        elif known[0] != fingerprint:
            with pytest.raises(IdempotencyConflictError):
                self.store.find_idempotent(idempotency, now=self.now)
        else:
            found = self.store.find_idempotent(idempotency, now=self.now)
            assert found == self.jobs[known[1]].job

    # -- claiming -----------------------------------------------------------------

    @rule(owner=owners, limit=st.integers(0, 3), lease=leases)
    def claim(self, owner: str, limit: int, lease: float) -> None:
        waiting = {e.job.id for e in self.in_status(*WAITING)}
        self.tags = {i: t for i, t in self.tags.items() if i in waiting}
        # Jobs that fell due since they last waited are tagged by this claim.
        fell_due = sorted(
            (e.job.due_at, str(e.job.id), e.job.id)
            for e in self.in_status(*WAITING)
            if e.job.id not in self.tags
            and e.job.due_at is not None
            and e.job.due_at <= self.now
        )
        for _, _, job_id in fell_due:
            self.last_tag += 1
            self.tags[job_id] = self.last_tag
        claims = self.store.claim(owner, limit=limit, lease=lease, now=self.now)
        assert len(claims) == min(limit, len(self.tags))
        claimed = [c.job_id for c in claims]
        assert len(set(claimed)) == len(claimed), "one job claimed twice at once"
        assert set(claimed) <= set(self.tags), "claimed a job that is not due/waiting"
        # In turn: the lowest tags, lowest first.
        assert claimed == sorted(self.tags, key=self.tags.__getitem__)[: len(claims)]
        for job_id in claimed:
            del self.tags[job_id]
        for c in claims:
            self.take_token(c)
            assert c.lease_until == self.now + lease
            self.update(
                c.job_id,
                token=c.token,
                status=JobStatus.IN_PROGRESS,
                started_at=self.now,
                due_at=None,
                last_updated_at=self.now,
            )
            self.jobs[c.job_id].lease_until = self.now + lease
            assert c.job == self.jobs[c.job_id].job

    @rule(owner=owners, lease=leases, error=errors, delay=st.sampled_from([0.0, 1.0]))
    def an_attempt_fails(
        self, owner: str, lease: float, error: ErrorInfo, delay: float
    ) -> None:
        """A worker claims one job and its attempt fails: retries pile up."""
        before = len(self.claims)
        self.claim(owner, 1, lease)
        for claim in self.claims[before:]:
            self.fail_as_the_manager_would(claim, error, True, delay)

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data(), lease=leases)
    def heartbeat(self, data: st.DataObject, lease: float) -> None:
        picked = data.draw(
            st.lists(st.sampled_from(self.claims), max_size=4), label="claims"
        )
        if data.draw(st.booleans(), label="add a live claim"):
            picked.append(self.pick_claim(data))
        before = {c.job_id: self.get(c.job_id) for c in picked}
        result = self.store.heartbeat(picked, lease=lease, now=self.now)
        # A lease that has ended is lost, even before a sweeper takes it.
        live = [c for c in picked if self.is_current(c) and self.lease_live(c)]
        held = {c.job_id for c in live}
        assert result.held == held, "a stale token was renewed, or a live one lost"
        assert result.held_tokens == {c.token for c in live}
        canceling = {i for i in held if self.jobs[i].job.cancel_requested}
        assert result.cancel_requested == canceling
        for job_id in held:
            self.jobs[job_id].lease_until = self.now + lease
        for job_id, job in before.items():
            assert self.get(job_id) == job, "a heartbeat changed a job"

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data(), result=results)
    def complete(self, data: st.DataObject, result: Any) -> None:
        claim = self.pick_claim(data)
        current = self.is_current(claim)
        before = self.get(claim.job_id)
        applied = self.store.complete(claim, result, ttl=TTL, now=self.now)
        resent = self.finished_by.get(claim.job_id) == f"c:{claim.token}"
        assert applied == (current or resent)
        if not current:
            assert self.get(claim.job_id) == before, "a stale complete changed the job"
            return
        self.finished_by[claim.job_id] = f"c:{claim.token}"
        canceled = self.jobs[claim.job_id].job.cancel_requested
        self.update(
            claim.job_id,
            status=JobStatus.CANCELED if canceled else JobStatus.COMPLETED,
            result=None if canceled else result,
            error=None,
            completed_at=self.now,
            last_updated_at=self.now,
            handbacks=0,
        )

    @precondition(lambda self: bool(self.claims))
    @rule(
        data=st.data(),
        error=errors,
        wants_retry=st.booleans(),
        delay=st.sampled_from([0.0, 1.0, 4.0, 30.0]),
    )
    def fail(
        self, data: st.DataObject, error: ErrorInfo, wants_retry: bool, delay: float
    ) -> None:
        self.fail_as_the_manager_would(self.pick_claim(data), error, wants_retry, delay)

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data(), progress=progresses)
    def report_progress(self, data: st.DataObject, progress: Progress) -> None:
        claim = self.pick_claim(data)
        current = self.is_current(claim)
        before = self.get(claim.job_id)
        applied = self.store.report_progress(claim, progress, now=self.now)
        assert applied == current
        if not current:
            assert self.get(claim.job_id) == before, "a stale report changed the job"
            return
        self.update(
            claim.job_id,
            token=claim.token,
            progress=progress,
            last_updated_at=self.now,
        )

    @precondition(lambda self: bool(self.claims))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        picked = [
            self.pick_claim(data)
            for _ in range(data.draw(st.integers(1, 3), label="how many"))
        ]
        before = {c.job_id: self.get(c.job_id) for c in picked}
        self.store.release(picked, ttl=TTL, now=self.now)
        released = set()
        for c in picked:  # in order: a job released once is no longer held
            if self.is_current(c):
                released.add(c.job_id)
                if self.jobs[c.job_id].job.cancel_requested:
                    # Its handler was told to stop: handed back, it ends Canceled.
                    self.update(
                        c.job_id,
                        status=JobStatus.CANCELED,
                        completed_at=self.now,
                        last_updated_at=self.now,
                    )
                    continue
                self.update(
                    c.job_id,
                    status=JobStatus.QUEUED,
                    due_at=self.now,
                    last_updated_at=self.now,
                    handbacks=self.jobs[c.job_id].job.handbacks + 1,
                )
        for job_id, job in before.items():
            if job_id not in released:
                assert self.get(job_id) == job, "a stale release changed the job"

    # -- canceling ----------------------------------------------------------------

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        ids = list(self.jobs)
        known = ids and data.draw(
            st.sampled_from([True, True, True, False]), label="a known job"
        )
        job_id = data.draw(
            st.sampled_from(ids) if known else st.uuids(), label="job id"
        )
        if job_id not in self.jobs:
            with pytest.raises(JobNotFoundError):
                self.store.cancel(job_id, ttl=TTL, now=self.now)
            return
        expected = self.jobs[job_id]
        status = expected.job.status
        if status in (JobStatus.COMPLETED, JobStatus.FAILED):
            with pytest.raises(JobFinishedError):
                self.store.cancel(job_id, ttl=TTL, now=self.now)
            return
        answer = self.store.cancel(job_id, ttl=TTL, now=self.now)
        if status is JobStatus.IN_PROGRESS and expected.job.cancel_requested:
            pass  # asked again (e.g. a re-sent call): nothing changes
        elif status is JobStatus.IN_PROGRESS:
            # Flagged; the claim stays valid and ends the job Canceled.
            self.update(
                job_id,
                token=expected.token,
                cancel_requested=True,
                last_updated_at=self.now,
            )
        elif status in WAITING:
            self.update(
                job_id,
                status=JobStatus.CANCELED,
                cancel_requested=True,
                due_at=None,
                completed_at=self.now,
                last_updated_at=self.now,
            )
        # A Canceled job is answered as it is.
        assert answer == self.jobs[job_id].job

    # -- recovering -----------------------------------------------------------------

    @rule(
        owner=owners,
        limit=st.integers(1, 3),
        lease=leases,
        then_fail=st.booleans(),
        delay=st.sampled_from([0.0, 2.0]),
    )
    def recover_expired(
        self, owner: str, limit: int, lease: float, then_fail: bool, delay: float
    ) -> None:
        expired: dict[UUID, float] = {
            e.job.id: e.lease_until
            for e in self.in_status(JobStatus.IN_PROGRESS)
            if e.lease_until is not None and e.lease_until <= self.now
        }
        claims = self.store.recover_expired(
            owner, limit=limit, lease=lease, now=self.now
        )
        assert len(claims) == min(limit, len(expired))
        ids = [c.job_id for c in claims]
        assert len(set(ids)) == len(ids)
        assert set(ids) <= set(expired), "recovered a job whose lease had not ended"
        taken = [expired[i] for i in ids]
        left = [end for i, end in expired.items() if i not in set(ids)]
        if taken and left:
            assert max(taken) <= min(left)
        for c in claims:
            self.take_token(c)
            assert c.lease_until == self.now + lease
            assert c.job == self.jobs[c.job_id].job  # re-leased, otherwise unchanged
            expected = self.jobs[c.job_id]
            expected.token = c.token
            expected.lease_until = self.now + lease
        if then_fail:  # what the manager does with what it recovered
            lost = ErrorInfo(type="LeaseExpired", message="lease expired")
            for c in claims:
                self.fail_as_the_manager_would(c, lost, True, delay)

    @precondition(lambda self: bool(self.in_status(JobStatus.IN_PROGRESS)))
    @rule(
        data=st.data(),
        past=st.sampled_from([0.0, 0.001, 1.0]),
        owner=owners,
        limit=st.integers(1, 3),
        lease=leases,
        then_fail=st.booleans(),
    )
    def sweep_after_a_lease_end(
        self,
        data: st.DataObject,
        past: float,
        owner: str,
        limit: int,
        lease: float,
        then_fail: bool,
    ) -> None:
        """A worker dies: the clock reaches its lease's end, a sweeper runs."""
        self.jump_to_a_lease_end(data, past)
        self.recover_expired(owner, limit, lease, then_fail, delay=0.0)

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def every_job_is_as_the_model_says(self) -> None:
        for job_id, expected in self.jobs.items():
            assert self.get(job_id) == expected.job

    @invariant()
    def finished_jobs_never_change(self) -> None:
        # The store equals the model (above), so the model is checked here.
        for job_id, snapshot in self.finished.items():
            assert self.jobs[job_id].job == snapshot

    @invariant()
    def queue_size_counts_the_waiting_jobs(self) -> None:
        assert self.store.queue_size() == len(self.in_status(*WAITING))

    @invariant()
    def retries_stay_within_max_retries(self) -> None:
        for expected in self.jobs.values():
            assert 0 <= expected.job.retry_count <= expected.job.max_retries

    @invariant()
    def each_running_job_has_one_current_token(self) -> None:
        running = self.in_status(JobStatus.IN_PROGRESS)
        assert all(e.token is not None for e in running)
        assert len({e.token for e in running}) == len(running)
        assert all(e.token is None for e in self.jobs.values() if e not in running)

    @invariant()
    def each_job_is_in_exactly_one_index(self) -> None:
        """The store's own bookkeeping puts each job where its status says."""
        waiting = {e.job.id for e in self.in_status(*WAITING)}
        running = {e.job.id for e in self.in_status(JobStatus.IN_PROGRESS)}
        store = self.store
        if isinstance(store, MemoryStore):
            with store._lock:
                assert set(store._leases) == running
                assert store._waiting == len(waiting)
                assert set(store._jobs) == set(self.jobs)
        elif isinstance(store, RedisStore):
            client, keys = redis_client(store), store._keys
            ready = {UUID(m.decode()) for m in client.zrange(keys.ready, 0, -1)}
            claimed = {
                UUID(m.decode()): score
                for m, score in client.zrange(keys.claimed, 0, -1, withscores=True)
            }
            assert ready == waiting
            # Leases in the claimed zset are the model's lease ends, on Redis's
            # clock (the store's measured offset, a multiple of 2**-20 s).
            offset = store._offset or 0.0
            assert claimed == {
                i: (self.jobs[i].lease_until or 0.0) + offset for i in running
            }


# -- one test per backend ------------------------------------------------------------


def run_machine(make_store: Callable[[], JobStore]) -> None:
    class Machine(StoreMachine):
        def __init__(self) -> None:
            super().__init__(make_store())

    run_state_machine_as_test(Machine, settings=MACHINE_SETTINGS)


def redis_client(store: RedisStore) -> Any:
    """The client a fixture's store was made with (to empty or inspect the db)."""
    client = store._client
    assert client is not None
    return client


def flushed(store: JobStore) -> Callable[[], JobStore]:
    """The fixture's Redis store, emptied (``FLUSHDB``) before each example."""
    assert isinstance(store, RedisStore)
    client = redis_client(store)

    def make() -> JobStore:
        client.flushdb()
        return store

    return make


def test_memory_store_state_machine(memory_store: MemoryStore) -> None:
    # A fresh store per example: the fixture's class, nothing shared.
    run_machine(type(memory_store))


def test_fakeredis_store_state_machine(fakeredis_store: JobStore) -> None:
    run_machine(flushed(fakeredis_store))


@pytest.mark.redis
def test_redis_store_state_machine(redis_store: JobStore) -> None:
    run_machine(flushed(redis_store))


# -- payloads ---------------------------------------------------------------------

any_text = st.text(max_size=6)  # lone surrogates included: json.loads makes them
any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), any_text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(any_text, inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.mark.parametrize(
    "backend",
    [
        "memory_store",
        "fakeredis_store",
        pytest.param("redis_store", marks=pytest.mark.redis),
    ],
)
def test_any_json_payload_round_trips(
    backend: str, request: pytest.FixtureRequest
) -> None:
    store: JobStore = request.getfixturevalue(backend)

    @settings(max_examples=60, derandomize=True, deadline=None, database=None)
    @given(payload=any_json)
    @example(payload="\ud800")  # what json.loads('"\\ud800"') returns
    def check(payload: Any) -> None:
        job = make_job(payload=payload)
        stored = store.submit(job, max_queue_size=0, now=START)
        assert stored.payload == payload
        got = store.get(job.id, now=START)
        assert got is not None
        assert got.payload == payload

    check()


def test_the_model_is_not_vacuous() -> None:
    """A fixed walk through the machine's rules, so a broken model cannot pass by
    never reaching the interesting states."""
    machine = StoreMachine(MemoryStore())
    machine.submit(None, "f1", 1, 4, {"a": 1})
    machine.submit("a", "f1", 0, 4, None)
    machine.submit("a", "f1", 0, 4, None)  # idempotent repeat
    machine.submit("a", "f2", 0, 4, None)  # conflict
    machine.claim("w1", 2, 5.0)
    first, second = machine.claims
    machine.now += 6.0  # both leases ended
    machine.recover_expired("w2", 1, 5.0, then_fail=False, delay=0.0)
    stale = first if not machine.is_current(first) else second
    assert not machine.is_current(stale)
    before = machine.get(stale.job_id)
    assert not machine.store.complete(stale, 1, ttl=TTL, now=machine.now)
    assert machine.get(stale.job_id) == before
    for check in (
        machine.every_job_is_as_the_model_says,
        machine.finished_jobs_never_change,
        machine.queue_size_counts_the_waiting_jobs,
        machine.each_running_job_has_one_current_token,
        machine.each_job_is_in_exactly_one_index,
    ):
        check()
    statuses = {e.job.status for e in machine.jobs.values()}
    assert statuses == {JobStatus.IN_PROGRESS}

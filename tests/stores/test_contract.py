"""The JobStore contract, once, against every store (memory, fakeredis, real Redis).

A store that passes this suite is a store.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import pytest

from async_endpoints.errors import (
    IdempotencyConflictError,
    InvalidParameterError,
    JobFinishedError,
    JobNotFoundError,
    OwnerQuotaError,
    QueueFullError,
)
from async_endpoints.jobs import (
    Callback,
    CallbackStatus,
    Claim,
    ErrorInfo,
    Idempotency,
    Job,
    JobStatus,
    Progress,
)
from async_endpoints.stores import JobStore, MemoryStore
from tests.stores.conftest import make_job

NOW = 1000.0
LEASE = 30.0
TTL = 3600.0
BOOM = ErrorInfo(type="ValueError", message="boom", stack_trace="Traceback ...")


def submit(store: JobStore, now: float = NOW, **overrides: object) -> uuid.UUID:
    job = make_job(now=now, **overrides)
    return store.submit(job, max_queue_size=0, now=now).id


def claim_one(store: JobStore, now: float = NOW, owner: str = "w1") -> Claim:
    claims = store.claim(owner, limit=1, lease=LEASE, now=now)
    assert len(claims) == 1
    return claims[0]


def status(store: JobStore, job_id: uuid.UUID, now: float = NOW) -> JobStatus:
    job = store.get(job_id, now=now)
    assert job is not None
    return job.status


# -- submit and get -----------------------------------------------------------


def test_submit_stores_a_queued_job_with_every_field(store: JobStore) -> None:
    job = make_job(
        payload={"data": "x", "n": [1, 2.5, None, True]},
        headers={"x-trace": "t1"},
        route_params={"tenant": "acme"},
        query_params={"tag": ["a", "b"]},
        owner="alice",
        max_retries=5,
    )
    stored = store.submit(job, max_queue_size=0, now=NOW)
    got = store.get(job.id, now=NOW)
    assert got == stored
    assert got is not None
    assert got.status is JobStatus.QUEUED
    assert got.due_at == NOW
    assert got.payload == {"data": "x", "n": [1, 2.5, None, True]}
    assert got.headers == {"x-trace": "t1"}
    assert got.route_params == {"tenant": "acme"}
    assert got.query_params == {"tag": ["a", "b"]}
    assert got.owner == "alice"
    assert got.max_retries == 5
    assert got.retry_count == 0
    assert got.result is None
    assert got.error is None
    assert got.progress is None
    assert got.started_at is None
    assert got.completed_at is None


def test_get_unknown_job_is_none(store: JobStore) -> None:
    assert store.get(uuid.uuid4(), now=NOW) is None


def test_queue_full_at_the_boundary(store: JobStore) -> None:
    for _ in range(2):
        store.submit(make_job(), max_queue_size=2, now=NOW)
    rejected = make_job()
    with pytest.raises(QueueFullError) as info:
        store.submit(rejected, max_queue_size=2, now=NOW)
    assert info.value.retry_after >= 1
    assert store.get(rejected.id, now=NOW) is None
    assert store.queue_size() == 2
    # A claimed job no longer waits, so it frees a place.
    claim_one(store)
    store.submit(make_job(), max_queue_size=2, now=NOW)
    assert store.queue_size() == 2


def test_max_queue_size_zero_means_no_limit(store: JobStore) -> None:
    for _ in range(5):
        store.submit(make_job(), max_queue_size=0, now=NOW)
    assert store.queue_size() == 5


# -- claim --------------------------------------------------------------------


def test_claim_takes_due_jobs_earliest_first_up_to_limit(store: JobStore) -> None:
    first = submit(store, now=NOW)
    second = submit(store, now=NOW + 1)
    third = submit(store, now=NOW + 2)
    claims = store.claim("w1", limit=2, lease=LEASE, now=NOW + 5)
    assert [c.job_id for c in claims] == [first, second]
    for c in claims:
        assert c.job.status is JobStatus.IN_PROGRESS
        assert c.job.started_at == NOW + 5
        assert c.lease_until == NOW + 5 + LEASE
        assert status(store, c.job_id) is JobStatus.IN_PROGRESS
    assert len({c.token for c in claims}) == 2
    rest = store.claim("w2", limit=10, lease=LEASE, now=NOW + 5)
    assert [c.job_id for c in rest] == [third]
    assert store.claim("w2", limit=10, lease=LEASE, now=NOW + 5) == []


def test_claim_ignores_jobs_not_yet_due(store: JobStore) -> None:
    submit(store, now=NOW, due_at=NOW + 10)
    assert store.claim("w1", limit=10, lease=LEASE, now=NOW + 9) == []
    assert len(store.claim("w1", limit=10, lease=LEASE, now=NOW + 10)) == 1


def test_a_job_due_at_once_is_claimable_whatever_the_submitters_clock(
    store: JobStore,
) -> None:
    # A submitter whose clock runs ahead delays nothing: a Queued job takes its
    # turn among the due ones as soon as it is stored.
    job = submit(store, now=NOW + 60)
    assert [c.job_id for c in store.claim("w1", limit=1, lease=LEASE, now=NOW)] == [job]


def test_concurrent_claims_take_each_job_once(store: JobStore) -> None:
    ids = {submit(store) for _ in range(60)}
    taken: list[uuid.UUID] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            claims = store.claim("w", limit=3, lease=LEASE, now=NOW)
            if not claims:
                return
            with lock:
                taken.extend(c.job_id for c in claims)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(taken) == sorted(ids)


# -- complete and fail ---------------------------------------------------------


def test_complete_with_the_token_finishes_the_job(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    assert store.complete(claim, {"ok": [1, "two"]}, ttl=TTL, now=NOW + 3)
    job = store.get(job_id, now=NOW + 3)
    assert job is not None
    assert job.status is JobStatus.COMPLETED
    assert job.result == {"ok": [1, "two"]}
    assert job.error is None
    assert job.completed_at == NOW + 3
    assert job.last_updated_at == NOW + 3
    assert store.queue_size() == 0


def test_a_job_completes_only_once(store: JobStore) -> None:
    submit(store)
    claim = claim_one(store)
    assert store.complete(claim, 1, ttl=TTL, now=NOW)
    # Sent again (its reply was lost): answered as applied, and nothing changes.
    assert store.complete(claim, 2, ttl=TTL, now=NOW + 1)
    assert not store.fail(claim, BOOM, retry_at=None, ttl=TTL, now=NOW)
    job = store.get(claim.job_id, now=NOW)
    assert job is not None
    assert job.result == 1
    assert job.status is JobStatus.COMPLETED


def test_a_stale_token_never_wins(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    forged = Claim(job=claim.job, token="not-the-token", lease_until=claim.lease_until)
    assert not store.complete(forged, "late", ttl=TTL, now=NOW)
    assert not store.fail(forged, BOOM, retry_at=None, ttl=TTL, now=NOW)
    assert not store.report_progress(forged, Progress(fraction=0.5), now=NOW)
    assert store.heartbeat([forged], lease=LEASE, now=NOW).held == frozenset()
    job = store.get(job_id, now=NOW)
    assert job is not None
    assert job.status is JobStatus.IN_PROGRESS
    assert job.result is None
    assert job.progress is None


def test_fail_with_retry_at_schedules_a_retry(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    assert store.fail(claim, BOOM, retry_at=NOW + 2, ttl=TTL, now=NOW + 1)
    job = store.get(job_id, now=NOW + 1)
    assert job is not None
    assert job.status is JobStatus.SCHEDULED
    assert job.retry_count == 1
    assert job.due_at == NOW + 2
    assert job.error == BOOM
    assert job.completed_at is None
    assert store.queue_size() == 1
    assert store.claim("w1", limit=1, lease=LEASE, now=NOW + 1.999) == []
    again = claim_one(store, now=NOW + 2)
    assert again.job.attempt == 2
    assert again.token != claim.token


def test_fail_without_retry_at_fails_the_job(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    assert store.fail(claim, BOOM, retry_at=None, ttl=TTL, now=NOW + 4)
    job = store.get(job_id, now=NOW + 4)
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.error == BOOM
    assert job.completed_at == NOW + 4
    assert job.retry_count == 0
    assert store.claim("w1", limit=1, lease=LEASE, now=NOW + 100) == []


def test_success_after_a_retry_clears_the_error(store: JobStore) -> None:
    job_id = submit(store)
    store.fail(claim_one(store), BOOM, retry_at=NOW, ttl=TTL, now=NOW)
    store.complete(claim_one(store), "fine", ttl=TTL, now=NOW)
    job = store.get(job_id, now=NOW)
    assert job is not None
    assert job.error is None
    assert job.retry_count == 1


def test_report_progress_with_the_token(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    assert store.report_progress(claim, Progress(fraction=0.4, message="half"), now=NOW)
    job = store.get(job_id, now=NOW)
    assert job is not None
    assert job.progress == Progress(fraction=0.4, message="half")
    store.complete(claim, None, ttl=TTL, now=NOW)
    done = store.get(job_id, now=NOW)
    assert done is not None
    assert done.progress == Progress(fraction=0.4, message="half")


# -- leases: heartbeat, recovery, release --------------------------------------


def test_heartbeat_renews_the_lease(store: JobStore) -> None:
    submit(store)
    claim = claim_one(store)
    result = store.heartbeat([claim], lease=LEASE, now=NOW + 20)
    assert result.held == frozenset({claim.job_id})
    # Without the heartbeat the lease would have ended at NOW + 30.
    assert store.recover_expired("sweeper", limit=10, lease=LEASE, now=NOW + 40) == []
    recovered = store.recover_expired("sweeper", limit=10, lease=LEASE, now=NOW + 50)
    assert [c.job_id for c in recovered] == [claim.job_id]


def test_lease_is_not_recovered_before_it_expires(store: JobStore) -> None:
    submit(store)
    claim = claim_one(store)
    early = store.recover_expired("s", limit=10, lease=LEASE, now=NOW + LEASE - 0.001)
    assert early == []
    assert store.complete(claim, "ok", ttl=TTL, now=NOW + 1)


def test_recovery_fences_out_the_old_owner(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    (recovered,) = store.recover_expired("s", limit=10, lease=LEASE, now=NOW + 31)
    assert recovered.token != claim.token
    assert recovered.job.retry_count == 0
    assert recovered.job.attempt == 1
    assert status(store, job_id) is JobStatus.IN_PROGRESS
    assert not store.complete(claim, "late", ttl=TTL, now=NOW + 32)
    assert store.heartbeat([claim], lease=LEASE, now=NOW + 32).held == frozenset()
    lost = ErrorInfo(type="LeaseExpired", message="lease expired")
    assert store.fail(recovered, lost, retry_at=NOW + 40, ttl=TTL, now=NOW + 32)
    job = store.get(job_id, now=NOW + 32)
    assert job is not None
    assert job.status is JobStatus.SCHEDULED
    assert job.retry_count == 1
    assert job.error == lost
    assert job.result is None


def test_two_concurrent_sweepers_recover_a_job_once(store: JobStore) -> None:
    ids = {submit(store) for _ in range(20)}
    store.claim("dead", limit=20, lease=LEASE, now=NOW)
    got: list[uuid.UUID] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def sweep(owner: str) -> None:
        barrier.wait()
        for _ in range(10):
            claims = store.recover_expired(owner, limit=3, lease=LEASE, now=NOW + 31)
            with lock:
                got.extend(c.job_id for c in claims)

    threads = [threading.Thread(target=sweep, args=(f"s{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(got) == sorted(ids)


def test_release_hands_jobs_back_without_counting_an_attempt(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    store.release([claim], ttl=TTL, now=NOW + 5)
    job = store.get(job_id, now=NOW + 5)
    assert job is not None
    assert job.status is JobStatus.QUEUED
    assert job.retry_count == 0
    assert store.queue_size() == 1
    assert not store.complete(claim, "late", ttl=TTL, now=NOW + 5)
    again = claim_one(store, now=NOW + 5)
    assert again.job.attempt == 1
    # Releasing a claim that is no longer held changes nothing.
    store.release([claim], ttl=TTL, now=NOW + 6)
    assert status(store, job_id) is JobStatus.IN_PROGRESS


# -- cancel ---------------------------------------------------------------------


def test_cancel_a_queued_job(store: JobStore) -> None:
    job_id = submit(store)
    job = store.cancel(job_id, ttl=TTL, now=NOW + 1)
    assert job.status is JobStatus.CANCELED
    assert job.completed_at == NOW + 1
    assert store.queue_size() == 0
    assert store.claim("w", limit=10, lease=LEASE, now=NOW + 100) == []
    assert status(store, job_id) is JobStatus.CANCELED


def test_cancel_a_scheduled_job(store: JobStore) -> None:
    job_id = submit(store)
    store.fail(claim_one(store), BOOM, retry_at=NOW + 10, ttl=TTL, now=NOW)
    assert store.cancel(job_id, ttl=TTL, now=NOW + 1).status is JobStatus.CANCELED
    assert store.queue_size() == 0
    assert store.claim("w", limit=10, lease=LEASE, now=NOW + 100) == []


def test_cancel_twice_answers_the_canceled_job(store: JobStore) -> None:
    job_id = submit(store)
    store.cancel(job_id, ttl=TTL, now=NOW)
    assert store.cancel(job_id, ttl=TTL, now=NOW + 1).status is JobStatus.CANCELED


def test_cancel_a_running_job_flags_it_and_it_ends_canceled(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    job = store.cancel(job_id, ttl=TTL, now=NOW + 1)
    assert job.status is JobStatus.IN_PROGRESS
    assert job.cancel_requested
    beat = store.heartbeat([claim], lease=LEASE, now=NOW + 2)
    assert beat.cancel_requested == frozenset({job_id})
    assert store.complete(claim, "ignored", ttl=TTL, now=NOW + 3)
    done = store.get(job_id, now=NOW + 3)
    assert done is not None
    assert done.status is JobStatus.CANCELED
    assert done.completed_at == NOW + 3


def test_a_canceled_running_job_that_fails_is_not_retried(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    store.cancel(job_id, ttl=TTL, now=NOW)
    assert store.fail(claim, BOOM, retry_at=NOW + 1, ttl=TTL, now=NOW + 1)
    assert status(store, job_id) is JobStatus.CANCELED
    assert store.claim("w", limit=10, lease=LEASE, now=NOW + 100) == []


@pytest.mark.parametrize("outcome", ["complete", "fail"])
def test_cancel_a_finished_job_is_refused(store: JobStore, outcome: str) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    if outcome == "complete":
        store.complete(claim, 1, ttl=TTL, now=NOW)
    else:
        store.fail(claim, BOOM, retry_at=None, ttl=TTL, now=NOW)
    with pytest.raises(JobFinishedError):
        store.cancel(job_id, ttl=TTL, now=NOW)


def test_cancel_an_unknown_job(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError):
        store.cancel(uuid.uuid4(), ttl=TTL, now=NOW)


# -- idempotency ------------------------------------------------------------------


def test_idempotency_key_returns_the_same_job(store: JobStore) -> None:
    key = Idempotency(key="Echo:-:k1", fingerprint="f1", ttl=60)
    first = store.submit(make_job(), max_queue_size=0, idempotency=key, now=NOW)
    again = store.submit(make_job(), max_queue_size=0, idempotency=key, now=NOW + 1)
    assert again.id == first.id
    assert store.queue_size() == 1


def test_idempotency_key_with_another_fingerprint_conflicts(store: JobStore) -> None:
    store.submit(
        make_job(),
        max_queue_size=0,
        idempotency=Idempotency(key="k", fingerprint="f1", ttl=60),
        now=NOW,
    )
    with pytest.raises(IdempotencyConflictError):
        store.submit(
            make_job(),
            max_queue_size=0,
            idempotency=Idempotency(key="k", fingerprint="f2", ttl=60),
            now=NOW,
        )


def test_idempotent_repeat_skips_the_queue_limit(store: JobStore) -> None:
    key = Idempotency(key="k", fingerprint="f", ttl=60)
    first = store.submit(make_job(), max_queue_size=1, idempotency=key, now=NOW)
    again = store.submit(make_job(), max_queue_size=1, idempotency=key, now=NOW)
    assert again.id == first.id


def test_racing_idempotent_submissions_make_one_job(store: JobStore) -> None:
    key = Idempotency(key="race", fingerprint="f", ttl=60)
    ids: list[uuid.UUID] = []
    barrier = threading.Barrier(4)

    def go() -> None:
        barrier.wait()
        job = store.submit(make_job(), max_queue_size=0, idempotency=key, now=NOW)
        ids.append(job.id)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(ids) == 4
    assert len(set(ids)) == 1
    assert store.queue_size() == 1


# -- waiting ------------------------------------------------------------------------


def test_wait_for_work_wakes_on_a_submission(store: JobStore) -> None:
    woke = threading.Event()

    def waiter() -> None:
        assert store.wait_for_work(20.0)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)  # let the waiter block; a late start only makes it return early
    submit(store, now=time.time())
    assert woke.wait(10), "wait_for_work did not wake up after a submission"
    thread.join(timeout=10)


def test_wait_for_end_returns_when_the_job_ends(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    ended = threading.Event()

    def waiter() -> None:
        store.wait_for_end(job_id, 20.0)
        ended.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    store.complete(claim, 1, ttl=TTL, now=NOW)
    assert ended.wait(10), "wait_for_end did not return after the job ended"
    thread.join(timeout=10)


def test_find_idempotent_sees_the_live_key(store: JobStore) -> None:
    key = Idempotency(key="look", fingerprint="f", ttl=60)
    assert store.find_idempotent(key, now=NOW) is None
    job = store.submit(make_job(), max_queue_size=0, idempotency=key, now=NOW)
    found = store.find_idempotent(key, now=NOW + 1)
    assert found is not None
    assert found.id == job.id
    other = Idempotency(key="look", fingerprint="g", ttl=60)
    with pytest.raises(IdempotencyConflictError):
        store.find_idempotent(other, now=NOW + 1)


# -- operators: retry, list, purge, stats -------------------------------------------


def test_retry_puts_a_failed_job_back(store: JobStore) -> None:
    job_id = submit(store)
    store.fail(claim_one(store), BOOM, retry_at=NOW, ttl=TTL, now=NOW)
    store.fail(claim_one(store), BOOM, retry_at=None, ttl=TTL, now=NOW + 1)
    again = store.retry(job_id, now=NOW + 2)
    assert again.status is JobStatus.QUEUED
    assert again.retry_count == 0
    assert again.completed_at is None
    assert store.queue_size() == 1
    assert claim_one(store, now=NOW + 2).job_id == job_id


def test_retry_only_takes_failed_jobs(store: JobStore) -> None:
    job_id = submit(store)
    with pytest.raises(JobFinishedError):
        store.retry(job_id, now=NOW)
    with pytest.raises(JobNotFoundError):
        store.retry(uuid.uuid4(), now=NOW)


def test_list_jobs_newest_first_by_status_with_paging(store: JobStore) -> None:
    ids = [submit(store, now=NOW + n) for n in range(5)]
    store.complete(claim_one(store, now=NOW + 10), "x", ttl=TTL, now=NOW + 10)
    everything = store.list_jobs(status=None, offset=0, limit=10, now=NOW + 10)
    assert [j.id for j in everything] == ids[::-1]
    queued = store.list_jobs(status=JobStatus.QUEUED, offset=1, limit=2, now=NOW + 10)
    assert [j.id for j in queued] == [ids[3], ids[2]]
    done = store.list_jobs(status=JobStatus.COMPLETED, offset=0, limit=10, now=NOW + 10)
    assert [j.id for j in done] == [ids[0]]


def test_purge_deletes_old_finished_jobs_of_a_status(store: JobStore) -> None:
    old, new, failed = (submit(store, now=NOW + n / 10) for n in range(3))
    store.complete(claim_one(store, now=NOW + 1), 1, ttl=TTL, now=NOW + 1)
    store.complete(claim_one(store, now=NOW + 1), 2, ttl=TTL, now=NOW + 50)
    store.fail(claim_one(store, now=NOW + 1), BOOM, retry_at=None, ttl=TTL, now=NOW + 1)
    assert (
        store.purge(status=JobStatus.COMPLETED, older_than=NOW + 10, now=NOW + 60) == 1
    )
    assert store.get(old, now=NOW + 60) is None
    assert store.get(new, now=NOW + 60) is not None
    assert store.get(failed, now=NOW + 60) is not None


def test_stats(store: JobStore) -> None:
    running = submit(store, now=NOW - 5)  # submitted first, so claimed first
    submit(store, now=NOW)
    submit(store, now=NOW + 5)
    assert claim_one(store, now=NOW + 5).job_id == running
    store.register_worker("w1", ttl=30, now=NOW)
    store.register_worker("w2", ttl=30, now=NOW + 1)
    stats = store.stats(now=NOW + 6)
    assert stats.counts[JobStatus.QUEUED] == 2
    assert stats.counts[JobStatus.IN_PROGRESS] == 1
    assert stats.counts[JobStatus.COMPLETED] == 0
    assert stats.queue_depth == 2
    assert stats.oldest_waiting_at == NOW
    assert stats.workers == {"w1": NOW, "w2": NOW + 1}
    # A worker that stops registering is forgotten after its ttl.
    store.register_worker("w2", ttl=30, now=NOW + 40)
    assert set(store.stats(now=NOW + 40).workers) == {"w2"}


def test_releasing_a_job_whose_cancel_was_requested_ends_it(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    store.cancel(job_id, ttl=TTL, now=NOW + 1)
    store.release([claim], ttl=TTL, now=NOW + 2)
    job = store.get(job_id, now=NOW + 2)
    assert job is not None
    assert job.status is JobStatus.CANCELED
    assert job.completed_at == NOW + 2
    assert store.queue_size() == 0
    assert store.claim("w", limit=10, lease=LEASE, now=NOW + 100) == []


def test_a_quiet_wait_for_work_says_so(store: JobStore) -> None:
    assert store.wait_for_work(0.05) is False


def test_wait_for_work_returns_when_a_known_job_falls_due(store: JobStore) -> None:
    due = time.time() + 0.3
    submit(store, now=time.time(), due_at=due)
    store.wait_for_work(0.01)  # takes the submission's wake-up, if any
    assert store.claim("w", limit=1, lease=LEASE, now=time.time()) == []
    began = time.monotonic()
    assert store.wait_for_work(20.0) is True
    assert time.monotonic() - began < 10
    assert len(store.claim("w", limit=1, lease=LEASE, now=max(due, time.time()))) == 1


def test_complete_and_claim_finishes_one_and_takes_the_next(store: JobStore) -> None:
    first = submit(store, now=NOW)
    second = submit(store, now=NOW + 1)
    claim = claim_one(store, now=NOW + 2)
    assert claim.job_id == first
    done, claims = store.complete_and_claim(
        claim, {"ok": 1}, ttl=TTL, owner="w1", limit=5, lease=LEASE, now=NOW + 3
    )
    assert done
    assert [c.job_id for c in claims] == [second]
    assert claims[0].job.started_at == NOW + 3
    assert status(store, first) is JobStatus.COMPLETED
    assert status(store, second) is JobStatus.IN_PROGRESS
    # A stale completion is refused, and the claim still happens.
    third = submit(store, now=NOW + 4)
    stale = Claim(job=claims[0].job, token="not-the-token", lease_until=NOW + 9)
    done, claims = store.complete_and_claim(
        stale, "late", ttl=TTL, owner="w1", limit=1, lease=LEASE, now=NOW + 5
    )
    assert not done
    assert [c.job_id for c in claims] == [third]
    assert status(store, second) is JobStatus.IN_PROGRESS


def test_wait_and_claim_takes_a_job_submitted_during_the_wait(
    store: JobStore,
) -> None:
    store.wait_for_work(0.01)  # drop any earlier wake-up
    claimed: list[Claim] = []
    began = time.time()

    def waiter() -> None:
        claimed.extend(
            store.wait_and_claim(
                "w1", limit=5, lease=LEASE, now=time.time(), timeout=20.0
            )
        )

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)  # let the waiter block; a late start only makes it return early
    submitted = time.time()
    job_id = submit(store, now=submitted)
    thread.join(timeout=10)
    assert not thread.is_alive(), "wait_and_claim did not return after a submission"
    assert [c.job_id for c in claimed] == [job_id]
    assert status(store, job_id) is JobStatus.IN_PROGRESS
    # Claimed when the wait ended, not when it began: the job's start and its
    # lease count from then.
    stored = store.get(job_id, now=time.time())
    assert stored is not None
    assert stored.started_at is not None
    assert stored.started_at >= submitted - 0.05
    assert claimed[0].lease_until >= submitted + LEASE - 0.05
    assert time.time() - began < 10


def test_a_quiet_wait_and_claim_claims_nothing(store: JobStore) -> None:
    store.wait_for_work(0.01)  # drop any earlier wake-up
    began = time.monotonic()
    claims = store.wait_and_claim(
        "w1", limit=5, lease=LEASE, now=time.time(), timeout=0.05
    )
    assert claims == []
    assert time.monotonic() - began < 10


def test_wait_and_claim_takes_jobs_already_waiting(store: JobStore) -> None:
    first = submit(store, now=time.time())
    second = submit(store, now=time.time())
    claims = store.wait_and_claim(
        "w1", limit=5, lease=LEASE, now=time.time(), timeout=5.0
    )
    assert sorted(c.job_id for c in claims) == sorted([first, second])


def test_wait_and_claim_sent_again_answers_with_the_same_claims(
    store: JobStore,
) -> None:
    first = submit(store, now=time.time())
    claims = store.wait_and_claim(
        "w1", limit=1, lease=LEASE, now=time.time(), timeout=5.0, request_id="r1"
    )
    submit(store, now=time.time())
    again = store.wait_and_claim(
        "w1", limit=1, lease=LEASE, now=time.time(), timeout=0.05, request_id="r1"
    )
    assert [c.job_id for c in claims] == [first]
    assert [(c.job_id, c.token) for c in again] == [(first, claims[0].token)]
    assert store.queue_size() == 1


def test_wait_and_claim_does_not_wait_while_jobs_are_left_due(
    store: JobStore,
) -> None:
    first = submit(store, now=time.time())
    second = submit(store, now=time.time() + 0.001)
    for _ in range(3):
        store.wait_for_work(0.01)  # drop the submissions' wake-ups
    (claim,) = store.claim("w1", limit=1, lease=LEASE, now=time.time() + 0.002)
    assert claim.job_id == first
    began = time.monotonic()
    claims = store.wait_and_claim(
        "w1", limit=1, lease=LEASE, now=time.time() + 0.002, timeout=20
    )
    assert [c.job_id for c in claims] == [second]
    assert time.monotonic() - began < 2, "it waited for a wake-up with a job due"


def test_stop_waiting_ends_the_wait_and_claims_nothing(store: JobStore) -> None:
    store.wait_for_work(0.01)  # drop any earlier wake-up
    claimed: list[list[Claim]] = []

    def waiter() -> None:
        claimed.append(
            store.wait_and_claim(
                "w1", limit=5, lease=LEASE, now=time.time(), timeout=20.0
            )
        )

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)  # let the waiter block; a late start only makes it return early
    store.stop_waiting("w1")
    thread.join(timeout=10)
    assert not thread.is_alive(), "stop_waiting did not end the wait"
    assert claimed == [[]]
    # Stopped for good: a job now waiting is left to the others.
    job_id = submit(store, now=time.time())
    began = time.monotonic()
    assert (
        store.wait_and_claim("w1", limit=5, lease=LEASE, now=time.time(), timeout=20)
        == []
    )
    assert time.monotonic() - began < 10
    assert status(store, job_id) is JobStatus.QUEUED
    others = store.wait_and_claim(
        "w2", limit=5, lease=LEASE, now=time.time(), timeout=5
    )
    assert [c.job_id for c in others] == [job_id]


def test_notify_wakes_a_waiter(store: JobStore) -> None:
    store.wait_for_work(0.01)  # drop any earlier wake-up
    store.notify()
    began = time.monotonic()
    assert store.wait_for_work(20.0) is True
    assert time.monotonic() - began < 10


# -- hand-backs -----------------------------------------------------------------------


def test_each_release_counts_one_more_handback(store: JobStore) -> None:
    job_id = submit(store)
    first = claim_one(store)
    assert first.job.handbacks == 0
    store.release([first], ttl=TTL, now=NOW + 1)
    job = store.get(job_id, now=NOW + 1)
    assert job is not None
    assert job.status is JobStatus.QUEUED
    assert job.handbacks == 1
    second = claim_one(store, now=NOW + 1)
    assert second.job.handbacks == 1  # the manager sees the count in the claim
    store.release([second], ttl=TTL, now=NOW + 2)
    third = claim_one(store, now=NOW + 2)
    assert third.job.handbacks == 2
    assert third.job.retry_count == 0
    assert third.job.attempt == 1
    # A stale release (claims no longer held) counts nothing.
    store.release([first, second], ttl=TTL, now=NOW + 3)
    running = store.get(job_id, now=NOW + 3)
    assert running is not None
    assert running.status is JobStatus.IN_PROGRESS
    assert running.handbacks == 2


@pytest.mark.parametrize(
    ("outcome", "ends"),
    [
        ("complete", JobStatus.COMPLETED),
        ("retry", JobStatus.SCHEDULED),
        ("fail", JobStatus.FAILED),
        ("complete-canceled", JobStatus.CANCELED),
        ("fail-canceled", JobStatus.CANCELED),
    ],
)
def test_complete_and_every_fail_reset_the_handbacks(
    store: JobStore, outcome: str, ends: JobStatus
) -> None:
    job_id = submit(store)
    for n in range(2):
        store.release([claim_one(store, now=NOW + n)], ttl=TTL, now=NOW + n)
    claim = claim_one(store, now=NOW + 2)
    assert claim.job.handbacks == 2
    if outcome.endswith("-canceled"):
        store.cancel(job_id, ttl=TTL, now=NOW + 2)
    if outcome.startswith("complete"):
        assert store.complete(claim, "done", ttl=TTL, now=NOW + 3)
    else:
        retry_at = NOW + 4 if outcome == "retry" else None
        assert store.fail(claim, BOOM, retry_at=retry_at, ttl=TTL, now=NOW + 3)
    job = store.get(job_id, now=NOW + 3)
    assert job is not None
    assert job.status is ends
    assert job.handbacks == 0
    if ends is JobStatus.SCHEDULED:
        again = claim_one(store, now=NOW + 4)
        assert again.job.handbacks == 0
        assert again.job.attempt == 2


def test_a_handed_back_job_whose_cancel_was_requested_ends_canceled(
    store: JobStore,
) -> None:
    job_id = submit(store)
    store.release([claim_one(store)], ttl=TTL, now=NOW + 1)
    claim = claim_one(store, now=NOW + 1)
    store.cancel(job_id, ttl=TTL, now=NOW + 2)
    store.release([claim], ttl=TTL, now=NOW + 3)
    job = store.get(job_id, now=NOW + 3)
    assert job is not None
    assert job.status is JobStatus.CANCELED
    assert job.completed_at == NOW + 3
    assert job.handbacks == 1  # ended, not handed back: no hand-back counted
    assert store.queue_size() == 0
    assert store.claim("w", limit=10, lease=LEASE, now=NOW + 100) == []


# -- workers ------------------------------------------------------------------------


def test_unregister_worker_forgets_it_at_once(store: JobStore) -> None:
    store.register_worker("w1", ttl=30, now=NOW)
    store.register_worker("w2", ttl=30, now=NOW + 1)
    assert store.stats(now=NOW + 2).workers == {"w1": NOW, "w2": NOW + 1}
    store.unregister_worker("w1")
    assert store.stats(now=NOW + 2).workers == {"w2": NOW + 1}
    # Unknown (or already forgotten) workers are a no-op.
    store.unregister_worker("w1")
    store.unregister_worker("nobody")
    assert store.stats(now=NOW + 2).workers == {"w2": NOW + 1}
    store.unregister_worker("w2")
    assert store.stats(now=NOW + 2).workers == {}
    # A worker that comes back is counted again.
    store.register_worker("w1", ttl=30, now=NOW + 3)
    assert store.stats(now=NOW + 3).workers == {"w1": NOW + 3}


def test_unregister_worker_on_a_store_without_workers(store: JobStore) -> None:
    store.unregister_worker("nobody")
    assert store.stats(now=NOW).workers == {}


# -- cancellations told at once -------------------------------------------------------


@pytest.fixture(params=["fakeredis_store", "redis_store"])
def shared_store(request: pytest.FixtureRequest) -> JobStore:
    """The stores several processes share: they tell every process of a cancel."""
    result: JobStore = request.getfixturevalue(request.param)
    return result


def listen_for_cancels(store: JobStore) -> None:
    """Make ``store`` listen for cancels, and prove it: a probe's cancel is heard.

    The first wait subscribes; a cancel published before the server took the
    subscription would be missed, so probes go on until one is heard. Call it
    first: each probe is claimed at once and stays InProgress (flagged), so it
    never reaches the test's own claims.
    """
    store.wait_for_cancels(0.01)
    for _ in range(5):
        probe = submit(store, now=NOW - 100)
        assert claim_one(store, now=NOW - 100, owner="probe").job_id == probe
        store.cancel(probe, ttl=TTL, now=NOW - 100)
        if probe in store.wait_for_cancels(1.0):
            return
    pytest.fail("wait_for_cancels never heard a probe's cancel")


def test_a_quiet_wait_for_cancels_waits_its_timeout(store: JobStore) -> None:
    began = time.monotonic()
    assert store.wait_for_cancels(0.1) == []
    elapsed = time.monotonic() - began
    assert 0.09 <= elapsed < 5  # it waits (the listener loops on it), not spins


def test_memory_wait_for_cancels_only_waits(memory_store: MemoryStore) -> None:
    # In one process the manager tells its runs directly: nothing to hear.
    job_id = submit(memory_store)
    claim_one(memory_store)
    heard: list[list[uuid.UUID]] = []
    thread = threading.Thread(
        target=lambda: heard.append(memory_store.wait_for_cancels(0.2))
    )
    began = time.monotonic()
    thread.start()
    assert memory_store.cancel(job_id, ttl=TTL, now=NOW + 1).cancel_requested
    thread.join(timeout=10)
    assert heard == [[]]
    assert 0.19 <= time.monotonic() - began < 5


def test_cancel_of_a_running_job_reaches_a_waiter_at_once(
    shared_store: JobStore,
) -> None:
    store = shared_store
    listen_for_cancels(store)
    job_id = submit(store)
    claim_one(store)
    heard: list[list[uuid.UUID]] = []
    thread = threading.Thread(target=lambda: heard.append(store.wait_for_cancels(5.0)))
    began = time.monotonic()
    thread.start()
    job = store.cancel(job_id, ttl=TTL, now=NOW + 1)
    assert job.status is JobStatus.IN_PROGRESS
    assert job.cancel_requested
    thread.join(timeout=10)
    assert heard == [[job_id]]
    assert time.monotonic() - began < 2.5, "the waiter sat out its timeout"


def test_a_second_cancel_of_a_flagged_job_is_not_told_again(
    shared_store: JobStore,
) -> None:
    store = shared_store
    listen_for_cancels(store)
    first = submit(store, now=NOW)
    second = submit(store, now=NOW + 1)
    claims = store.claim("w1", limit=2, lease=LEASE, now=NOW + 1)
    assert [c.job_id for c in claims] == [first, second]
    store.cancel(first, ttl=TTL, now=NOW + 2)
    assert store.wait_for_cancels(5.0) == [first]
    assert store.cancel(first, ttl=TTL, now=NOW + 3).cancel_requested
    # Published in order on one channel: a repeat for ``first`` would come first.
    store.cancel(second, ttl=TTL, now=NOW + 4)
    assert store.wait_for_cancels(5.0) == [second]


# -- calls sent again (a lost reply) ---------------------------------------------


def test_a_submission_sent_again_changes_nothing(store: JobStore) -> None:
    job = make_job(now=NOW)
    store.submit(job, max_queue_size=0, now=NOW)
    claim = claim_one(store, now=NOW + 1)
    again = store.submit(job, max_queue_size=1, now=NOW + 2)  # full queue: no 429
    assert again.id == job.id
    assert status(store, job.id) is JobStatus.IN_PROGRESS
    assert store.queue_size() == 0
    assert store.complete(claim, "done", ttl=TTL, now=NOW + 3)


def test_a_claim_sent_again_answers_with_the_same_claims(store: JobStore) -> None:
    first, second, third = (submit(store, now=NOW + i) for i in range(3))
    claims = store.claim("w1", limit=2, lease=LEASE, now=NOW + 5, request_id="r1")
    assert [c.job_id for c in claims] == [first, second]
    again = store.claim("w1", limit=2, lease=LEASE, now=NOW + 6, request_id="r1")
    assert [(c.job_id, c.token) for c in again] == [(c.job_id, c.token) for c in claims]
    assert status(store, third) is JobStatus.QUEUED  # nothing new was taken
    # Another request id claims anew.
    fresh = store.claim("w1", limit=2, lease=LEASE, now=NOW + 9, request_id="r2")
    assert [c.job_id for c in fresh] == [third]


def test_a_claim_request_is_forgotten_once_one_of_its_jobs_completes(
    store: JobStore,
) -> None:
    """Completing a job shows that its claim's reply arrived: the request is not
    kept any longer (its record would only cost memory)."""
    _first, second, third = (submit(store, now=NOW + i) for i in range(3))
    claims = store.claim("w1", limit=2, lease=LEASE, now=NOW + 5, request_id="r1")
    assert store.complete(claims[0], 1, ttl=TTL, now=NOW + 6)
    later = store.claim("w1", limit=2, lease=LEASE, now=NOW + 7, request_id="r1")
    assert [c.job_id for c in later] == [third]
    assert status(store, second) is JobStatus.IN_PROGRESS


def test_complete_and_claim_sent_again_counts_once(store: JobStore) -> None:
    first, second, third = (submit(store, now=NOW + i) for i in range(3))
    claim = claim_one(store, now=NOW + 5)
    done, claims = store.complete_and_claim(
        claim,
        1,
        ttl=TTL,
        owner="w1",
        limit=1,
        lease=LEASE,
        now=NOW + 6,
        request_id="r1",
    )
    assert done
    assert [c.job_id for c in claims] == [second]
    done, again = store.complete_and_claim(
        claim,
        1,
        ttl=TTL,
        owner="w1",
        limit=1,
        lease=LEASE,
        now=NOW + 7,
        request_id="r1",
    )
    assert done
    assert [(c.job_id, c.token) for c in again] == [(second, claims[0].token)]
    assert status(store, third) is JobStatus.QUEUED
    job = store.get(first, now=NOW + 7)
    assert job is not None
    assert job.completed_at == NOW + 6  # the repeat changed nothing


def test_a_failure_sent_again_counts_once(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store, now=NOW + 1)
    assert store.fail(claim, BOOM, retry_at=NOW + 10, ttl=TTL, now=NOW + 2)
    assert store.fail(claim, BOOM, retry_at=NOW + 20, ttl=TTL, now=NOW + 3)
    job = store.get(job_id, now=NOW + 3)
    assert job is not None
    assert (job.status, job.retry_count, job.due_at) == (
        JobStatus.SCHEDULED,
        1,
        NOW + 10,
    )
    # The other transition by that token is still refused.
    assert not store.complete(claim, "late", ttl=TTL, now=NOW + 4)
    # So is a repeat by the token of an earlier attempt, once a new one ran.
    retry = claim_one(store, now=NOW + 10)
    assert store.complete(retry, "ok", ttl=TTL, now=NOW + 11)
    assert store.fail(claim, BOOM, retry_at=None, ttl=TTL, now=NOW + 12) is False
    assert status(store, job_id, now=NOW + 12) is JobStatus.COMPLETED


def test_a_sweep_sent_again_answers_with_the_same_claims(store: JobStore) -> None:
    ids = [submit(store, now=NOW + i) for i in range(2)]
    store.claim("dead", limit=2, lease=LEASE, now=NOW + 5)
    later = NOW + 5 + LEASE + 1
    taken = store.recover_expired(
        "sweeper", limit=10, lease=LEASE, now=later, request_id="s1"
    )
    assert sorted(c.job_id for c in taken) == sorted(ids)
    again = store.recover_expired(
        "sweeper", limit=10, lease=LEASE, now=later + 1, request_id="s1"
    )
    assert sorted((c.job_id, c.token) for c in again) == sorted(
        (c.job_id, c.token) for c in taken
    )


def test_memory_forgets_expired_keys_and_requests(memory_store: MemoryStore) -> None:
    """A long-lived process does not keep every key and claim request it saw."""
    for n in range(50):
        memory_store.submit(
            make_job(now=NOW),
            max_queue_size=0,
            idempotency=Idempotency(key=f"k{n}", fingerprint="f", ttl=10.0),
            now=NOW,
        )
        memory_store.claim("w", limit=1, lease=LEASE, now=NOW, request_id=f"r{n}")
    assert len(memory_store._idempotency) == len(memory_store._requests) == 50
    submit(memory_store, now=NOW + LEASE + 1)  # any call purges what expired
    assert memory_store._idempotency == {}
    assert memory_store._requests == {}


# -- versions and followed jobs (job events) ----------------------------------------


def announced(store: JobStore, wanted: set[uuid.UUID]) -> list[Job]:
    """The jobs ``wait_for_changes`` announces until each of ``wanted`` came (2 s
    at most), in order."""
    seen: list[Job] = []
    deadline = time.monotonic() + 2.0
    while not wanted <= {j.id for j in seen} and time.monotonic() < deadline:
        seen += store.wait_for_changes(0.2) or ()
    return seen


def changes_until(store: JobStore, wanted: set[uuid.UUID]) -> set[uuid.UUID]:
    """The ids of the jobs :func:`announced` gives."""
    return {job.id for job in announced(store, wanted)}


def test_every_change_raises_the_version(store: JobStore) -> None:
    job_id = submit(store)
    versions = [store.get(job_id, now=NOW).version]  # type: ignore[union-attr]
    claim = claim_one(store)
    assert claim.job.version == versions[-1] + 1
    versions.append(claim.job.version)
    store.report_progress(claim, Progress(fraction=0.5), now=NOW)
    store.fail(claim, BOOM, retry_at=NOW + 1, ttl=TTL, now=NOW)
    claim = claim_one(store, now=NOW + 1)
    store.cancel(job_id, ttl=TTL, now=NOW + 1)
    store.complete(claim, None, ttl=TTL, now=NOW + 1)
    final = store.get(job_id, now=NOW + 1)
    assert final is not None
    assert final.status is JobStatus.CANCELED
    # submit 1, claim, progress, fail, claim, cancel flag, complete (Canceled)
    assert versions[0] == 1
    assert final.version == 7
    assert final.to_dict()["version"] == 7


def test_a_heartbeat_or_a_refused_change_keeps_the_version(store: JobStore) -> None:
    job_id = submit(store)
    claim = claim_one(store)
    store.heartbeat([claim], lease=LEASE, now=NOW + 1)
    stale = Claim(job=claim.job, token="not-the-token", lease_until=NOW + LEASE)
    assert not store.complete(stale, None, ttl=TTL, now=NOW + 1)
    assert store.get(job_id, now=NOW + 1).version == claim.job.version  # type: ignore[union-attr]


def test_watch_answers_the_job_or_none(store: JobStore) -> None:
    job_id = submit(store)
    watched = store.watch(job_id, now=NOW)
    assert watched == store.get(job_id, now=NOW)
    assert store.watch(uuid.uuid4(), now=NOW) is None


def test_changes_of_a_watched_job_are_announced(store: JobStore) -> None:
    watched, other = submit(store), submit(store)
    assert store.wait_for_changes(1.0) is None  # the first call subscribes
    store.watch(watched, now=NOW)
    claims = store.claim("w1", limit=2, lease=LEASE, now=NOW)
    assert {c.job_id for c in claims} == {watched, other}
    seen = changes_until(store, {watched})
    assert watched in seen
    assert other not in seen
    (held,) = [c for c in claims if c.job_id == watched]
    store.report_progress(held, Progress(fraction=0.3), now=NOW)
    assert watched in changes_until(store, {watched})
    store.complete(held, {"ok": True}, ttl=TTL, now=NOW)
    assert watched in changes_until(store, {watched})


def test_each_announcement_is_the_job_as_its_change_left_it(store: JobStore) -> None:
    job_id = submit(store)
    store.wait_for_changes(0.5)
    store.watch(job_id, now=NOW)
    claim = claim_one(store)
    store.report_progress(claim, Progress(fraction=0.25, message="a"), now=NOW)
    store.report_progress(claim, Progress(fraction=0.5, message="b"), now=NOW)
    store.complete(claim, {"ok": True}, ttl=TTL, now=NOW + 1)
    seen: list[Job] = []
    deadline = time.monotonic() + 2.0
    while len(seen) < 4 and time.monotonic() < deadline:
        seen += store.wait_for_changes(0.2) or ()
    assert [j.version for j in seen] == [2, 3, 4, 5]
    assert [j.status for j in seen] == [JobStatus.IN_PROGRESS] * 3 + [
        JobStatus.COMPLETED
    ]
    assert [j.progress for j in seen[1:3]] == [
        Progress(fraction=0.25, message="a"),
        Progress(fraction=0.5, message="b"),
    ]
    assert seen[-1] == store.get(job_id, now=NOW + 1)


def test_a_cancel_and_a_retry_of_a_watched_job_are_announced(store: JobStore) -> None:
    job_id = submit(store, max_retries=0)
    store.wait_for_changes(0.5)
    store.watch(job_id, now=NOW)
    claim = claim_one(store)
    changes_until(store, {job_id})
    store.fail(claim, BOOM, retry_at=None, ttl=TTL, now=NOW)
    assert job_id in changes_until(store, {job_id})
    store.retry(job_id, now=NOW)
    assert job_id in changes_until(store, {job_id})
    store.cancel(job_id, ttl=TTL, now=NOW)
    assert job_id in changes_until(store, {job_id})


# -- callback deliveries ------------------------------------------------------------

HOOK = Callback(url="https://hooks.example.com/done")


def test_a_job_that_ends_with_a_callback_is_due_for_delivery(store: JobStore) -> None:
    with_hook = submit(store, callback=HOOK)
    without = submit(store)
    assert store.claim_callbacks("w1", limit=10, lease=LEASE, now=NOW) == []
    claims = store.claim("w1", limit=2, lease=LEASE, now=NOW)
    for claim in claims:
        store.complete(claim, {"ok": True}, ttl=TTL, now=NOW)
    (delivery,) = store.claim_callbacks("w2", limit=10, lease=LEASE, now=NOW)
    assert delivery.job.id == with_hook != without
    assert delivery.job.status is JobStatus.COMPLETED
    assert delivery.job.result == {"ok": True}
    assert delivery.job.callback == Callback(url=HOOK.url, attempts=1)
    # Leased: nobody else gets it while the lease lasts.
    assert store.claim_callbacks("w3", limit=10, lease=LEASE, now=NOW + 1) == []
    assert store.finish_callback(delivery, error=None, retry_at=None, now=NOW + 1)
    job = store.get(with_hook, now=NOW + 1)
    assert job is not None
    assert job.callback == Callback(
        url=HOOK.url, status=CallbackStatus.DELIVERED, attempts=1
    )
    assert job.to_dict()["callback"] == {
        "url": HOOK.url,
        "status": "Delivered",
        "attempts": 1,
        "lastError": None,
    }
    assert store.claim_callbacks("w2", limit=10, lease=LEASE, now=NOW + 99) == []


def test_a_failed_delivery_is_due_again_at_its_retry_time(store: JobStore) -> None:
    job_id = submit(store, callback=HOOK)
    store.complete(claim_one(store), None, ttl=TTL, now=NOW)
    (first,) = store.claim_callbacks("w1", limit=1, lease=LEASE, now=NOW)
    assert store.finish_callback(first, error="HTTP 500", retry_at=NOW + 2, now=NOW)
    job = store.get(job_id, now=NOW)
    assert job is not None
    assert job.callback == Callback(url=HOOK.url, attempts=1, last_error="HTTP 500")
    assert store.claim_callbacks("w1", limit=1, lease=LEASE, now=NOW + 1.9) == []
    (second,) = store.claim_callbacks("w1", limit=1, lease=LEASE, now=NOW + 2)
    assert second.token != first.token
    assert second.job.callback is not None
    assert second.job.callback.attempts == 2
    # The first attempt's token is stale: its late outcome changes nothing.
    assert not store.finish_callback(first, error=None, retry_at=None, now=NOW + 2)
    assert store.finish_callback(second, error="timed out", retry_at=None, now=NOW + 3)
    job = store.get(job_id, now=NOW + 3)
    assert job is not None
    assert job.callback == Callback(
        url=HOOK.url, status=CallbackStatus.FAILED, attempts=2, last_error="timed out"
    )
    assert store.claim_callbacks("w1", limit=1, lease=LEASE, now=NOW + 999) == []


def test_a_delivery_whose_lease_ended_is_taken_again(store: JobStore) -> None:
    submit(store, callback=HOOK)
    store.complete(claim_one(store), None, ttl=TTL, now=NOW)
    (lost,) = store.claim_callbacks("dead", limit=1, lease=LEASE, now=NOW)
    (again,) = store.claim_callbacks("w2", limit=1, lease=LEASE, now=NOW + LEASE)
    assert again.job.callback is not None
    assert again.job.callback.attempts == 2
    assert not store.finish_callback(lost, error=None, retry_at=None, now=NOW + 31)
    assert store.finish_callback(again, error=None, retry_at=None, now=NOW + 31)


def test_failed_and_canceled_ends_are_delivered_but_not_a_retry(
    store: JobStore,
) -> None:
    retried = submit(store, callback=HOOK)
    store.fail(claim_one(store), BOOM, retry_at=NOW + 10, ttl=TTL, now=NOW)
    assert store.claim_callbacks("w1", limit=5, lease=LEASE, now=NOW) == []
    failed = submit(store, callback=HOOK, max_retries=0)
    claims = store.claim("w1", limit=5, lease=LEASE, now=NOW + 10)
    for claim in claims:
        store.fail(claim, BOOM, retry_at=None, ttl=TTL, now=NOW + 10)
    canceled = submit(store, callback=HOOK, now=NOW + 10)
    store.cancel(canceled, ttl=TTL, now=NOW + 10)
    due = store.claim_callbacks("w1", limit=5, lease=LEASE, now=NOW + 10)
    assert {d.job.id for d in due} == {retried, failed, canceled}
    assert {d.job.status for d in due} == {JobStatus.FAILED, JobStatus.CANCELED}


# -- listing pages (indexes) --------------------------------------------------------


def all_pages(store: JobStore, limit: int, **filters: object) -> list[list[Job]]:
    pages: list[list[Job]] = []
    cursor = None
    for _ in range(100):
        page, cursor = store.list_page(limit=limit, cursor=cursor, now=NOW, **filters)  # type: ignore[arg-type]
        pages.append(page)
        if cursor is None:
            return pages
    raise AssertionError("the pages never end")


def test_pages_list_every_job_once_newest_first(store: JobStore) -> None:
    ids = [submit(store, now=NOW + n) for n in range(7)]
    pages = all_pages(store, 3)
    listed = [j.id for page in pages for j in page]
    assert listed == ids[::-1]
    assert [len(p) for p in pages] == [3, 3, 1]


def test_pages_filter_by_status_handler_and_owner(store: JobStore) -> None:
    a1 = submit(store, now=NOW + 1, name="A", owner="alice")
    b1 = submit(store, now=NOW + 2, name="B", owner="alice")
    (claim,) = store.claim("w", limit=1, lease=LEASE, now=NOW + 2)
    assert claim.job_id == a1
    store.complete(claim, None, ttl=TTL, now=NOW + 2)
    a2 = submit(store, now=NOW + 3, name="A", owner="bob")
    a3 = submit(store, now=NOW + 4, name="A", owner="alice")

    def ids(**filters: object) -> list[uuid.UUID]:
        return [j.id for page in all_pages(store, 2, **filters) for j in page]

    assert ids(owner="alice") == [a3, b1, a1]
    assert ids(name="A") == [a3, a2, a1]
    assert ids(status=JobStatus.QUEUED) == [a3, a2, b1]
    assert ids(status=JobStatus.COMPLETED) == [a1]
    assert ids(owner="alice", status=JobStatus.QUEUED) == [a3, b1]
    assert ids(owner="alice", name="A", status=JobStatus.QUEUED) == [a3]
    assert ids(owner="carol") == []
    assert ids(status=JobStatus.FAILED) == []


def test_pages_stay_consistent_while_jobs_change_status(store: JobStore) -> None:
    ids = [submit(store, now=NOW + n) for n in range(6)]
    first, cursor = store.list_page(limit=2, now=NOW + 10)
    assert [j.id for j in first] == [ids[5], ids[4]]
    # Between two pages, jobs of both pages move on.
    for claim in store.claim("w", limit=6, lease=LEASE, now=NOW + 10):
        if claim.job_id in (ids[0], ids[5]):
            store.complete(claim, None, ttl=TTL, now=NOW + 10)
    rest: list[uuid.UUID] = []
    while cursor is not None:
        page, cursor = store.list_page(limit=2, cursor=cursor, now=NOW + 10)
        rest += [j.id for j in page]
    assert rest == [ids[3], ids[2], ids[1], ids[0]]


def test_a_page_shows_each_job_as_it_is(store: JobStore) -> None:
    job_id = submit(store)
    store.complete(claim_one(store), {"x": 1}, ttl=TTL, now=NOW)
    page, cursor = store.list_page(limit=5, now=NOW)
    assert page == [store.get(job_id, now=NOW)]
    assert cursor is None


def test_a_cursor_from_elsewhere_is_refused(store: JobStore) -> None:
    submit(store)
    for bad in ("nonsense", "eyJ4IjogMX0", "W10"):
        with pytest.raises(InvalidParameterError):
            store.list_page(limit=5, cursor=bad, now=NOW)


def test_counts_and_purge_follow_the_indexes(store: JobStore) -> None:
    done = [submit(store, now=NOW + n) for n in range(3)]
    waiting = submit(store, now=NOW + 5)
    for claim in store.claim("w", limit=3, lease=LEASE, now=NOW + 5):
        store.complete(claim, None, ttl=TTL, now=NOW + 5)
    stats = store.stats(now=NOW + 5)
    assert stats.counts[JobStatus.COMPLETED] == 3
    assert stats.counts[JobStatus.QUEUED] == 1
    assert store.purge(status=JobStatus.COMPLETED, older_than=NOW + 6, now=NOW + 6) == 3
    assert store.stats(now=NOW + 6).counts[JobStatus.COMPLETED] == 0
    assert [j.id for j in store.list_page(limit=10, now=NOW + 6)[0]] == [waiting]
    assert all(store.get(i, now=NOW + 6) is None for i in done)


def test_finished_jobs_are_counted_per_minute(store: JobStore) -> None:
    at = 60_000.0 * 60  # the start of a minute
    for n in range(3):
        submit(store, now=at + n)
    claims = store.claim("w", limit=3, lease=LEASE, now=at + 3)
    store.complete(claims[0], None, ttl=TTL, now=at + 3)
    store.complete(claims[1], None, ttl=TTL, now=at + 61)
    store.fail(claims[2], BOOM, retry_at=None, ttl=TTL, now=at + 62)
    counts = store.finished_per_minute(now=at + 62, minutes=3)
    minute = int(at // 60)
    assert counts == {minute - 1: 0, minute: 1, minute + 1: 2}


def test_an_idempotency_key_finds_its_job(store: JobStore) -> None:
    key = Idempotency(key="scoped-key", fingerprint="f1", ttl=600)
    job = store.submit(make_job(), max_queue_size=0, idempotency=key, now=NOW)
    assert store.idempotent_job("scoped-key", now=NOW) == job
    assert store.idempotent_job("other-key", now=NOW) is None


# -- a dead worker's jobs (gunicorn's child_exit) ----------------------------------


def test_a_dead_workers_jobs_are_recovered_at_once(store: JobStore) -> None:
    for n in range(3):
        submit(store, now=NOW + n)
    mine = store.claim("dead-worker", limit=2, lease=LEASE, now=NOW + 5)
    (other,) = store.claim("live-worker", limit=1, lease=LEASE, now=NOW + 5)
    # Long before their leases end:
    taken = store.recover_owner(
        "dead-worker", "rescuer", limit=10, lease=LEASE, now=NOW + 6
    )
    assert {c.job_id for c in taken} == {c.job_id for c in mine}
    assert all(c.token not in {m.token for m in mine} for c in taken)
    # The dead worker's tokens are fenced out; the live worker keeps its job.
    assert not store.complete(mine[0], None, ttl=TTL, now=NOW + 6)
    assert store.heartbeat([other], lease=LEASE, now=NOW + 6).held == {other.job_id}
    for claim in taken:
        assert store.fail(claim, BOOM, retry_at=NOW + 8, ttl=TTL, now=NOW + 6)
    assert {status(store, c.job_id, NOW + 6) for c in taken} == {JobStatus.SCHEDULED}
    assert (
        store.recover_owner(
            "dead-worker", "rescuer", limit=10, lease=LEASE, now=NOW + 7
        )
        == []
    )


def test_a_handed_back_job_is_not_recovered_again(store: JobStore) -> None:
    submit(store)
    claims = store.claim("leaving", limit=1, lease=LEASE, now=NOW)
    store.release(claims, ttl=TTL, now=NOW)
    assert (
        store.recover_owner("leaving", "rescuer", limit=10, lease=LEASE, now=NOW) == []
    )


# -- scheduled jobs and periodic ticks ----------------------------------------------


def test_a_job_due_later_is_scheduled_until_then(store: JobStore) -> None:
    job = make_job(now=NOW)
    job = dataclasses.replace(job, due_at=NOW + 30)
    stored = store.submit(job, max_queue_size=0, now=NOW)
    assert stored.status is JobStatus.SCHEDULED
    assert stored.due_at == NOW + 30
    assert store.get(job.id, now=NOW) == stored
    assert stored.to_dict()["nextAttemptAt"] is not None
    assert store.queue_size() == 1
    assert store.claim("w", limit=1, lease=LEASE, now=NOW + 29) == []
    (claim,) = store.claim("w", limit=1, lease=LEASE, now=NOW + 30)
    assert claim.job_id == job.id


def test_a_scheduled_job_can_be_canceled_and_counts_for_the_queue_limit(
    store: JobStore,
) -> None:
    job = dataclasses.replace(make_job(now=NOW), due_at=NOW + 60)
    store.submit(job, max_queue_size=0, now=NOW)
    with pytest.raises(QueueFullError):
        store.submit(make_job(now=NOW), max_queue_size=1, now=NOW)
    assert store.cancel(job.id, ttl=TTL, now=NOW).status is JobStatus.CANCELED
    assert store.claim("w", limit=1, lease=LEASE, now=NOW + 61) == []


def test_each_tick_makes_one_job(store: JobStore) -> None:
    def tick(at: float) -> Job | None:
        job = make_job(name="Every", now=at)
        return store.submit_tick(job, schedule="Every", tick=at, now=at)

    assert tick(NOW) is None  # the first tick seen starts the schedule
    assert store.last_ticks() == {"Every": (NOW, None)}
    made = tick(NOW + 60)
    assert made is not None
    assert made.status is JobStatus.QUEUED
    assert tick(NOW + 60) is None  # the same tick again (another process)
    assert tick(NOW + 30) is None  # an older one (a slow clock)
    latest = tick(NOW + 120)
    assert latest is not None
    assert store.last_ticks() == {"Every": (NOW + 120, latest.id)}
    assert store.stats(now=NOW + 120).counts[JobStatus.QUEUED] == 2


def test_pages_go_through_jobs_created_at_the_same_instant(store: JobStore) -> None:
    ids = {submit(store, now=NOW) for _ in range(30)}  # one score for all
    listed = [j.id for page in all_pages(store, 7) for j in page]
    assert len(listed) == 30
    assert set(listed) == ids
    # The same when the job at a page's end, and others, change status between
    # two pages (its entry leaves the index the cursor was found in).
    first, cursor = store.list_page(limit=7, now=NOW)
    for claim in store.claim("w", limit=30, lease=LEASE, now=NOW):
        if claim.job_id == first[-1].id:
            store.complete(claim, None, ttl=TTL, now=NOW)
    rest: list[uuid.UUID] = []
    while cursor is not None:
        page, cursor = store.list_page(limit=7, cursor=cursor, now=NOW)
        rest += [j.id for j in page]
    assert len(rest) == 23
    assert set(rest) == ids - {j.id for j in first}


# -- per-owner quotas ----------------------------------------------------------------


def test_an_owner_may_have_only_so_many_jobs_waiting(store: JobStore) -> None:
    def submit_for(owner: str | None, now: float = NOW) -> Job:
        job = make_job(now=now, owner=owner)
        return store.submit(job, max_queue_size=0, now=now, max_per_owner=2)

    first = submit_for("alice")
    submit_for("alice", NOW + 1)
    with pytest.raises(OwnerQuotaError):
        submit_for("alice", NOW + 2)
    # A claim frees a place; a retry or a hand-back takes one again.
    claims = store.claim("w", limit=1, lease=LEASE, now=NOW)
    assert [c.job_id for c in claims] == [first.id]
    submit_for("bob", NOW + 2)  # other owners are not affected
    for _ in range(3):
        submit_for(None, NOW + 2)  # nor are jobs without an owner
    submit_for("alice", NOW + 3)
    with pytest.raises(OwnerQuotaError):
        submit_for("alice", NOW + 3)
    store.fail(claims[0], BOOM, retry_at=NOW + 60, ttl=TTL, now=NOW + 3)
    # alice has three waiting now (the retry counts): still no room.
    with pytest.raises(OwnerQuotaError):
        submit_for("alice", NOW + 4)
    waiting = [
        j
        for j in store.list_page(owner="alice", limit=10, now=NOW + 4)[0]
        if j.status.is_waiting
    ]
    assert len(waiting) == 3
    for job in waiting:
        store.cancel(job.id, ttl=TTL, now=NOW + 4)
    submit_for("alice", NOW + 5)  # canceled jobs free their places


def test_without_a_quota_an_owner_may_queue_freely(store: JobStore) -> None:
    for n in range(5):
        store.submit(make_job(now=NOW + n, owner="carol"), max_queue_size=0, now=NOW)
    assert store.queue_size() == 5


# -- fair claims between owners ------------------------------------------------------


def claim_order(store: JobStore, count: int, now: float = NOW) -> list[uuid.UUID]:
    """The jobs ``count`` claims of one job each take, in order."""
    return [claim_one(store, now=now).job_id for _ in range(count)]


def test_an_owner_submitting_after_a_burst_does_not_wait_for_it(
    store: JobStore,
) -> None:
    burst = [submit(store, owner="alice") for _ in range(60)]
    late = [submit(store, now=NOW + 1, owner="bob") for _ in range(2)]
    first = claim_order(store, 4, now=NOW + 1)
    assert set(late) <= set(first)  # within the next few claims, not after 60
    # One owner's jobs keep their order.
    rest = claim_order(store, 58, now=NOW + 1)
    assert [j for j in first + rest if j in burst] == burst


def test_owners_with_waiting_jobs_take_turns(store: JobStore) -> None:
    ids = {
        owner: [submit(store, owner=owner) for _ in range(5)]
        for owner in ("alice", "bob", "carol")
    }
    owner_of = {j: o for o, js in ids.items() for j in js}
    order = claim_order(store, 15)
    for turn in range(5):  # every round gives each owner one start
        assert sorted(owner_of[j] for j in order[3 * turn : 3 * turn + 3]) == [
            "alice",
            "bob",
            "carol",
        ]
    for owner, jobs in ids.items():
        assert [j for j in order if owner_of[j] == owner] == jobs


def test_jobs_without_an_owner_are_one_group(store: JobStore) -> None:
    anonymous = [submit(store) for _ in range(30)]
    owned = submit(store, owner="bob")
    order = claim_order(store, 3)
    assert owned in order
    assert [j for j in order if j != owned] == anonymous[: len(order) - 1]


def test_a_job_that_falls_due_later_takes_the_next_turn(store: JobStore) -> None:
    for _ in range(20):
        submit(store, owner="alice")
    claim_order(store, 2)
    later = submit(store, owner="bob", due_at=NOW + 5)  # Scheduled
    assert later not in claim_order(store, 3, now=NOW + 4)
    assert later in claim_order(store, 2, now=NOW + 5)


def test_a_handed_back_job_goes_to_the_back_of_its_owners_line(
    store: JobStore,
) -> None:
    alice = [submit(store, owner="alice") for _ in range(10)]
    bob = [submit(store, owner="bob") for _ in range(10)]
    assert set(claim_order(store, 4)) == {*alice[:2], *bob[:2]}
    held = claim_one(store)
    store.release([held], ttl=TTL, now=NOW)
    order = claim_order(store, 16)
    mine = alice if held.job_id in alice else bob
    assert [j for j in order if j in mine][-1] == held.job_id
    assert sorted(order) == sorted([*alice[2:], *bob[2:]])


def test_an_owner_that_canceled_its_line_is_not_placed_behind_it(
    store: JobStore,
) -> None:
    for _ in range(10):
        submit(store, owner="bob")
    canceled = [submit(store, owner="alice") for _ in range(10)]
    for job_id in canceled:
        store.cancel(job_id, ttl=TTL, now=NOW)
    claim_order(store, 2)
    fresh = submit(store, owner="alice")
    assert fresh in claim_order(store, 2)


# -- per-handler concurrency and rate limits ----------------------------------------


def limited(store: JobStore, n: int, now: float = NOW, **limits: object) -> list[Job]:
    jobs = []
    for k in range(n):
        job = dataclasses.replace(
            make_job(name="Limited", now=now + k / 1000), **limits
        )
        jobs.append(store.submit(job, max_queue_size=0, now=now))
    return jobs


def test_a_concurrency_limit_holds_and_frees_slots_as_jobs_end(store: JobStore) -> None:
    limited(store, 5, concurrency=2)
    other = submit(store, now=NOW)  # an unlimited handler's job, due with them
    first = store.claim("w", limit=10, lease=LEASE, now=NOW)
    names = sorted(c.job.name for c in first)
    assert names == ["Echo", "Limited", "Limited"]  # two slots, and the other job
    assert other in {c.job_id for c in first}
    # The others wait (Queued) and no claim takes them while both slots are held.
    assert store.claim("w", limit=10, lease=LEASE, now=NOW + 1) == []
    assert store.queue_size() == 3
    running = [c for c in first if c.job.name == "Limited"]
    # An end frees a slot: one waiting job can start.
    store.complete(running[0], None, ttl=TTL, now=NOW + 2)
    (second,) = store.claim("w", limit=10, lease=LEASE, now=NOW + 2)
    assert second.job.name == "Limited"
    # A failure (retried later) and a hand-back free theirs too.
    store.fail(running[1], BOOM, retry_at=NOW + 100, ttl=TTL, now=NOW + 3)
    store.release([second], ttl=TTL, now=NOW + 3)
    again = store.claim("w", limit=10, lease=LEASE, now=NOW + 4)
    assert len(again) == 2
    assert store.claim("w", limit=10, lease=LEASE, now=NOW + 5) == []


def test_jobs_waiting_for_a_slot_read_as_queued(store: JobStore) -> None:
    """DESIGN: over a concurrency limit "the others wait, Queued"."""
    jobs = limited(store, 3, concurrency=1)
    (running,) = store.claim("w", limit=5, lease=LEASE, now=NOW)
    for job in jobs:
        if job.id != running.job_id:
            waiting = store.get(job.id, now=NOW)
            assert waiting is not None
            assert waiting.status is JobStatus.QUEUED


def test_a_parked_job_can_be_canceled(store: JobStore) -> None:
    jobs = limited(store, 2, concurrency=1)
    (running,) = store.claim("w", limit=5, lease=LEASE, now=NOW)
    parked = next(j for j in jobs if j.id != running.job_id)
    assert store.cancel(parked.id, ttl=TTL, now=NOW).status is JobStatus.CANCELED
    store.complete(running, None, ttl=TTL, now=NOW + 1)
    assert store.claim("w", limit=5, lease=LEASE, now=NOW + 1) == []


def test_a_rate_limit_spreads_starts_over_its_window(store: JobStore) -> None:
    limited(store, 5, rate_limit="2/60")
    starts: list[float] = []
    for t in (0, 1, 30, 59.9, 60, 61, 119, 120, 121):
        claims = store.claim("w", limit=10, lease=LEASE, now=NOW + t)
        starts += [NOW + t] * len(claims)
        for claim in claims:
            store.complete(claim, None, ttl=TTL, now=NOW + t)
    assert starts == [NOW, NOW, NOW + 60, NOW + 60, NOW + 120]
    # Never more than 2 in any 60 s.
    for s in starts:
        assert len([x for x in starts if s <= x < s + 60]) <= 2


def test_a_rate_limited_job_does_not_hold_up_others(store: JobStore) -> None:
    limited(store, 3, rate_limit="1/60")
    other = submit(store, now=NOW + 1)
    claims = store.claim("w", limit=10, lease=LEASE, now=NOW + 1)
    assert sorted(c.job.name for c in claims) == ["Echo", "Limited"]
    assert other in {c.job_id for c in claims}


def test_a_job_let_out_for_a_slot_and_canceled_lets_the_next_one_out(
    store: JobStore,
) -> None:
    jobs = []
    for k in range(3):  # due one after the other: a known order everywhere
        job = dataclasses.replace(make_job(name="Limited", now=NOW + k), concurrency=1)
        jobs.append(store.submit(job, max_queue_size=0, now=NOW + k))
    (running,) = store.claim("w", limit=5, lease=LEASE, now=NOW + 5)
    assert running.job_id == jobs[0].id  # the other two are parked
    store.complete(running, None, ttl=TTL, now=NOW + 6)  # the next one is let out
    store.cancel(jobs[1].id, ttl=TTL, now=NOW + 7)  # before any claim took it
    (last,) = store.claim("w", limit=5, lease=LEASE, now=NOW + 8)
    assert last.job_id == jobs[2].id  # not stuck behind the canceled one

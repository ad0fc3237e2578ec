"""The job state machine, driven by run_due_jobs() and freezegun."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Run each test that uses ``ae`` on every store."""
    kind: str = request.param
    return kind


START = "2026-01-01T00:00:00Z"


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(START) as frozen:
        yield frozen


def test_queued_to_completed(
    app: Flask, ae: AsyncEndpoints, frozen: FrozenDateTimeFactory
) -> None:
    @ae.post("/echo", name="Echo")
    def echo(ctx: AsyncContext) -> dict[str, object]:
        frozen.tick(2)
        return {"got": ctx.request, "attempt": ctx.attempt, "id": str(ctx.job_id)}

    with app.app_context():
        job = ae.submit("Echo", {"x": 1})
        assert job.status is JobStatus.QUEUED
        assert ae.run_due_jobs() == 1
        done = ae.get_job(job.id)
    assert done is not None
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"got": {"x": 1}, "attempt": 1, "id": str(job.id)}
    body = done.to_dict()
    assert body["createdAt"] == "2026-01-01T00:00:00.000Z"
    assert body["startedAt"] == "2026-01-01T00:00:00.000Z"
    assert body["completedAt"] == "2026-01-01T00:00:02.000Z"
    assert body["lastUpdatedAt"] == "2026-01-01T00:00:02.000Z"


def test_retry_schedule_follows_exponential_backoff(
    app: Flask, ae: AsyncEndpoints, frozen: FrozenDateTimeFactory
) -> None:
    """Delays 2, 4, 8 s: not due just before, due just after; then Failed."""
    attempts: list[int] = []

    @ae.post("/boom", name="Boom")
    def boom(ctx: AsyncContext) -> None:
        attempts.append(ctx.attempt)
        raise ValueError(f"attempt {ctx.attempt} failed")

    with app.app_context():
        job = ae.submit("Boom")
        assert ae.run_due_jobs() == 1
        for retry, delay in enumerate([2, 4, 8], start=1):
            scheduled = ae.get_job(job.id)
            assert scheduled is not None
            assert scheduled.status is JobStatus.SCHEDULED
            assert scheduled.retry_count == retry
            assert scheduled.error is not None
            assert scheduled.error.message == f"attempt {retry} failed"
            frozen.tick(delay - 0.001)
            assert ae.run_due_jobs() == 0, f"retry {retry} ran before its delay"
            frozen.tick(0.002)
            assert ae.run_due_jobs() == 1
            frozen.tick(-0.001)
        failed = ae.get_job(job.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert attempts == [1, 2, 3, 4]
    assert failed.retry_count == 3
    assert failed.error is not None
    assert failed.error.type == "ValueError"
    assert failed.error.message == "attempt 4 failed"
    assert failed.error.stack_trace is not None
    assert "ValueError: attempt 4 failed" in failed.error.stack_trace
    assert failed.completed_at is not None


def test_retry_delay_is_capped(app: Flask, frozen: FrozenDateTimeFactory) -> None:
    app.config["ASYNC_ENDPOINTS_RETRY_MAX_DELAY_SECONDS"] = 3
    ae = AsyncEndpoints(app)

    @ae.post("/boom", name="Boom", max_retries=5)
    def boom(ctx: AsyncContext) -> None:
        raise ValueError

    with app.app_context():
        job = ae.submit("Boom")
        ae.run_due_jobs()  # attempt 1 -> delay 2
        frozen.tick(2)
        ae.run_due_jobs()  # attempt 2 -> delay min(4, 3)
        scheduled = ae.get_job(job.id)
        assert scheduled is not None
        assert scheduled.due_at is not None
        assert scheduled.due_at - scheduled.last_updated_at == pytest.approx(3)


def test_per_handler_max_retries(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/once", name="Once", max_retries=0)
    def once(ctx: AsyncContext) -> None:
        raise RuntimeError("no second chance")

    with app.app_context():
        job = ae.submit("Once")
        ae.run_due_jobs()
        failed = ae.get_job(job.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.max_retries == 0
    assert failed.retry_count == 0


def test_success_after_retry_clears_error(
    app: Flask, ae: AsyncEndpoints, frozen: FrozenDateTimeFactory
) -> None:
    @ae.post("/flaky", name="Flaky")
    def flaky(ctx: AsyncContext) -> int:
        if ctx.attempt == 1:
            raise RuntimeError("transient")
        return ctx.attempt

    with app.app_context():
        job = ae.submit("Flaky")
        ae.run_due_jobs()
        frozen.tick(2)
        ae.run_due_jobs()
        done = ae.get_job(job.id)
    assert done is not None
    assert done.status is JobStatus.COMPLETED
    assert done.result == 2
    assert done.error is None
    assert done.retry_count == 1


def test_unserialisable_result_fails_without_retry(
    app: Flask, ae: AsyncEndpoints
) -> None:
    @ae.post("/bad", name="Bad")
    def bad(ctx: AsyncContext) -> object:
        return {"when": object()}

    with app.app_context():
        job = ae.submit("Bad")
        assert ae.run_due_jobs() == 1
        failed = ae.get_job(job.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "ResultError"
    assert "not JSON-serialisable" in failed.error.message


def test_oversized_result_fails_clearly(app: Flask) -> None:
    app.config["ASYNC_ENDPOINTS_MAX_RESULT_BYTES"] = 100
    ae = AsyncEndpoints(app)

    @ae.post("/big", name="Big")
    def big(ctx: AsyncContext) -> str:
        return "x" * 1000

    with app.app_context():
        job = ae.submit("Big")
        ae.run_due_jobs()
        failed = ae.get_job(job.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert "ASYNC_ENDPOINTS_MAX_RESULT_BYTES" in failed.error.message


def test_base_exception_in_handler_fails_the_job(
    app: Flask, ae: AsyncEndpoints
) -> None:
    @ae.post("/exit", name="Exit", max_retries=0)
    def leave(ctx: AsyncContext) -> None:
        raise SystemExit(3)

    with app.app_context():
        job = ae.submit("Exit")
        ae.run_due_jobs()
        failed = ae.get_job(job.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "SystemExit"


def test_run_longer_than_timeout_is_failed_and_result_discarded(
    app: Flask, frozen: FrozenDateTimeFactory
) -> None:
    app.config["ASYNC_ENDPOINTS_JOB_TIMEOUT_SECONDS"] = 10
    ae = AsyncEndpoints(app)

    @ae.post("/slow", name="Slow")
    def slow(ctx: AsyncContext) -> str:
        if ctx.attempt == 1:
            frozen.tick(11)
            return "too late"
        return "in time"

    with app.app_context():
        job = ae.submit("Slow")
        ae.run_due_jobs()
        timed_out = ae.get_job(job.id)
        assert timed_out is not None
        assert timed_out.status is JobStatus.SCHEDULED
        assert timed_out.result is None
        assert timed_out.error is not None
        assert timed_out.error.type == "JobTimeoutError"
        frozen.tick(2)
        ae.run_due_jobs()
        done = ae.get_job(job.id)
    assert done is not None
    assert done.status is JobStatus.COMPLETED
    assert done.result == "in time"


def test_finished_jobs_expire_after_result_ttl(
    app: Flask, frozen: FrozenDateTimeFactory
) -> None:
    app.config["ASYNC_ENDPOINTS_RESULT_TTL_SECONDS"] = 60
    ae = AsyncEndpoints(app)

    @ae.post("/noop", name="Noop")
    def noop(ctx: AsyncContext) -> None:
        return None

    with app.app_context():
        job = ae.submit("Noop")
        frozen.tick(1000)  # waiting time does not count: the TTL runs from the end
        ae.run_due_jobs()
        frozen.tick(59)
        assert ae.get_job(job.id) is not None
        frozen.tick(2)
        assert ae.get_job(job.id) is None


def test_expired_lease_is_recovered_as_a_failed_attempt(
    app: Flask, ae: AsyncEndpoints, frozen: FrozenDateTimeFactory
) -> None:
    """A job claimed by a process that died runs again after lease + sweep."""
    runs: list[int] = []

    @ae.post("/work", name="Work")
    def work(ctx: AsyncContext) -> int:
        runs.append(ctx.attempt)
        return ctx.attempt

    with app.app_context():
        job = ae.submit("Work")
        state = ae._state()
        (claim,) = state.manager.claim("dead-process", 10)
        frozen.tick(29)
        assert ae.run_due_jobs() == 0
        assert runs == []
        frozen.tick(2)  # lease (30 s) is over: the sweep fails the attempt
        assert ae.run_due_jobs() == 0
        lost = ae.get_job(job.id)
        assert lost is not None
        assert lost.status is JobStatus.SCHEDULED
        assert lost.error is not None
        assert lost.error.type == "LeaseExpired"
        frozen.tick(2)
        assert ae.run_due_jobs() == 1
        # The dead process's late result is fenced out.
        assert not state.store.complete(claim, "zombie", ttl=60, now=claim.lease_until)
        done = ae.get_job(job.id)
    assert done is not None
    assert done.status is JobStatus.COMPLETED
    assert done.result == 2
    assert runs == [2]


def _lost_claim_behind_a_wait(
    app: Flask, ae: AsyncEndpoints, runs: list[int]
) -> tuple[str, object]:
    """A job, and the claim a worker made of it behind its wait (Redis ran the
    claim queued behind the BLPOP) and never read: its host vanished."""

    @ae.post("/work", name="Work")
    def work(ctx: AsyncContext) -> int:
        runs.append(ctx.attempt)
        return ctx.attempt

    state = ae._state()
    job = ae.submit("Work")
    (claim,) = state.manager.wait_and_claim("vanished-host", 10, 1.0)
    return str(job.id), claim


@pytest.mark.parametrize("store_kind", ["fakeredis"])
def test_a_claim_behind_a_wait_that_nobody_read_is_handed_back_uncharged(
    app: Flask, ae: AsyncEndpoints, frozen: FrozenDateTimeFactory
) -> None:
    """DESIGN: a claim whose reply was lost is never charged an attempt."""
    runs: list[int] = []
    with app.app_context():
        job_id, _ = _lost_claim_behind_a_wait(app, ae, runs)
        frozen.tick(31)  # lease (30 s) over: the sweep hands it back, then it runs
        assert ae.run_due_jobs() == 1
        done = ae.get_job(job_id)
    assert runs == [1]
    assert done is not None
    assert done.status is JobStatus.COMPLETED
    assert done.error is None


@pytest.mark.parametrize("store_kind", ["fakeredis"])
def test_a_claim_behind_a_wait_confirmed_by_a_heartbeat_counts_an_attempt(
    app: Flask, ae: AsyncEndpoints, frozen: FrozenDateTimeFactory
) -> None:
    """Once its worker renewed the lease, the claim is its: a recovery after
    that is a failed attempt, as for any claim."""
    runs: list[int] = []
    with app.app_context():
        job_id, claim = _lost_claim_behind_a_wait(app, ae, runs)
        frozen.tick(10)
        ae._state().manager.heartbeat([claim])  # type: ignore[list-item]
        frozen.tick(31)
        assert ae.run_due_jobs() == 0  # failed (LeaseExpired), retried later
        lost = ae.get_job(job_id)
        assert lost is not None
        assert lost.status is JobStatus.SCHEDULED
        assert lost.error is not None
        assert lost.error.type == "LeaseExpired"
        frozen.tick(5)
        assert ae.run_due_jobs() == 1
    assert runs == [2]


def test_progress_is_reported(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/steps", name="Steps")
    def steps(ctx: AsyncContext) -> None:
        ctx.report_progress(0.5, "halfway")
        with pytest.raises(ValueError, match="within"):
            ctx.report_progress(1.5)

    with app.app_context():
        job = ae.submit("Steps")
        assert ae.get_job(job.id).to_dict()["progress"] is None  # type: ignore[union-attr]
        ae.run_due_jobs()
        done = ae.get_job(job.id)
    assert done is not None
    assert done.to_dict()["progress"] == {"fraction": 0.5, "message": "halfway"}


def test_handler_runs_in_app_context(app: Flask, ae: AsyncEndpoints) -> None:
    from flask import current_app

    @ae.post("/ctx", name="Ctx")
    def ctx_handler(ctx: AsyncContext) -> str:
        return str(current_app.name)

    with app.app_context():
        job = ae.submit("Ctx")
    # run outside any app context: the manager enters one for the handler
    with app.app_context():
        ae.run_due_jobs()
        done = ae.get_job(job.id)
    assert done is not None
    assert done.result == app.name


def test_scheduled_retry_waits_for_a_later_call(
    app: Flask, frozen: FrozenDateTimeFactory
) -> None:
    app.config["ASYNC_ENDPOINTS_RETRY_DELAY_BASE_SECONDS"] = 0
    ae = AsyncEndpoints(app)

    @ae.post("/boom", name="Boom")
    def boom(ctx: AsyncContext) -> None:
        raise ValueError

    with app.app_context():
        ae.submit("Boom")
        assert ae.run_due_jobs() == 1  # the zero-delay retry is not run by this call
        assert ae.run_due_jobs() == 1

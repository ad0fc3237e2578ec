"""Scheduled jobs (``delay=``, ``at=``) and periodic jobs (``@ae.periodic``),
driven by freezegun and ``ae.run_due_jobs()`` on every store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from freezegun import freeze_time

from async_endpoints import AsyncContext, AsyncEndpoints, ConfigurationError, JobStatus


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


START = datetime(2026, 12, 6, 10, 2, 30, tzinfo=UTC)


def jobs_named(ae: AsyncEndpoints, app: Flask, name: str) -> list[Any]:
    with app.app_context():
        jobs, _ = ae._state().manager.list_page(name=name, limit=100)
    return jobs


def test_a_delayed_job_waits_scheduled(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/echo", name="Echo")
    def echo(ctx: AsyncContext) -> Any:
        return ctx.request

    with freeze_time(START) as clock, app.app_context():
        job = ae.submit("Echo", {"n": 1}, delay=30)
        assert job.status is JobStatus.SCHEDULED
        body = job.to_dict()
        assert body["nextAttemptAt"] == "2026-12-06T10:03:00.000Z"
        assert ae.run_due_jobs() == 0
        clock.tick(29)
        assert ae.run_due_jobs() == 0
        clock.tick(1)
        assert ae.run_due_jobs() == 1
        assert ae.get_job(job.id).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_a_job_at_a_moment(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/echo", name="Echo")
    def echo(ctx: AsyncContext) -> Any:
        return "ok"

    with freeze_time(START) as clock, app.app_context():
        job = ae.submit("Echo", at=START + timedelta(minutes=5))
        canceled = ae.submit("Echo", at=START + timedelta(minutes=5))
        assert ae.cancel(canceled.id).status is JobStatus.CANCELED
        clock.tick(299)
        assert ae.run_due_jobs() == 0
        clock.tick(1)
        assert ae.run_due_jobs() == 1
        assert ae.get_job(job.id).status is JobStatus.COMPLETED  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="aware"):
            ae.submit("Echo", at=datetime(2027, 1, 1))
        with pytest.raises(ValueError, match="not both"):
            ae.submit("Echo", delay=1, at=START)
        with pytest.raises(ValueError, match=">= 0"):
            ae.submit("Echo", delay=-1)


def test_each_tick_of_a_periodic_job_runs_once(app: Flask, ae: AsyncEndpoints) -> None:
    runs: list[datetime] = []

    @ae.periodic(every=timedelta(minutes=5))
    def report(ctx: AsyncContext) -> str:
        assert ctx.request is None
        runs.append(datetime.now(UTC))
        return "done"

    with freeze_time(START) as clock, app.app_context():
        assert ae.run_due_jobs() == 0  # 10:02:30: the schedule starts
        clock.move_to(START.replace(minute=5, second=0))
        assert ae.run_due_jobs() == 1  # the 10:05 tick
        assert ae.run_due_jobs() == 0  # not twice
        clock.tick(150)
        assert ae.run_due_jobs() == 0
        # An hour with nothing running: the missed ticks make one job, not twelve.
        clock.move_to(START.replace(hour=11, minute=7))
        assert ae.run_due_jobs() == 1
    assert [r.strftime("%H:%M") for r in runs] == ["10:05", "11:07"]
    jobs = jobs_named(ae, app, "report")
    assert [j.status for j in jobs] == [JobStatus.COMPLETED] * 2
    assert {j.id.version for j in jobs} == {4}  # random, as every job's id


def test_a_failing_periodic_job_is_retried_like_any(
    app: Flask, ae: AsyncEndpoints
) -> None:
    @ae.periodic(every=60, name="Flaky", max_retries=1)
    def flaky(ctx: AsyncContext) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    with freeze_time(START) as clock, app.app_context():
        ae.run_due_jobs()
        clock.tick(60)
        assert ae.run_due_jobs() == 1
        (job,) = jobs_named(ae, app, "Flaky")
        assert job.status is JobStatus.SCHEDULED
        clock.tick(2)  # the first retry's delay; no new tick yet
        assert ae.run_due_jobs() == 1
    (job,) = jobs_named(ae, app, "Flaky")
    assert job.status is JobStatus.COMPLETED
    assert job.retry_count == 1


def test_three_apps_on_one_store_make_one_job_per_tick() -> None:
    """Three "processes" (apps with stores of their own on one fakeredis server)
    all see each tick due: one job per tick (the real-Redis case is the
    multi-process test)."""
    import fakeredis

    from async_endpoints.stores.redis import RedisStore

    server = fakeredis.FakeServer()
    apps = []
    for n in range(3):
        app = Flask(f"p{n}")
        app.config["ASYNC_ENDPOINTS_START_WORKER"] = False
        ae = AsyncEndpoints(app, store=RedisStore(fakeredis.FakeRedis(server=server)))

        @ae.periodic(every=10, name="Beat")
        def beat(ctx: AsyncContext) -> None:
            return None

        apps.append((app, ae))
    with freeze_time(START) as clock:
        for app, ae in apps:
            with app.app_context():
                ae._state().manager.fire_due_ticks()
        for _ in range(5):
            clock.tick(10)
            made = 0
            for app, ae in apps:
                with app.app_context():
                    made += ae._state().manager.fire_due_ticks()
            assert made == 1
    app, ae = apps[0]
    assert len(jobs_named(ae, app, "Beat")) == 5


def test_cron_in_a_time_zone(app: Flask, ae: AsyncEndpoints) -> None:
    pytest.importorskip("croniter")
    ran: list[str] = []

    @ae.periodic(cron="30 9 * * *", tz="Europe/Paris", name="Morning")
    def morning(ctx: AsyncContext) -> None:
        ran.append(datetime.now(UTC).isoformat())

    with (
        freeze_time(datetime(2026, 12, 6, 8, 0, tzinfo=UTC)) as clock,
        app.app_context(),
    ):
        ae.run_due_jobs()
        clock.move_to(datetime(2026, 12, 6, 8, 29, 59, tzinfo=UTC))
        assert ae.run_due_jobs() == 0
        clock.move_to(datetime(2026, 12, 6, 8, 30, tzinfo=UTC))  # 09:30 in Paris
        assert ae.run_due_jobs() == 1
    assert ran == ["2026-12-06T08:30:00+00:00"]


def test_bad_schedules_are_refused(ae: AsyncEndpoints) -> None:
    def handler(ctx: AsyncContext) -> None:
        return None

    with pytest.raises(ConfigurationError, match="exactly one"):
        ae.periodic()(handler)
    with pytest.raises(ConfigurationError, match="exactly one"):
        ae.periodic(every=1, cron="* * * * *")(handler)
    with pytest.raises(ConfigurationError, match="positive"):
        ae.periodic(every=timedelta(0))(handler)
    with pytest.raises(ConfigurationError, match="cron"):
        ae.periodic(cron="not a cron")(handler)
    with pytest.raises(ConfigurationError, match="time zone"):
        ae.periodic(every=5, tz="Mars/Olympus")(handler)


def test_periodic_jobs_have_no_route(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.periodic(every=60, name="Quiet")
    def quiet(ctx: AsyncContext) -> None:
        return None

    assert not [r for r in app.url_map.iter_rules() if r.endpoint.endswith("Quiet")]
    with app.app_context():
        assert "Quiet" not in str(ae.openapi())


def test_the_schedules_command(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.periodic(every=timedelta(minutes=5), name="Report")
    def report(ctx: AsyncContext) -> None:
        return None

    with freeze_time(START) as clock:
        runner = app.test_cli_runner()
        result: Result = runner.invoke(args=["async-endpoints", "schedules"])
        assert "Report: every 300 s; last tick none yet (-)" in result.output
        with app.app_context():
            ae.run_due_jobs()
            clock.move_to(START.replace(minute=5, second=0))
            ae.run_due_jobs()
        result = runner.invoke(args=["async-endpoints", "schedules"])
    assert result.exit_code == 0, result.output
    assert "last tick 2026-12-06T10:05:00.000Z (Completed)" in result.output
    assert "next 2026-12-06T10:10:00.000Z" in result.output

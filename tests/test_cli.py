"""The ``flask async-endpoints`` commands, through Flask's CLI runner."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from freezegun import freeze_time

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def handlers(ae: AsyncEndpoints) -> None:
    @ae.post("/ok", name="Ok")
    def ok(ctx: AsyncContext) -> str:
        return "fine"

    @ae.post("/bad", name="Bad", max_retries=0)
    def bad(ctx: AsyncContext) -> None:
        raise ValueError("broken")


def invoke(app: Flask, *args: str) -> tuple[int, str]:
    """Exit code, and what the command printed: stdout, or stderr if it failed."""
    result = app.test_cli_runner().invoke(args=["async-endpoints", *args])
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_jobs_lists_newest_first_and_filters(
    app: Flask, ae: AsyncEndpoints, handlers: None
) -> None:
    with freeze_time("2026-01-01") as clock, app.app_context():
        first = ae.submit("Ok")
        clock.tick(1)
        second = ae.submit("Bad")
        ae.run_due_jobs()
        code, out = invoke(app, "jobs")
        assert code == 0
        lines = out.splitlines()
        assert lines[0].startswith("ID")
        assert str(second.id) in lines[1]
        assert str(first.id) in lines[2]
        code, out = invoke(app, "jobs", "--status", "failed")
        assert str(second.id) in out
        assert str(first.id) not in out
        code, out = invoke(app, "jobs", "--limit", "1", "--offset", "1")
        assert str(first.id) in out
        assert str(second.id) not in out


def test_show_prints_the_job_with_its_trace(
    app: Flask, ae: AsyncEndpoints, handlers: None
) -> None:
    with app.app_context():
        job = ae.submit("Bad")
        ae.run_due_jobs()
    code, out = invoke(app, "show", str(job.id))
    assert code == 0
    body = json.loads(out)
    assert body["status"] == "Failed"
    assert "ValueError: broken" in body["error"]["stackTrace"]
    code, out = invoke(app, "show", "nope")
    assert code != 0
    assert "not a job id" in out


def test_retry_and_cancel(app: Flask, ae: AsyncEndpoints, handlers: None) -> None:
    with app.app_context():
        failed = ae.submit("Bad")
        ae.run_due_jobs()
        waiting = ae.submit("Ok")
    code, out = invoke(app, "retry", str(failed.id))
    assert code == 0
    assert "Queued" in out
    code, out = invoke(app, "retry", str(waiting.id))
    assert code != 0
    assert "Only a Failed job" in out
    code, out = invoke(app, "cancel", str(waiting.id))
    assert code == 0
    assert "Canceled" in out
    with app.app_context():
        assert ae.get_job(failed.id).status is JobStatus.QUEUED  # type: ignore[union-attr]
        assert ae.get_job(waiting.id).status is JobStatus.CANCELED  # type: ignore[union-attr]


def test_stats(app: Flask, ae: AsyncEndpoints, handlers: None) -> None:
    with app.app_context():
        ae.submit("Ok")
        ae.submit("Bad")
        ae.run_due_jobs()
        ae.submit("Ok")
        ae._state().manager.register_worker("host:1:abc")
    code, out = invoke(app, "stats")
    assert code == 0
    assert "Completed:   1" in out
    assert "Failed:      1" in out
    assert "Queued:      1" in out
    assert "queue depth: 1" in out
    assert "workers alive: 1" in out
    assert "host:1:abc" in out


def test_purge(app: Flask, ae: AsyncEndpoints, handlers: None) -> None:
    with freeze_time("2026-01-01") as clock, app.app_context():
        old = ae.submit("Ok")
        ae.run_due_jobs()
        clock.tick(2 * 3600)
        new = ae.submit("Ok")
        ae.run_due_jobs()
        code, out = invoke(app, "purge", "--status", "Completed", "--older-than", "1h")
        assert code == 0, out
        assert "purged 1 Completed" in out
        assert ae.get_job(old.id) is None
        assert ae.get_job(new.id) is not None
    code, out = invoke(app, "purge", "--status", "Queued", "--older-than", "1d")
    assert code != 0
    code, out = invoke(app, "purge", "--status", "Failed", "--older-than", "soon")
    assert code != 0
    assert "duration" in out


def test_the_memory_store_warns_that_it_sees_only_its_own_jobs(
    app: Flask, ae: AsyncEndpoints, handlers: None, store_kind: str
) -> None:
    result = app.test_cli_runner().invoke(args=["async-endpoints", "stats"])
    assert result.exit_code == 0
    warned = "memory:// store" in result.output
    assert warned is (store_kind == "memory")

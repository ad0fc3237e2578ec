"""The ``flask async-endpoints`` commands, through Flask's CLI runner."""

from __future__ import annotations

import json
import signal
import uuid

import click
import pytest
from flask import Flask
from freezegun import freeze_time

from async_endpoints import AsyncContext, AsyncEndpoints, Job, JobStatus
from async_endpoints.errors import StoreError
from async_endpoints.worker import Worker
from tests.conftest import free_port


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


@pytest.mark.parametrize(
    "args",
    [
        ["stats"],
        ["jobs"],
        ["jobs", "--name", "Ok"],
        ["show", str(uuid.uuid4())],
        ["retry", str(uuid.uuid4())],
        ["cancel", str(uuid.uuid4())],
        ["purge", "--status", "Failed", "--older-than", "1d"],
        ["purge", "--status", "Failed", "--older-than", "1d", "--dry-run"],
        ["worker"],
    ],
    ids=lambda args: " ".join(a for a in args if "-" not in a[1:]),
)
def test_a_store_that_is_down_is_one_line_with_the_fix(
    app: Flask, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    port = free_port()  # nothing listens there: the connection is refused
    app.config["ASYNC_ENDPOINTS_STORE_URL"] = f"redis://:hunter2@127.0.0.1:{port}/0"
    ext = AsyncEndpoints(app)

    def start(self: Worker) -> None:
        raise AssertionError("the worker started although its store is down")

    # `worker` must fail before it runs; were it to run, fail instead of hanging.
    monkeypatch.setattr(Worker, "start", start)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    try:
        result = app.test_cli_runner().invoke(args=["async-endpoints", *args])
    finally:
        with app.app_context():
            ext.shutdown()
    assert result.exit_code == 1, result.output
    # A ClickException, handled by click: not an error escaping the command.
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: the job store is unavailable: ")
    assert f"127.0.0.1:{port}" in lines[0]  # the cause names the target
    assert "hunter2" not in lines[0]
    assert lines[0].endswith(
        ". Check that Redis is running and that ASYNC_ENDPOINTS_STORE_URL points at it."
    )
    assert lines[0].count("Check that") == 1


def test_another_store_failure_is_one_line_too(
    app: Flask, ae: AsyncEndpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stats() -> None:
        raise StoreError("Redis at redis://x failed: WRONGTYPE\nsecond line")

    with app.app_context():
        monkeypatch.setattr(ae._state().manager, "stats", stats)
    result = app.test_cli_runner().invoke(args=["async-endpoints", "stats"])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    assert (
        "Error: the job store failed: Redis at redis://x failed: WRONGTYPE "
        "second line.\n"
    ) in result.output
    assert "Check that Redis is running" not in result.output


def test_purge_offers_only_the_finished_statuses(
    app: Flask, ae: AsyncEndpoints, handlers: None
) -> None:
    from async_endpoints.cli import cli

    purge = cli.commands["purge"]
    [status] = [param for param in purge.params if param.name == "status"]
    assert isinstance(status.type, click.Choice)
    assert list(status.type.choices) == ["Completed", "Failed", "Canceled"]
    code, out = invoke(app, "purge", "--help")
    assert "[completed|failed|canceled]" in out
    code, out = invoke(app, "purge", "--status", "InProgress", "--older-than", "1d")
    assert code == 2
    assert "is not one of 'completed', 'failed', 'canceled'" in out
    with app.app_context():
        job = ae.submit("Ok")
        ae.cancel(job.id)
    code, out = invoke(app, "purge", "--status", "CANCELED", "--older-than", "0s")
    assert code == 0, out
    assert "purged 1 Canceled job(s)" in out


def test_jobs_by_name_reads_on_until_the_page_is_full(
    app: Flask, ae: AsyncEndpoints, handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two jobs a store page: the Ok jobs are spread over several pages.
    monkeypatch.setattr("async_endpoints.cli._PAGE", 2)
    with freeze_time("2026-01-01") as clock, app.app_context():
        submitted = []
        for name in ["Ok", "Bad", "Bad", "Ok", "Bad", "Bad", "Ok", "Bad", "Ok"]:
            submitted.append(ae.submit(name))
            clock.tick(1)
        oks = [str(job.id) for job in reversed(submitted) if job.name == "Ok"]
        code, out = invoke(app, "jobs", "--name", "Ok", "--limit", "2", "--offset", "1")
        assert code == 0, out
        listed = [line.split()[0] for line in out.splitlines()[1:]]
        assert listed == oks[1:3]
        code, out = invoke(app, "jobs", "--name", "Ok", "--limit", "10")
        assert [line.split()[0] for line in out.splitlines()[1:]] == oks
        ae.run_due_jobs()
        code, out = invoke(app, "jobs", "--name", "Bad", "--status", "completed")
        assert out.strip() == "no jobs"
        code, out = invoke(app, "jobs", "--name", "Nobody")
        assert out.strip() == "no jobs"


def test_purge_dry_run_counts_and_deletes_nothing(
    app: Flask, ae: AsyncEndpoints, handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("async_endpoints.cli._PAGE", 1)
    with freeze_time("2026-01-01") as clock, app.app_context():
        old = [ae.submit("Ok"), ae.submit("Ok"), ae.submit("Bad")]
        ae.run_due_jobs()
        clock.tick(2 * 3600)
        new = [ae.submit("Ok"), ae.submit("Bad")]
        ae.run_due_jobs()
        args = ["purge", "--status", "completed", "--older-than", "1h"]
        code, out = invoke(app, *args, "--dry-run")
        assert code == 0, out
        assert out.splitlines()[-1] == (
            "would purge 2 Completed job(s) that ended more than 1h ago "
            "(dry run: nothing was deleted)"
        )
        assert all(ae.get_job(job.id) is not None for job in old + new)
        code, out = invoke(app, *args)
        assert "purged 2 Completed job(s)" in out
        assert [ae.get_job(job.id) is None for job in old + new] == [
            True,
            True,
            False,
            False,
            False,
        ]


def test_a_job_submitted_while_paging_does_not_list_one_twice(
    app: Flask, ae: AsyncEndpoints, handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("async_endpoints.cli._PAGE", 2)
    with freeze_time("2026-01-01") as clock, app.app_context():
        for _ in range(4):
            ae.submit("Ok")
            clock.tick(1)
        manager = ae._state().manager
        list_jobs = manager.list_jobs

        def list_then_submit(
            status: JobStatus | None = None, *, offset: int = 0, limit: int = 20
        ) -> list[Job]:
            page = list_jobs(status, offset=offset, limit=limit)
            ae.submit("Bad")  # newest first: every later page shifts by one
            clock.tick(1)
            return page

        monkeypatch.setattr(manager, "list_jobs", list_then_submit)
        code, out = invoke(app, "jobs", "--name", "Ok", "--limit", "10")
    assert code == 0, out
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert len(listed) == 4
    assert len(set(listed)) == 4


def test_stats_shows_how_limited_handlers_stand() -> None:
    from flask import Flask

    from async_endpoints import AsyncEndpoints

    app = Flask(__name__)
    app.config["ASYNC_ENDPOINTS_START_WORKER"] = False
    ae = AsyncEndpoints(app)

    @ae.post("/report", name="Report", concurrency=2)
    def report(ctx: AsyncContext) -> None:
        return None

    @ae.post("/charge", name="Charge", rate_limit="100/minute")
    def charge(ctx: AsyncContext) -> None:
        return None

    with app.app_context():
        for _ in range(3):
            ae.submit("Report")
            ae.submit("Charge")
        ae._state().manager.claim("w", 10)
    result = app.test_cli_runner().invoke(args=["async-endpoints", "stats"])
    assert result.exit_code == 0, result.output
    assert "Report: running 2/2" in result.output
    assert "Charge: started 3 in the last 60 s (limit 100)" in result.output

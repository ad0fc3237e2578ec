"""Request limits and honest answers: body size, waits, worker liveness, outages."""

from __future__ import annotations

import io
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from werkzeug.test import TestResponse

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus
from tests.conftest import free_port

#: The ``ASYNC_ENDPOINTS_MAX_REQUEST_BYTES`` of these tests, unless one says otherwise.
LIMIT = 1000
MIB = 1024 * 1024


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Run each test that uses ``ae`` on every store."""
    kind: str = request.param
    return kind


@pytest.fixture
def config() -> dict[str, Any]:
    """Settings of ``app``; a test replaces them with ``parametrize("config", ...)``."""
    return {"ASYNC_ENDPOINTS_MAX_REQUEST_BYTES": LIMIT}


@pytest.fixture
def app(config: dict[str, Any]) -> Flask:
    """A fresh app on ``config``, with no background worker."""
    app = Flask(__name__)
    app.config.update(TESTING=True, ASYNC_ENDPOINTS_START_WORKER=False)
    app.config.update(config)
    return app


@pytest.fixture
def echo(ae: AsyncEndpoints) -> None:
    """``POST /echo``: its job's result is the length of the JSON string it got."""

    @ae.post("/echo", name="Echo")
    def echo_handler(ctx: AsyncContext) -> int:
        return len(ctx.request)


def json_body(size: int) -> bytes:
    """A JSON document (one string) of exactly ``size`` bytes."""
    return b'"' + b"x" * (size - 2) + b'"'


def post_json(client: FlaskClient, size: int, **kwargs: Any) -> TestResponse:
    return client.post(
        "/echo", data=json_body(size), content_type="application/json", **kwargs
    )


def post_chunked(client: FlaskClient, body: bytes) -> TestResponse:
    """POST a body as a server passes on a chunked request: the length unknown to
    the app (``Transfer-Encoding: chunked`` makes Werkzeug ignore any
    ``Content-Length``), the stream ended by the server (``wsgi.input_terminated``,
    as gunicorn and Werkzeug's server set it)."""
    return client.post(
        "/echo",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_base={"wsgi.input_terminated": True},
    )


def assert_problem(response: TestResponse, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= set(body)
    return body


def assert_no_job(app: Flask, ae: AsyncEndpoints) -> None:
    with app.app_context():
        manager = ae._state().manager
        assert manager.list_jobs() == []
        assert manager.store.queue_size() == 0


def run_and_get_result(app: Flask, ae: AsyncEndpoints, job_id: str) -> object:
    with app.app_context():
        assert ae.run_due_jobs() == 1
        job = ae.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.COMPLETED
    return job.result


# -- ASYNC_ENDPOINTS_MAX_REQUEST_BYTES ------------------------------------------


def test_body_over_the_limit_is_413_problem_and_creates_no_job(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    body = assert_problem(post_json(client, LIMIT + 1), 413)
    assert body["title"] == "Request body too large"
    assert f"larger than {LIMIT} bytes" in body["detail"]
    assert "ASYNC_ENDPOINTS_MAX_REQUEST_BYTES" in body["detail"]
    assert_no_job(app, ae)


def test_body_exactly_at_the_limit_is_accepted_whole(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    response = post_json(client, LIMIT)
    assert response.status_code == 202, response.get_data(as_text=True)
    assert run_and_get_result(app, ae, response.get_json()["id"]) == LIMIT - 2


class _SpyStream(io.BytesIO):
    """A request body that counts the attempts to read it."""

    reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        return super().read(size)

    def read1(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        return super().read1(size)

    def readinto(self, buffer: Any, /) -> int:
        self.reads += 1
        return super().readinto(buffer)

    def readline(self, size: int | None = -1, /) -> bytes:
        self.reads += 1
        return super().readline(size)


def test_content_length_over_the_limit_is_refused_before_reading(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    stream = _SpyStream(json_body(LIMIT + 1))
    response = client.post(
        "/echo", input_stream=stream, content_type="application/json"
    )
    assert_problem(response, 413)
    assert stream.reads == 0, "the body was read although Content-Length was enough"
    assert_no_job(app, ae)


@pytest.mark.parametrize(
    "body",
    [json_body(LIMIT + 1), b"7" * (LIMIT + 1), json_body(LIMIT) + b" "],
    ids=["string", "number", "trailing-space"],
)
def test_chunked_body_over_the_limit_is_413_and_creates_no_job(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None, body: bytes
) -> None:
    # The "number" and "trailing-space" bodies are still valid JSON when cut at
    # the limit, so only a 413 (not a 400 for broken JSON) shows they were refused.
    problem = assert_problem(post_chunked(client, body), 413)
    assert f"larger than {LIMIT} bytes" in problem["detail"]
    assert_no_job(app, ae)


def test_chunked_body_at_the_limit_is_accepted_whole(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    # Also proves post_chunked() really delivers a body without a length.
    response = post_chunked(client, json_body(LIMIT))
    assert response.status_code == 202, response.get_data(as_text=True)
    assert run_and_get_result(app, ae, response.get_json()["id"]) == LIMIT - 2


def test_lower_flask_max_content_length_wins(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 500
    body = assert_problem(post_json(client, 501), 413)
    # Flask's limit refused it: the answer must not claim ours (1000 bytes).
    assert str(LIMIT) not in body["detail"]
    assert_no_job(app, ae)
    assert post_json(client, 500).status_code == 202


def test_ours_wins_over_a_higher_flask_max_content_length(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 5 * LIMIT
    body = assert_problem(post_json(client, LIMIT + 1), 413)
    assert f"larger than {LIMIT} bytes" in body["detail"]
    assert_no_job(app, ae)


@pytest.mark.parametrize(
    "config", [{"ASYNC_ENDPOINTS_MAX_REQUEST_BYTES": 0}], ids=["no-limit"]
)
def test_zero_means_no_limit(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    response = post_json(client, 2 * MIB)
    assert response.status_code == 202, response.get_data(as_text=True)[:300]
    assert run_and_get_result(app, ae, response.get_json()["id"]) == 2 * MIB - 2


@pytest.mark.parametrize("store_kind", ["memory"])
@pytest.mark.parametrize("config", [{}], ids=["defaults"])
def test_default_limit_is_one_mebibyte(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    with app.app_context():
        assert ae._state().settings.max_request_bytes == MIB
    body = assert_problem(post_json(client, MIB + 1), 413)
    assert f"larger than {MIB} bytes" in body["detail"]
    assert post_json(client, MIB).status_code == 202


# -- Prefer: wait=N that times out ----------------------------------------------


@pytest.mark.parametrize(
    "config", [{"ASYNC_ENDPOINTS_MAX_WAIT_SECONDS": 20}], ids=["wait-20"]
)
def test_prefer_wait_that_times_out_answers_with_the_job_as_it_is_then(
    app: Flask,
    client: FlaskClient,
    ae: AsyncEndpoints,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    progressed = threading.Event()
    release = threading.Event()

    @ae.post("/slow", name="Slow")
    def slow(ctx: AsyncContext) -> str:
        ctx.report_progress(0.5, "halfway")
        progressed.set()
        assert release.wait(10), "the test never released the handler"
        return "done"

    def run_jobs() -> None:
        with app.app_context():
            ae.run_due_jobs()

    runner = threading.Thread(target=run_jobs, name="test-runner")
    with app.app_context():
        store = ae._state().store
    wait_for_end = store.wait_for_end

    def start_the_job_then_wait(job_id: uuid.UUID, timeout: float) -> None:
        # The view waits here for the job to end: run it up to its progress
        # report (so it is InProgress at 50%), then let the wait time out.
        if not runner.is_alive():
            runner.start()
            assert progressed.wait(10), "the handler never reported progress"
        wait_for_end(job_id, timeout)

    monkeypatch.setattr(store, "wait_for_end", start_the_job_then_wait)
    try:
        response = client.post("/slow", headers={"Prefer": "wait=1"})
    finally:
        release.set()
        runner.join(10)
    assert not runner.is_alive()
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "wait=1"
    body = response.get_json()
    assert body["status"] == "InProgress"
    assert body["startedAt"] is not None
    assert body["progress"] == {"fraction": 0.5, "message": "halfway"}
    assert "Retry-After" in response.headers
    # The job then went on to the end on its own.
    with app.app_context():
        job = ae.get_job(body["id"])
    assert job is not None
    assert job.status is JobStatus.COMPLETED


# -- GET <jobs url>/<id>?wait=N and Wait-Applied ---------------------------------

WAIT_CAP = {"ASYNC_ENDPOINTS_MAX_WAIT_SECONDS": 3}


@pytest.fixture
def finished_job(app: Flask, ae: AsyncEndpoints, echo: None) -> str:
    """The status URL of a Completed job (so that ``?wait`` never waits)."""
    with app.app_context():
        job = ae.submit("Echo", "x")
        assert ae.run_due_jobs() == 1
    return f"/jobs/{job.id}"


@pytest.mark.parametrize("config", [WAIT_CAP], ids=["cap-3"])
@pytest.mark.parametrize(
    ("asked", "applied"),
    [("100", "3"), ("4", "3"), ("3", "3"), ("2", "2"), ("0", "0"), ("9" * 40, "3")],
    ids=["100", "4", "3", "2", "0", "forty-nines"],
)
def test_wait_applied_says_the_capped_wait(
    client: FlaskClient, finished_job: str, asked: str, applied: str
) -> None:
    response = client.get(f"{finished_job}?wait={asked}")
    assert response.status_code == 200
    assert response.headers["Wait-Applied"] == applied
    assert response.get_json()["status"] == "Completed"


@pytest.mark.parametrize("store_kind", ["memory"])
@pytest.mark.parametrize("config", [WAIT_CAP], ids=["cap-3"])
def test_a_wait_above_the_cap_waits_only_the_cap(
    app: Flask,
    client: FlaskClient,
    ae: AsyncEndpoints,
    echo: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with app.app_context():
        job = ae.submit("Echo", "x")
        manager = ae._state().manager
    waits: list[tuple[uuid.UUID, float]] = []

    def record_wait(job_id: uuid.UUID, timeout: float) -> None:
        waits.append((job_id, timeout))

    monkeypatch.setattr(manager, "wait_for_end", record_wait)
    response = client.get(f"/jobs/{job.id}?wait=600")
    assert response.status_code == 200
    assert response.headers["Wait-Applied"] == "3"
    assert response.get_json()["status"] == "Queued"
    assert waits == [(job.id, 3)]


# -- stats: live workers ---------------------------------------------------------


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time("2026-01-01T00:00:00Z") as clock:
        assert isinstance(clock, FrozenDateTimeFactory)
        yield clock


def live_workers(app: Flask, ae: AsyncEndpoints) -> set[str]:
    with app.app_context():
        return set(ae._state().manager.stats().workers)


def test_a_worker_is_live_only_within_two_thirds_of_the_claim_timeout(
    app: Flask, ae: AsyncEndpoints, frozen: FrozenDateTimeFactory
) -> None:
    with app.app_context():
        manager = ae._state().manager
    horizon = 2 * manager.settings.claim_timeout_seconds / 3  # 20 s by default
    manager.register_worker("w1")
    manager.register_worker("w2")
    assert live_workers(app, ae) == {"w1", "w2"}
    frozen.tick(horizon - 5)
    manager.register_worker("w1")  # w1 beats again; w2 has fallen silent
    frozen.tick(4)
    assert live_workers(app, ae) == {"w1", "w2"}
    frozen.tick(2)  # w2's last beat is now horizon + 1 s old, still within the lease
    assert live_workers(app, ae) == {"w1"}
    frozen.tick(horizon)
    assert live_workers(app, ae) == set()


def test_a_stopped_worker_is_not_live(
    app: Flask, ae: AsyncEndpoints, frozen: FrozenDateTimeFactory
) -> None:
    with app.app_context():
        manager = ae._state().manager
    manager.register_worker("w1")
    manager.register_worker("w2")
    manager.unregister_worker("w1")
    assert live_workers(app, ae) == {"w2"}


@pytest.mark.parametrize("store_kind", ["memory", "fakeredis"])
def test_cli_stats_counts_only_live_workers(
    app: Flask, ae: AsyncEndpoints, frozen: FrozenDateTimeFactory
) -> None:
    with app.app_context():
        manager = ae._state().manager
    manager.register_worker("host:1:beating")
    manager.register_worker("host:2:silent")
    frozen.tick(manager.settings.claim_timeout_seconds / 2)
    manager.register_worker("host:1:beating")
    frozen.tick(manager.settings.claim_timeout_seconds / 3)
    result = app.test_cli_runner().invoke(args=["async-endpoints", "stats"])
    assert result.exit_code == 0, result.output
    assert "workers alive: 1" in result.stdout
    assert "host:1:beating" in result.stdout
    assert "host:2:silent" not in result.stdout


# -- 503 on a store outage -------------------------------------------------------


def test_store_outage_503_keeps_the_url_and_the_setting_out_of_the_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nobody listens there
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_STORE_URL=f"redis://:hunter2@127.0.0.1:{port}/0",
    )
    ae = AsyncEndpoints(app)

    @ae.post("/work", name="Work")
    def work(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    caplog.set_level(logging.WARNING, logger="async_endpoints")
    try:
        for response in (
            client.post("/work", json={"a": 1}, headers={"Prefer": "wait=1"}),
            client.get(f"/jobs/{uuid.uuid4()}?wait=1"),
            client.delete(f"/jobs/{uuid.uuid4()}"),
        ):
            assert_problem(response, 503)
            text = response.get_data(as_text=True)
            for secret in ("redis://", "127.0.0.1", str(port), "hunter2"):
                assert secret not in text
            assert "ASYNC_ENDPOINTS_" not in text
            assert "try again later" in response.get_json()["detail"]
    finally:
        with app.app_context():
            ae.shutdown()
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("async_")]
    assert len(logged) >= 3
    for message in logged:
        assert "redis://" in message
        assert f"127.0.0.1:{port}" in message
        assert "ASYNC_ENDPOINTS_STORE_URL" in message
        assert "hunter2" not in message  # the log names the server, not its password
    assert "hunter2" not in caplog.text

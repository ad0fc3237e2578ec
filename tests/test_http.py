"""The HTTP contract: 202 + Location, job JSON, and problem+json errors."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import quote

import pydantic
import pytest
from flask import Flask
from flask.testing import FlaskClient

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """Run each test that uses ``ae`` on every store."""
    kind: str = request.param
    return kind


JOB_KEYS = {
    "id",
    "name",
    "status",
    "retryCount",
    "maxRetries",
    "createdAt",
    "startedAt",
    "completedAt",
    "lastUpdatedAt",
    "result",
    "error",
    "progress",
}


@pytest.fixture
def echo(ae: AsyncEndpoints) -> None:
    @ae.post("/api/<tenant>/echo", name="Echo")
    def echo_handler(ctx: AsyncContext) -> dict[str, object]:
        return {
            "request": ctx.request,
            "route": ctx.route_params,
            "query": ctx.query_params,
            "trace": ctx.headers.get("X-Trace"),
            "headers": sorted(ctx.headers),
        }


def assert_problem(response: object, status: int) -> dict[str, object]:
    from werkzeug.test import TestResponse

    assert isinstance(response, TestResponse)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= set(body)
    return body  # type: ignore[no-any-return]


def test_post_answers_202_with_location_and_job(
    client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    response = client.post("/api/acme/echo?tag=a&tag=b", json={"data": "x"})
    assert response.status_code == 202
    body = response.get_json()
    assert set(body) >= JOB_KEYS
    assert body["status"] == "Queued"
    assert body["name"] == "Echo"
    assert body["createdAt"].endswith("Z")
    assert response.headers["Location"] == f"/jobs/{body['id']}"
    assert response.headers["Retry-After"] == "1"
    assert uuid.UUID(body["id"]).version == 4


def test_status_shows_the_result_with_request_context(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    response = client.post(
        "/api/acme/echo?tag=a&tag=b",
        json={"data": "x"},
        headers={
            "X-Trace": "t1",
            "Authorization": "Bearer secret",
            "Cookie": "session=1",
            "Proxy-Authorization": "Basic x",
        },
    )
    location = response.headers["Location"]
    with app.app_context():
        assert ae.run_due_jobs() == 1
    status = client.get(location)
    assert status.status_code == 200
    body = status.get_json()
    assert body["status"] == "Completed"
    result = body["result"]
    assert result["request"] == {"data": "x"}
    assert result["route"] == {"tenant": "acme"}
    assert result["query"] == {"tag": ["a", "b"]}
    assert result["trace"] == "t1"
    assert "authorization" not in result["headers"]
    assert "cookie" not in result["headers"]
    assert "proxy-authorization" not in result["headers"]
    assert "Retry-After" not in status.headers


def test_credentials_are_not_stored(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    response = client.post(
        "/api/acme/echo", json={}, headers={"Authorization": "Bearer s3cret"}
    )
    with app.app_context():
        job = ae.get_job(response.get_json()["id"])
    assert job is not None
    assert "authorization" not in job.headers
    assert "s3cret" not in repr(job)


def test_empty_body_gives_none_request(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    response = client.post("/api/acme/echo")
    assert response.status_code == 202
    with app.app_context():
        ae.run_due_jobs()
    body = client.get(response.headers["Location"]).get_json()
    assert body["result"]["request"] is None


def test_malformed_json_is_400_and_creates_no_job(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    response = client.post(
        "/api/acme/echo", data="{not json", content_type="application/json"
    )
    assert_problem(response, 400)
    with app.app_context():
        assert ae._state().store.queue_size() == 0


def test_non_json_content_type_is_415(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    response = client.post("/api/acme/echo", data="a=1", content_type="text/plain")
    assert_problem(response, 415)
    with app.app_context():
        assert ae._state().store.queue_size() == 0


def test_body_too_large_is_413(app: Flask, ae: AsyncEndpoints, echo: None) -> None:
    app.config["MAX_CONTENT_LENGTH"] = 10
    response = app.test_client().post("/api/acme/echo", json={"data": "x" * 100})
    assert_problem(response, 413)


@dataclass
class Order:
    item: str
    quantity: int = 1


class PydanticOrder(pydantic.BaseModel):
    item: str
    quantity: int = 1


@pytest.mark.parametrize("model", [Order, PydanticOrder])
def test_request_model_rejects_bad_bodies_with_422(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, model: type
) -> None:
    seen: list[object] = []

    @ae.post("/orders", name="PlaceOrder", request_model=model)
    def place(ctx: AsyncContext) -> str:
        seen.append(ctx.request)
        return str(ctx.request.item)

    body = assert_problem(client.post("/orders", json={"quantity": "many"}), 422)
    errors = body["errors"]
    assert isinstance(errors, list)
    assert any(e["loc"] == ["item"] for e in errors)
    assert client.post("/orders", json={"item": "pen"}).status_code == 202
    with app.app_context():
        assert ae._state().store.queue_size() == 1
        ae.run_due_jobs()
    assert len(seen) == 1
    assert isinstance(seen[0], model)
    assert seen[0].item == "pen"  # type: ignore[attr-defined]


def test_validate_can_reject_before_queuing(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints
) -> None:
    calls: list[tuple[object, int]] = []

    def check(ctx: AsyncContext) -> object:
        calls.append((ctx.job_id, ctx.attempt))
        if not ctx.request.get("ok"):
            return {"error": "not ok"}, 400
        return None

    @ae.post("/checked", name="Checked", validate=check)
    def checked(ctx: AsyncContext) -> None:
        return None

    rejected = client.post("/checked", json={"ok": False})
    assert rejected.status_code == 400
    assert rejected.get_json() == {"error": "not ok"}
    assert client.post("/checked", json={"ok": True}).status_code == 202
    assert calls == [(None, 0), (None, 0)]
    with app.app_context():
        assert ae._state().store.queue_size() == 1


def test_queue_full_is_429_with_retry_after(app: Flask) -> None:
    app.config["ASYNC_ENDPOINTS_MAX_QUEUE_SIZE"] = 2
    ae = AsyncEndpoints(app)

    @ae.post("/q", name="Q")
    def q(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    assert client.post("/q").status_code == 202
    assert client.post("/q").status_code == 202
    response = client.post("/q")
    assert_problem(response, 429)
    assert response.headers["Retry-After"].isdigit()
    with app.app_context():
        assert ae._state().store.queue_size() == 2


def test_unknown_and_malformed_job_ids_are_404(
    client: FlaskClient, ae: AsyncEndpoints
) -> None:
    assert_problem(client.get(f"/jobs/{uuid.uuid4()}"), 404)
    assert_problem(client.get("/jobs/not-a-uuid"), 404)
    assert_problem(client.delete(f"/jobs/{uuid.uuid4()}"), 404)


def test_delete_cancels_a_queued_job_idempotently(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    location = client.post("/api/acme/echo", json={}).headers["Location"]
    first = client.delete(location)
    assert first.status_code == 200
    assert first.get_json()["status"] == "Canceled"
    assert first.get_json()["completedAt"] is not None
    again = client.delete(location)
    assert again.status_code == 200
    assert again.get_json()["status"] == "Canceled"
    with app.app_context():
        assert ae.run_due_jobs() == 0


def test_delete_a_finished_job_is_409(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    location = client.post("/api/acme/echo", json={}).headers["Location"]
    with app.app_context():
        ae.run_due_jobs()
    assert_problem(client.delete(location), 409)


def test_delete_a_running_job_sets_cancelled_and_ends_canceled(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints
) -> None:
    seen: dict[str, bool] = {}

    @ae.post("/long", name="Long")
    def long(ctx: AsyncContext) -> str:
        response = client.delete(f"/jobs/{ctx.job_id}")
        seen["status_during"] = response.get_json()["status"] == "InProgress"
        seen["cancelled"] = ctx.cancelled.is_set()
        raise RuntimeError("stopped because canceled")

    location = client.post("/long").headers["Location"]
    with app.app_context():
        ae.run_due_jobs()
    assert seen == {"status_during": True, "cancelled": True}
    body = client.get(location).get_json()
    assert body["status"] == "Canceled"
    with app.app_context():
        assert ae.run_due_jobs() == 0  # a canceled job is not retried


def test_scheduled_job_has_retry_after_and_next_attempt(app: Flask) -> None:
    app.config["ASYNC_ENDPOINTS_RETRY_DELAY_BASE_SECONDS"] = 5
    ae = AsyncEndpoints(app)
    client = app.test_client()

    @ae.post("/fail", name="Fail")
    def fail(ctx: AsyncContext) -> None:
        raise ValueError("nope")

    location = client.post("/fail").headers["Location"]
    with app.app_context():
        ae.run_due_jobs()
    response = client.get(location)
    body = response.get_json()
    assert body["status"] == "Scheduled"
    assert body["error"]["type"] == "ValueError"
    assert body["error"]["message"] == "nope"
    assert body["nextAttemptAt"] is not None
    assert 4 <= int(response.headers["Retry-After"]) <= 5


def test_traceback_hidden_unless_exposed(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/fail", name="Fail", max_retries=0)
    def fail(ctx: AsyncContext) -> None:
        raise ValueError("nope")

    client = app.test_client()
    location = client.post("/fail").headers["Location"]
    with app.app_context():
        ae.run_due_jobs()
    error = client.get(location).get_json()["error"]
    assert error == {"type": "ValueError", "message": "nope", "stackTrace": None}


def test_tracebacks_exposed_when_configured() -> None:
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_START_WORKER=False, ASYNC_ENDPOINTS_EXPOSE_TRACEBACKS=True
    )
    ae = AsyncEndpoints(app)

    @ae.post("/fail", name="Fail", max_retries=0)
    def fail(ctx: AsyncContext) -> None:
        raise ValueError("nope")

    client = app.test_client()
    location = client.post("/fail").headers["Location"]
    with app.app_context():
        ae.run_due_jobs()
    assert "ValueError: nope" in client.get(location).get_json()["error"]["stackTrace"]


def test_jobs_url_is_configurable() -> None:
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_START_WORKER=False, ASYNC_ENDPOINTS_JOBS_URL="/ops/"
    )
    ae = AsyncEndpoints(app)

    @ae.put("/thing", name="Thing")
    def thing(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    response = client.put("/thing", json={})
    assert response.headers["Location"].startswith("/ops/")
    assert client.get(response.headers["Location"]).status_code == 200


def test_the_listing_is_at_the_configured_jobs_url() -> None:
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_JOBS_URL="/ops/",
        ASYNC_ENDPOINTS_LIST_JOBS=True,
    )
    ae = AsyncEndpoints(app)

    @ae.put("/thing", name="Thing")
    def thing(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    job_id = client.put("/thing", json={}).get_json()["id"]
    listing = client.get("/ops?limit=5")
    assert listing.status_code == 200
    assert [j["id"] for j in listing.get_json()["jobs"]] == [job_id]


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_every_method_decorator(app: Flask, ae: AsyncEndpoints, method: str) -> None:
    register = getattr(ae, method)

    @register("/m", name="M")
    def m(ctx: AsyncContext) -> str:
        return "ran"

    response = getattr(app.test_client(), method)("/m", json={"a": 1})
    assert response.status_code == 202
    with app.app_context():
        ae.run_due_jobs()
        job = ae.get_job(response.get_json()["id"])
    assert job is not None
    assert job.status is JobStatus.COMPLETED


def test_store_outage_is_503_with_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import free_port

    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_STORE_URL=f"redis://127.0.0.1:{free_port()}/0",  # nobody there
    )
    ae = AsyncEndpoints(app)

    @ae.post("/work", name="Work")
    def work(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    for response in (
        client.post("/work", json={"a": 1}),
        client.get(f"/jobs/{uuid.uuid4()}"),
        client.delete(f"/jobs/{uuid.uuid4()}"),
    ):
        body = assert_problem(response, 503)
        # Over HTTP the detail is generic: no server address, no config key.
        assert "127.0.0.1" not in str(body["detail"])
        assert "ASYNC_ENDPOINTS" not in str(body["detail"])
        assert response.headers["Retry-After"].isdigit()
    # The log has the whole story, with the fix.
    assert "ASYNC_ENDPOINTS_STORE_URL" in caplog.text


def test_long_poll_answers_when_the_job_ends(
    app: Flask, client: FlaskClient, ae: AsyncEndpoints, echo: None
) -> None:
    import threading
    import time

    location = client.post("/api/acme/echo", json={}).headers["Location"]

    def finish() -> None:
        with app.app_context():
            ae.run_due_jobs()

    # Whether the job ends before or during the wait, the answer is the same.
    threading.Timer(0.2, finish).start()
    began = time.monotonic()
    response = client.get(f"{location}?wait=15")
    assert response.get_json()["status"] == "Completed"
    assert time.monotonic() - began < 10, "the wait did not end with the job"


@pytest.mark.parametrize(
    "path_id",
    ["{{{0}}}", "urn:uuid:{0}", "{0.hex}"],
)
def test_only_the_canonical_job_id_form_is_a_job_url(
    client: FlaskClient, ae: AsyncEndpoints, echo: None, path_id: str
) -> None:
    job_id = uuid.UUID(client.post("/api/acme/echo", json={}).get_json()["id"])
    assert client.get(f"/jobs/{job_id}").status_code == 200
    assert client.get(f"/jobs/{str(job_id).upper()}").status_code == 200
    other_form = quote(path_id.format(job_id), safe=":")
    assert_problem(client.get(f"/jobs/{other_form}"), 404)


def test_a_nan_body_is_400_and_says_why(client: FlaskClient, echo: None) -> None:
    response = client.post(
        "/api/acme/echo", data='{"x": NaN}', content_type="application/json"
    )
    body = assert_problem(response, 400)
    assert "handler" not in str(body["detail"])
    assert "JSON" in str(body["detail"])

"""The extension object: setup patterns, registration, Python API, hooks."""

from __future__ import annotations

import uuid

import pytest
from flask import Flask, Response, request

from async_endpoints import (
    AsyncContext,
    AsyncEndpoints,
    ConfigurationError,
    JobFinishedError,
    JobNotFoundError,
    JobStatus,
    QueueFullError,
)


def make_app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config["ASYNC_ENDPOINTS_START_WORKER"] = False
    app.config.update(**config)
    return app


def test_extension_is_registered(app: Flask, ae: AsyncEndpoints) -> None:
    assert app.extensions["async_endpoints"] is ae


def test_factory_pattern_installs_handlers_declared_before_init_app() -> None:
    ae = AsyncEndpoints()

    @ae.post("/early", name="Early")
    def early(ctx: AsyncContext) -> str:
        return "early"

    app = make_app()
    ae.init_app(app)
    response = app.test_client().post("/early")
    assert response.status_code == 202
    with app.app_context():
        ae.run_due_jobs()
        assert ae.get_job(response.get_json()["id"]).result == "early"  # type: ignore[union-attr]


def test_one_extension_serves_two_apps() -> None:
    ae = AsyncEndpoints()

    @ae.post("/x", name="X")
    def x(ctx: AsyncContext) -> str:
        return "x"

    first, second = make_app(), make_app()
    ae.init_app(first)
    ae.init_app(second)
    job_id = first.test_client().post("/x").get_json()["id"]
    with second.app_context():
        assert ae.get_job(job_id) is None  # each app has its own store
    with first.app_context():
        assert ae.get_job(job_id) is not None


def test_handler_declared_after_init_app_is_installed(
    app: Flask, ae: AsyncEndpoints
) -> None:
    @ae.post("/late", name="Late")
    def late(ctx: AsyncContext) -> None:
        return None

    assert app.test_client().post("/late").status_code == 202


def test_init_app_twice_is_refused(app: Flask, ae: AsyncEndpoints) -> None:
    with pytest.raises(ConfigurationError, match="existing instance"):
        AsyncEndpoints(app)


def test_duplicate_handler_name_is_refused(ae: AsyncEndpoints) -> None:
    @ae.post("/a", name="Same")
    def a(ctx: AsyncContext) -> None:
        return None

    with pytest.raises(ConfigurationError, match="already registered"):

        @ae.post("/b", name="Same")
        def b(ctx: AsyncContext) -> None:
            return None


def test_name_defaults_to_function_name(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/n")
    def my_handler(ctx: AsyncContext) -> None:
        return None

    assert app.test_client().post("/n").get_json()["name"] == "my_handler"


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_retries", -1), ("validate", "nope"), ("request_model", dict)],
)
def test_bad_decorator_options_are_refused(
    ae: AsyncEndpoints, option: str, value: object
) -> None:
    with pytest.raises(ConfigurationError):
        ae.post("/bad", **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ASYNC_ENDPOINTS_MAX_RETRIES", -1),
        ("ASYNC_ENDPOINTS_MAX_CONCURRENCY", 0),
        ("ASYNC_ENDPOINTS_CLAIM_TIMEOUT_SECONDS", "soon"),
        ("ASYNC_ENDPOINTS_STORE_URL", "postgres://x"),
        ("ASYNC_ENDPOINTS_JOBS_URL", "jobs"),
    ],
)
def test_bad_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncEndpoints(make_app(**{key: value}))
    assert key in str(info.value)


def test_defaults_are_set_in_app_config(app: Flask, ae: AsyncEndpoints) -> None:
    assert app.config["ASYNC_ENDPOINTS_STORE_URL"] == "memory://"
    assert app.config["ASYNC_ENDPOINTS_MAX_QUEUE_SIZE"] == 1000
    assert app.config["ASYNC_ENDPOINTS_RETRY_DELAY_BASE_SECONDS"] == 2.0


def test_using_an_app_without_init_app_says_so() -> None:
    ae = AsyncEndpoints()
    with make_app().app_context(), pytest.raises(ConfigurationError, match="init_app"):
        ae.get_job(uuid.uuid4())


def test_repr(app: Flask, ae: AsyncEndpoints) -> None:
    assert repr(ae) == "<AsyncEndpoints>"
    with app.app_context():
        assert repr(ae) == "<AsyncEndpoints store=<MemoryStore> handlers=0>"


def test_submit_from_python(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/p", name="P")
    def p(ctx: AsyncContext) -> dict[str, object]:
        return {
            "body": ctx.request,
            "trace": ctx.headers["x-trace"],
            "q": ctx.query_params,
        }

    with app.app_context():
        job = ae.submit(
            "P", {"data": "x"}, headers={"X-Trace": "t1"}, query_params={"a": ["1"]}
        )
        assert isinstance(job.id, uuid.UUID)
        assert job.status is JobStatus.QUEUED
        ae.run_due_jobs()
        done = ae.get_job(str(job.id))
    assert done is not None
    assert done.result == {"body": {"data": "x"}, "trace": "t1", "q": {"a": ["1"]}}


def test_submit_unknown_handler(app: Flask, ae: AsyncEndpoints) -> None:
    with app.app_context(), pytest.raises(ConfigurationError, match="No handler"):
        ae.submit("Nope")


def test_submit_applies_the_queue_limit() -> None:
    app = make_app(ASYNC_ENDPOINTS_MAX_QUEUE_SIZE=1)
    ae = AsyncEndpoints(app)

    @ae.post("/p", name="P")
    def p(ctx: AsyncContext) -> None:
        return None

    with app.app_context():
        ae.submit("P")
        with pytest.raises(QueueFullError) as info:
            ae.submit("P")
    assert info.value.retry_after > 0


def test_cancel_from_python(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/p", name="P")
    def p(ctx: AsyncContext) -> None:
        return None

    with app.app_context():
        job = ae.submit("P")
        assert ae.cancel(job.id).status is JobStatus.CANCELED
        with pytest.raises(LookupError):
            ae.cancel(uuid.uuid4())
        with pytest.raises(JobNotFoundError):
            ae.cancel("garbage")
        done = ae.submit("P")
        ae.run_due_jobs()
        with pytest.raises(JobFinishedError):
            ae.cancel(done.id)


def test_get_job_with_malformed_id_is_none(app: Flask, ae: AsyncEndpoints) -> None:
    with app.app_context():
        assert ae.get_job("not-a-uuid") is None


def test_job_owner_hides_jobs_from_other_owners(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.job_owner
    def owner() -> str | None:
        return request.headers.get("X-User")

    @ae.post("/mine", name="Mine")
    def mine(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    location = client.post("/mine", headers={"X-User": "alice"}).headers["Location"]
    assert client.get(location, headers={"X-User": "alice"}).status_code == 200
    assert client.get(location, headers={"X-User": "bob"}).status_code == 404
    assert client.get(location).status_code == 404
    assert client.delete(location, headers={"X-User": "bob"}).status_code == 404
    with app.app_context():
        job = ae.get_job(location.rsplit("/", 1)[1])  # trusted code sees it
        assert job is not None
        assert job.owner == "alice"
        explicit = ae.submit("Mine", owner="carol")
        assert explicit.owner == "carol"


def test_response_hooks(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.submitted_response
    def on_submit(job: object, response: Response) -> Response:
        response.headers["X-Submitted"] = "yes"
        return response

    @ae.status_response
    def on_status(job: object, response: Response) -> Response:
        return Response("custom", status=299)

    @ae.post("/h", name="H")
    def h(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    submitted = client.post("/h")
    assert submitted.headers["X-Submitted"] == "yes"
    status = client.get(submitted.headers["Location"])
    assert status.status_code == 299
    assert status.get_data(as_text=True) == "custom"


def test_idempotency_key_returns_the_same_job(app: Flask, ae: AsyncEndpoints) -> None:
    calls: list[int] = []

    def check(ctx: AsyncContext) -> None:
        calls.append(1)

    @ae.post("/pay", name="Pay", validate=check)
    def pay(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    first = client.post("/pay", json={"amount": 1}, headers={"Idempotency-Key": "k1"})
    again = client.post("/pay", json={"amount": 1}, headers={"Idempotency-Key": "k1"})
    alias = client.post("/pay", json={"amount": 1}, headers={"Async-Job-Id": "k1"})
    assert first.status_code == again.status_code == alias.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"] == alias.get_json()["id"]
    assert calls == [1]  # a repeat skips validate
    other = client.post("/pay", json={"amount": 1}, headers={"Idempotency-Key": "k2"})
    assert other.get_json()["id"] != first.get_json()["id"]
    conflict = client.post(
        "/pay", json={"amount": 2}, headers={"Idempotency-Key": "k1"}
    )
    assert conflict.status_code == 422
    assert conflict.mimetype == "application/problem+json"


def test_prefer_wait_answers_200_when_the_job_ends_in_time() -> None:
    app = make_app(
        ASYNC_ENDPOINTS_START_WORKER=True, ASYNC_ENDPOINTS_MAX_WAIT_SECONDS=5
    )
    ae = AsyncEndpoints(app)

    @ae.post("/quick", name="Quick")
    def quick(ctx: AsyncContext) -> str:
        return "done"

    try:
        response = app.test_client().post("/quick", headers={"Prefer": "wait=30"})
        assert response.status_code == 200
        assert response.get_json()["status"] == "Completed"
        assert response.get_json()["result"] == "done"
        assert response.headers["Preference-Applied"] == "wait=5"
        assert "Prefer" in response.headers["Vary"]
        assert "Location" in response.headers
    finally:
        ae.shutdown()


def test_prefer_wait_falls_back_to_202() -> None:
    app = make_app(ASYNC_ENDPOINTS_MAX_WAIT_SECONDS=0)
    ae = AsyncEndpoints(app)

    @ae.post("/never", name="Never")
    def never(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    assert client.post("/never", headers={"Prefer": "wait=1"}).status_code == 202
    assert client.post("/never", headers={"Prefer": "wait=abc"}).status_code == 202


def test_get_with_malformed_wait_is_400(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/w", name="W")
    def w(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    location = client.post("/w").headers["Location"]
    response = client.get(f"{location}?wait=soon")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["title"] == "Invalid query parameter"


def test_a_key_set_after_init_app_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Flask(__name__)
    app.config["ASYNC_ENDPOINTS_START_WORKER"] = False
    AsyncEndpoints(app)
    # Too late: init_app read the configuration already.
    app.config["ASYNC_ENDPOINTS_MAX_QUEUED_PER_OWNER"] = 500
    client = app.test_client()
    with caplog.at_level("WARNING", logger="async_endpoints.extension"):
        client.get("/jobs/not-a-job")
        client.get("/jobs/not-a-job")
    late = [r for r in caplog.records if "changed after AsyncEndpoints" in r.message]
    assert len(late) == 1
    assert "ASYNC_ENDPOINTS_MAX_QUEUED_PER_OWNER" in late[0].getMessage()


def test_config_set_before_init_app_is_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Flask(__name__)
    app.config["ASYNC_ENDPOINTS_START_WORKER"] = False
    app.config["ASYNC_ENDPOINTS_MAX_QUEUED_PER_OWNER"] = 500
    AsyncEndpoints(app)
    with caplog.at_level("WARNING", logger="async_endpoints.extension"):
        app.test_client().get("/jobs/not-a-job")
    assert not [r for r in caplog.records if "changed after" in r.getMessage()]

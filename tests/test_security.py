"""What is kept from a request, and what a job may hold."""

from __future__ import annotations

import uuid

from flask import Flask

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus


def make_app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config["ASYNC_ENDPOINTS_START_WORKER"] = False
    app.config.update(config)
    return app


def stored_headers(app: Flask, ae: AsyncEndpoints, headers: dict[str, str]) -> set[str]:
    @ae.post("/h", name="H")
    def h(ctx: AsyncContext) -> None:
        return None

    job_id = app.test_client().post("/h", headers=headers).get_json()["id"]
    with app.app_context():
        job = ae.get_job(job_id)
    assert job is not None
    return set(job.headers)


SECRETS = {
    "Authorization": "Bearer a",
    "Cookie": "s=1",
    "Proxy-Authorization": "Basic b",
    "X-Api-Key": "k",
    "X-Trace": "t",
}


def test_credentials_are_redacted_by_default() -> None:
    app = make_app()
    kept = stored_headers(app, AsyncEndpoints(app), SECRETS)
    assert "x-trace" in kept
    assert not kept & {"authorization", "cookie", "proxy-authorization", "x-api-key"}


def test_more_headers_can_be_redacted() -> None:
    app = make_app(ASYNC_ENDPOINTS_REDACTED_HEADERS=["X-Trace"])
    kept = stored_headers(app, AsyncEndpoints(app), SECRETS)
    assert "x-trace" not in kept


def test_a_redacted_header_can_be_preserved_on_purpose() -> None:
    app = make_app(ASYNC_ENDPOINTS_PRESERVED_HEADERS="Authorization")
    kept = stored_headers(app, AsyncEndpoints(app), SECRETS)
    assert "authorization" in kept
    assert "cookie" not in kept


def test_job_ids_are_random_uuid4() -> None:
    app = make_app()
    ae = AsyncEndpoints(app)

    @ae.post("/n", name="N")
    def n(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    ids = {uuid.UUID(client.post("/n").get_json()["id"]) for _ in range(20)}
    assert len(ids) == 20
    assert {i.version for i in ids} == {4}


def test_a_50_megabyte_result_fails_the_job_clearly() -> None:
    app = make_app()
    ae = AsyncEndpoints(app)

    @ae.post("/huge", name="Huge")
    def huge(ctx: AsyncContext) -> str:
        return "x" * (50 * 1024 * 1024)

    @ae.post("/small", name="Small")
    def small(ctx: AsyncContext) -> str:
        return "ok"

    with app.app_context():
        job = ae.submit("Huge")
        after = ae.submit("Small")
        assert ae.run_due_jobs() == 2
        failed = ae.get_job(job.id)
        fine = ae.get_job(after.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.type == "ResultError"
    assert "ASYNC_ENDPOINTS_MAX_RESULT_BYTES" in failed.error.message
    assert fine is not None
    assert fine.result == "ok"


def test_transport_headers_are_not_stored() -> None:
    app = make_app()
    kept = stored_headers(
        app,
        AsyncEndpoints(app),
        {
            "Content-Type": "application/json",
            "Connection": "keep-alive",
            "X-Trace": "t",
        },
    )
    assert "content-type" not in kept
    assert "content-length" not in kept
    assert "connection" not in kept
    assert "x-trace" in kept

"""Signals, log records, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import prometheus_client
import pydantic
import pytest
from flask import Flask
from freezegun import freeze_time

from async_endpoints import AsyncContext, AsyncEndpoints
from async_endpoints.log import JobLogFilter
from async_endpoints.metrics import PrometheusMetrics
from async_endpoints.signals import (
    job_failed,
    job_retrying,
    job_started,
    job_submitted,
    job_succeeded,
)


def test_signals_follow_a_job_through_retry_and_success(
    app: Flask, ae: AsyncEndpoints
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def recorder(name: str) -> Any:
        def receive(sender: Flask, **kwargs: Any) -> None:
            assert sender is app
            seen.append((name, kwargs))

        return receive

    receivers = {
        name: recorder(name)
        for name in ("submitted", "started", "succeeded", "retrying", "failed")
    }
    job_submitted.connect(receivers["submitted"], sender=app)
    job_started.connect(receivers["started"], sender=app)
    job_succeeded.connect(receivers["succeeded"], sender=app)
    job_retrying.connect(receivers["retrying"], sender=app)
    job_failed.connect(receivers["failed"], sender=app)

    @ae.post("/flaky", name="Flaky", max_retries=1)
    def flaky(ctx: AsyncContext) -> int:
        if ctx.attempt == 1:
            raise RuntimeError("first")
        return 7

    @ae.post("/doomed", name="Doomed", max_retries=0)
    def doomed(ctx: AsyncContext) -> None:
        raise ValueError("always")

    with freeze_time("2026-01-01") as clock, app.app_context():
        ae.submit("Flaky")
        ae.run_due_jobs()
        clock.tick(2)
        ae.run_due_jobs()
        ae.submit("Doomed")
        ae.run_due_jobs()
    names = [name for name, _ in seen]
    assert names == [
        "submitted", "started", "retrying", "started", "succeeded",
        "submitted", "started", "failed",
    ]  # fmt: skip
    assert seen[2][1]["error"].message == "first"
    assert seen[2][1]["retry_at"] > 0
    assert seen[3][1]["attempt"] == 2
    assert seen[4][1]["result"] == 7
    assert seen[7][1]["error"].type == "ValueError"


def test_a_failing_receiver_does_not_break_the_job(
    app: Flask, ae: AsyncEndpoints
) -> None:
    def broken(sender: Flask, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    job_succeeded.connect(broken, sender=app)

    @ae.post("/ok", name="Ok")
    def ok(ctx: AsyncContext) -> str:
        return "ok"

    with app.app_context():
        job = ae.submit("Ok")
        ae.run_due_jobs()
        done = ae.get_job(job.id)
    assert done is not None
    assert done.result == "ok"


def test_log_records_of_a_run_carry_the_job(
    app: Flask, ae: AsyncEndpoints, caplog: pytest.LogCaptureFixture
) -> None:
    user_log = logging.getLogger("user.handler")

    @ae.post("/talk", name="Talk", max_retries=0)
    def talk(ctx: AsyncContext) -> None:
        user_log.warning("working")
        raise ValueError("oops")

    caplog.handler.addFilter(JobLogFilter())
    with caplog.at_level(logging.WARNING), app.app_context():
        job = ae.submit("Talk")
        ae.run_due_jobs()
    records = [
        r
        for r in caplog.records
        if r.name in ("user.handler", "async_endpoints.manager")
    ]
    assert len(records) == 2
    for record in records:
        assert record.job_id == str(job.id)  # type: ignore[attr-defined]
        assert record.job_name == "Talk"  # type: ignore[attr-defined]


def test_prometheus_metrics(app: Flask, ae: AsyncEndpoints) -> None:
    registry = prometheus_client.CollectorRegistry()
    PrometheusMetrics(app, registry=registry)

    @ae.post("/m", name="M")
    def m(ctx: AsyncContext) -> None:
        if ctx.request == "bad":
            raise ValueError

    with app.app_context():
        ae.submit("M", "good")
        ae.submit("M", "bad")
        ae.submit("M", "later")
        assert registry.get_sample_value("async_endpoints_queue_depth") == 3
        ae.run_due_jobs()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("async_endpoints_jobs_submitted_total", handler="M") == 3
    assert (
        value("async_endpoints_job_runs_total", handler="M", outcome="succeeded") == 2
    )
    assert value("async_endpoints_job_runs_total", handler="M", outcome="retrying") == 1
    assert value("async_endpoints_job_run_seconds_count", handler="M") == 3
    assert value("async_endpoints_job_queue_wait_seconds_count", handler="M") == 3
    assert registry.get_sample_value("async_endpoints_queue_depth") == 1


@dataclass
class Order:
    item: str
    quantity: int = 1


class Invoice(pydantic.BaseModel):
    amount: float


def test_openapi_document(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/api/<tenant>/orders/<int:shop>", name="PlaceOrder", request_model=Order)
    def place(ctx: AsyncContext) -> None:
        """Place an order."""

    @ae.put("/api/invoices", name="Invoice", request_model=Invoice)
    def invoice(ctx: AsyncContext) -> None:
        return None

    app.get("/openapi.json")(ae.openapi)
    doc = app.test_client().get("/openapi.json").get_json()
    assert doc["openapi"] == "3.1.0"
    order = doc["paths"]["/api/{tenant}/orders/{shop}"]["post"]
    assert order["operationId"] == "PlaceOrder"
    assert order["summary"] == "Place an order."
    params = {p["name"]: p for p in order["parameters"]}
    assert params["shop"]["schema"] == {"type": "integer"}
    assert params["tenant"]["in"] == "path"
    body = order["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["item"]
    assert body["properties"]["quantity"] == {"type": "integer"}
    assert set(order["responses"]) >= {"202", "400", "415", "422", "429", "503"}
    assert order["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Job"
    }
    put = doc["paths"]["/api/invoices"]["put"]
    schema = put["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["amount"]["type"] == "number"
    jobs = doc["paths"]["/jobs/{job_id}"]
    assert set(jobs) == {"get", "delete"}
    assert set(jobs["delete"]["responses"]) == {"200", "404", "409", "503"}
    assert "Job" in doc["components"]["schemas"]
    assert "Problem" in doc["components"]["schemas"]

"""Tracing with OpenTelemetry: each attempt is a child span of the submitting
request's span; without OpenTelemetry nothing of it is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from freezegun import freeze_time

from async_endpoints import AsyncContext, AsyncEndpoints

otel_trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

ROOT = Path(__file__).resolve().parents[1]
_EXPORTER = InMemorySpanExporter()
_PROVIDER = sdk_trace.TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Spans of this test, from a provider of its own (not the global one)."""
    monkeypatch.setattr(otel_trace, "get_tracer", _PROVIDER.get_tracer)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
def traced(app: Flask) -> tuple[Flask, AsyncEndpoints]:
    ae = AsyncEndpoints(app)

    @ae.post("/work", name="Work", max_retries=1)
    def work(ctx: AsyncContext) -> Any:
        if ctx.request.get("fail_first") and ctx.attempt == 1:
            raise ValueError("first attempt fails")
        return "ok"

    return app, ae


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_each_attempt_is_a_child_of_the_incoming_traceparent(
    traced: tuple[Flask, AsyncEndpoints], spans: InMemorySpanExporter
) -> None:
    app, ae = traced
    client = app.test_client()
    with freeze_time("2026-12-06 12:00:00") as clock:
        job_id = client.post(
            "/work",
            json={"fail_first": True},
            headers={
                "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
                "tracestate": "vendor=x",
            },
        ).get_json()["id"]
        with app.app_context():
            ae.run_due_jobs()
            clock.tick(10)
            ae.run_due_jobs()
            assert ae.get_job(job_id).trace == {  # type: ignore[union-attr]
                "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
                "tracestate": "vendor=x",
            }
    runs = [
        s for s in spans.get_finished_spans() if s.name == "async_endpoints.run Work"
    ]
    assert len(runs) == 2
    for n, span in enumerate(runs, start=1):
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert span.parent is not None
        assert format(span.parent.span_id, "016x") == PARENT_ID
        assert span.kind is otel_trace.SpanKind.CONSUMER
        assert span.attributes == {
            "async_endpoints.job_id": job_id,
            "async_endpoints.job_name": "Work",
            "async_endpoints.attempt": n,
        }
    assert not runs[0].status.is_ok  # the failed attempt records its error
    assert runs[0].events[0].name == "exception"


def test_the_active_span_wins_over_the_headers(
    traced: tuple[Flask, AsyncEndpoints], spans: InMemorySpanExporter
) -> None:
    app, ae = traced
    tracer = _PROVIDER.get_tracer("test")
    with app.app_context():
        with tracer.start_as_current_span("submitting script") as parent:
            job = ae.submit(
                "Work", {}, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
            )
        ae.run_due_jobs()
    (run,) = [s for s in spans.get_finished_spans() if s.name.startswith("async_")]
    assert run.context.trace_id == parent.get_span_context().trace_id
    assert run.parent is not None
    assert run.parent.span_id == parent.get_span_context().span_id
    assert job.trace["traceparent"].split("-")[2] == format(
        parent.get_span_context().span_id, "016x"
    )


def test_a_job_without_a_trace_runs_in_a_root_span(
    traced: tuple[Flask, AsyncEndpoints], spans: InMemorySpanExporter
) -> None:
    app, ae = traced
    with app.app_context():
        job = ae.submit("Work", {})
        ae.run_due_jobs()
    assert job.trace == {}
    (run,) = spans.get_finished_spans()
    assert run.parent is None


def test_without_opentelemetry_nothing_of_it_is_imported() -> None:
    script = (
        textwrap.dedent(
            """
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        from flask import Flask
        from async_endpoints import AsyncEndpoints
        from async_endpoints import tracing

        app = Flask(__name__)
        app.config["ASYNC_ENDPOINTS_START_WORKER"] = False
        ae = AsyncEndpoints(app)

        @ae.post("/work", name="Work")
        def work(ctx):
            return "ok"

        client = app.test_client()
        job_id = client.post(
            "/work", json={}, headers={"traceparent": "00-TRACE-PARENT-01"}
        ).get_json()["id"]
        with app.app_context():
            assert ae.run_due_jobs() == 1
            assert ae.get_job(job_id).trace == {}
        assert tracing.enabled() is False
        loaded = [m for m in sys.modules if m.startswith("opentelemetry.")]
        assert not loaded, loaded
        print("ok")
        """
        )
        .replace("TRACE", TRACE_ID)
        .replace("PARENT", PARENT_ID)
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"

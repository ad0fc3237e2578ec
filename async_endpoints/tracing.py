"""Traces across the queue, with OpenTelemetry when it is installed (the
``otel`` extra): the submitting request's trace context is stored with the
job, and each attempt runs in a span that is its child. Flask-free.

Without OpenTelemetry nothing is imported and each call costs one cached check.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from async_endpoints.jobs import Job

_HEADERS = ("traceparent", "tracestate")
_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()


@functools.cache
def enabled() -> bool:
    """Whether OpenTelemetry's API is installed (checked once, without importing
    it)."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):  # a parent package missing or blocked
        return False


def submission_context(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The trace context to store with a new job: the active span's, else the
    request's own ``traceparent``/``tracestate`` headers; ``{}`` without
    OpenTelemetry."""
    if not enabled():
        return {}
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(carrier)
    elif headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        carrier = {k: lowered[k] for k in _HEADERS if k in lowered}
    return {k: v for k, v in carrier.items() if k in _HEADERS}


def attempt_span(job: Job) -> AbstractContextManager[Any]:
    """The span one attempt of ``job`` runs in (``async_endpoints.run <name>``),
    a child of the stored context; a no-op without OpenTelemetry."""
    if not enabled():
        return _NO_SPAN
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer("async_endpoints")
    if not job.trace and isinstance(tracer, trace.ProxyTracer):
        # The API without a configured SDK, and no context to carry on: the
        # span would record nothing and set no context (a few µs per job saved).
        return _NO_SPAN
    parent = propagate.extract(job.trace) if job.trace else None
    return tracer.start_as_current_span(
        f"async_endpoints.run {job.name}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "async_endpoints.job_id": str(job.id),
            "async_endpoints.job_name": job.name,
            "async_endpoints.attempt": job.attempt,
        },
    )

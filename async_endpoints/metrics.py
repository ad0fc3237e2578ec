"""Optional Prometheus metrics (``pip install async-endpoints[metrics]``).

::

    from async_endpoints.metrics import PrometheusMetrics

    PrometheusMetrics(app)      # after AsyncEndpoints(app) / init_app(app)

then expose ``prometheus_client``'s registry as you usually do (for example
``prometheus_client.make_wsgi_app()`` mounted at ``/metrics``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from async_endpoints.errors import ConfigurationError, StoreError
from async_endpoints.signals import (
    job_failed,
    job_retrying,
    job_started,
    job_submitted,
    job_succeeded,
)

if TYPE_CHECKING:
    from flask import Flask

    from async_endpoints.jobs import Job

try:
    import prometheus_client
except ImportError:  # pragma: no cover - exercised only without the extra
    prometheus_client = None  # type: ignore[assignment]


class PrometheusMetrics:
    """Counts, times and gauges the jobs of one app.

    Metrics (label ``handler`` is the job name):

    - ``async_endpoints_jobs_submitted_total{handler}``
    - ``async_endpoints_job_runs_total{handler, outcome}``: outcome is
      ``succeeded``, ``retrying`` or ``failed``
    - ``async_endpoints_job_run_seconds{handler}``: histogram of run times
    - ``async_endpoints_job_queue_wait_seconds{handler}``: histogram of the time
      from submission to the first attempt's start
    - ``async_endpoints_queue_depth``: jobs waiting (Queued + Scheduled) now

    :param app: an app on which ``AsyncEndpoints`` is initialised.
    :param registry: the ``prometheus_client`` registry (default: the global one).
    :raises ConfigurationError: ``prometheus_client`` is not installed, or the app
        has no ``AsyncEndpoints``.
    """

    def __init__(self, app: Flask, *, registry: Any = None) -> None:
        if prometheus_client is None:
            raise ConfigurationError(
                "PrometheusMetrics needs prometheus_client: "
                "pip install 'async-endpoints[metrics]'."
            )
        from async_endpoints.state import extension_of

        ext = extension_of(app)
        if ext is None:
            raise ConfigurationError(
                "Initialise AsyncEndpoints on this app before PrometheusMetrics."
            )
        registry = registry if registry is not None else prometheus_client.REGISTRY
        self.submitted = prometheus_client.Counter(
            "async_endpoints_jobs_submitted",
            "Jobs submitted.",
            ["handler"],
            registry=registry,
        )
        self.runs = prometheus_client.Counter(
            "async_endpoints_job_runs",
            "Job attempts by outcome.",
            ["handler", "outcome"],
            registry=registry,
        )
        self.run_seconds = prometheus_client.Histogram(
            "async_endpoints_job_run_seconds",
            "Time a job attempt ran.",
            ["handler"],
            registry=registry,
        )
        self.queue_wait = prometheus_client.Histogram(
            "async_endpoints_job_queue_wait_seconds",
            "Time from submission to the first attempt's start.",
            ["handler"],
            registry=registry,
        )
        self.queue_depth = prometheus_client.Gauge(
            "async_endpoints_queue_depth",
            "Jobs waiting (Queued and Scheduled).",
            registry=registry,
        )
        store = ext._states[app].store

        def depth() -> float:
            try:
                return float(store.queue_size())
            except StoreError:
                return math.nan

        self.queue_depth.set_function(depth)
        # Receivers are held strongly (weak=False) for as long as the app lives.
        job_submitted.connect(self._on_submitted, sender=app, weak=False)
        job_started.connect(self._on_started, sender=app, weak=False)
        job_succeeded.connect(self._on_succeeded, sender=app, weak=False)
        job_retrying.connect(self._on_retrying, sender=app, weak=False)
        job_failed.connect(self._on_failed, sender=app, weak=False)

    def _on_submitted(self, sender: Flask, *, job: Job, **extra: Any) -> None:
        self.submitted.labels(job.name).inc()

    def _on_started(self, sender: Flask, *, job: Job, **extra: Any) -> None:
        if job.attempt == 1 and job.started_at is not None:
            wait = max(0.0, job.started_at - job.created_at)
            self.queue_wait.labels(job.name).observe(wait)

    def _finished(self, job: Job, outcome: str, duration: float) -> None:
        self.runs.labels(job.name, outcome).inc()
        self.run_seconds.labels(job.name).observe(duration)

    def _on_succeeded(
        self, sender: Flask, *, job: Job, duration: float, **extra: Any
    ) -> None:
        self._finished(job, "succeeded", duration)

    def _on_retrying(
        self, sender: Flask, *, job: Job, duration: float, **extra: Any
    ) -> None:
        self._finished(job, "retrying", duration)

    def _on_failed(
        self, sender: Flask, *, job: Job, duration: float, **extra: Any
    ) -> None:
        self._finished(job, "failed", duration)

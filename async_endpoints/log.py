"""Logging helpers: which job a log record belongs to."""

from __future__ import annotations

import contextvars
import logging

from async_endpoints.jobs import Job

current_job: contextvars.ContextVar[Job | None] = contextvars.ContextVar(
    "async_endpoints_current_job", default=None
)


class JobLogFilter(logging.Filter):
    """Adds ``job_id`` and ``job_name`` to every record logged during a job's run.

    The library's own records carry them already; attach this filter to a handler
    to get them on your handler code's records too::

        handler.addFilter(JobLogFilter())
        handler.setFormatter(logging.Formatter("%(job_id)s %(job_name)s %(message)s"))

    Outside a job both are ``"-"``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops it."""
        job = current_job.get()
        if not hasattr(record, "job_id"):
            record.job_id = str(job.id) if job else "-"
        if not hasattr(record, "job_name"):
            record.job_name = job.name if job else "-"
        return True

"""Signals (blinker) sent through a job's life, in the manner of Flask's own.

Each is sent with the Flask app as sender and the job as ``job=``::

    from async_endpoints.signals import job_failed

    @job_failed.connect_via(app)
    def alert(sender, job, error, **extra):
        ...

=================  =============================================================
signal             extra keyword arguments
=================  =============================================================
``job_submitted``  (none)
``job_started``    ``attempt``
``job_succeeded``  ``result``, ``duration`` (seconds of the run)
``job_retrying``   ``error`` (:class:`ErrorInfo`), ``retry_at`` (epoch seconds),
                   ``duration``
``job_failed``     ``error``, ``duration``
=================  =============================================================

Receivers run in the thread that caused the event (a request thread for
``job_submitted``, a worker thread for the rest); an exception in a receiver is
logged, never raised into the job.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

job_submitted = _signals.signal("job-submitted")
job_started = _signals.signal("job-started")
job_succeeded = _signals.signal("job-succeeded")
job_retrying = _signals.signal("job-retrying")
job_failed = _signals.signal("job-failed")

SIGNALS = {
    "submitted": job_submitted,
    "started": job_started,
    "succeeded": job_succeeded,
    "retrying": job_retrying,
    "failed": job_failed,
}

"""The ``flask async-endpoints`` command group: run a worker, manage jobs.

A store that fails (Redis down, most often) ends any command with one line that
names the cause and the fix, not with redis-py's traceback: see :class:`_JobsGroup`.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click
from flask import current_app
from flask.cli import AppGroup

from async_endpoints.errors import (
    AsyncEndpointsError,
    StoreError,
    StoreUnavailableError,
)
from async_endpoints.jobs import Job, JobStatus, format_timestamp

if TYPE_CHECKING:
    from types import FrameType
    from uuid import UUID

    from async_endpoints.manager import JobManager

_UNAVAILABLE_FIX = (
    "Check that Redis is running and that ASYNC_ENDPOINTS_STORE_URL points at it."
)


def _one_line(text: str) -> str:
    """``text`` on one line, without a trailing full stop."""
    return " ".join(text.split()).rstrip(" .")


def _unavailable_cause(exc: StoreUnavailableError) -> str:
    """What the store said, without the hint the CLI gives itself.

    The Redis store's message already ends in a "Check that ..." sentence of its
    own; printed as is, the fix would appear twice in the one line.
    """
    cause = _one_line(" ".join(str(exc).split()).split(" Check that ", 1)[0])
    return cause or type(exc).__name__


class _JobsGroup(AppGroup):
    """An :class:`~flask.cli.AppGroup` whose commands report store failures as
    one line (a :class:`click.ClickException`, exit status 1).

    In one place, so every command, present and future, gets it: an operator
    whose Redis is down needs the cause and the fix, not a hundred lines of
    redis-py's connection code.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; turn a :class:`StoreError` into a one-line error.

        :param ctx: the group's click context.
        :raises click.ClickException: the job store failed or cannot be reached.
        """
        try:
            return super().invoke(ctx)
        except StoreUnavailableError as exc:
            raise click.ClickException(
                f"the job store is unavailable: {_unavailable_cause(exc)}. "
                f"{_UNAVAILABLE_FIX}"
            ) from exc
        except StoreError as exc:
            raise click.ClickException(
                f"the job store failed: {_one_line(str(exc)) or type(exc).__name__}."
            ) from exc


cli = _JobsGroup("async-endpoints", help="Run and inspect asynchronous jobs.")

_STATUS = click.Choice([s.value for s in JobStatus], case_sensitive=False)
# Only these can be purged: a job that has not ended is still someone's work.
_FINISHED_STATUS = click.Choice(
    [s.value for s in JobStatus if s.is_finished], case_sensitive=False
)
# Jobs read per store call when the CLI filters or counts by itself: the Redis
# store reads every job for each call (SCAN), so few large pages beat many small.
_PAGE = 500
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _manager() -> JobManager:
    from async_endpoints.state import extension_of
    from async_endpoints.stores.memory import MemoryStore

    ext = extension_of(current_app._get_current_object())  # type: ignore[attr-defined]
    if ext is None:
        raise click.ClickException("This app has no AsyncEndpoints extension.")
    manager = ext._state().manager
    if isinstance(manager.store, MemoryStore):
        click.echo(
            "warning: this app uses the memory:// store, which lives in one process: "
            "this command sees only its own jobs, not those of a running server. "
            "Set ASYNC_ENDPOINTS_STORE_URL to a redis:// URL to manage a deployment.",
            err=True,
        )
    return manager


def _status(value: str) -> JobStatus:
    return next(s for s in JobStatus if s.value.lower() == value.lower())


def _every_job(manager: JobManager, status: JobStatus | None) -> Iterator[Job]:
    """Each job (of ``status``, or all), newest first, read a page at a time.

    A job submitted meanwhile shifts the pages, so a job may come twice from the
    store; it is yielded once.
    """
    seen: set[UUID] = set()
    for offset in itertools.count(0, _PAGE):
        page = manager.list_jobs(status, offset=offset, limit=_PAGE)
        for job in page:
            if job.id not in seen:
                seen.add(job.id)
                yield job
        if len(page) < _PAGE:
            return


def _job_id(value: str) -> Job:
    import uuid

    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise click.ClickException(f"{value!r} is not a job id.") from None
    job = _manager().get(parsed)
    if job is None:
        raise click.ClickException(f"No job with id '{value}'.")
    return job


def _seconds(value: str) -> float:
    match = _DURATION.match(value)
    if match is None:
        raise click.BadParameter(
            f"{value!r} is not a duration like 90s, 15m, 12h or 1d"
        )
    return float(match[1]) * _UNITS[match[2]]


def _age(ts: float | None) -> str:
    if ts is None:
        return "-"
    seconds = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


@cli.command("worker")
def worker_command() -> None:
    """Run only the job worker in this process, until SIGTERM or Ctrl-C.

    On the signal it stops claiming, lets running jobs finish within
    ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS and hands the rest back to the queue;
    a second signal hands them back at once.
    """
    from async_endpoints.worker import Worker

    manager = _manager()
    worker = Worker(manager)
    # Reach the store once before starting: a worker whose store is down would
    # only log its retries, so fail here, in one line, instead. The worker
    # registers itself again at once when it starts.
    manager.register_worker(worker.owner)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            worker.hurry()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    click.echo(f"async-endpoints worker {worker.owner} running; Ctrl-C to stop")
    while not stop.wait(1.0):
        pass
    click.echo(
        "stopping: running jobs may finish within the grace period, the rest are "
        "handed back (signal again to hand them back now)"
    )
    worker.stop()
    click.echo("stopped")


@cli.command("jobs")
@click.option("--status", type=_STATUS, help="Only jobs in this status.")
@click.option("--name", help="Only jobs of the handler with this name (exact).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
def jobs_command(status: str | None, name: str | None, limit: int, offset: int) -> None:
    """List jobs, newest first.

    With --name, --offset and --limit count the jobs of that handler only.
    """
    manager = _manager()
    chosen = _status(status) if status else None
    if name is None:
        jobs = manager.list_jobs(chosen, offset=offset, limit=limit)
    else:
        # The store cannot filter by name: read pages until enough match.
        named = (job for job in _every_job(manager, chosen) if job.name == name)
        jobs = list(itertools.islice(named, offset, offset + limit))
    if not jobs:
        click.echo("no jobs")
        return
    click.echo(f"{'ID':36}  {'NAME':20}  {'STATUS':10}  RETRIES  CREATED")
    for job in jobs:
        click.echo(
            f"{job.id!s:36}  {job.name[:20]:20}  {job.status.value:10}  "
            f"{job.retry_count:>3}/{job.max_retries:<3}  "
            f"{format_timestamp(job.created_at)}"
        )


@cli.command("show")
@click.argument("job_id")
def show_command(job_id: str) -> None:
    """Print one job as JSON, its stack trace included."""
    job = _job_id(job_id)
    body = job.to_dict(expose_traceback=True)
    click.echo(json.dumps(body, indent=2))


@cli.command("retry")
@click.argument("job_id")
def retry_command(job_id: str) -> None:
    """Put a Failed job back in the queue, with its retries reset."""
    job = _job_id(job_id)
    try:
        job = _manager().retry(job.id)
    except AsyncEndpointsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{job.id} {job.status.value}")


@cli.command("cancel")
@click.argument("job_id")
def cancel_command(job_id: str) -> None:
    """Cancel a waiting job, or ask a running one to stop."""
    job = _job_id(job_id)
    try:
        job = _manager().cancel(job.id)
    except AsyncEndpointsError as exc:
        raise click.ClickException(str(exc)) from None
    requested = " (cancellation requested)" if job.cancel_requested else ""
    click.echo(f"{job.id} {job.status.value}{requested}")


@cli.command("stats")
def stats_command() -> None:
    """Counts per status, queue depth, oldest waiting job and live workers."""
    manager = _manager()
    stats = manager.stats()
    for status in JobStatus:
        click.echo(f"{status.value + ':':12} {stats.counts.get(status, 0)}")
    click.echo(f"{'queue depth:':12} {stats.queue_depth}")
    click.echo(f"oldest waiting: {_age(stats.oldest_waiting_at)}")
    click.echo(f"workers alive: {len(stats.workers)}")
    for owner, seen in sorted(stats.workers.items()):
        click.echo(f"  {owner}  last heartbeat {_age(seen)} ago")
    usage = manager.limit_usage()
    if usage:
        click.echo("limits:")
        for name, line in usage.items():
            click.echo(f"  {name}: {line}")


@cli.command("purge")
@click.option(
    "--status",
    type=_FINISHED_STATUS,
    required=True,
    help="Which finished jobs to delete.",
)
@click.option(
    "--older-than",
    required=True,
    help="Jobs that ended longer ago than this: 90s, 15m, 12h, 1d.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only count the jobs that would be deleted; delete nothing.",
)
def purge_command(status: str, older_than: str, dry_run: bool) -> None:
    """Delete finished jobs of one status that ended long enough ago."""
    chosen = _status(status)
    seconds = _seconds(older_than)
    manager = _manager()
    if not dry_run:
        count = manager.purge(chosen, seconds)
        click.echo(f"purged {count} {chosen.value} job(s)")
        return
    # The test the store's purge makes, on the jobs as they are now.
    cutoff = time.time() - seconds
    count = sum(
        1
        for job in _every_job(manager, chosen)
        if job.completed_at is not None and job.completed_at < cutoff
    )
    click.echo(
        f"would purge {count} {chosen.value} job(s) that ended more than "
        f"{older_than.strip()} ago (dry run: nothing was deleted)"
    )


@cli.command("schedules")
def schedules_command() -> None:
    """Each periodic job: its rule, its last tick and that job's status, its next
    tick."""
    from async_endpoints.jobs import format_timestamp

    manager = _manager()
    periodic = [s for s in manager.handlers.values() if s.schedule is not None]
    if not periodic:
        click.echo("no periodic jobs (declare them with @ae.periodic)")
        return
    last_ticks = manager.store.last_ticks()
    for spec in sorted(periodic, key=lambda s: s.name):
        assert spec.schedule is not None
        last, job_id = last_ticks.get(spec.name, (None, None))
        status = "-"
        if job_id is not None:
            job = manager.get(job_id)
            status = job.status.value if job is not None else "its job expired"
        elif last is not None:
            status = "the schedule started: its first job comes at the next tick"
        click.echo(
            f"{spec.name}: {spec.schedule.describe()}; last tick "
            f"{format_timestamp(last) or 'none yet'} ({status}); next "
            f"{format_timestamp(manager.next_tick(spec.name))}"
        )

"""The ``flask async-endpoints`` command group."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click
from flask import current_app
from flask.cli import AppGroup

cli = AppGroup("async-endpoints", help="Run and inspect asynchronous jobs.")


@cli.command("worker")
def worker_command() -> None:
    """Run only the job worker in this process, until SIGTERM or Ctrl-C.

    On the signal it stops claiming, lets running jobs finish within
    ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS and hands the rest back to the queue.
    """
    from async_endpoints.extension import AsyncEndpoints
    from async_endpoints.worker import Worker

    ext = current_app.extensions.get("async_endpoints")
    if not isinstance(ext, AsyncEndpoints):
        raise click.ClickException("This app has no AsyncEndpoints extension.")
    state = ext._state()
    worker = Worker(state.manager)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            worker.hurry()  # a second signal: hand running jobs back now
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

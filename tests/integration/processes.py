"""Worker processes of the integration app, for tests that need real ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def worker_env(redis_url: str, **settings: str) -> dict[str, str]:
    """This process's environment for a worker of the integration app on
    ``redis_url``, with ``settings`` (``AE_TEST_*`` and ``ASYNC_ENDPOINTS_*``)."""
    return {**os.environ, "AE_TEST_REDIS_URL": redis_url, **settings}


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``flask async-endpoints worker`` on the integration app, in a new process
    (its output appended to ``log``)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "tests.integration.worker_app",
                "async-endpoints",
                "worker",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process still running (ours, by its own pid), wait for all,
    and SIGKILL one that is still there after 15 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

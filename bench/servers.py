"""The processes the harness starts: redis-server, gunicorn, workers.

Every process is started in its own session (so its children share its process
group), binds 127.0.0.1 only, and is stopped through its own pid: SIGTERM to the
group whose id is that pid, then SIGKILL after a grace period. Nothing else is ever
signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

import redis

ROOT: Final = Path(__file__).resolve().parent.parent
"""The repository root: the working directory of every process started here."""

HOST: Final = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait until something accepts connections on ``127.0.0.1:port``.

    :raises RuntimeError: the process exited, or nothing listened in time.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nothing listened on {HOST}:{port} within {timeout} s"
                ) from None
            time.sleep(0.02)


class Managed:
    """A child process in its own session, stopped by its pid's process group.

    :param name: a label for logs and errors.
    :param argv: the command line.
    :param env: extra environment variables.
    :param log: where its output goes (``None``: discarded).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        """The pid of the started process."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    def start(self) -> Managed:
        """Start the process (in a new session) and return ``self``."""
        out = subprocess.DEVNULL
        if self.log is not None:
            out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        finally:
            if self.log is not None:
                os.close(out)
        self.started_at = time.time()
        return self

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group of our pid; SIGKILL it after ``grace`` s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # a new session: its process group id is its own pid
        _signal_group(pgid, signal.SIGTERM)
        _signal_group(pgid, signal.SIGCONT)  # in case it was paused
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
        # Children that outlived the leader (same group) get SIGKILL too.
        _signal_group(pgid, signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP the process group of our pid (see :meth:`resume`)."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the process group of our pid."""
        if self.proc is not None:
            _signal_group(self.proc.pid, signal.SIGCONT)

    def pids(self) -> list[int]:
        """The pids in this process's group (itself and its children)."""
        if self.proc is None:
            return []
        pgid = self.proc.pid
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:  # field 5 of /proc/<pid>/stat: pgrp
                found.append(int(entry.name))
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the processes of the group."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have been busy since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in fields[:8]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def settle(
    procs: Sequence[Managed], *, idle_share: float = 0.03, timeout: float = 60.0
) -> float:
    """Wait until ``procs`` use less than ``idle_share`` of a core; return the wait.

    Used between measurements so that a backlog left by one run (jobs still being
    executed) cannot steal CPU from the next.
    """
    start = time.monotonic()
    window = 0.3
    before = sum(p.cpu_seconds() for p in procs)
    while time.monotonic() - start < timeout:
        time.sleep(window)
        after = sum(p.cpu_seconds() for p in procs)
        if after - before < idle_share * window:
            break
        before = after
    return time.monotonic() - start


class RedisServer:
    """A redis-server of our own on a free loopback port, without persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: apt-get install redis-server"
            )
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ae-bench-redis-")
        self.process = Managed(
            "redis-server",
            [
                binary,
                *("--port", str(self.port), "--bind", HOST, "--save", ""),
                *("--appendonly", "no", "--dir", self.dir),
                *("--protected-mode", "yes", "--databases", "64"),
            ],
        )

    def url(self, db: int = 0) -> str:
        """The ``redis://`` URL of database ``db``."""
        return f"redis://{HOST}:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        """A new client of database ``db`` (replies as bytes)."""
        return redis.Redis(host=HOST, port=self.port, db=db)

    def version(self) -> str:
        """The server's version string."""
        info = self.client().info("server")
        return str(info["redis_version"])

    def __enter__(self) -> RedisServer:
        self.process.start()
        assert self.process.proc is not None
        wait_for_port(self.port, 10.0, self.process.proc)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.process.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ProcessGroup:
    """Processes started together and stopped together, even on error."""

    def __init__(self) -> None:
        self.members: list[Managed] = []

    def start(self, process: Managed) -> Managed:
        """Start ``process`` and keep it for :meth:`stop`."""
        self.members.append(process)
        return process.start()

    def stop(self) -> None:
        """Stop every member (in reverse order)."""
        while self.members:
            self.members.pop().stop()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def gunicorn(
    system: str, env: Mapping[str, str], *, log: Path | None = None
) -> tuple[Managed, int]:
    """A gunicorn (2 gthread workers) serving ``bench.apps`` for ``system``.

    :returns: the unstarted process and its port.
    """
    port = free_port()
    argv = [
        sys.executable,
        *("-m", "gunicorn", "-c", "python:bench.gunicorn_conf"),
        *("--bind", f"{HOST}:{port}"),
        "bench.apps:create_app()",
    ]
    return Managed(
        f"gunicorn[{system}]", argv, env={**env, "BENCH_SYSTEM": system}, log=log
    ), port


def start_gunicorn(group: ProcessGroup, managed: Managed, port: int) -> None:
    """Start a gunicorn made by :func:`gunicorn` and wait for its port."""
    group.start(managed)
    assert managed.proc is not None
    wait_for_port(port, 30.0, managed.proc)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A :class:`RedisServer` for the duration of the block."""
    with RedisServer() as server:
        yield server

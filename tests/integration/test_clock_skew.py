"""Processes whose clocks disagree with Redis's, on a real redis-server.

DESIGN.md, "Clocks need not agree": leases are judged on Redis's clock, so a
process whose clock is off never takes a live lease, a dead process's jobs are
recovered within lease + one sweep, and a job submitted to run now is claimable
at once whatever the submitting host's clock says.

The skewed processes run under ``faketime`` (libfaketime) with only the wall
clock shifted (``FAKETIME_DONT_FAKE_MONOTONIC=1``): ``time.time()`` is off,
``time.monotonic()`` (and so every timeout and Event wait) is the host's. The
``faketime`` command forks the program as its child, so the skewed Python
process is found among its children and signalled by its own pid.

Every worker is ``flask async-endpoints worker`` on ``worker_app``; every wait
has a deadline; every process is stopped by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis
from flask import Flask

from async_endpoints import AsyncEndpoints, Job, JobStatus
from tests.conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.redis, pytest.mark.slow]

LEASE = 3.0  # CLAIM_TIMEOUT_SECONDS: heartbeats every second
SWEEP = 0.5  # SWEEP_INTERVAL_SECONDS (±10% jitter)
STEP = 0.05  # AE_TEST_STEP_SECONDS: how long one step of ``Steps`` takes
WORKER_ARGS = ["-m", "flask", "--app", "tests.integration.worker_app"]
WORKER_ARGS += ["async-endpoints", "worker"]


def deadline_wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# -- faketime -------------------------------------------------------------------------


def faketime_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a process under faketime: only the wall clock is shifted."""
    return {**env, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.fixture(scope="module")
def faketime() -> str:
    """The ``faketime`` binary, checked to shift a child's ``time.time()``.

    Skips when it is missing or does not work here, unless ``CI`` is set (then
    ``.ci/run`` installs it, and its absence is a failure).
    """

    def unavailable(reason: str) -> NoReturn:
        if os.environ.get("CI"):
            pytest.fail(
                f"{reason}; .ci/run should install it (apt-get install faketime)"
            )
        pytest.skip(f"{reason} (apt-get install faketime)")

    binary = shutil.which("faketime")
    if binary is None:
        unavailable("faketime is not installed")
    probe = "import threading, time; threading.Event().wait(0.01); print(time.time())"
    try:
        out = subprocess.run(
            [binary, "-f", "+40s", sys.executable, "-c", probe],
            env=faketime_env(dict(os.environ)),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        shift = float(out.split()[-1]) - time.time()
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        unavailable(f"faketime does not run a Python child here: {exc!r}")
    if not 35 < shift < 45:
        unavailable(f"faketime -f +40s shifted the child's clock by {shift:.1f}s")
    return binary


# -- processes ------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """The live (not zombie) children of process ``pid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


class Proc:
    """A Python process of this test, maybe under ``faketime -f <skew>``.

    ``pid`` is the Python process itself (under faketime, the child faketime
    forked), so signals reach the program and not its launcher. It joins
    ``procs`` as soon as it is started, so the test's teardown stops it even if
    it never got ready.
    """

    def __init__(
        self,
        procs: list[Proc],
        args: list[str],
        env: dict[str, str],
        log: Path,
        *,
        faketime: str | None = None,
        skew: str | None = None,
    ) -> None:
        self.log = log
        command = [sys.executable, *args]
        if skew is not None:
            assert faketime is not None
            command = [faketime, "-f", skew, *command]
            env = faketime_env(env)
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(self)
        self.pid = self.popen.pid
        self.forked = skew is not None  # the program's pid is not yet known
        if skew is not None:
            # faketime forks the program and waits for it: signal the program.
            found: list[int] = []

            def forked() -> bool:
                assert self.popen.poll() is None, self.output()
                found[:] = child_pids(self.popen.pid)
                return len(found) == 1

            deadline_wait(forked, 10, "faketime to start its child")
            self.pid = found[0]
            self.forked = False

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if not self.alive():
            return
        targets = [self.pid]
        if self.forked:  # faketime's child was never found: whatever it forked
            targets = [*child_pids(self.popen.pid), self.popen.pid]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait(timeout=10)


class Worker(Proc):
    """``flask async-endpoints worker`` on ``worker_app``."""

    def __init__(
        self,
        procs: list[Proc],
        env: dict[str, str],
        log: Path,
        *,
        faketime: str | None = None,
        skew: str | None = None,
    ) -> None:
        super().__init__(procs, WORKER_ARGS, env, log, faketime=faketime, skew=skew)
        self.owner = ""

        def running() -> bool:
            assert self.alive(), self.output()
            for line in self.output().splitlines():
                if line.startswith("async-endpoints worker ") and "running" in line:
                    self.owner = line.split()[2]
                    return True
            return False

        deadline_wait(running, 20, f"the worker to start ({log.name})")
        assert self.owner.split(":")[1] == str(self.pid), self.owner


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """The processes a test started; any still running are stopped at the end."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.signal(signal.SIGKILL)
    for proc in started:
        proc.wait(timeout=10)


# -- the store, seen from this process (true clock) ---------------------------------


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield redis_server.url
    client.flushdb()
    client.close()


def worker_env(redis_url: str, **config: object) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AE_TEST_REDIS_URL=redis_url,
        AE_TEST_STEP_SECONDS=str(STEP),
        PYTHONUNBUFFERED="1",  # the "running" line reaches the log at once
    )
    settings: dict[str, object] = {
        "CLAIM_TIMEOUT_SECONDS": LEASE,
        "SWEEP_INTERVAL_SECONDS": SWEEP,
        "SHUTDOWN_GRACE_SECONDS": 1,
        "MAX_CONCURRENCY": 2,
        **config,
    }
    for key, value in settings.items():
        env[f"ASYNC_ENDPOINTS_{key}"] = json.dumps(value)
    return env


def make_observer(redis_url: str, **config: object) -> tuple[Flask, AsyncEndpoints]:
    """An app of this process on the same store, with the host's clock; it
    submits and reads jobs and runs none. The jobs it submits take their
    ``MAX_RETRIES`` from ``config``."""
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_STORE_URL=redis_url,
        ASYNC_ENDPOINTS_KEY_PREFIX="itest",
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_MAX_QUEUE_SIZE=0,
    )
    app.config.update({f"ASYNC_ENDPOINTS_{k}": v for k, v in config.items()})
    ae = AsyncEndpoints(app)

    @ae.post("/steps", name="Steps")
    def steps(ctx: object) -> None:
        raise AssertionError("the observer never runs jobs")

    return app, ae


@pytest.fixture
def observer(redis_url: str) -> tuple[Flask, AsyncEndpoints]:
    return make_observer(redis_url)


def submit(obs: tuple[Flask, AsyncEndpoints], steps: int, count: int) -> list[str]:
    app, ae = obs
    with app.app_context():
        return [str(ae.submit("Steps", {"steps": steps}).id) for _ in range(count)]


def jobs(obs: tuple[Flask, AsyncEndpoints], ids: list[str]) -> list[Job]:
    app, ae = obs
    with app.app_context():
        found = [ae.get_job(i) for i in ids]
    assert all(job is not None for job in found), "a job disappeared"
    return [job for job in found if job is not None]


def held_by(redis_url: str, ids: list[str], worker: Worker) -> bool:
    """Whether every job runs under a lease of ``worker`` (the job hash's ``w``:
    the worker's name, not the user ``Job.owner``)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        held = [client.hmget(f"{{itest}}:job:{i}", "s", "w") for i in ids]
    finally:
        client.close()
    return all(h == [JobStatus.IN_PROGRESS.value, worker.owner] for h in held)


def disturbed(
    redis_url: str,
    obs: tuple[Flask, AsyncEndpoints],
    ids: list[str],
    worker: Worker,
) -> list[Job]:
    """The jobs neither still running under ``worker``'s lease nor completed on
    their first attempt: those whose lease another worker took."""
    return [
        job
        for job in jobs(obs, ids)
        if not held_by(redis_url, [str(job.id)], worker)
        and not (
            job.status is JobStatus.COMPLETED
            and job.retry_count == 0
            and job.error is None
        )
    ]


def live_workers(obs: tuple[Flask, AsyncEndpoints]) -> set[str]:
    app, ae = obs
    with app.app_context():
        return set(ae._state().manager.stats().workers)


def redis_hash(redis_url: str, key: str) -> dict[str, str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {str(k): str(v) for k, v in client.hgetall(key).items()}
    finally:
        client.close()


def assert_ran_once_cleanly(
    redis_url: str, done: list[Job], pid_of: dict[str, int]
) -> None:
    """Each job completed on its first attempt, in the expected process, once."""
    for job in done:
        assert job.status is JobStatus.COMPLETED, job
        assert job.retry_count == 0, f"{job.id} was retried: {job.error}"
        assert job.error is None, job.error
        assert isinstance(job.result, dict), job.result
        assert job.result["pid"] == pid_of[str(job.id)], job
    runs = redis_hash(redis_url, "itest-runs")
    assert runs == {str(job.id): "1" for job in done}, "some job ran twice"
    reasons = redis_hash(redis_url, "itest-reasons")
    assert reasons == {}, f"runs were stopped early: {reasons}"


# -- the tests ------------------------------------------------------------------------


@pytest.mark.parametrize("skew", ["+40s", "-40s"], ids=["ahead", "behind"])
def test_a_skewed_worker_takes_no_live_lease_and_claims_at_once(
    redis_url: str,
    tmp_path: Path,
    faketime: str,
    procs: list[Proc],
    observer: tuple[Flask, AsyncEndpoints],
    skew: str,
) -> None:
    """A true-clock worker runs long jobs; a worker whose clock is 40 s off runs
    beside it through many sweeps of both. The skewed worker steals none of
    the live leases, claims new jobs at once, and its own leases are left
    alone too: every job runs once, on its first attempt, and completes. Both
    workers count as alive all along."""
    env = worker_env(redis_url)
    true = Worker(procs, env, tmp_path / "true.log")
    long_ids = submit(observer, steps=400, count=2)  # 20 s each: fills `true`
    deadline_wait(
        lambda: held_by(redis_url, long_ids, true), 10, "the true-clock worker"
    )

    skewed = Worker(procs, env, tmp_path / "skewed.log", faketime=faketime, skew=skew)
    began = time.time()
    short_ids = submit(observer, steps=200, count=2)  # 10 s each: `skewed` runs them
    deadline_wait(
        lambda: held_by(redis_url, short_ids, skewed),
        5,
        f"the worker {skew} to claim jobs submitted now",
    )
    # The skewed worker really runs on its own clock: it stamps startedAt.
    shift = float(skew[:-1])
    for job in jobs(observer, short_ids):
        assert job.started_at is not None
        assert abs(job.started_at - began - shift) < 5, (job.started_at, began)

    # Several sweeps of each worker (and heartbeats) while both hold live leases.
    watch_until = time.monotonic() + 6
    while time.monotonic() < watch_until:
        assert true.alive(), true.output()
        assert skewed.alive(), skewed.output()
        alive = live_workers(observer)
        assert {true.owner, skewed.owner} <= alive, f"live workers: {alive}"
        stolen = disturbed(redis_url, observer, long_ids, true)
        stolen += disturbed(redis_url, observer, short_ids, skewed)
        assert not stolen, f"a live lease was taken: {stolen}"
        time.sleep(0.25)

    deadline_wait(
        lambda: all(j.status.is_finished for j in jobs(observer, long_ids + short_ids)),
        25,
        "every job to finish",
    )
    skewed.stop()
    true.stop()
    pid_of = {i: true.pid for i in long_ids} | {i: skewed.pid for i in short_ids}
    assert_ran_once_cleanly(redis_url, jobs(observer, long_ids + short_ids), pid_of)


SUBMITTER = """
import json, time
from tests.integration.worker_app import ae, app
with app.app_context():
    ids = [str(ae.submit("Steps", {"steps": 1}).id) for _ in range(3)]
print(json.dumps({"ids": ids, "monotonic": time.monotonic(), "time": time.time()}))
"""


def test_a_submitter_60s_ahead_delays_nothing(
    redis_url: str,
    tmp_path: Path,
    faketime: str,
    procs: list[Proc],
    observer: tuple[Flask, AsyncEndpoints],
) -> None:
    """Jobs submitted "now" by a process whose clock is 60 s ahead are started
    by a true-clock worker within moments, not 60 s later."""
    worker = Worker(
        procs, worker_env(redis_url, MAX_CONCURRENCY=4), tmp_path / "worker.log"
    )

    before = time.time()
    submitter = Proc(
        procs,
        ["-c", SUBMITTER],
        worker_env(redis_url, START_WORKER=False),
        tmp_path / "submitter.log",
        faketime=faketime,
        skew="+60s",
    )
    assert submitter.wait(timeout=30) == 0, submitter.output()
    report: dict[str, Any] = json.loads(submitter.output().splitlines()[-1])
    ids: list[str] = report["ids"]
    submitted = float(report["monotonic"])  # CLOCK_MONOTONIC is not faked
    assert report["time"] - before > 50, "the submitter's clock was not ahead"
    for job in jobs(observer, ids):
        assert job.created_at - before > 50, "the job was not stamped 60 s ahead"

    started: dict[str, float] = {}

    def all_started() -> bool:
        assert worker.alive(), worker.output()
        for job in jobs(observer, ids):
            if job.status is not JobStatus.QUEUED and str(job.id) not in started:
                started[str(job.id)] = time.monotonic()
        return len(started) == len(ids)

    deadline_wait(all_started, 15, "the true-clock worker to start the jobs")
    latency = max(started.values()) - submitted
    assert latency < 5, f"the jobs waited {latency:.1f}s to start"
    deadline_wait(
        lambda: all(j.status.is_finished for j in jobs(observer, ids)),
        10,
        "the jobs to finish",
    )
    worker.stop()
    assert_ran_once_cleanly(
        redis_url, jobs(observer, ids), dict.fromkeys(ids, worker.pid)
    )


def test_a_dead_worker_40s_ahead_is_recovered_within_lease_and_one_sweep(
    redis_url: str,
    tmp_path: Path,
    faketime: str,
    procs: list[Proc],
) -> None:
    """A worker whose clock is 40 s ahead claims long jobs and is SIGKILLed; a
    true-clock worker recovers them (LeaseExpired, no retries left) within
    CLAIM_TIMEOUT + SWEEP_INTERVAL + margin of the kill, and not before the
    dead worker's last lease could have ended."""
    env = worker_env(redis_url, MAX_RETRIES=0, MAX_CONCURRENCY=4)
    observer = make_observer(redis_url, MAX_RETRIES=0)  # recovered = failed
    skewed = Worker(procs, env, tmp_path / "skewed.log", faketime=faketime, skew="+40s")
    began = time.time()
    ids = submit(observer, steps=1000, count=4)  # 50 s each
    deadline_wait(lambda: held_by(redis_url, ids, skewed), 10, "the worker +40s")
    for job in jobs(observer, ids):
        assert job.started_at is not None
        assert abs(job.started_at - began - 40) < 5, (job.started_at, began)

    true = Worker(procs, env, tmp_path / "true.log")  # idle: every job is held
    time.sleep(2 * SWEEP)  # it sweeps (and must not take the live leases)
    assert held_by(redis_url, ids, skewed), jobs(observer, ids)

    skewed.signal(signal.SIGKILL)
    killed = time.monotonic()
    skewed.wait(timeout=10)
    recovered: dict[str, float] = {}

    def all_recovered() -> bool:
        assert true.alive(), true.output()
        for job in jobs(observer, ids):
            if job.status is not JobStatus.IN_PROGRESS and str(job.id) not in recovered:
                recovered[str(job.id)] = time.monotonic() - killed
        return len(recovered) == len(ids)

    bound = LEASE + SWEEP + 3
    deadline_wait(all_recovered, 15, "the true-clock worker to recover the jobs")
    assert max(recovered.values()) < bound, recovered
    # Its last heartbeat (at most a second before the kill) leased 3 s more.
    assert min(recovered.values()) > LEASE - 2, f"a live lease was taken: {recovered}"
    for job in jobs(observer, ids):
        assert job.status is JobStatus.FAILED, job
        assert job.error is not None
        assert job.error.type == "LeaseExpired", job.error
    true.stop()
    runs = redis_hash(redis_url, "itest-runs")
    assert runs == dict.fromkeys(ids, "1"), runs

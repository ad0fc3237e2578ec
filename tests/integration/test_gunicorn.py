"""Real gunicorn, real redis-server, real signals: deployment and recovery.

Every server binds to 127.0.0.1, is started here and stopped by pid; every wait
has a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from flask import Flask

from async_endpoints import AsyncEndpoints, Job, JobStatus
from tests.conftest import RedisServer, free_port
from tests.sse import EventStream

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.redis, pytest.mark.gunicorn, pytest.mark.slow]


def deadline_wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Gunicorn:
    """One gunicorn master serving ``tests.integration.worker_app:app``."""

    def __init__(
        self,
        tmp: Path,
        env: dict[str, str],
        *,
        preload: bool,
        worker_class: str = "gthread",
        child_exit: bool = False,
    ) -> None:
        self.port = free_port()
        self.log = tmp / f"gunicorn-{self.port}.log"
        self.conf = tmp / f"gunicorn-{self.port}.conf.py"
        self.conf.write_text(
            "from async_endpoints.gunicorn import post_fork, worker_exit\n"
            + (
                "from async_endpoints.gunicorn import child_exit\n"
                if child_exit
                else ""
            )
            + f"bind = '127.0.0.1:{self.port}'\n"
            "workers = 2\n"
            f"worker_class = {worker_class!r}\n"
            "threads = 4\n"
            f"preload_app = {preload}\n"
            "graceful_timeout = 10\n"
            "timeout = 30\n"
        )
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-c",
                    str(self.conf),
                    "tests.integration.worker_app:app",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline_wait(
            lambda: len(self.worker_pids()) == 2 and self._answers(), 30, "gunicorn"
        )

    def _answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log.read_text()
        try:
            status, _ = self.request("GET", "/jobs/not-a-job")
        except OSError:
            return False
        return status == 404

    def worker_pids(self) -> list[int]:
        """The pids of the master's live children (its workers)."""
        assert self.proc is not None
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        return pids

    def request(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            data = json.dumps(body) if body is not None else None
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> float:
        """Signal the master and wait for it to exit; return how long it took."""
        if self.proc is None:
            return 0.0
        began = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        return time.monotonic() - began


def make_env(redis_url: str, **config: object) -> dict[str, str]:
    env = dict(os.environ)
    env["AE_TEST_REDIS_URL"] = redis_url
    for key, value in config.items():
        if key.startswith("AE_"):
            env[key] = str(value)
        else:
            env[f"ASYNC_ENDPOINTS_{key}"] = json.dumps(value)
    return env


def observer(redis_url: str) -> tuple[Flask, AsyncEndpoints]:
    """An app of this process that reads the same store and runs nothing."""
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_STORE_URL=redis_url,
        ASYNC_ENDPOINTS_KEY_PREFIX="itest",
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_MAX_QUEUE_SIZE=0,
    )
    ae = AsyncEndpoints(app)

    @ae.post("/count", name="Count")
    def count(ctx: object) -> None:
        raise AssertionError("the observer never runs jobs")

    return app, ae


def jobs_of(app: Flask, ae: AsyncEndpoints, ids: list[str]) -> list[Job | None]:
    with app.app_context():
        return [ae.get_job(i) for i in ids]


def all_finished(app: Flask, ae: AsyncEndpoints, ids: list[str]) -> bool:
    return all(j is not None and j.status.is_finished for j in jobs_of(app, ae, ids))


def runs(redis_url: str) -> dict[str, int]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {k: int(v) for k, v in client.hgetall("itest-runs").items()}
    finally:
        client.close()


def wait_for_running(redis_url: str, count: int) -> None:
    """Wait (20 s at most) until exactly ``count`` jobs are claimed."""
    client = redis.Redis.from_url(redis_url)
    try:
        deadline_wait(
            lambda: client.zcard("{itest}:claimed") == count,
            20,
            f"{count} running jobs",
        )
    finally:
        client.close()


def post_jobs(server: Gunicorn, count: int, path: str = "/count") -> list[str]:
    ids = []
    for n in range(count):
        status, body = server.request("POST", path, {"n": n})
        assert status == 202, body
        ids.append(body["id"])
    return ids


@pytest.mark.parametrize(
    ("preload", "worker_class"),
    [(True, "gthread"), (False, "gthread"), (True, "sync")],
    ids=["gthread-preload", "gthread-no-preload", "sync-preload"],
)
def test_end_to_end_over_http(
    redis_server: RedisServer, tmp_path: Path, preload: bool, worker_class: str
) -> None:
    redis.Redis.from_url(redis_server.url).flushdb()
    server = Gunicorn(
        tmp_path, make_env(redis_server.url), preload=preload, worker_class=worker_class
    )
    server.start()
    try:
        ids = post_jobs(server, 300)
        app, ae = observer(redis_server.url)
        deadline_wait(lambda: all_finished(app, ae, ids), 60, "300 jobs to finish")
        for n, job in enumerate(jobs_of(app, ae, ids)):
            assert job is not None
            assert job.status is JobStatus.COMPLETED
            assert isinstance(job.result, dict)
            assert job.result["n"] == 2 * n
        pids = {job.result["pid"] for job in jobs_of(app, ae, ids)}  # type: ignore[index,union-attr]
        assert pids <= set(server.worker_pids())
        status, body = server.request("GET", f"/jobs/{ids[0]}")
        assert status == 200
        assert body["status"] == "Completed"
    finally:
        assert server.stop() < 15
    assert set(runs(redis_server.url).values()) == {1}


def test_jobs_survive_killed_workers(redis_server: RedisServer, tmp_path: Path) -> None:
    """SIGKILL a worker mid-run, three times: every job still ends Completed, and
    only jobs that were in flight at a kill ran twice."""
    url = redis_server.url
    redis.Redis.from_url(url).flushdb()
    env = make_env(
        url,
        AE_TEST_JOB_SECONDS=0.1,
        CLAIM_TIMEOUT_SECONDS=2,
        SWEEP_INTERVAL_SECONDS=0.5,
        MAX_RETRIES=10,
        MAX_CONCURRENCY=4,
    )
    server = Gunicorn(tmp_path, env, preload=True)
    server.start()
    client = redis.Redis.from_url(url, decode_responses=True)
    in_flight: set[str] = set()
    try:
        ids = post_jobs(server, 150)
        app, ae = observer(url)
        for _ in range(3):
            deadline_wait(
                lambda: client.zcard("{itest}:claimed") > 0, 20, "a running job"
            )
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            # What the victim held stays claimed until its lease expires.
            in_flight |= set(client.zrange("{itest}:claimed", 0, -1))
            deadline_wait(
                lambda v=victim: (
                    len(server.worker_pids()) == 2 and v not in server.worker_pids()
                ),
                30,
                "gunicorn to respawn the worker",
            )
        deadline_wait(lambda: all_finished(app, ae, ids), 120, "every job to finish")
        jobs = jobs_of(app, ae, ids)
    finally:
        server.stop()
        client.close()
    assert [j.status for j in jobs if j] == [JobStatus.COMPLETED] * len(ids)
    counted = runs(url)
    assert set(counted) == set(ids)
    twice = {job_id for job_id, n in counted.items() if n > 1}
    assert twice <= in_flight, "a job that was not running at a kill ran twice"


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_graceful_stop_hands_jobs_back(
    redis_server: RedisServer, tmp_path: Path, preload: bool
) -> None:
    """SIGTERM with jobs longer than the grace: they are handed back at once (the
    lease is far longer than the test), and the next gunicorn finishes them."""
    url = redis_server.url
    redis.Redis.from_url(url).flushdb()
    env = make_env(
        url,
        AE_TEST_JOB_SECONDS=3,
        CLAIM_TIMEOUT_SECONDS=600,
        SHUTDOWN_GRACE_SECONDS=0.5,
        MAX_CONCURRENCY=2,
    )
    server = Gunicorn(tmp_path, env, preload=preload)
    server.start()
    app, ae = observer(url)
    ids = post_jobs(server, 8)
    wait_for_running(url, 4)
    took = server.stop(signal.SIGTERM)
    assert took < 8, f"graceful stop took {took:.1f}s"
    after_stop = jobs_of(app, ae, ids)
    assert all(j is not None and j.status is JobStatus.QUEUED for j in after_stop)
    assert all(j.retry_count == 0 for j in after_stop if j)  # no attempt counted

    again = Gunicorn(tmp_path, env, preload=preload)
    again.start()
    try:
        deadline_wait(lambda: all_finished(app, ae, ids), 60, "handed-back jobs")
    finally:
        again.stop()
    assert all(
        j is not None and j.status is JobStatus.COMPLETED for j in jobs_of(app, ae, ids)
    )


def test_workers_survive_a_redis_restart(
    redis_server_aof: RedisServer, tmp_path: Path
) -> None:
    url = redis_server_aof.url
    env = make_env(
        url,
        AE_TEST_JOB_SECONDS=0.05,
        CLAIM_TIMEOUT_SECONDS=3,
        SWEEP_INTERVAL_SECONDS=0.5,
        MAX_CONCURRENCY=2,
        MAX_RETRIES=10,
    )
    server = Gunicorn(tmp_path, env, preload=True)
    server.start()
    try:
        ids = post_jobs(server, 100)
        redis_server_aof.stop()
        status, body = server.request("POST", "/count", {"n": 0})
        assert status == 503, body
        assert body["status"] == 503
        time.sleep(1)  # an outage of a second, not synchronisation
        redis_server_aof.start()
        app, ae = observer(url)
        deadline_wait(lambda: all_finished(app, ae, ids), 90, "jobs after the restart")
        jobs = jobs_of(app, ae, ids)
        assert len(server.worker_pids()) == 2
        status, _ = server.request("POST", "/count", {"n": 1})
        assert status == 202
    finally:
        server.stop()
    assert all(j is not None and j.status is JobStatus.COMPLETED for j in jobs)


def reasons(redis_url: str) -> dict[str, str]:
    """Why each stopped run of ``Steps`` stopped (``ctx.cancel_reason``)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return client.hgetall("itest-reasons")
    finally:
        client.close()


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_graceful_stop_never_records_a_partial_result(
    redis_server: RedisServer, tmp_path: Path, preload: bool
) -> None:
    """Handlers that stop early when told to (as the README advises) return within
    the grace period: what they return is not a result. Every job is handed back,
    told ``shutdown``, and finished in full by the next gunicorn."""
    url = redis_server.url
    redis.Redis.from_url(url).flushdb()
    env = make_env(
        url,
        AE_TEST_STEP_SECONDS=0.05,
        CLAIM_TIMEOUT_SECONDS=600,
        SHUTDOWN_GRACE_SECONDS=3,
        MAX_CONCURRENCY=4,
    )
    server = Gunicorn(tmp_path, env, preload=preload)
    server.start()
    app, ae = observer(url)
    ids = []
    for _ in range(8):
        status, body = server.request("POST", "/steps", {"steps": 400})
        assert status == 202, body
        ids.append(body["id"])
    wait_for_running(url, 8)
    took = server.stop(signal.SIGTERM)
    assert took < 10, f"graceful stop took {took:.1f}s"
    after_stop = jobs_of(app, ae, ids)
    assert [j.status if j else None for j in after_stop] == [JobStatus.QUEUED] * 8, [
        (j.status, j.result) for j in after_stop if j
    ]
    assert all(j.retry_count == 0 and j.result is None for j in after_stop if j), [
        (j.retry_count, j.result, j.error) for j in after_stop if j
    ]
    assert reasons(url) == dict.fromkeys(ids, "shutdown")

    env["AE_TEST_STEP_SECONDS"] = "0.001"
    again = Gunicorn(tmp_path, env, preload=preload)
    again.start()
    try:
        deadline_wait(lambda: all_finished(app, ae, ids), 60, "handed-back jobs")
    finally:
        again.stop()
    finished = jobs_of(app, ae, ids)
    assert all(j is not None and j.status is JobStatus.COMPLETED for j in finished)
    assert all(j.result["steps"] == 400 for j in finished if j)  # type: ignore[index]
    assert runs(url) == dict.fromkeys(ids, 2)


def test_a_cancel_reaches_a_job_in_another_process_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A cancel from another process is not left for the next heartbeat (a lease
    of 60 s beats every 20 s): the handler is told within a second or two."""
    url = redis_server.url
    redis.Redis.from_url(url).flushdb()
    env = make_env(url, AE_TEST_STEP_SECONDS=0.02, CLAIM_TIMEOUT_SECONDS=60)
    server = Gunicorn(tmp_path, env, preload=True)
    server.start()
    app, ae = observer(url)
    try:
        status, body = server.request("POST", "/steps", {"steps": 5000})
        assert status == 202, body
        job_id = body["id"]

        def progressing() -> bool:
            job = jobs_of(app, ae, [job_id])[0]
            return job is not None and job.progress is not None

        deadline_wait(progressing, 20, "the job to report progress")
        status, body = server.request("GET", f"/jobs/{job_id}")
        assert (status, body["status"], body["cancelRequested"]) == (
            200,
            "InProgress",
            False,
        )
        with app.app_context():
            flagged = ae.cancel(job_id)  # from this process: neither gunicorn worker
        assert flagged.cancel_requested
        status, body = server.request("GET", f"/jobs/{job_id}")
        assert body["cancelRequested"] is True or body["status"] == "Canceled"
        began = time.monotonic()
        deadline_wait(
            lambda: jobs_of(app, ae, [job_id])[0].status is JobStatus.CANCELED,  # type: ignore[union-attr]
            10,
            "the job to end Canceled",
        )
        assert time.monotonic() - began < 3
    finally:
        server.stop()
    assert reasons(url) == {job_id: "canceled"}
    assert runs(url) == {job_id: 1}


def test_job_events_through_gunicorn(redis_server: RedisServer, tmp_path: Path) -> None:
    """A stream served by one worker process follows a job another one runs:
    every progress report arrives, a reconnect with Last-Event-ID resumes."""
    env = make_env(redis_server.url)
    env["AE_TEST_STEP_SECONDS"] = "0.2"
    server = Gunicorn(tmp_path, env, preload=False)
    server.start()
    try:
        status, job = server.request("POST", "/steps", {"steps": 5})
        assert status == 202
        path = f"/jobs/{job['id']}/events"
        stream = EventStream(server.port, path)
        assert stream.status == 200
        assert stream.content_type.startswith("text/event-stream")
        first = stream.next_event()
        assert first is not None
        stream.close()  # the client goes away, then comes back
        resumed = EventStream(server.port, path, **{"Last-Event-ID": str(first["id"])})
        events = []
        while (event := resumed.next_event()) is not None:
            events.append(event)
        resumed.close()
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids))
        assert ids[0] > first["id"]
        assert events[-1]["job"]["status"] == "Completed"
        fractions = [
            e["job"]["progress"]["fraction"]
            for e in events
            if e["job"]["progress"] is not None
        ]
        # Every report after the reconnect is an event of its own.
        start = [0.2, 0.4, 0.6, 0.8, 1.0].index(fractions[0])
        assert fractions[:-1] == [0.2, 0.4, 0.6, 0.8, 1.0][start:]
    finally:
        server.stop()


def finished(app: Flask, ae: AsyncEndpoints, ids: list[str]) -> list[Job]:
    jobs = jobs_of(app, ae, ids)
    return [j for j in jobs if j is not None and j.status.is_finished]


@pytest.mark.parametrize(
    ("preload", "worker_class"),
    [(False, "gthread"), (True, "gthread"), (False, "sync")],
    ids=["gthread-no-preload", "gthread-preload", "sync-no-preload"],
)
def test_child_exit_recovers_a_killed_workers_jobs_at_once(
    redis_server: RedisServer, tmp_path: Path, preload: bool, worker_class: str
) -> None:
    """Both workers SIGKILLed while 8 jobs run under 60 s leases: with child_exit
    the jobs run again within seconds, each with one failed attempt."""
    redis.Redis.from_url(redis_server.url).flushdb()
    env = make_env(
        redis_server.url,
        CLAIM_TIMEOUT_SECONDS=60,
        SWEEP_INTERVAL_SECONDS=30,
        RETRY_DELAY_BASE_SECONDS=0.2,
        MAX_CONCURRENCY=4,
        AE_TEST_FIRST_RUN_SECONDS=120,
    )
    server = Gunicorn(
        tmp_path, env, preload=preload, worker_class=worker_class, child_exit=True
    )
    server.start()
    app, ae = observer(redis_server.url)
    try:
        ids = post_jobs(server, 8, "/first-slow")
        wait_for_running(redis_server.url, 8)
        # Every handler has begun its first (slow) run: killed mid-run.
        deadline_wait(lambda: len(runs(redis_server.url)) == 8, 20, "8 first runs")
        killed = time.monotonic()
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)
        deadline_wait(
            lambda: len(finished(app, ae, ids)) == 8, 15, "the 8 jobs to run again"
        )
        took = time.monotonic() - killed
        assert took < 10, f"recovery took {took:.1f} s"
        jobs = finished(app, ae, ids)
        assert {j.status for j in jobs} == {JobStatus.COMPLETED}
        assert {j.retry_count for j in jobs} == {1}  # the killed run counted once
        assert all(n == 2 for n in runs(redis_server.url).values())
        assert "died holding" in server.log.read_text()
    finally:
        server.stop()


def test_child_exit_counts_nothing_for_a_graceful_exit(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A worker that stops cleanly hands its jobs back: child_exit, which runs
    for it too, finds nothing left to recover, and no attempt is counted."""
    redis.Redis.from_url(redis_server.url).flushdb()
    env = make_env(
        redis_server.url,
        CLAIM_TIMEOUT_SECONDS=60,
        SHUTDOWN_GRACE_SECONDS=0.5,
        MAX_CONCURRENCY=4,
        AE_TEST_FIRST_RUN_SECONDS=120,
    )
    server = Gunicorn(tmp_path, env, preload=False, child_exit=True)
    server.start()
    app, ae = observer(redis_server.url)
    try:
        ids = post_jobs(server, 8, "/first-slow")
        wait_for_running(redis_server.url, 8)
        deadline_wait(lambda: len(runs(redis_server.url)) == 8, 20, "8 first runs")
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGTERM)  # graceful: worker_exit hands back
        deadline_wait(lambda: len(finished(app, ae, ids)) == 8, 30, "the 8 jobs")
        jobs = finished(app, ae, ids)
        assert {j.status for j in jobs} == {JobStatus.COMPLETED}
        assert {j.retry_count for j in jobs} == {0}
        assert "died holding" not in server.log.read_text()
    finally:
        server.stop()

"""The background worker with real threads; bounded waits, no sleeps as sync."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from flask import Flask

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus
from tests.conftest import RedisServer, wait_until


@pytest.fixture
def live_app() -> Iterator[tuple[Flask, AsyncEndpoints]]:
    """An app whose worker runs in the background (two handler threads)."""
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_MAX_CONCURRENCY=2,
        ASYNC_ENDPOINTS_POLL_INTERVAL_SECONDS=30,  # pickup must not depend on polling
        ASYNC_ENDPOINTS_RETRY_DELAY_BASE_SECONDS=0.05,
        ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS=5,
    )
    ae = AsyncEndpoints(app)
    yield app, ae
    ae.shutdown(grace=0)


def status_of(app: Flask, ae: AsyncEndpoints, job_id: object) -> JobStatus | None:
    with app.app_context():
        job = ae.get_job(str(job_id))
    return None if job is None else job.status


def test_submission_wakes_the_idle_worker(
    live_app: tuple[Flask, AsyncEndpoints],
) -> None:
    app, ae = live_app

    @ae.post("/echo", name="Echo")
    def echo(ctx: AsyncContext) -> object:
        return ctx.request

    client = app.test_client()
    first = client.post("/echo", json=1).get_json()["id"]  # starts the worker
    wait_until(lambda: status_of(app, ae, first) is JobStatus.COMPLETED, 10, "job 1")
    # The worker now idles in a 30 s wait; a new job must wake it at once.
    second = client.post("/echo", json=2).get_json()["id"]
    wait_until(lambda: status_of(app, ae, second) is JobStatus.COMPLETED, 10, "job 2")


def test_concurrency_is_bounded(live_app: tuple[Flask, AsyncEndpoints]) -> None:
    app, ae = live_app
    release = threading.Event()
    running = 0
    peak = 0
    lock = threading.Lock()

    @ae.post("/block", name="Block")
    def block(ctx: AsyncContext) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(20)
        with lock:
            running -= 1

    client = app.test_client()
    ids = [client.post("/block").get_json()["id"] for _ in range(5)]
    wait_until(lambda: running == 2, 10, "two handlers running")
    statuses = [status_of(app, ae, i) for i in ids]
    assert statuses.count(JobStatus.IN_PROGRESS) == 2  # claims only for free threads
    assert statuses.count(JobStatus.QUEUED) == 3
    release.set()
    for job_id in ids:
        wait_until(
            lambda j=job_id: status_of(app, ae, j) is JobStatus.COMPLETED, 10, "all"
        )
    assert peak == 2


def test_retries_run_in_the_background(live_app: tuple[Flask, AsyncEndpoints]) -> None:
    app, ae = live_app
    attempts: list[int] = []

    @ae.post("/flaky", name="Flaky")
    def flaky(ctx: AsyncContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError("again")
        return ctx.attempt

    job_id = app.test_client().post("/flaky").get_json()["id"]
    wait_until(lambda: status_of(app, ae, job_id) is JobStatus.COMPLETED, 10, "retries")
    assert attempts == [1, 2, 3]


def test_worker_survives_handlers_that_raise_base_exceptions(
    live_app: tuple[Flask, AsyncEndpoints],
) -> None:
    app, ae = live_app

    @ae.post("/exit", name="Exit", max_retries=0)
    def leave(ctx: AsyncContext) -> None:
        raise SystemExit(1)

    @ae.post("/ok", name="Ok")
    def ok(ctx: AsyncContext) -> str:
        return "ok"

    client = app.test_client()
    bad = client.post("/exit").get_json()["id"]
    wait_until(lambda: status_of(app, ae, bad) is JobStatus.FAILED, 10, "failed job")
    good = client.post("/ok").get_json()["id"]
    wait_until(lambda: status_of(app, ae, good) is JobStatus.COMPLETED, 10, "next job")


def test_cancel_a_running_job_over_http(live_app: tuple[Flask, AsyncEndpoints]) -> None:
    app, ae = live_app
    started = threading.Event()

    @ae.post("/long", name="Long")
    def long(ctx: AsyncContext) -> str:
        started.set()
        assert ctx.cancelled.wait(20), "ctx.cancelled was never set"
        return "stopped early"

    client = app.test_client()
    location = client.post("/long").headers["Location"]
    assert started.wait(10)
    response = client.delete(location)
    assert response.status_code == 200
    job_id = location.rsplit("/", 1)[1]
    wait_until(lambda: status_of(app, ae, job_id) is JobStatus.CANCELED, 10, "canceled")


def test_job_timeout_fails_the_run_and_discards_its_result() -> None:
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_JOB_TIMEOUT_SECONDS=0.3,
        ASYNC_ENDPOINTS_MAX_RETRIES=0,
    )
    ae = AsyncEndpoints(app)
    finished = threading.Event()

    @ae.post("/hang", name="Hang")
    def hang(ctx: AsyncContext) -> str:
        ctx.cancelled.wait(20)
        finished.set()
        return "late result"

    try:
        job_id = app.test_client().post("/hang").get_json()["id"]
        wait_until(
            lambda: status_of(app, ae, job_id) is JobStatus.FAILED, 10, "timeout"
        )
        assert finished.wait(10), "the handler was not told to stop"
        with app.app_context():
            job = ae.get_job(job_id)
        assert job is not None
        assert job.error is not None
        assert job.error.type == "JobTimeoutError"
        assert job.result is None
    finally:
        ae.shutdown(grace=0)


def test_shutdown_hands_unfinished_jobs_back(
    live_app: tuple[Flask, AsyncEndpoints],
) -> None:
    app, ae = live_app
    started = threading.Event()
    release = threading.Event()

    @ae.post("/stuck", name="Stuck")
    def stuck(ctx: AsyncContext) -> str:
        started.set()
        release.wait(20)
        return "too late"

    job_id = app.test_client().post("/stuck").get_json()["id"]
    assert started.wait(10)
    with app.app_context():
        ae.shutdown(grace=0.1)
        job = ae.get_job(job_id)
        assert job is not None
        assert job.status is JobStatus.QUEUED
        assert job.retry_count == 0
    release.set()
    # The handed-back run's late result is fenced out; nothing else runs it.
    with app.app_context():
        job = ae.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.QUEUED


def test_shutdown_lets_running_jobs_finish_within_grace(
    live_app: tuple[Flask, AsyncEndpoints],
) -> None:
    app, ae = live_app
    started = threading.Event()
    release = threading.Event()

    @ae.post("/short", name="Short")
    def short(ctx: AsyncContext) -> str:
        started.set()
        release.wait(20)
        return "finished"

    job_id = app.test_client().post("/short").get_json()["id"]
    assert started.wait(10)
    threading.Timer(0.1, release.set).start()
    with app.app_context():
        ae.shutdown(grace=10)
    assert status_of(app, ae, job_id) is JobStatus.COMPLETED


def test_a_forked_child_gets_a_new_worker(
    live_app: tuple[Flask, AsyncEndpoints],
) -> None:
    app, ae = live_app

    @ae.post("/n", name="N")
    def n(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    client.post("/n")
    with app.app_context():
        state = ae._state()
    inherited = state.worker
    assert inherited is not None
    inherited.pid = -1  # what a child process sees: a worker from another pid
    client.post("/n")
    assert state.worker is not inherited
    assert state.worker is not None
    assert state.worker.running
    inherited.pid = __import__("os").getpid()
    inherited.stop(grace=0)


def test_no_worker_when_start_worker_is_false(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/n", name="N")
    def n(ctx: AsyncContext) -> None:
        return None

    app.test_client().post("/n")
    with app.app_context():
        assert ae._state().worker is None
        assert ae._state().store.queue_size() == 1


@pytest.mark.redis
@pytest.mark.parametrize("threads", [1, 2])
def test_jobs_one_at_a_time_are_each_picked_up_at_once_on_redis(
    redis_server: RedisServer, threads: int
) -> None:
    """A wake-up consumed by one claim must not be lost by the next: with a 30 s
    poll, every job of a trickle still starts at once."""
    redis.Redis.from_url(redis_server.url).flushdb()
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_STORE_URL=redis_server.url,
        ASYNC_ENDPOINTS_MAX_CONCURRENCY=threads,
        ASYNC_ENDPOINTS_POLL_INTERVAL_SECONDS=30,
    )
    ae = AsyncEndpoints(app)

    @ae.post("/echo", name="Echo")
    def echo(ctx: AsyncContext) -> object:
        return ctx.request

    client = app.test_client()
    try:
        for n in range(6):
            job_id = client.post("/echo", json=n).get_json()["id"]
            wait_until(
                lambda j=job_id: status_of(app, ae, j) is JobStatus.COMPLETED,
                5,
                f"job {n} of a trickle",
            )
    finally:
        ae.shutdown(grace=0)


def test_a_retry_run_beside_its_timed_out_attempt_keeps_its_heartbeat() -> None:
    """Attempt 1 overruns the job timeout and keeps going; attempt 2 runs in the
    same process meanwhile and outlives its lease, so only heartbeats keep it. The
    end of attempt 1 must not take attempt 2's place in the worker."""
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_MAX_CONCURRENCY=2,
        ASYNC_ENDPOINTS_JOB_TIMEOUT_SECONDS=1.0,
        ASYNC_ENDPOINTS_CLAIM_TIMEOUT_SECONDS=0.6,
        ASYNC_ENDPOINTS_SWEEP_INTERVAL_SECONDS=0.3,
        ASYNC_ENDPOINTS_RETRY_DELAY_BASE_SECONDS=0.05,
        ASYNC_ENDPOINTS_POLL_INTERVAL_SECONDS=0.2,
        ASYNC_ENDPOINTS_MAX_RETRIES=5,
    )
    ae = AsyncEndpoints(app)
    attempts: list[int] = []

    @ae.post("/slow", name="Slow")
    def slow(ctx: AsyncContext) -> int:
        attempts.append(ctx.attempt)
        # Work that ignores ctx.cancelled: 1.4 s past a 1 s timeout, then 0.9 s.
        time.sleep(1.4 if ctx.attempt == 1 else 0.9)
        return ctx.attempt

    try:
        job_id = app.test_client().post("/slow").get_json()["id"]
        wait_until(
            lambda: status_of(app, ae, job_id) is JobStatus.COMPLETED, 15, "the retry"
        )
        with app.app_context():
            job = ae.get_job(job_id)
        assert job is not None
        assert job.result == 2
        assert attempts == [1, 2]
    finally:
        ae.shutdown(grace=0)


def test_an_idle_worker_stops_at_once(live_app: tuple[Flask, AsyncEndpoints]) -> None:
    app, ae = live_app

    @ae.post("/n", name="N")
    def n(ctx: AsyncContext) -> None:
        return None

    job_id = app.test_client().post("/n").get_json()["id"]
    wait_until(lambda: status_of(app, ae, job_id) is JobStatus.COMPLETED, 10, "job")
    began = time.monotonic()
    ae.shutdown(grace=10)
    assert time.monotonic() - began < 3, "an idle worker waited out its grace"


class _OwnedLock:
    """A lock that knows which thread holds it (for the test below)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got:
            self.owner = threading.get_ident()
        return got

    def release(self) -> None:
        self.owner = None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_no_store_call_is_made_under_the_worker_lock() -> None:
    """A slow store must not stall every thread of the worker: no call to it is
    made while the worker's lock is held (claims, runs, hand-backs, stop)."""
    from async_endpoints.worker import Worker

    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_MAX_CONCURRENCY=2, ASYNC_ENDPOINTS_START_WORKER=False
    )
    ae = AsyncEndpoints(app)
    gate = threading.Event()

    @ae.post("/wait", name="Wait")
    def wait(ctx: AsyncContext) -> None:
        gate.wait(10)

    state = ae._states[app]
    store = state.store
    lock = _OwnedLock()
    violations: list[str] = []

    claiming, let_claim = threading.Event(), threading.Event()
    let_claim.set()

    class Watched:
        def __getattr__(self, name: str) -> object:
            attribute = getattr(store, name)
            if not callable(attribute):
                return attribute

            def call(*args: object, **kwargs: object) -> object:
                if lock.owner == threading.get_ident():
                    violations.append(name)
                if name in ("claim", "wait_and_claim"):
                    claiming.set()
                    assert let_claim.wait(10)
                return attribute(*args, **kwargs)

            return call

    state.manager.store = Watched()  # type: ignore[assignment]
    worker = Worker(state.manager)
    worker._lock = lock  # type: ignore[assignment]
    worker._slot_free = threading.Condition(lock)  # type: ignore[arg-type]
    with app.app_context():
        ids = [ae.submit("Wait", {}).id for _ in range(4)]
    worker.start()
    try:
        wait_until(lambda: len(worker.held_claims()) == 2, 10, "two running jobs")
        gate.set()
        wait_until(
            lambda: all(status_of(app, ae, i) is JobStatus.COMPLETED for i in ids),
            10,
            "every job",
        )
        gate.clear()
        with app.app_context():
            ae.submit("Wait", {})
        wait_until(lambda: len(worker.held_claims()) == 1, 10, "a running job")
    finally:
        worker.stop(grace=0)  # hands the running job back
        gate.set()
    # Stopped while a claim is in flight: what it got is handed back.
    late = Worker(state.manager)
    late._lock = lock  # type: ignore[assignment]
    late._slot_free = threading.Condition(lock)  # type: ignore[arg-type]
    with app.app_context():
        queued = ae.submit("Wait", {}).id
    let_claim.clear()
    claiming.clear()
    late.start()
    assert claiming.wait(10)
    stopper = threading.Thread(target=late.stop, kwargs={"grace": 5})
    stopper.start()
    wait_until(late._stopping.is_set, 10, "the stop to begin")
    let_claim.set()
    stopper.join(10)
    assert status_of(app, ae, queued) is JobStatus.QUEUED
    assert violations == []


def test_a_slow_signal_receiver_does_not_delay_heartbeats() -> None:
    """The sweeper fails a dead worker's job, and that job's ``job_failed``
    receiver blocks the thread that sweeps; the leases of the jobs running here
    are renewed all the same."""
    from async_endpoints.signals import job_failed

    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_MAX_CONCURRENCY=2,
        ASYNC_ENDPOINTS_CLAIM_TIMEOUT_SECONDS=1.5,  # a heartbeat every 0.5 s
        ASYNC_ENDPOINTS_SWEEP_INTERVAL_SECONDS=0.2,
        ASYNC_ENDPOINTS_MAX_RETRIES=0,
    )
    ae = AsyncEndpoints(app)
    receiving, unblock, finish = threading.Event(), threading.Event(), threading.Event()
    told: list[str | None] = []

    @ae.post("/dead", name="Dead")
    def dead(ctx: AsyncContext) -> None:
        raise AssertionError("its worker died; the sweeper fails it")

    @ae.post("/long", name="Long")
    def long(ctx: AsyncContext) -> str:
        if ctx.cancelled.wait(10) or not finish.is_set():
            told.append(ctx.cancel_reason)
        return "done"

    def slow_receiver(sender: Flask, **extra: object) -> None:
        receiving.set()
        unblock.wait(10)

    store = ae._states[app].store
    with app.app_context():
        ae.submit("Dead", {})
    # A worker elsewhere claimed it and died: its lease ends at once.
    assert len(store.claim("gone", limit=1, lease=0.05, now=time.time())) == 1
    job_failed.connect(slow_receiver, app)
    client = app.test_client()
    try:
        long_id = client.post("/long", json={}).get_json()["id"]  # starts the worker
        assert receiving.wait(10), "the sweeper never failed the dead worker's job"
        wait_until(
            lambda: status_of(app, ae, long_id) is JobStatus.IN_PROGRESS, 10, "Long"
        )
        # Two leases' worth of time with the receiver blocked, then a sweep.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            unblock.wait(0.1)
        recovered = store.recover_expired("other", limit=10, lease=30, now=time.time())
        assert recovered == [], "a lease was not renewed while a receiver blocked"
    finally:
        finish.set()
        unblock.set()
        job_failed.disconnect(slow_receiver, app)
        ae._states[app].manager.signal_cancel([uuid.UUID(long_id)])
    wait_until(
        lambda: status_of(app, ae, long_id) is not JobStatus.IN_PROGRESS, 10, "Long"
    )
    ae.shutdown(grace=0)
    assert told == ["canceled"]


def test_a_cancel_reaches_every_run_of_the_job_in_this_process() -> None:
    """A timed-out run may still execute beside its retry; a user's cancel tells
    both (not only the newest)."""
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_RETRY_DELAY_BASE_SECONDS=0,
    )
    ae = AsyncEndpoints(app)
    started = threading.Semaphore(0)
    told: list[str | None] = []

    @ae.post("/slow", name="Slow")
    def slow(ctx: AsyncContext) -> None:
        started.release()
        ctx.cancelled.wait(10)
        told.append(ctx.cancel_reason)

    manager = ae._states[app].manager
    with app.app_context():
        job_id = ae.submit("Slow", {}).id
    (first,) = manager.claim("here", 1)
    runs = [threading.Thread(target=manager.run, args=(first,))]
    runs[0].start()
    assert started.acquire(timeout=10)
    # The first run times out (failed, retried at once) but keeps executing.
    assert manager.fail(first, manager.timeout_error())
    (second,) = manager.claim("here", 1)
    assert second.job_id == job_id
    runs.append(threading.Thread(target=manager.run, args=(second,)))
    runs[1].start()
    assert started.acquire(timeout=10)
    manager.signal_cancel([job_id])
    for run in runs:
        run.join(10)
    assert told == ["canceled", "canceled"]


def test_a_run_waits_a_moment_for_its_handler_to_be_registered() -> None:
    """A worker that starts while its app module is still importing (gunicorn
    without preload_app) may claim a job before the handler's decorator ran."""
    import threading
    import time
    import uuid

    from flask import Flask

    from async_endpoints import AsyncEndpoints, JobStatus
    from async_endpoints.jobs import Job

    app = Flask(__name__)
    app.config["ASYNC_ENDPOINTS_START_WORKER"] = False
    ae = AsyncEndpoints(app)
    now = time.time()
    job = Job(
        id=uuid.uuid4(),
        name="Late",
        status=JobStatus.QUEUED,
        max_retries=0,
        created_at=now,
        last_updated_at=now,
    )
    with app.app_context():
        ae._state().store.submit(job, max_queue_size=0, now=now)

    def register_late() -> None:
        time.sleep(0.2)  # the rest of the module's import

        @ae.post("/late", name="Late")
        def late(ctx: AsyncContext) -> str:
            return "ran"

    thread = threading.Thread(target=register_late)
    thread.start()
    with app.app_context():
        assert ae.run_due_jobs() == 1
        done = ae.get_job(job.id)
    thread.join(5)
    assert done is not None
    assert done.status is JobStatus.COMPLETED
    assert done.result == "ran"


@pytest.mark.redis
@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_job_claimed_behind_a_wait_starts_only_once_confirmed(
    redis_server: RedisServer, concurrency: int
) -> None:
    """A claim made behind a wait is provisional (its recovery would hand the
    job back uncharged) until the worker is heard from: no run may start
    before the write that confirms it has left (with the next wait, or on its
    own when no slot is left for one)."""
    from async_endpoints.stores.redis import RedisStore
    from async_endpoints.worker import Worker

    # A real server: fakeredis runs a BLPOP when it is written, so a write
    # that carries one is "out" only when the wait is over.
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_MAX_CONCURRENCY=concurrency,
        ASYNC_ENDPOINTS_START_WORKER=False,
    )
    ae = AsyncEndpoints(app, store=RedisStore(client, prefix="confirm"))
    seen: list[object] = []

    @ae.post("/look", name="Look")
    def look(ctx: AsyncContext) -> None:
        # The confirmation was written before this run started, on the
        # connection that reached Redis first.
        seen.append(client.hget(f"{{confirm}}:job:{ctx.job_id}", "pv"))

    worker = Worker(ae._states[app].manager)
    worker.start()
    try:
        time.sleep(0.3)  # idle: the worker waits, a claim behind its wait
        ids = []
        for _ in range(3):
            with app.app_context():
                ids.append(ae.submit("Look", {}).id)
            wait_until(lambda: len(seen) == len(ids), 10, "the job to run")
    finally:
        worker.stop(grace=5)
        client.close()
    assert seen == [None, None, None]

"""A worker behind a black hole: Redis stops answering, nothing is closed, and
then the network heals.

DESIGN.md, "No wait without a bound": every blocking call has a timeout, a
black-holed connection is detected within ``CLAIM_TIMEOUT_SECONDS`` and a worker
never stops claiming for good. The worker's app reaches Redis through a
:class:`RedisFaultProxy`; the test submits and inspects jobs through a second app
straight on the server (``START_WORKER = False``, same key prefix), which the
black hole does not touch.

The proxy keeps what it holds during a black hole and delivers it on ``heal``, as
TCP retransmission does when a partition ends. ``SeveringProxy`` adds the harsher
ending, a peer that vanished: the connections open during the black hole stay
silent for good, and only new ones work.

Every wait has a deadline; a black hole's length is a duration, not a
synchronisation.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from async_endpoints import AsyncContext, AsyncEndpoints, Job, JobStatus
from async_endpoints.signals import job_succeeded
from async_endpoints.stores.redis import RedisStore
from async_endpoints.worker import Worker
from tests.conftest import RedisServer, wait_until
from tests.faults.proxy import RedisFaultProxy, _Link

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PREFIX = "blackhole"
LEASE = 6.0
"""``CLAIM_TIMEOUT_SECONDS`` of the worker behind the proxy."""
BLACK_HOLE = LEASE + 2.0
"""Longer than a lease: every lease the worker held has expired when it heals."""
SHORT_BLACK_HOLE = LEASE / 2
"""Shorter than a lease by more than a heartbeat interval (``LEASE / 3``)."""
BLPOP_BOUND = 1.0 + 5.0
"""How long ``wait_for_work`` waits for a BLPOP's reply, whatever the client's
socket timeout: the BLPOP's own timeout (the 1 s poll interval, as 0.8 times any
socket timeout used here is more) plus ``waits._REPLY_GRACE``. Below ``LEASE``."""
NIL_JOB = "00000000-0000-0000-0000-000000000000"

Connect = Callable[[RedisFaultProxy], "str | redis.Redis"]


class SeveringProxy(RedisFaultProxy):
    """A fault proxy whose :meth:`sever` ends a black hole for new connections
    only: those open at that moment never get another byte, nor a reset, as when
    the host behind them vanished. :meth:`cut_all` still resets them."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self._severed: set[_Link] = set()

    def sever(self) -> None:
        with self._lock:
            self._severed.update(self._links)
        self.heal()

    def _update(self, link: _Link) -> None:
        if link not in self._severed:
            super()._update(link)
            return
        for sock, events in list(link.events.items()):
            if events:
                self._selector.unregister(sock)
                link.events[sock] = 0


class Handler:
    """The job's handler: records every run, and returns once ``release`` is set."""

    def __init__(self, *, blocking: bool) -> None:
        self.release = threading.Event()
        if not blocking:
            self.release.set()
        self.runs: list[AsyncContext] = []
        self.returned: list[tuple[int, str | None]] = []
        self._lock = threading.Lock()

    def __call__(self, ctx: AsyncContext) -> dict[str, int]:
        with self._lock:
            self.runs.append(ctx)
        if not self.release.wait(30):
            raise TimeoutError("the test never released the handler")
        with self._lock:
            self.returned.append((ctx.attempt, ctx.cancel_reason))
        return {"attempt": ctx.attempt}

    def attempts(self) -> list[int]:
        with self._lock:
            return [ctx.attempt for ctx in self.runs]


class Rig:
    """The worker's app behind the proxy, and the test's app straight on Redis."""

    def __init__(self, proxy: RedisFaultProxy, server: RedisServer) -> None:
        self.proxy = proxy
        self.server = server
        self._made: list[tuple[Flask, AsyncEndpoints]] = []
        self._clients: list[redis.Redis] = []
        self.direct_app, self.direct = self._app(
            server.url, Handler(blocking=False), START_WORKER=False
        )

    def _app(
        self, store: str | RedisStore, handler: Handler, **config: Any
    ) -> tuple[Flask, AsyncEndpoints]:
        app = Flask(__name__)
        app.config.update(
            TESTING=True,
            ASYNC_ENDPOINTS_STORE_URL=store if isinstance(store, str) else "memory://",
            ASYNC_ENDPOINTS_KEY_PREFIX=PREFIX,
            ASYNC_ENDPOINTS_CLAIM_TIMEOUT_SECONDS=LEASE,
            ASYNC_ENDPOINTS_SWEEP_INTERVAL_SECONDS=1,
            ASYNC_ENDPOINTS_POLL_INTERVAL_SECONDS=1,
            ASYNC_ENDPOINTS_RETRY_DELAY_BASE_SECONDS=0,
            ASYNC_ENDPOINTS_RETRY_JITTER_SECONDS=0,
            ASYNC_ENDPOINTS_MAX_CONCURRENCY=2,
            **{f"ASYNC_ENDPOINTS_{k}": v for k, v in config.items()},
        )
        ae = AsyncEndpoints(app, store=None if isinstance(store, str) else store)

        @ae.post("/work", name="Work")
        def work(ctx: AsyncContext) -> dict[str, int]:
            return handler(ctx)

        self._made.append((app, ae))
        return app, ae

    def start_worker(self, connect: Connect, handler: Handler) -> Worker:
        """The worker's app, its worker started by a first request, idle in BLPOP."""
        target = connect(self.proxy)
        if isinstance(target, str):
            store: str | RedisStore = target
        else:
            self._clients.append(target)
            store = RedisStore(target, prefix=PREFIX)
        app, ae = self._app(store, handler)
        response = app.test_client().get(f"/jobs/{NIL_JOB}")  # starts the worker
        assert response.status_code == 404
        worker = ae._states[app].worker
        assert worker is not None
        wait_until(lambda: bool(self.blocked()), 5, "the worker to block in BLPOP")
        return worker

    def blocked(self) -> set[str]:
        """Server-side ids of the connections blocked in BLPOP (the proxy's
        upstreams: the test's own client never blocks)."""
        with redis.Redis.from_url(self.server.url) as client:
            return {
                str(c["id"])
                for c in client.client_list()
                if c["cmd"] == "blpop" and "b" in c["flags"]
            }

    def connected(self) -> set[str]:
        with redis.Redis.from_url(self.server.url) as client:
            return {str(c["id"]) for c in client.client_list()}

    def submit(self) -> uuid.UUID:
        with self.direct_app.app_context():
            return self.direct.submit("Work", {}).id

    def job(self, job_id: uuid.UUID) -> Job:
        with self.direct_app.app_context():
            found = self.direct.get_job(job_id)
        assert found is not None
        return found

    def status(self, job_id: uuid.UUID) -> JobStatus:
        return self.job(job_id).status

    def sweep_elsewhere(self) -> int:
        """Recover expired leases from the test's app, as another process would."""
        with self.direct_app.app_context():
            state = self.direct._states[self.direct_app]
            return state.manager.recover_expired("sweeper-elsewhere")

    def close(self) -> None:
        # A test that failed may have left the proxy black-holed or severed; the
        # workers need Redis to stop, and a call stuck on a silent connection with
        # no socket timeout would never return.
        self.proxy.heal()
        self.proxy.cut_all()
        for app, ae in self._made:
            with app.app_context():
                ae.shutdown(grace=0)
            ae._states[app].store.close()
        for client in self._clients:
            client.close()


def via_url(proxy: RedisFaultProxy) -> str:
    """``ASYNC_ENDPOINTS_STORE_URL``: the library's defaults (a 10 s socket
    timeout, TCP keepalive)."""
    return proxy.url


def via_url_with_short_timeouts(proxy: RedisFaultProxy) -> str:
    """A URL whose socket timeout is below the lease (a third of it)."""
    return f"{proxy.url}?socket_timeout={LEASE / 3:g}"


def via_client_without_timeouts(proxy: RedisFaultProxy) -> redis.Redis:
    """A client the application made with no timeout at all (redis-py 8 sets 5 s
    ones by default, even from a URL; redis-py 5 sets none)."""
    return redis.Redis.from_url(
        proxy.url,
        socket_timeout=None,
        socket_connect_timeout=None,
        socket_keepalive=False,
    )


CONNECTS = [
    pytest.param(via_url, id="url"),
    pytest.param(via_client_without_timeouts, id="client-without-timeouts"),
]
VANISH_CONNECTS = [
    pytest.param(
        via_url,
        id="url",
    ),
    pytest.param(via_url_with_short_timeouts, id="url-short-timeouts"),
    pytest.param(
        via_client_without_timeouts,
        id="client-without-timeouts",
        marks=pytest.mark.xfail(
            strict=True,
            reason="a limit of clients passed in without socket_timeout (the "
            "store warns at start, the README says to set it): only BLPOP has "
            "the store's own bound; the connect handshake, claim, heartbeat "
            "and sweep on a connection that vanished wait forever",
        ),
    ),
]


@pytest.fixture
def rig(fault_proxy: RedisFaultProxy, redis_server: RedisServer) -> Iterator[Rig]:
    made = Rig(fault_proxy, redis_server)
    yield made
    made.close()


@pytest.fixture
def severing_rig(
    redis_server: RedisServer,
    direct_redis: redis.Redis,  # flushes the database around the test
) -> Iterator[tuple[Rig, SeveringProxy]]:
    with SeveringProxy(redis_server.port) as proxy:
        made = Rig(proxy, redis_server)
        yield made, proxy
        made.close()


def threads_alive(worker: Worker) -> bool:
    return all(t.is_alive() for t in [*worker._threads, *worker._handler_threads])


def blpop_timed_out(caplog: pytest.LogCaptureFixture) -> bool:
    """Whether the dispatcher logged a BLPOP that got no reply within its bound."""
    expected = f"no reply to BLPOP within {BLPOP_BOUND:.1f} s"
    return any(
        isinstance(r.exc_info, tuple) and expected in str(r.exc_info[1])
        for r in caplog.records
        if r.name == "async_endpoints.worker"
    )


# -- an idle worker ------------------------------------------------------------------


@pytest.mark.parametrize("connect", CONNECTS)
def test_an_idle_worker_claims_again_within_a_lease_of_the_heal(
    rig: Rig, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    """The BLPOP in flight is given up after BLPOP_BOUND, even on a client with
    no socket timeout; what the worker sends next waits for the heal (the URL's
    10 s socket timeout is longer than the black hole, and the other client has
    none) and gets its reply then. A job submitted after the heal runs at once."""
    handler = Handler(blocking=False)
    worker = rig.start_worker(connect, handler)
    before = rig.blocked()

    rig.proxy.blackhole()
    time.sleep(BLACK_HOLE)
    rig.proxy.heal()
    healed = time.monotonic()

    job_id = rig.submit()
    wait_until(
        lambda: rig.status(job_id) is JobStatus.COMPLETED,
        LEASE,
        "the worker to run a job submitted after the heal",
    )
    assert time.monotonic() - healed < LEASE
    assert handler.attempts() == [1]
    # The BLPOP in flight hit its bound (BLPOP_BOUND, within the black hole); its
    # connection is gone from the server, and the worker blocks on a new one.
    assert blpop_timed_out(caplog)
    wait_until(lambda: not before & rig.connected(), 5, "the dead BLPOP to close")
    wait_until(lambda: bool(rig.blocked()), 5, "the worker to block in BLPOP again")
    assert threads_alive(worker)


@pytest.mark.parametrize("connect", VANISH_CONNECTS)
def test_an_idle_worker_recovers_when_its_connections_vanished(
    severing_rig: tuple[Rig, SeveringProxy],
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As above, but the connections open during the black hole never answer
    again (a firewall or NAT that forgot them drops their packets): each must be
    given up on its own timeout, within a lease, for the worker to claim and
    heartbeat again."""
    rig, proxy = severing_rig
    handler = Handler(blocking=False)
    worker = rig.start_worker(connect, handler)
    owner = worker.owner

    proxy.blackhole()
    time.sleep(BLACK_HOLE)
    proxy.sever()
    severed = time.monotonic()
    with redis.Redis.from_url(rig.server.url) as client:
        server_now = float(client.time()[0])

    job_id = rig.submit()
    wait_until(
        lambda: rig.status(job_id) is JobStatus.COMPLETED,
        LEASE,
        "the worker to run a job submitted after the heal",
    )
    assert time.monotonic() - severed < LEASE
    assert blpop_timed_out(caplog)

    def registered() -> float:
        with redis.Redis.from_url(rig.server.url) as client:
            beat = client.hget(f"{{{PREFIX}}}:workers", owner)
        return float(beat or 0)

    # The heartbeat thread, too, got through: the worker registered again.
    wait_until(lambda: registered() > server_now, LEASE, "the worker's next heartbeat")
    assert threads_alive(worker)


# -- a running job -------------------------------------------------------------------


@pytest.fixture
def succeeded() -> Iterator[list[uuid.UUID]]:
    """Ids of the jobs whose completion was recorded (``job_succeeded``)."""
    seen: list[uuid.UUID] = []

    def receiver(sender: Flask, job: Job, **extra: object) -> None:
        seen.append(job.id)

    job_succeeded.connect(receiver)
    yield seen
    job_succeeded.disconnect(receiver)


def start_running_job(rig: Rig, handler: Handler) -> uuid.UUID:
    """A job whose handler has started and waits for ``handler.release``."""
    rig.start_worker(via_url, handler)
    job_id = rig.submit()
    wait_until(lambda: handler.attempts() == [1], 5, "the handler to start")
    return job_id


def assert_run_again_and_completed_once(
    rig: Rig, handler: Handler, job_id: uuid.UUID, succeeded: list[uuid.UUID]
) -> None:
    """The job's second run completed it; the first run's return was dropped."""
    handler.release.set()
    wait_until(
        lambda: rig.status(job_id) is JobStatus.COMPLETED, LEASE, "the second run"
    )
    wait_until(lambda: len(handler.returned) == 2, 5, "both runs to return")
    ended = rig.job(job_id)
    assert ended.retry_count == 1
    assert ended.result == {"attempt": 2}
    assert ended.error is None
    assert [attempt for attempt, _ in sorted(handler.returned)] == [1, 2]
    # The signal follows the store's answer, a moment after the status shows.
    wait_until(lambda: bool(succeeded), 5, "the succeeded signal")
    assert succeeded == [job_id]  # the first run's completion was fenced out


def test_a_black_hole_shorter_than_the_lease_neither_ends_nor_repeats_the_run(
    rig: Rig, succeeded: list[uuid.UUID]
) -> None:
    """A heartbeat held up in a black hole shorter than the lease still renews
    it: the run goes on, is not repeated, and its result is the job's."""
    handler = Handler(blocking=True)
    job_id = start_running_job(rig, handler)
    rig.proxy.blackhole()
    time.sleep(SHORT_BLACK_HOLE)
    rig.proxy.heal()
    # The heartbeat held up in the black hole lands while the lease still runs
    # and renews it; the next ones follow on time. A whole lease after the heal,
    # a lease that was not renewed would have been swept (SWEEP_INTERVAL 1 s).
    time.sleep(LEASE)
    assert rig.status(job_id) is JobStatus.IN_PROGRESS
    handler.release.set()
    wait_until(
        lambda: rig.status(job_id) is JobStatus.COMPLETED, LEASE, "the run to end"
    )
    ended = rig.job(job_id)
    assert ended.retry_count == 0
    assert ended.result == {"attempt": 1}
    assert handler.returned == [(1, None)]
    # The signal follows the store's answer, a moment after the status shows.
    wait_until(lambda: bool(succeeded), 5, "the succeeded signal")
    assert succeeded == [job_id]


def test_a_lease_taken_over_during_a_black_hole_is_run_again_and_completes_once(
    rig: Rig, succeeded: list[uuid.UUID]
) -> None:
    """Another process recovers the lease during the black hole. After the heal
    the cut-off worker learns its run lost the lease (and tells it), runs the
    retry itself, and the job completes once, with the retry's result."""
    handler = Handler(blocking=True)
    job_id = start_running_job(rig, handler)
    rig.proxy.blackhole()
    started = time.monotonic()
    # Another process's sweeper recovers the lease once it has expired (on
    # Redis's clock): a failed attempt, due again at once (retry delay 0).
    wait_until(lambda: rig.sweep_elsewhere() == 1, LEASE + 1, "the lease to expire")
    swept = rig.job(job_id)
    assert swept.status is JobStatus.SCHEDULED
    assert swept.retry_count == 1
    assert swept.error is not None
    assert swept.error.type == "LeaseExpired"
    time.sleep(max(0.0, BLACK_HOLE - (time.monotonic() - started)))
    rig.proxy.heal()
    healed = time.monotonic()

    # The heartbeat held up in the black hole (it names the first run's claim
    # only) lands and learns the lease is lost: the first run is told. The
    # worker claims the job again and runs it alongside.
    first = handler.runs[0]
    wait_until(first.cancelled.is_set, LEASE, "the first run to learn its loss")
    assert first.cancel_reason == "lease_lost"
    wait_until(lambda: handler.attempts() == [1, 2], LEASE, "the second run")
    assert time.monotonic() - healed < LEASE
    assert_run_again_and_completed_once(rig, handler, job_id, succeeded)
    assert sorted(handler.returned) == [(1, "lease_lost"), (2, None)]


@pytest.mark.parametrize(
    "first_run_told",
    [
        pytest.param(False, id="outcome"),
        pytest.param(
            True,
            id="first-run-told",
        ),
    ],
)
def test_a_lease_that_expired_unnoticed_during_a_black_hole_is_recovered_once(
    rig: Rig, succeeded: list[uuid.UUID], first_run_told: bool
) -> None:
    """No other process sweeps: after the heal the worker's own sweep recovers
    the lease that expired in the black hole, and the job completes once, with
    the retry's result."""
    handler = Handler(blocking=True)
    job_id = start_running_job(rig, handler)
    rig.proxy.blackhole()
    time.sleep(BLACK_HOLE)
    rig.proxy.heal()
    # No other process swept. The heartbeat held up in the black hole lands
    # first; its token still matches, but it renews the lease only to when it
    # was sent plus LEASE (no later than the heal: it was sent less than
    # LEASE / 3 into a black hole of LEASE + 2 s). The lease had ended on
    # Redis's clock, and stays ended: the worker's own next sweep (within
    # 0.5 s) recovers it, counts a failed attempt, and the worker claims the
    # job again before its next heartbeat (LEASE / 3 after the held-up one).
    # That is the correct outcome: the run lost touch with Redis for longer
    # than its lease, so it may not carry on as if nothing happened; the
    # retry's completion is the one recorded.
    # (Bounded by two leases: what is tested is the outcome, and a loaded CI
    # machine may take a sweep and a claim longer.)
    wait_until(lambda: handler.attempts() == [1, 2], 2 * LEASE, "the job to run again")
    if first_run_told:
        first = handler.runs[0]
        wait_until(first.cancelled.is_set, 2 * LEASE, "the first run to learn its loss")
        assert first.cancel_reason == "lease_lost"
    assert_run_again_and_completed_once(rig, handler, job_id, succeeded)

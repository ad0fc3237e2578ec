"""Lost replies on a real redis-server, through the fault proxy: a command that
Redis ran but whose reply never arrived applies once, whoever sends it again.

Three layers (DESIGN.md, "Guarantees on a real network"):

* The store, one transition at a time: the reply of one script call is dropped
  and the call is sent again, either by redis-py itself (a client that retries
  re-sends the very same EVALSHA) or by the caller (a client that does not retry
  raises ``StoreUnavailableError``; the caller sends the call again with the same
  request id or claim token). The answer must be the first call's, and the state
  as if the call had been sent once.
* The worker: a claim whose reply was lost is sent again under the same request
  id, so the job it took runs once and is not failed by the lease sweeper.
  Two more worker tests: a completion is re-sent even once a heartbeat has
  found it applied (and the run lost), and a lost claim is re-sent in time
  after isolated failures.
* A soak over HTTP: replies of EVALSHA commands dropped at random while 200 jobs
  are submitted (with ``Idempotency-Key`` and retries on 503) and run.

Every wait has a deadline; no test sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from async_endpoints import AsyncContext, AsyncEndpoints
from async_endpoints.errors import StoreUnavailableError
from async_endpoints.jobs import ErrorInfo, Job, JobStatus
from async_endpoints.signals import SIGNALS
from async_endpoints.stores.redis import RedisStore
from async_endpoints.stores.redis.keys import (
    _SCRIPT_NAMES,
    _script_source,
    _ScriptName,
)
from tests.conftest import wait_until
from tests.faults.conftest import ClientFactory
from tests.faults.proxy import CommandPredicate, RedisFaultProxy
from tests.stores.conftest import make_job

pytestmark = [pytest.mark.redis]

T = TypeVar("T")

PREFIX = "lost"
LEASE = 30.0
TTL = 3600.0
BOOM = ErrorInfo(type="ValueError", message="boom", stack_trace="Traceback ...")


# -- helpers ----------------------------------------------------------------------


def load_scripts(client: redis.Redis) -> None:
    """Load every script, so that the first EVALSHA runs (a NOSCRIPT reply would
    be what got dropped, and nothing would have run)."""
    for name in _SCRIPT_NAMES:
        client.script_load(_script_source(name))


def script_call(store: RedisStore, name: _ScriptName) -> CommandPredicate:
    """Matches the EVALSHA of the store's script ``name``."""
    sha = store._scripts[name].sha.encode()
    return lambda cmd: cmd[0].upper() == b"EVALSHA" and cmd[1] == sha


def is_evalsha(cmd: list[bytes]) -> bool:
    return cmd[0].upper() == b"EVALSHA"


class CommandLog:
    """Every command the proxy forwards from now on, in order.

    Armed as a drop that never matches: it stays first in the proxy's list, so
    it sees each command before a drop armed after it fires on it.
    """

    def __init__(self, proxy: RedisFaultProxy) -> None:
        self.commands: list[tuple[bytes, ...]] = []
        proxy.drop_reply_once(self)

    def __call__(self, cmd: list[bytes]) -> bool:
        self.commands.append(tuple(cmd))  # on the proxy thread, under its lock
        return False

    def matching(self, match: CommandPredicate) -> list[tuple[bytes, ...]]:
        return [c for c in list(self.commands) if match(list(c))]


@dataclass
class LostReply:
    """Drops the reply of one script call of ``store`` and sends it again."""

    proxy: RedisFaultProxy
    store: RedisStore
    retrying: bool
    log: CommandLog
    armed: _ScriptName = "submit"

    def arm(self, name: _ScriptName) -> None:
        """Drop the reply of the next call of script ``name``."""
        self.armed = name
        self.proxy.drop_reply_once(script_call(self.store, name))

    def send(self, call: Callable[[], T], again: Callable[[], T] | None = None) -> T:
        """``call()`` with its reply lost, and its answer once sent again.

        A retrying client re-sends the command itself and ``call`` answers; a
        client that does not retry raises ``StoreUnavailableError``, and then
        ``again`` (by default ``call`` once more) is the caller sending it again.
        """
        if self.retrying:
            answer = call()
        else:
            with pytest.raises(StoreUnavailableError):
                call()
            answer = (again or call)()
        # The drop fired, once, on the command meant (that Redis ran it, the
        # state each test checks shows).
        assert self.proxy.dropped == 1
        [dropped] = self.proxy.dropped_commands
        assert script_call(self.store, self.armed)(list(dropped))
        if self.retrying:
            # redis-py sent the very same command a second time.
            assert self.log.commands.count(dropped) == 2
        return answer


@pytest.fixture
def direct(direct_redis: redis.Redis) -> Iterator[RedisStore]:
    """A store straight on the server: sets the scene and reads the outcome."""
    load_scripts(direct_redis)
    store = RedisStore(direct_redis, prefix=PREFIX)
    store.sync_clock()
    yield store
    store.close()


@pytest.fixture(params=["retrying", "one-shot"])
def lost(
    request: pytest.FixtureRequest,
    proxied_client: ClientFactory,
    fault_proxy: RedisFaultProxy,
    direct: RedisStore,
) -> Iterator[LostReply]:
    """A store through the proxy, on a client that retries three times (as
    redis-py's defaults do) or never (as a URL's client)."""
    retrying = request.param == "retrying"
    client = proxied_client(retry=Retry(NoBackoff(), 3 if retrying else 0))
    store = RedisStore(client, prefix=PREFIX)
    store.sync_clock()  # the clock script's call is not the one to drop
    yield LostReply(fault_proxy, store, retrying, CommandLog(fault_proxy))
    store.close()


def submit_jobs(direct: RedisStore, count: int, now: float) -> list[uuid.UUID]:
    """``count`` queued jobs, due one second apart (so claimed in this order)."""
    ids = []
    for i in range(count):
        due = now - count + i
        ids.append(direct.submit(make_job(now=due), max_queue_size=0, now=due).id)
    return ids


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def members(client: redis.Redis, key: str) -> set[uuid.UUID]:
    return {uuid.UUID(text(m)) for m in client.zrange(key, 0, -1)}


def held(direct: RedisStore, client: redis.Redis, now: float) -> dict[uuid.UUID, str]:
    """Every InProgress job and its current claim token (the fencing field ``t``)."""
    running = direct.list_jobs(
        status=JobStatus.IN_PROGRESS, offset=0, limit=100, now=now
    )
    tokens = {}
    for job in running:
        token = client.hget(direct._keys.job(job.id), "t")
        assert token is not None
        tokens[job.id] = text(token)
    return tokens


def current(direct: RedisStore, job_id: uuid.UUID) -> Job:
    job = direct.get(job_id, now=time.time())
    assert job is not None
    return job


class EndNotices:
    """The messages published on a job's end channel (one per end: what long
    polls, and through them clients, are told)."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._pubsub = client.pubsub()
        self._pubsub.subscribe(channel)
        self._until(lambda m: m["type"] == "subscribe")  # subscribed from here on

    def _until(self, last: Callable[[dict[str, Any]], bool]) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + 5
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._pubsub.get_message(timeout=remaining)
            if message is None:
                continue
            if last(message):
                return seen
            if message["type"] == "message":
                seen.append(message["data"].decode())
        pytest.fail(f"no message on {self._channel} within 5 s")

    def published(self) -> list[str]:
        """Everything published so far: a marker published now comes after it."""
        marker = f"marker-{uuid.uuid4().hex}"
        self._client.publish(self._channel, marker)
        return self._until(lambda m: m["data"] == marker.encode())

    def close(self) -> None:
        self._pubsub.close()


@contextlib.contextmanager
def end_notices(direct: RedisStore, job_id: uuid.UUID) -> Iterator[EndNotices]:
    client = direct._redis()
    assert isinstance(client, redis.Redis)
    notices = EndNotices(client, direct._keys.ended(job_id))
    # A waiter, as wait_for_end is: the end is published only to an awaited job.
    direct._call("await", [direct._keys.job(job_id)], [])
    try:
        yield notices
    finally:
        notices.close()


# -- A. one transition at a time ----------------------------------------------------


def test_submit_sent_again_changes_nothing(
    lost: LostReply, direct: RedisStore, direct_redis: redis.Redis
) -> None:
    """A re-sent ``submit`` answers with the job it stored and changes nothing.

    Without the job-exists check of submit.lua, the retrying client's re-send
    meets the queue it filled (``max_queue_size=1``) and raises QueueFullError,
    and the caller's later re-send re-queues the job another worker has already
    completed (the ``COMPLETED`` and ``ready`` assertions).
    """
    now = time.time()
    job = make_job(now=now)

    def submit() -> Job:
        return lost.store.submit(job, max_queue_size=1, now=now)

    def run_elsewhere_then_submit_again() -> Job:
        # A second later: each store measured Redis's clock on its own.
        [claim] = direct.claim("other", limit=1, lease=LEASE, now=now + 1)
        assert direct.complete(claim, "done", ttl=TTL, now=now + 1)
        return submit()

    lost.arm("submit")
    stored = lost.send(submit, again=run_elsewhere_then_submit_again)

    assert stored.id == job.id
    assert stored.status is JobStatus.QUEUED  # as the first call answered
    final = current(direct, job.id)
    ready = members(direct_redis, direct._keys.ready)
    if lost.retrying:
        assert final.status is JobStatus.QUEUED
        assert ready == {job.id}
    else:
        assert final.status is JobStatus.COMPLETED
        assert final.result == "done"
        assert ready == set()
    assert direct_redis.llen(direct._keys.wake) == 1  # one wake-up, one job
    assert len(direct.list_jobs(status=None, offset=0, limit=10, now=now)) == 1


def test_claim_sent_again_answers_with_the_same_claims(
    lost: LostReply, direct: RedisStore, direct_redis: redis.Redis
) -> None:
    """A re-sent ``claim`` (same request id) answers with the jobs the first one
    took, and takes nothing more, even when asked for more.

    Without the request record of claim.lua, the re-send takes the third job
    under the same tokens and leaves the first two InProgress under tokens the
    caller never learnt (the ``job_id`` and ``held`` assertions).
    """
    now = time.time()
    ids = submit_jobs(direct, 3, now)
    rid = uuid.uuid4().hex

    lost.arm("claim")
    claims = lost.send(
        lambda: lost.store.claim("w", limit=2, lease=LEASE, now=now, request_id=rid),
        # The caller's re-send may have more free slots by then.
        again=lambda: lost.store.claim(
            "w", limit=3, lease=LEASE, now=now + 1, request_id=rid
        ),
    )

    assert [c.job_id for c in claims] == ids[:2]
    assert [c.token for c in claims] == [f"{rid}:1", f"{rid}:2"]
    assert all(c.job.status is JobStatus.IN_PROGRESS for c in claims)
    assert held(direct, direct_redis, now) == {c.job_id: c.token for c in claims}
    assert members(direct_redis, direct._keys.ready) == {ids[2]}
    assert current(direct, ids[2]).status is JobStatus.QUEUED


def test_complete_sent_again_answers_true_and_ends_the_job_once(
    lost: LostReply, direct: RedisStore, direct_redis: redis.Redis
) -> None:
    """A re-sent ``complete`` (same token) answers True and changes nothing.

    Without the ``lt`` field of complete.lua, the re-send finds the job no
    longer InProgress and answers False (the ``is True`` assertion): the worker
    would log a lost claim and no ``succeeded`` signal would be sent.
    """
    now = time.time()
    [job_id] = submit_jobs(direct, 1, now)
    [claim] = direct.claim("w", limit=1, lease=LEASE, now=now)

    with end_notices(direct, job_id) as ended:
        lost.arm("complete")
        done = lost.send(lambda: lost.store.complete(claim, {"n": 1}, ttl=TTL, now=now))
        assert ended.published() == ["Completed"]  # ended once

    assert done is True
    final = current(direct, job_id)
    assert final.status is JobStatus.COMPLETED
    assert final.result == {"n": 1}
    assert members(direct_redis, direct._keys.claimed) == set()
    assert members(direct_redis, direct._keys.ready) == set()
    # A failure by the same token is still refused.
    assert lost.store.fail(claim, BOOM, retry_at=None, ttl=TTL, now=now) is False


@pytest.mark.parametrize("retry", [True, False], ids=["scheduled", "failed"])
def test_fail_sent_again_answers_true_and_counts_one_attempt(
    lost: LostReply, direct: RedisStore, direct_redis: redis.Redis, retry: bool
) -> None:
    """A re-sent ``fail`` (same token) answers True and changes nothing: one
    attempt counted, the job Scheduled once (or Failed, told once).

    Without the ``lt`` field of fail.lua, the re-send finds the job Scheduled or
    Failed and answers False (the ``is True`` assertion).
    """
    now = time.time()
    [job_id] = submit_jobs(direct, 1, now)
    [claim] = direct.claim("w", limit=1, lease=LEASE, now=now)
    retry_at = now + 3600 if retry else None

    with end_notices(direct, job_id) as ended:
        lost.arm("fail")
        applied = lost.send(
            lambda: lost.store.fail(claim, BOOM, retry_at=retry_at, ttl=TTL, now=now)
        )
        assert ended.published() == ([] if retry else ["Failed"])

    assert applied is True
    final = current(direct, job_id)
    assert final.error == BOOM
    if retry:
        assert final.status is JobStatus.SCHEDULED
        assert final.retry_count == 1
        assert final.due_at == retry_at
        assert members(direct_redis, direct._keys.ready) == {job_id}
        assert direct_redis.llen(direct._keys.wake) == 2  # submit's, fail's
    else:
        assert final.status is JobStatus.FAILED
        assert final.retry_count == 0
        assert members(direct_redis, direct._keys.ready) == set()
    assert members(direct_redis, direct._keys.claimed) == set()
    # A completion by the same token is still refused.
    assert lost.store.complete(claim, "late", ttl=TTL, now=now) is False


@pytest.mark.parametrize("dropped", ["complete", "claim"])
def test_complete_and_claim_sent_again_answers_the_same(
    lost: LostReply,
    direct: RedisStore,
    direct_redis: redis.Redis,
    dropped: _ScriptName,
) -> None:
    """The pipeline of ``complete`` and ``claim``, its replies lost (dropping the
    first loses both; dropping the second loses it after the first arrived) and
    sent again whole: True, the same new claim, the first job ended once.

    Without ``lt`` in complete.lua the answer is ``(False, ...)``; without the
    request record in claim.lua the re-send claims the third job instead of the
    second, which stays InProgress under a token nobody holds (the ``done``,
    ``job_id`` and ``held`` assertions).
    """
    now = time.time()
    ids = submit_jobs(direct, 3, now)
    [first] = direct.claim("w", limit=1, lease=LEASE, now=now)
    rid = uuid.uuid4().hex

    with end_notices(direct, ids[0]) as ended:
        lost.arm(dropped)
        done, claims = lost.send(
            lambda: lost.store.complete_and_claim(
                first,
                {"n": 0},
                ttl=TTL,
                owner="w",
                limit=1,
                lease=LEASE,
                now=now,
                request_id=rid,
            )
        )
        assert ended.published() == ["Completed"]

    assert done is True
    assert [c.job_id for c in claims] == [ids[1]]
    assert [c.token for c in claims] == [f"{rid}:1"]
    assert current(direct, ids[0]).status is JobStatus.COMPLETED
    assert current(direct, ids[0]).result == {"n": 0}
    assert held(direct, direct_redis, now) == {ids[1]: f"{rid}:1"}
    assert members(direct_redis, direct._keys.ready) == {ids[2]}


def test_recover_expired_sent_again_answers_with_the_same_claims(
    lost: LostReply, direct: RedisStore, direct_redis: redis.Redis
) -> None:
    """A re-sent ``recover_expired`` (same request id) answers with the jobs the
    first one took over, and takes nothing more.

    Without the request record of recover_expired.lua, the re-send finds the
    first two leases renewed (not expired) and takes the third, leaving the
    first two InProgress under tokens nobody holds: the sweeper's caller would
    fail the wrong job, and the other two would wait a lease more (the
    ``job_id`` and ``held`` assertions).
    """
    now = time.time()
    ids = submit_jobs(direct, 3, now)
    dead = [direct.claim("dead", limit=1, lease=LEASE, now=now + i) for i in range(3)]
    later = now + LEASE + 10  # every lease of the dead worker has ended
    rid = uuid.uuid4().hex

    lost.arm("recover_expired")
    claims = lost.send(
        lambda: lost.store.recover_expired(
            "sweeper", limit=2, lease=LEASE, now=later, request_id=rid
        ),
        again=lambda: lost.store.recover_expired(
            "sweeper", limit=3, lease=LEASE, now=later + 1, request_id=rid
        ),
    )

    assert [c.job_id for c in claims] == ids[:2]
    assert [c.token for c in claims] == [f"{rid}:1", f"{rid}:2"]
    assert held(direct, direct_redis, later) == {
        ids[0]: f"{rid}:1",
        ids[1]: f"{rid}:2",
        ids[2]: dead[2][0].token,  # still the dead worker's, for the next sweep
    }


def test_heartbeat_sent_again_answers_the_same(
    lost: LostReply, direct: RedisStore, direct_redis: redis.Redis
) -> None:
    """A re-sent ``heartbeat`` renews the same leases and answers the same.

    Idempotent as it is (it only raises lease ends): this pins that a heartbeat
    whose reply was lost is neither an error nor a "lost claim" when sent again.
    """
    now = time.time()
    ids = submit_jobs(direct, 2, now)
    claims = direct.claim("w", limit=2, lease=LEASE, now=now)
    assert direct.complete(claims[1], None, ttl=TTL, now=now)  # no longer held
    direct.cancel(ids[0], ttl=TTL, now=now)  # running: flagged, still held
    before = direct_redis.zscore(direct._keys.claimed, str(ids[0]))
    assert before is not None

    lost.arm("heartbeat")
    result = lost.send(lambda: lost.store.heartbeat(claims, lease=LEASE, now=now + 10))

    assert result.held == {ids[0]}
    assert result.cancel_requested == {ids[0]}
    after = direct_redis.zscore(direct._keys.claimed, str(ids[0]))
    assert after is not None
    assert after > before + 9
    assert held(direct, direct_redis, now) == {ids[0]: claims[0].token}


def test_release_sent_again_hands_back_once(
    lost: LostReply, direct: RedisStore, direct_redis: redis.Redis
) -> None:
    """A re-sent ``release`` hands the job back once: Queued, one hand-back
    counted, one wake-up.

    Idempotent as it is (the token is dropped by the first call): a release
    that did not check it would count two hand-backs (``handbacks == 1``).
    """
    now = time.time()
    [job_id] = submit_jobs(direct, 1, now)
    [claim] = direct.claim("w", limit=1, lease=LEASE, now=now)
    direct_redis.delete(direct._keys.wake)

    lost.arm("release")
    lost.send(lambda: lost.store.release([claim], ttl=TTL, now=now))

    final = current(direct, job_id)
    assert final.status is JobStatus.QUEUED
    assert final.handbacks == 1
    assert final.retry_count == 0
    assert members(direct_redis, direct._keys.ready) == {job_id}
    assert members(direct_redis, direct._keys.claimed) == set()
    assert direct_redis.llen(direct._keys.wake) == 1


# -- B. the worker ------------------------------------------------------------------


def make_app(
    prefix: str, store: Any = None, **config: Any
) -> tuple[Flask, AsyncEndpoints]:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        ASYNC_ENDPOINTS_KEY_PREFIX=prefix,
        ASYNC_ENDPOINTS_RETRY_DELAY_BASE_SECONDS=0,
        ASYNC_ENDPOINTS_RETRY_JITTER_SECONDS=0,
        **{f"ASYNC_ENDPOINTS_{k}": v for k, v in config.items()},
    )
    return app, AsyncEndpoints(app, store=store)


def app_store(app: Flask, ae: AsyncEndpoints) -> RedisStore:
    store = ae._states[app].store
    assert isinstance(store, RedisStore)
    return store


def test_a_worker_whose_claim_reply_was_lost_runs_the_job_once(
    fault_proxy: RedisFaultProxy,
    direct_redis: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker's first claim runs on Redis, its reply is lost: the dispatcher
    sends it again under the same request id and runs the job it took, once.

    Were the claim sent again under a new request id, the job would stay
    InProgress under the lost token until its lease (3 s) ended, and the sweeper
    would fail it (``LeaseExpired``, no retries): the ``COMPLETED`` assertion.
    """
    load_scripts(direct_redis)
    app, ae = make_app(
        "lostworker",
        STORE_URL=fault_proxy.url,  # a URL's client does not retry
        MAX_RETRIES=0,
        MAX_CONCURRENCY=2,
        CLAIM_TIMEOUT_SECONDS=3,
        SWEEP_INTERVAL_SECONDS=0.5,
    )
    runs: list[uuid.UUID] = []

    @ae.post("/work", name="Work")
    def work(ctx: AsyncContext) -> dict[str, bool]:
        assert ctx.job_id is not None
        runs.append(ctx.job_id)
        return {"ok": True}

    store = app_store(app, ae)
    direct = RedisStore(direct_redis, prefix="lostworker")
    with app.app_context():
        job = ae.submit("Work", {"n": 1})  # queued; starts no worker
    log = CommandLog(fault_proxy)
    claim = script_call(store, "claim")
    fault_proxy.drop_reply_once(claim)
    try:
        # The first request starts the worker, whose first claim takes the job.
        response = app.test_client().get(f"/jobs/{job.id}")
        assert response.status_code == 200
        wait_until(
            lambda: current(direct, job.id).status.is_finished, 20, "the job to end"
        )
    finally:
        with app.app_context():
            ae.shutdown(grace=0)
        store.close()
        direct.close()

    final = direct_redis.hgetall(f"{{lostworker}}:job:{job.id}")
    assert final[b"s"] == JobStatus.COMPLETED.value.encode(), final
    assert b"x" not in final  # no error (LeaseExpired) recorded
    assert runs == [job.id]
    # The dropped claim was the one that took the job, and the dispatcher (not
    # redis-py: a URL's client does not retry) sent it again under its request id.
    [dropped] = fault_proxy.dropped_commands
    assert claim(list(dropped))
    # EVALSHA sha 1 "{prefix}:" now limit lease_end request_id ...: ARGV[4]
    request_id = dropped[7]
    assert len([c for c in log.matching(claim) if c[7] == request_id]) >= 2
    assert final[b"lt"] == b"c" + request_id[:8]  # completed under its token
    assert any("claiming jobs failed" in r.getMessage() for r in caplog.records)


def told_lease_lost(app: Flask, ae: AsyncEndpoints) -> bool:
    """Whether a run of the app's worker was told its lease was lost (read on
    the proxy's thread: never raises)."""
    try:
        worker = ae._states[app].worker
        runs = list(worker._runs.values()) if worker is not None else []
    except RuntimeError:  # the dict changed meanwhile: not yet, then
        return False
    return any(run.cancelled.reason == "lease_lost" for run in runs)


@pytest.mark.slow
def test_a_completion_lost_until_a_heartbeat_finds_it_applied_still_counts(
    fault_proxy: RedisFaultProxy, direct_redis: redis.Redis
) -> None:
    """The completion of the first job (and, in its pipeline, the claim of the
    second) runs on Redis, and its replies are lost until the heartbeat, which
    finds the first job no longer held (it is Completed), has told the run
    ``lease_lost``, and once more. Sending the same completion again is safe
    (fenced, and answered True): both jobs must end Completed, each run and
    signalled once.
    """
    load_scripts(direct_redis)
    app, ae = make_app(
        "lostbeat",
        STORE_URL=fault_proxy.url,
        MAX_RETRIES=0,
        MAX_CONCURRENCY=1,  # the second job is claimed by the first's pipeline
        # A heartbeat every 2 s; re-sends 0.1, 0.3, 0.7, 1.5, 3.1, 4.7 s after
        # the first: the heartbeat is noticed by 3.1 s, and one more is lost.
        CLAIM_TIMEOUT_SECONDS=6,
        SWEEP_INTERVAL_SECONDS=0.5,
    )
    runs: list[uuid.UUID] = []
    succeeded: Counter[uuid.UUID] = Counter()

    @ae.post("/work", name="Work")
    def work(ctx: AsyncContext) -> dict[str, bool]:
        assert ctx.job_id is not None
        runs.append(ctx.job_id)
        return {"ok": True}

    def on_success(sender: Flask, *, job: Job, **details: Any) -> None:
        succeeded[job.id] += 1

    SIGNALS["succeeded"].connect(on_success, sender=app)
    store = app_store(app, ae)
    direct = RedisStore(direct_redis, prefix="lostbeat")
    complete = script_call(store, "complete")
    phase = [0]  # 0: none dropped yet; 1: dropping; 2: done dropping

    def drop(cmd: list[bytes]) -> bool:
        if not complete(cmd) or phase[0] == 2:
            return False
        phase[0] = 2 if phase[0] == 1 and told_lease_lost(app, ae) else 1
        return True

    with app.app_context():
        first = ae.submit("Work", {"n": 1})
        second = ae.submit("Work", {"n": 2})
    fault_proxy.drop_replies(1.0, seed=0, match=drop)
    try:
        assert app.test_client().get(f"/jobs/{first.id}").status_code == 200
        wait_until(
            lambda: all(
                current(direct, job.id).status.is_finished for job in (first, second)
            ),
            20,
            "both jobs to end",
        )
        # The signals follow the store's answers, a moment after the statuses.
        wait_until(lambda: len(succeeded) == 2, 5, "both succeeded signals")
    finally:
        fault_proxy.drop_replies(0, seed=0)
        with app.app_context():
            ae.shutdown(grace=0)
        SIGNALS["succeeded"].disconnect(on_success, sender=app)
        store.close()
        direct.close()
    if phase[0] != 2:
        pytest.fail("the heartbeat never told the run lease_lost")
    assert current(direct, first.id).status is JobStatus.COMPLETED
    assert current(direct, second.id).status is JobStatus.COMPLETED
    assert runs == [first.id, second.id]
    assert succeeded == {first.id: 1, second.id: 1}


@pytest.mark.slow
def test_a_lost_claim_after_isolated_failures_is_still_sent_again_in_time(
    fault_proxy: RedisFaultProxy, direct_redis: redis.Redis
) -> None:
    """Four idle claims fail, each followed by one that succeeds (finding no
    job); then the claim that takes a job loses its reply. It must be sent
    again within its window (one failure in a row: a 0.1 s back-off), so that
    the job runs rather than being failed as LeaseExpired.
    """
    load_scripts(direct_redis)
    app, ae = make_app(
        "lostidle",
        STORE_URL=fault_proxy.url,
        MAX_RETRIES=0,
        MAX_CONCURRENCY=1,
        CLAIM_TIMEOUT_SECONDS=2,  # a lost claim is sent again for 1 s
        SWEEP_INTERVAL_SECONDS=0.5,
        POLL_INTERVAL_SECONDS=0.05,  # idle claims every half second
    )
    runs: list[uuid.UUID] = []

    @ae.post("/work", name="Work")
    def work(ctx: AsyncContext) -> dict[str, bool]:
        assert ctx.job_id is not None
        runs.append(ctx.job_id)
        return {"ok": True}

    store = app_store(app, ae)
    direct = RedisStore(direct_redis, prefix="lostidle")
    claim = script_call(store, "claim")
    seen = {"claims": 0, "idle_drops": 0, "armed": 0, "job_drops": 0}

    def drop(cmd: list[bytes]) -> bool:
        if not claim(cmd):
            return False
        seen["claims"] += 1
        if seen["idle_drops"] < 4:
            if seen["claims"] % 2:  # every other one: each failure isolated
                seen["idle_drops"] += 1
                return True
            return False
        if seen["armed"] and not seen["job_drops"]:
            seen["job_drops"] += 1
            return True
        return False

    fault_proxy.drop_replies(1.0, seed=0, match=drop)
    try:
        assert app.test_client().get("/jobs/none").status_code == 404  # starts it
        wait_until(lambda: seen["idle_drops"] == 4, 20, "four idle claims to fail")
        with app.app_context():
            job = ae.submit("Work", {"n": 1})
        seen["armed"] = 1
        wait_until(
            lambda: current(direct, job.id).status.is_finished, 20, "the job to end"
        )
    finally:
        fault_proxy.drop_replies(0, seed=0)
        with app.app_context():
            ae.shutdown(grace=0)
        store.close()
        direct.close()
    if seen["job_drops"] != 1:
        pytest.fail("the claim that took the job did not lose its reply")
    final = current(direct, job.id)
    assert final.status is JobStatus.COMPLETED, final.error
    assert runs == [job.id]


# -- C. a soak over HTTP ------------------------------------------------------------

SOAK_JOBS = 200
SOAK_SUBMITTERS = 4
SOAK_DEADLINE = 120.0


@dataclass
class Soak:
    """What the submitters and the observer saw."""

    deadline: float
    jobs: int
    ids_by_key: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    unavailable: int = 0  # 503 answers, each retried
    errors: list[BaseException] = field(default_factory=list)
    completed: set[str] = field(default_factory=set)
    regressions: list[tuple[str, str]] = field(default_factory=list)
    ended_otherwise: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def post(self, client: FlaskClient, n: int) -> str:
        """POST job ``n`` until it is accepted; its id."""
        key = f"soak-{n}"
        while time.monotonic() < self.deadline:
            response = client.post(
                "/work", json={"n": n}, headers={"Idempotency-Key": key}
            )
            if response.status_code == 503:
                with self.lock:
                    self.unavailable += 1
                continue
            assert response.status_code == 202, response.get_json()
            job_id = str(response.get_json()["id"])
            with self.lock:
                self.ids_by_key[key].add(job_id)
            return job_id
        raise TimeoutError(f"job {n} was not accepted before the deadline")

    def submit_share(self, app: Flask, numbers: range) -> None:
        try:
            client = app.test_client()
            for n in numbers:
                self.post(client, n)
                # A client that did not see the 202 posts again.
                self.post(client, n)
        except BaseException as exc:
            self.errors.append(exc)

    def describe(self, client: redis.Redis, prefix: str) -> str:
        """The jobs not Completed, as they are in Redis (for a failure)."""
        with self.lock:
            ids = sorted({i for ids in self.ids_by_key.values() for i in ids})
        late = {
            job_id: client.hgetall(f"{{{prefix}}}:job:{job_id}")
            for job_id in ids
            if job_id not in self.completed
        }
        return f"{len(ids)} accepted, {len(late)} not Completed: {late}"

    def observe(self, client: redis.Redis, prefix: str) -> bool:
        """Read every job's status; True once all are Completed."""
        with self.lock:
            ids = sorted({i for ids in self.ids_by_key.values() for i in ids})
        pipe = client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(f"{{{prefix}}}:job:{job_id}", "s")
        for job_id, raw in zip(ids, pipe.execute(), strict=True):
            status = raw.decode() if raw is not None else "missing"
            if status == JobStatus.COMPLETED.value:
                self.completed.add(job_id)
            elif job_id in self.completed:
                self.regressions.append((job_id, status))
            elif status in (JobStatus.FAILED.value, JobStatus.CANCELED.value):
                self.ended_otherwise[job_id] = status  # for good: stop waiting
        return len(self.completed) >= self.jobs or bool(self.ended_otherwise)


def run_soak(
    fault_proxy: RedisFaultProxy,
    direct_redis: redis.Redis,
    connect: str,
    *,
    seed: int,
    probability: float = 0.03,
    jobs: int = SOAK_JOBS,
) -> str:
    """Submit ``jobs`` jobs over HTTP and run them while EVALSHA replies are
    lost with ``probability``; check the outcome; a one-line summary."""
    load_scripts(direct_redis)
    prefix = f"soak{connect}"
    passed = None
    config: dict[str, Any] = {}
    if connect == "url":
        config["STORE_URL"] = fault_proxy.url  # a URL's client does not retry
    else:
        passed = redis.Redis(host="127.0.0.1", port=fault_proxy.port)
        assert passed.get_retry() is not None  # redis-py's default Retry
    app, ae = make_app(
        prefix,
        store=passed,
        MAX_RETRIES=0,
        MAX_CONCURRENCY=4,
        CLAIM_TIMEOUT_SECONDS=6,
        SWEEP_INTERVAL_SECONDS=1,
        **config,
    )
    runs: Counter[str] = Counter()
    events: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()

    @ae.post("/work", name="Work")
    def work(ctx: AsyncContext) -> dict[str, int]:
        with lock:
            runs[str(ctx.job_id)] += 1
        return {"n": ctx.request["n"]}

    def count(event: str) -> Callable[..., None]:
        def receiver(sender: Flask, *, job: Job, **details: Any) -> None:
            with lock:
                events[event, str(job.id)] += 1

        return receiver

    receivers = {name: count(name) for name in ("submitted", "succeeded", "failed")}
    for name, receiver in receivers.items():
        SIGNALS[name].connect(receiver, sender=app)

    store = app_store(app, ae)
    soak = Soak(deadline=time.monotonic() + SOAK_DEADLINE, jobs=jobs)
    fault_proxy.drop_replies(probability, seed=seed, match=is_evalsha)
    share = -(-jobs // SOAK_SUBMITTERS)
    submitters = [
        threading.Thread(
            target=soak.submit_share,
            args=(app, range(i * share, min(jobs, (i + 1) * share))),
            name=f"soak-submitter-{i}",
        )
        for i in range(SOAK_SUBMITTERS)
    ]
    started = time.monotonic()
    try:
        for thread in submitters:
            thread.start()
        try:
            wait_until(
                lambda: soak.observe(direct_redis, prefix) or bool(soak.errors),
                SOAK_DEADLINE,
                "every job to complete",
            )
        except pytest.fail.Exception:
            pytest.fail(
                f"not every job completed: {soak.describe(direct_redis, prefix)}"
            )
        for thread in submitters:
            thread.join(timeout=max(0.0, soak.deadline - time.monotonic()))
        soak.observe(direct_redis, prefix)  # once more, after the last submission
    finally:
        fault_proxy.drop_replies(0, seed=0)
        with app.app_context():
            ae.shutdown(grace=0)
        for name, receiver in receivers.items():
            SIGNALS[name].disconnect(receiver, sender=app)
        store.close()
        if passed is not None:
            passed.close()
    elapsed = time.monotonic() - started
    assert not soak.errors, soak.errors
    assert not soak.ended_otherwise, soak.describe(direct_redis, prefix)
    assert not any(t.is_alive() for t in submitters)

    # Exactly one job per key, and no other job.
    assert len(soak.ids_by_key) == jobs
    assert all(len(ids) == 1 for ids in soak.ids_by_key.values()), {
        k: v for k, v in soak.ids_by_key.items() if len(v) != 1
    }
    job_ids = {next(iter(ids)): key for key, ids in soak.ids_by_key.items()}
    stored = set(direct_redis.scan_iter(match=f"{{{prefix}}}:job:*", count=1000))
    assert len(stored) == jobs
    # Every job Completed with its own result, never read in another state after.
    direct = RedisStore(direct_redis, prefix=prefix)
    for job_id, key in job_ids.items():
        job = current(direct, uuid.UUID(job_id))
        assert job.status is JobStatus.COMPLETED, job
        assert job.result == {"n": int(key.removeprefix("soak-"))}
    assert soak.regressions == []
    # Each handler ran; each completion was told once, lost reply or not.
    assert set(runs) == set(job_ids)
    assert {i: events["succeeded", i] for i in job_ids} == dict.fromkeys(job_ids, 1)
    assert not [i for (event, i) in events if event == "failed"]
    assert fault_proxy.dropped > 0
    unsignalled = sum(1 for i in job_ids if not events["submitted", i])
    return (
        f"soak[{connect}, seed {seed}]: {elapsed:.1f} s, {fault_proxy.dropped} "
        f"replies dropped of {fault_proxy.commands} commands, {soak.unavailable} "
        f"answers 503, runs per job {sorted(Counter(runs.values()).items())}, "
        f"{unsignalled} jobs without a submitted signal"
    )


@pytest.mark.slow
@pytest.mark.parametrize("connect", ["url", "client"])
def test_soak_with_lost_replies_runs_every_job_once_per_key(
    fault_proxy: RedisFaultProxy, direct_redis: redis.Redis, connect: str
) -> None:
    """200 jobs over HTTP while 3% of EVALSHA replies are lost, on a store URL
    (a client that never retries: the library sends again) and on a passed
    ``redis.Redis(host=..., port=...)`` (redis-py 8's default retries re-send;
    ``Redis.from_url`` makes a client that does not retry, like the URL's).

    Every job ends Completed, one job per Idempotency-Key, each handler ran and
    its success was signalled once, and no job read Completed is read in
    another state later.
    """
    print(run_soak(fault_proxy, direct_redis, connect, seed=20240611))

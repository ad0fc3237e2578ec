"""What only the Redis store promises: key layout, expiry, memory, scripts, errors."""

from __future__ import annotations

import functools
import importlib.resources
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from redis.crc import key_slot

from async_endpoints.errors import (
    ConfigurationError,
    IdempotencyConflictError,
    StoreError,
    StoreUnavailableError,
)
from async_endpoints.jobs import (
    CallbackStatus,
    Claim,
    ErrorInfo,
    Idempotency,
    JobStatus,
)
from async_endpoints.stores.redis import RedisStore
from async_endpoints.stores.redis.keys import _script_source
from tests.conftest import RedisServer, free_port
from tests.stores.conftest import make_job

NOW = 1000.0
LEASE = 30.0
TTL = 3600.0
BOOM = ErrorInfo(type="ValueError", message="boom", stack_trace="Traceback ...")
SCRIPTS = {
    "submit",
    "clock",
    "claim",
    "heartbeat",
    "complete",
    "fail",
    "report_progress",
    "release",
    "cancel",
    "recover_expired",
    "retry",
    "register_worker",
    "purge",
    "watch",
    "callback_claim",
    "callback_finish",
    "page",
    "running",
    "await",
    "migrate",
    "prune",
    "recover_owner",
}


@pytest.fixture
def real_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def real_store(real_client: redis.Redis) -> Iterator[RedisStore]:
    store = RedisStore(real_client, prefix="only")
    yield store
    store.close()


def submit(store: RedisStore, now: float = NOW, **overrides: Any) -> uuid.UUID:
    job = make_job(now=now, **overrides)
    return store.submit(job, max_queue_size=0, now=now).id


def ids_in(client: redis.Redis, key: str) -> set[str]:
    members = client.zrange(key, 0, -1)
    return {m.decode() if isinstance(m, bytes) else str(m) for m in members}


# -- key layout -------------------------------------------------------------------


@pytest.mark.redis
def test_a_full_lifecycle_leaves_only_tagged_expected_keys(
    real_client: redis.Redis,
) -> None:
    store = RedisStore(real_client, prefix="life")
    try:
        done = submit(store)
        store.complete(
            store.claim("w", limit=1, lease=LEASE, now=NOW)[0], 1, ttl=TTL, now=NOW
        )
        failed = submit(store)
        (claim,) = store.claim("w", limit=1, lease=LEASE, now=NOW)
        store.fail(claim, BOOM, retry_at=None, ttl=TTL, now=NOW)
        retried = submit(store)
        (claim,) = store.claim("w", limit=1, lease=LEASE, now=NOW)
        store.fail(claim, BOOM, retry_at=NOW, ttl=TTL, now=NOW)
        (claim,) = store.claim("w", limit=1, lease=LEASE, now=NOW)
        store.complete(claim, "fine", ttl=TTL, now=NOW)
        canceled = submit(store)
        store.cancel(canceled, ttl=TTL, now=NOW)
        stopped = submit(store)
        (claim,) = store.claim("w", limit=1, lease=LEASE, now=NOW)
        store.cancel(stopped, ttl=TTL, now=NOW)
        store.complete(claim, None, ttl=TTL, now=NOW)
        released = submit(store)
        store.release(store.claim("w", limit=1, lease=LEASE, now=NOW), ttl=TTL, now=NOW)
        key = Idempotency(key="Echo:-:k1", fingerprint="f", ttl=60)
        once = store.submit(make_job(), max_queue_size=0, idempotency=key, now=NOW)
        again = store.submit(make_job(), max_queue_size=0, idempotency=key, now=NOW)
        assert again.id == once.id
        running = submit(store, now=NOW + 1)
        claims = store.claim("w", limit=3, lease=LEASE, now=NOW + 1)
        # The claim takes the earliest: released, then the idempotent job, then running.
        assert {c.job_id for c in claims} == {released, once.id, running}
        store.release([c for c in claims if c.job_id != running], ttl=TTL, now=NOW + 2)

        keys = {k.decode() for k in real_client.scan_iter("*")}
        # What each claim request took, kept for a lease (to answer a re-send).
        requests = {k for k in keys if k.startswith("{life}:req:")}
        assert requests
        assert all(0 < real_client.pttl(k) <= LEASE * 1000 for k in requests)
        keys -= requests
        jobs = [done, failed, retried, canceled, stopped, released, once.id, running]
        assert keys == {f"{{life}}:job:{job_id}" for job_id in jobs} | {
            "{life}:ready",
            "{life}:claimed",
            "{life}:wake",
            "{life}:fair",
            "{life}:idem:Echo:-:k1",
            "{life}:ix:n:Echo",
            "{life}:ix:finished",
            "{life}:ix:names",
            "{life}:ix:s:Queued",  # running jobs: {life}:claimed only
            *(f"{{life}}:ix:s:{s}:Echo" for s in ("Completed", "Failed", "Canceled")),
        }
        # The status indexes hold each job once, under its status now (a
        # finished one in its handler's index of that status).
        assert ids_in(real_client, "{life}:ix:s:Queued") == {
            str(released),
            str(once.id),
        }
        assert ids_in(real_client, "{life}:ix:s:Completed:Echo") == {
            str(done),
            str(retried),
        }
        assert ids_in(real_client, "{life}:ix:s:Failed:Echo") == {str(failed)}
        assert ids_in(real_client, "{life}:ix:s:Canceled:Echo") == {
            str(canceled),
            str(stopped),
        }
        # The handler's index holds its jobs not finished.
        assert ids_in(real_client, "{life}:ix:n:Echo") == {
            str(released),
            str(once.id),
            str(running),
        }
        assert real_client.smembers("{life}:ix:names") == {b"Echo"}
        assert all(k.startswith("{life}:") for k in keys)
        assert len({key_slot(k.encode()) for k in keys}) == 1
        assert ids_in(real_client, "{life}:ready") == {str(released), str(once.id)}
        assert ids_in(real_client, "{life}:claimed") == {str(running)}
        assert real_client.llen("{life}:wake") <= 64
    finally:
        store.close()


@pytest.mark.redis
def test_finished_jobs_leave_the_sets_and_carry_a_ttl(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    def claim_next() -> Claim:
        (claim,) = real_store.claim("w", limit=1, lease=LEASE, now=NOW)
        return claim

    completed = submit(real_store)
    real_store.complete(claim_next(), {"r": 1}, ttl=90.2, now=NOW)
    failed = submit(real_store)
    real_store.fail(claim_next(), BOOM, retry_at=None, ttl=90.2, now=NOW)
    canceled = submit(real_store)
    real_store.cancel(canceled, ttl=90.2, now=NOW)
    running = submit(real_store)
    claim_next()
    waiting = submit(real_store)

    for job_id in (completed, failed, canceled):
        assert 85 <= real_client.ttl(f"{{only}}:job:{job_id}") <= 91
    for job_id in (running, waiting):
        assert real_client.ttl(f"{{only}}:job:{job_id}") == -1
    assert ids_in(real_client, "{only}:claimed") == {str(running)}
    assert ids_in(real_client, "{only}:ready") == {str(waiting)}


@pytest.mark.redis
def test_a_finished_no_op_job_is_small(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    now = time.time()
    job = make_job(now=now, owner="alice")
    real_store.submit(job, max_queue_size=0, now=now)
    (claim,) = real_store.claim("host-1234-worker", limit=1, lease=LEASE, now=now)
    real_store.complete(claim, None, ttl=TTL, now=time.time())
    key = f"{{only}}:job:{job.id}"
    assert real_client.object("encoding", key) == b"listpack"
    usage = real_client.memory_usage(key)
    assert usage is not None
    assert usage <= 300
    assert set(real_client.hkeys(key)) == {
        b"n",
        b"s",
        b"m",
        b"c",
        b"b",
        b"e",  # also its last update (no u once finished)
        b"o",
        b"lt",  # which completion ended it (9 characters), for a re-send of it
        b"v",  # the version: the events' id
    }


# -- scripts ----------------------------------------------------------------------


@pytest.mark.redis
def test_operations_survive_a_script_flush(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    job_id = submit(real_store)
    real_client.script_flush()
    (claim,) = real_store.claim("w", limit=1, lease=LEASE, now=NOW)
    real_client.script_flush()
    assert real_store.complete(claim, "ok", ttl=TTL, now=NOW)
    job = real_store.get(job_id, now=NOW)
    assert job is not None
    assert job.status is JobStatus.COMPLETED


def test_every_script_documents_its_keys_argv_and_reply() -> None:
    folder = importlib.resources.files("async_endpoints.stores.redis").joinpath("lua")
    names = {
        entry.name.removesuffix(".lua")
        for entry in folder.iterdir()
        if entry.name.endswith(".lua")
    }
    # _prelude.lua is no script: the functions every script is registered with.
    assert names == SCRIPTS | {"_prelude"}
    prelude = folder.joinpath("_prelude.lua").read_text(encoding="utf-8")
    assert prelude.startswith("-- _prelude.lua:")
    assert all(_script_source(name).startswith(prelude) for name in SCRIPTS)
    for name in SCRIPTS:
        text = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
        assert text.startswith(f"-- {name}.lua:"), name
        assert "KEYS[1]" in header, name
        if "ARGV[" in text.replace(header, ""):
            assert "ARGV[1]" in header, name
        assert "epoch seconds" in header, name
        assert "Returns" in header, name


def test_status_names_in_scripts_are_job_statuses() -> None:
    folder = importlib.resources.files("async_endpoints.stores.redis").joinpath("lua")
    statuses = {status.value for status in JobStatus}
    # A job's callback has statuses of its own, and 'Retry' is an outcome.
    statuses |= {status.value for status in CallbackStatus} | {"Retry"}
    for name in SCRIPTS:
        code = "\n".join(
            line
            for line in folder.joinpath(f"{name}.lua").read_text().splitlines()
            if not line.lstrip().startswith("--")
        )
        assert set(re.findall(r"'((?:[A-Z][a-z]+)+)'", code)) <= statuses, name


# -- errors ----------------------------------------------------------------------


def test_an_unreachable_redis_raises_store_unavailable() -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", prefix="down")
    try:
        with pytest.raises(StoreUnavailableError) as info:
            store.submit(make_job(), max_queue_size=0, now=NOW)
        assert isinstance(info.value.__cause__, redis.ConnectionError)
        with pytest.raises(StoreUnavailableError):
            store.get(uuid.uuid4(), now=NOW)
        with pytest.raises(StoreUnavailableError):
            store.claim("w", limit=1, lease=LEASE, now=NOW)
        with pytest.raises(StoreUnavailableError):
            store.wait_for_work(0.1)
    finally:
        store.close()


def test_a_prefix_with_braces_is_refused() -> None:
    client = fakeredis.FakeRedis()
    try:
        with pytest.raises(ConfigurationError):
            RedisStore(client, prefix="a{b}")
        with pytest.raises(ConfigurationError):
            RedisStore(client, prefix="")
    finally:
        client.close()


def test_from_url_refuses_other_schemes() -> None:
    with pytest.raises(ConfigurationError):
        RedisStore.from_url("memcached://127.0.0.1:11211")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@127.0.0.1:6390/2", "redis://user:***@127.0.0.1:6390/2"),
        ("rediss://:s3cret@cache.example:6380/0", "rediss://:***@cache.example:6380/0"),
        ("unix:///run/redis.sock?db=1", "unix:///run/redis.sock?db=1"),
    ],
)
def test_repr_shows_the_target_without_the_password(url: str, shown: str) -> None:
    store = RedisStore.from_url(url, prefix="p")
    try:
        assert repr(store) == f"<RedisStore {shown} prefix='p'>"
        assert "s3cret" not in repr(store)
    finally:
        store.close()


# -- waiting -----------------------------------------------------------------------


@pytest.mark.redis
def test_an_idle_wait_for_work_blocks(real_store: RedisStore) -> None:
    started = time.monotonic()
    real_store.wait_for_work(0.3)
    assert 0.2 <= time.monotonic() - started < 5


@pytest.mark.redis
def test_wait_for_work_sleeps_only_until_the_next_due_job(
    real_store: RedisStore,
) -> None:
    submit(real_store, now=time.time(), due_at=time.time() + 0.3)
    real_store.wait_for_work(5)  # takes the submission's wake-up token
    assert real_store.claim("w", limit=1, lease=LEASE, now=time.time()) == []
    started = time.monotonic()
    real_store.wait_for_work(5)
    assert time.monotonic() - started < 2.5
    assert len(real_store.claim("w", limit=1, lease=LEASE, now=time.time())) == 1


@pytest.mark.redis
def test_a_claim_sent_behind_a_wait_takes_nothing_once_its_worker_stopped(
    real_store: RedisStore,
) -> None:
    """The claim is already at Redis, queued behind the BLPOP, when the worker
    stops: it runs when the wait ends, and must not take the job waiting."""
    job_id = submit(real_store, now=time.time())
    real_store.wait_for_work(5)  # takes the submission's wake-up token
    claimed: list[list[Claim]] = []

    def waiter() -> None:
        claimed.append(
            real_store.wait_and_claim(
                "w1", limit=5, lease=LEASE, now=time.time(), timeout=20
            )
        )

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)  # the BLPOP and the claim behind it are sent
    real_store.stop_waiting("w1")
    thread.join(timeout=10)
    assert not thread.is_alive(), "stop_waiting did not end the wait"
    assert claimed == [[]]
    job = real_store.get(job_id, now=time.time())
    assert job is not None
    assert job.status is JobStatus.QUEUED


@pytest.mark.redis
def test_a_claim_behind_a_wait_loads_its_script_if_redis_lost_it(
    real_store: RedisStore, real_client: redis.Redis
) -> None:
    real_store.wait_for_work(0.01)  # drop any earlier wake-up
    job_id = submit(real_store, now=time.time())
    real_client.script_flush()
    claims = real_store.wait_and_claim(
        "w1", limit=5, lease=LEASE, now=time.time(), timeout=5
    )
    assert [c.job_id for c in claims] == [job_id]


@pytest.mark.redis
def test_close_wakes_a_blocked_waiter_and_keeps_the_callers_client(
    real_client: redis.Redis,
) -> None:
    store = RedisStore(real_client, prefix="closing")
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            store.wait_for_work(20)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    store.close()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 3
    assert errors == []
    assert real_client.ping()


# -- encoding ----------------------------------------------------------------------


def test_a_decode_responses_client_works() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    store = RedisStore(client, prefix="text")
    try:
        key = Idempotency(key="k", fingerprint="f", ttl=60)
        job = make_job(payload={"é": [1, 2.5]}, headers={"x-a": "b"})
        stored = store.submit(job, max_queue_size=0, idempotency=key, now=NOW)
        assert store.get(job.id, now=NOW) == stored
        assert store.find_idempotent(key, now=NOW) == stored
        with pytest.raises(IdempotencyConflictError):
            store.find_idempotent(
                Idempotency(key="k", fingerprint="g", ttl=60), now=NOW
            )
        (claim,) = store.claim("w", limit=1, lease=LEASE, now=NOW)
        assert claim.job.payload == {"é": [1, 2.5]}
        assert store.complete(claim, ["done"], ttl=TTL, now=NOW)
        done = store.get(job.id, now=NOW)
        assert done is not None
        assert done.result == ["done"]
    finally:
        store.close()
        client.close()


def test_claim_drops_ids_whose_job_is_gone() -> None:
    client = fakeredis.FakeRedis()
    store = RedisStore(client, prefix="gone")
    try:
        lost = submit(store)
        kept = submit(store, now=NOW + 1)
        client.delete(f"{{gone}}:job:{lost}")
        claims = store.claim("w", limit=2, lease=LEASE, now=NOW + 1)
        assert [c.job_id for c in claims] == [kept]
        assert client.zcard("{gone}:ready") == 0
        assert store.queue_size() == 0
    finally:
        store.close()
        client.close()


def test_tokens_of_one_claim_are_unique() -> None:
    client = fakeredis.FakeRedis()
    store = RedisStore(client, prefix="tok")
    try:
        for _ in range(5):
            submit(store)
        claims = store.claim("w", limit=5, lease=LEASE, now=NOW)
        recovered = store.recover_expired("s", limit=5, lease=LEASE, now=NOW + 31)
        tokens = [c.token for c in claims + recovered]
        assert len(set(tokens)) == 10
    finally:
        store.close()
        client.close()


def test_pipelined_scripts_survive_a_script_flush(
    real_store: RedisStore, real_client: redis.Redis
) -> None:
    for n in range(2):
        real_store.submit(make_job(now=NOW + n), max_queue_size=0, now=NOW + n)
    (claim,) = real_store.claim("w", limit=1, lease=LEASE, now=NOW + 2)
    real_client.script_flush()
    done, claims = real_store.complete_and_claim(
        claim, 1, ttl=TTL, owner="w", limit=1, lease=LEASE, now=NOW + 3
    )
    assert done
    assert len(claims) == 1


# -- unreadable records -------------------------------------------------------------


def corrupt(client: redis.Redis, job_id: uuid.UUID) -> None:
    """Make the job's record unreadable (its creation time is not a number)."""
    client.hset(f"{{only}}:job:{job_id}", "c", "not-a-time")


@pytest.mark.redis
def test_claim_skips_an_unreadable_record_and_fails_it(
    real_client: redis.Redis, real_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    first, bad, last = (submit(real_store, now=NOW + i) for i in range(3))
    corrupt(real_client, bad)
    claims = real_store.claim("w", limit=3, lease=LEASE, now=NOW + 5)
    assert [c.job_id for c in claims] == [first, last]
    record = real_client.hgetall(f"{{only}}:job:{bad}")
    assert record[b"s"] == b"Failed"
    assert b"UnreadableJob" in record[b"x"]
    assert real_client.ttl(f"{{only}}:job:{bad}") > 0
    assert ids_in(real_client, "{only}:claimed") == {str(first), str(last)}
    assert any(str(bad) in r.getMessage() for r in caplog.records)


@pytest.mark.redis
def test_a_sweep_skips_an_unreadable_record_and_does_not_meet_it_again(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    ids = [submit(real_store, now=NOW + i) for i in range(3)]
    claimed = real_store.claim("w", limit=3, lease=LEASE, now=NOW + 5)
    assert len(claimed) == 3
    corrupt(real_client, ids[1])
    later = NOW + 5 + LEASE + 1
    recovered = real_store.recover_expired("sweeper", limit=10, lease=LEASE, now=later)
    assert sorted(c.job_id for c in recovered) == sorted([ids[0], ids[2]])
    assert real_client.hget(f"{{only}}:job:{ids[1]}", "s") == b"Failed"
    again = real_store.recover_expired(
        "sweeper", limit=10, lease=LEASE, now=later + LEASE + 1
    )
    assert ids[1] not in {c.job_id for c in again}


# -- misconfiguration -------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize(
    ("policy", "warned"), [("allkeys-lru", True), ("noeviction", False)]
)
def test_an_evicting_maxmemory_policy_is_said_at_start(
    real_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    warned: bool,
) -> None:
    before = real_client.config_get("maxmemory-policy")["maxmemory-policy"]
    real_client.config_set("maxmemory-policy", policy)
    store = RedisStore(real_client, prefix="only")
    try:
        submit(store)
        submit(store)
    finally:
        real_client.config_set("maxmemory-policy", before)
        store.close()
    said = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(said) == (1 if warned else 0)  # once, at the first use
    if warned:
        assert policy in said[0].getMessage()
        assert said[0].levelname == "WARNING"


@pytest.mark.redis
def test_an_expired_job_leaves_no_index_entry_behind(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    now = time.time()
    gone = real_store.submit(make_job(now=now, owner="ann"), max_queue_size=0, now=now)
    kept = real_store.submit(
        make_job(now=now + 1, owner="ann"), max_queue_size=0, now=now + 1
    )
    (claim,) = real_store.claim("w", limit=1, lease=LEASE, now=now + 2)
    assert claim.job_id == gone.id
    real_store.complete(claim, None, ttl=TTL, now=now + 2)
    real_client.delete(f"{{only}}:job:{gone.id}")  # as its EXPIRE would
    indexes = ["{only}:ix:s:Completed:Echo", "{only}:ix:o:ann"]
    assert all(str(gone.id) in ids_in(real_client, k) for k in indexes)
    # A read drops the entries it meets...
    page, _ = real_store.list_page(owner="ann", limit=10, now=now + 3)
    assert [j.id for j in page] == [kept.id]
    assert str(gone.id) not in ids_in(real_client, "{only}:ix:o:ann")
    # ... and the sweeper the others.
    assert real_store.prune_indexes(["Echo"], now=now + 3) == 1
    assert all(str(gone.id) not in ids_in(real_client, k) for k in indexes)
    assert real_store.stats(now=now + 3).counts[JobStatus.COMPLETED] == 0


@pytest.mark.redis
def test_a_finished_job_with_its_index_entries_stays_small(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    """Memory of a finished no-op job and its index entries, in large indexes
    (where Redis uses its skiplist encoding)."""
    now = time.time()
    count = 2000
    pipe_jobs = [
        make_job(now=now + n / 1000, owner=f"user-{n % 10}") for n in range(count)
    ]
    for job in pipe_jobs:
        real_store.submit(job, max_queue_size=0, now=now)
    claims = real_store.claim("w", limit=count, lease=LEASE, now=now + 5)
    for claim in claims:
        real_store.complete(claim, None, ttl=TTL, now=now + 5)
    used = 0
    for key in real_client.scan_iter("{only}:*"):
        used += real_client.memory_usage(key, samples=0) or 0
    per_job = used / count
    print(f"memory per finished job, indexes included: {per_job:.0f} B")
    # The hash (about 264 B), its entry in its handler's index of its status
    # (about 145 B in a skiplist) and in its owner's (200 jobs each here:
    # a skiplist too); about 540 B in all. A job without an owner: about 380.
    assert per_job <= 560


@pytest.mark.redis
def test_the_sweeper_brings_the_older_index_layout_to_this_one(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    """An older version kept one index per status for every handler (finished jobs
    in their handler's index too, and an InProgress index): the first sweeps move
    its entries, so that no job drops out of a listing after an upgrade."""
    now = time.time()
    done = real_store.submit(make_job(now=now), max_queue_size=0, now=now)
    (claim,) = real_store.claim("w", limit=1, lease=LEASE, now=now)
    real_store.complete(claim, None, ttl=TTL, now=now)
    running = submit(real_store, now=now + 1)
    (held,) = real_store.claim("w", limit=1, lease=LEASE, now=now + 1)
    # The older layout, as that version left it.
    real_client.delete("{only}:ix:s:Completed:Echo", "{only}:ix:names")
    real_client.zadd("{only}:ix:s:Completed", {str(done.id): now})
    real_client.zadd("{only}:ix:n:Echo", {str(done.id): now})
    real_client.zadd("{only}:ix:s:InProgress", {str(running): now + 1})
    assert real_store.list_page(status=JobStatus.COMPLETED, limit=10, now=now)[0] == []
    real_store.prune_indexes(["Echo"], now=now)
    assert not real_client.exists("{only}:ix:s:Completed", "{only}:ix:s:InProgress")
    assert ids_in(real_client, "{only}:ix:s:Completed:Echo") == {str(done.id)}
    assert ids_in(real_client, "{only}:ix:n:Echo") == {str(running)}
    page, _ = real_store.list_page(limit=10, now=now)
    assert [j.id for j in page] == [held.job_id, done.id]


@pytest.mark.redis
def test_the_fair_claims_hash_of_the_layout_before_becomes_a_sorted_set(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    """{P}:fair was a hash ('v' and 'o:<owner>' -> tag): the first script that
    meets it turns it into the sorted set with the same turns, instead of every
    submit and claim failing with WRONGTYPE."""
    older = "{only}:fair"
    real_client.hset(older, mapping={"v": "5", "o:alice": "9"})
    bob = submit(real_store, owner="bob")  # one past the claims' turn: tag 6
    alice = submit(real_store, owner="alice")  # one past her own last: tag 10
    assert real_client.type(older) == b"zset"
    assert real_client.zscore(older, "o:bob") == 6
    assert real_client.zscore(older, "o:alice") == 10
    # The claim script converts it too, when it meets the hash first.
    real_client.delete(older)
    real_client.hset(older, mapping={"v": "5", "o:bob": "6", "o:alice": "10"})
    claims = real_store.claim("w", limit=2, lease=LEASE, now=NOW)
    assert [c.job_id for c in claims] == [bob, alice]
    assert real_client.type(older) == b"zset"
    assert real_client.zscore(older, "v") == 10
    # And the cancel script (an owner that cancels its last waiting job).
    carol = submit(real_store, owner="carol")
    real_client.delete(older)
    real_client.hset(older, mapping={"v": "10", "o:carol": "11"})
    real_store.cancel(carol, ttl=TTL, now=NOW)
    assert real_client.type(older) == b"zset"
    assert real_client.zscore(older, "o:carol") is None


@pytest.mark.redis
def test_a_claim_of_every_due_job_takes_thousands(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    """``run_due_jobs`` claims with no real limit: thousands of due jobs, and
    thousands of owners whose scheduled jobs fall due at once, are taken in one
    call (Lua unpacks at most about 8,000 values at a time)."""
    for n in range(4100):  # due later: tagged by the claim, one owner each
        submit(real_store, owner=f"o{n}", due_at=NOW + 5)
    for _ in range(4500):
        submit(real_store)
    claims = real_store.claim("w", limit=1 << 30, lease=LEASE, now=NOW + 10)
    assert len(claims) == 8600
    assert real_client.zcard("{only}:ready") == 0


@pytest.mark.redis
def test_the_sweeper_forgets_owners_and_handlers_whose_jobs_are_gone(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    """An owner's index key and a handler's name (of a handler this process does
    not serve) leave their sets once none of their jobs is left; the others
    stay."""
    now = time.time()
    kept = make_job(name="Echo", owner="kept", now=now)
    gone = make_job(name="Old", owner="gone", now=now)
    for job in (kept, gone):
        real_store.submit(job, max_queue_size=0, now=now)
    for claim in real_store.claim("w", limit=2, lease=LEASE, now=now):
        real_store.complete(claim, None, ttl=TTL, now=now)
    assert real_client.scard("{only}:ix:owners") == 2
    real_client.delete(f"{{only}}:job:{gone.id}")  # as if it had expired
    real_store.prune_indexes(["Echo"], now=now)
    assert real_client.smembers("{only}:ix:owners") == {b"{only}:ix:o:kept"}
    assert real_client.smembers("{only}:ix:names") == {b"Echo"}


@pytest.mark.redis
def test_a_merged_page_reads_only_the_hashes_of_its_jobs(
    real_client: redis.Redis, real_store: RedisStore
) -> None:
    """A page of one finished status merges one index per handler in one call,
    and reads the hashes of the jobs it returns, not a page per index."""
    now = time.time()
    ids: list[uuid.UUID] = []
    for n in range(60):
        job = make_job(name=f"H{n % 3}", now=now + n)
        real_store.submit(job, max_queue_size=0, now=now + n)
        ids.append(job.id)
    for claim in real_store.claim("w", limit=60, lease=LEASE, now=now + 60):
        real_store.complete(claim, None, ttl=TTL, now=now + 60)
    real_store.list_page(status=JobStatus.FAILED, limit=5, now=now + 60)  # loaded
    real_client.config_resetstat()
    page, cursor = real_store.list_page(
        status=JobStatus.COMPLETED, limit=5, now=now + 60
    )
    assert [j.id for j in page] == ids[::-1][:5]  # newest first, across handlers
    assert cursor is not None
    stats = real_client.info("commandstats")
    assert stats["cmdstat_hgetall"]["calls"] == 5
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_zrevrange"]["calls"] == 3  # a batch of each index


# -- group commit -------------------------------------------------------------------


def _hold_first_claim(store: RedisStore) -> tuple[threading.Event, threading.Event]:
    """Make the first claim sent on its own wait in flight until released:
    (it is in flight, release it)."""
    script = store._scripts["claim"]
    in_flight, release = threading.Event(), threading.Event()

    class Held:
        sha = script.sha

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            if not in_flight.is_set():
                in_flight.set()
                assert release.wait(10)
            return script(*args, **kwargs)

    store._scripts["claim"] = Held()  # type: ignore[assignment]
    return in_flight, release


def _count_pipelines(client: redis.Redis) -> list[int]:
    """The number of commands of each pipeline the client executes."""
    sizes: list[int] = []
    make = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make(*args, **kwargs)
        execute = pipe.execute

        def counted(*a: Any, **k: Any) -> Any:
            sizes.append(len(pipe.command_stack))
            return execute(*a, **k)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe

    client.pipeline = pipeline  # type: ignore[method-assign]
    return sizes


def _pipelines_raise(client: redis.Redis, error: BaseException) -> None:
    """Make every pipeline the client executes raise ``error``."""
    make = client.pipeline

    def failing(*args: Any, **kwargs: Any) -> Any:
        pipe = make(*args, **kwargs)

        def execute(*a: Any, **k: Any) -> Any:
            raise error

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    client.pipeline = failing  # type: ignore[method-assign]


def _grouped_behind_a_claim(
    store: RedisStore, calls: list[Callable[[], object]]
) -> tuple[list[Claim], dict[int, object]]:
    """Run ``calls`` on threads of their own while a claim of one job is in
    flight; the claim's jobs, and each call's outcome (a value or an error)."""
    in_flight, release = _hold_first_claim(store)
    claimed: list[Claim] = []
    outcomes: dict[int, object] = {}

    def run(n: int, call: Callable[[], object]) -> None:
        try:
            outcomes[n] = call()
        except BaseException as exc:  # an interrupt too: see the test of it
            outcomes[n] = exc

    def claim() -> None:
        claimed.extend(store.claim("w0", limit=1, lease=LEASE, now=time.time()))

    leader = threading.Thread(target=run, args=(-1, claim))
    leader.start()
    assert in_flight.wait(10)
    threads = [
        threading.Thread(target=run, args=(n, call)) for n, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(store._group) < len(calls) and time.monotonic() < deadline:
        time.sleep(0.005)  # they queue behind the claim in flight
    release.set()
    for thread in [leader, *threads]:
        thread.join(timeout=10)
    assert not store._group_busy
    return claimed, outcomes


def _claimed_jobs(store: RedisStore, count: int) -> list[Claim]:
    for n in range(count):
        submit(store, now=time.time() + n / 1000)
    return store.claim("w", limit=count, lease=LEASE, now=time.time() + 1)


def test_calls_made_while_one_is_in_flight_leave_together() -> None:
    client = fakeredis.FakeRedis()
    store = RedisStore(client, prefix="group")
    held = _claimed_jobs(store, 3)
    waiting = submit(store, now=time.time() + 2)
    sizes = _count_pipelines(client)
    completions: list[Callable[[], object]] = [
        functools.partial(store.complete, claim, "ok", ttl=60, now=time.time())
        for claim in held
    ]
    claimed, outcomes = _grouped_behind_a_claim(store, completions)
    assert sizes == [3], "the three completions did not leave in one pipeline"
    assert [c.job_id for c in claimed] == [waiting]
    assert outcomes == {-1: None, 0: True, 1: True, 2: True}
    for claim in held:
        job = store.get(claim.job_id, now=time.time())
        assert job is not None
        assert job.status is JobStatus.COMPLETED


def test_a_grouped_call_that_fails_fails_alone() -> None:
    client = fakeredis.FakeRedis()
    store = RedisStore(client, prefix="group")
    broken, good = _claimed_jobs(store, 2)
    # The first job's record is no hash any more: completing it fails.
    client.delete(f"{{group}}:job:{broken.job_id}")
    client.set(f"{{group}}:job:{broken.job_id}", "not a hash")
    _, outcomes = _grouped_behind_a_claim(
        store,
        [
            functools.partial(store.complete, broken, "ok", ttl=60, now=time.time()),
            functools.partial(store.complete, good, "ok", ttl=60, now=time.time()),
        ],
    )
    assert isinstance(outcomes[0], StoreError)
    assert outcomes[1] is True
    job = store.get(good.job_id, now=time.time())
    assert job is not None
    assert job.status is JobStatus.COMPLETED


def test_a_grouped_pipeline_that_cannot_reach_redis_fails_every_call() -> None:
    client = fakeredis.FakeRedis()
    store = RedisStore(client, prefix="group")
    held = _claimed_jobs(store, 2)
    _pipelines_raise(client, redis.ConnectionError("Connection reset by peer"))
    _, outcomes = _grouped_behind_a_claim(
        store,
        [
            functools.partial(store.complete, claim, "ok", ttl=60, now=time.time())
            for claim in held
        ],
    )
    assert isinstance(outcomes[0], StoreUnavailableError)
    assert isinstance(outcomes[1], StoreUnavailableError)


def test_grouped_calls_of_two_scripts_and_of_one_get_their_own_replies() -> None:
    client = fakeredis.FakeRedis()
    store = RedisStore(client, prefix="group")
    first, second = _claimed_jobs(store, 2)
    waiting = {submit(store, now=time.time() + 2 + n / 1000) for n in range(2)}
    sizes = _count_pipelines(client)
    leaders, outcomes = _grouped_behind_a_claim(
        store,
        [
            functools.partial(
                store.complete_and_claim,
                first,
                "ok",
                ttl=60,
                owner="w1",
                limit=1,
                lease=LEASE,
                now=time.time() + 3,
            ),
            functools.partial(store.complete, second, "ok", ttl=60, now=time.time()),
        ],
    )
    assert sizes == [3]
    done, claims = outcomes[0]  # type: ignore[misc]
    assert done is True
    assert {c.job_id for c in [*leaders, *claims]} == waiting
    assert outcomes[1] is True


def test_an_interrupted_leader_leaves_the_others_an_unknown_outcome() -> None:
    client = fakeredis.FakeRedis()
    store = RedisStore(client, prefix="group")
    held = _claimed_jobs(store, 2)
    _pipelines_raise(client, KeyboardInterrupt())
    # Both completions queue behind the held claim; the first of them leads
    # their pipeline, whose thread is interrupted (Ctrl-C in the main thread).
    _, outcomes = _grouped_behind_a_claim(
        store,
        [
            functools.partial(store.complete, claim, "ok", ttl=60, now=time.time())
            for claim in held
        ],
    )
    kinds = sorted(type(outcomes[n]).__name__ for n in (0, 1))
    assert kinds == ["KeyboardInterrupt", "StoreUnavailableError"]


def test_a_forked_child_does_not_wait_for_its_parents_pipeline() -> None:
    client = fakeredis.FakeRedis()
    store = RedisStore(client, prefix="group")
    (claim,) = _claimed_jobs(store, 1)
    # As a child forked while the parent had a pipeline in flight sees it.
    store._group_busy = True
    store._group_pid = -1
    assert store.complete(claim, "ok", ttl=60, now=time.time()) is True
    assert not store._group_busy


@pytest.mark.redis
def test_a_claim_behind_a_wait_leases_from_the_end_of_the_wait(
    real_store: RedisStore, real_client: redis.Redis
) -> None:
    real_store.wait_for_work(0.01)  # drop any earlier wake-up
    claimed: list[Claim] = []

    def waiter() -> None:
        claimed.extend(
            real_store.wait_and_claim(
                "w1", limit=1, lease=LEASE, now=time.time(), timeout=20
            )
        )

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)
    submitted = time.time()
    job_id = submit(real_store, now=submitted)
    thread.join(timeout=10)
    assert [c.job_id for c in claimed] == [job_id]
    ends = real_client.zscore("{only}:claimed", str(job_id))
    assert ends is not None
    # Lease end on Redis's clock; the two clocks of one host agree here.
    assert ends >= submitted + LEASE - 0.1

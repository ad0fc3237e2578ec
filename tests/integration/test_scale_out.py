"""Redis Cluster and Sentinel, on real servers this file starts on 127.0.0.1.

- A three-master Cluster: the whole store contract suite, a few hundred jobs through
  a Flask app on ``redis+cluster://``, and one prefix per master (each prefix is one
  hash slot, so several prefixes spread the load over the nodes).
- One master, one replica and one sentinel: the contract suite through
  ``redis+sentinel://``, then a failover under a running worker.

Every server is started by a fixture and stopped by its pid, on failure too.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
import redis.sentinel
from flask import Flask
from flask.testing import FlaskClient

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus
from async_endpoints.errors import ConfigurationError, StoreUnavailableError
from async_endpoints.stores import JobStore, open_store
from async_endpoints.stores.redis import RedisStore
from tests.conftest import RedisServer, free_port, redis_binary
from tests.stores import test_contract
from tests.stores.conftest import make_job
from tests.test_events import Stream

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LOOPBACK = "127.0.0.1"

#: JobStore methods that RedisStore does not implement (yet).
MISSING = sorted(
    name
    for name in vars(JobStore)
    if not name.startswith("_") and not hasattr(RedisStore, name)
)


def _contract_test(test: Callable[..., None]) -> Callable[..., None]:
    """A copy of a contract test, for this module's ``store`` fixture; expected to
    fail with AttributeError while it calls a method RedisStore lacks."""

    @functools.wraps(test)
    def copy(*args: Any, **kwargs: Any) -> None:
        test(*args, **kwargs)

    source = inspect.getsource(test)
    needs = [name for name in MISSING if f".{name}(" in source]
    if needs:
        reason = f"RedisStore has no {', '.join(needs)} yet"
        return pytest.mark.xfail(raises=AttributeError, reason=reason)(copy)
    return copy


# The JobStore contract suite, collected here once more and run (through the
# ``store`` fixture below) against the Cluster and through Sentinel.
# Tests of one kind of store (``memory_store``, ``shared_store``) are not copied.
for _name, _test in vars(test_contract).items():
    if (
        _name.startswith("test_")
        and inspect.isfunction(_test)
        and "store" in inspect.signature(_test).parameters
    ):
        globals()[_name] = _contract_test(_test)


# -- servers ---------------------------------------------------------------------------


def redis_cli() -> str:
    """The redis-cli binary; skips the test when absent, unless ``CI`` is set."""
    binary = shutil.which("redis-cli")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-cli is not installed; .ci/run should install it")
        pytest.skip("redis-cli is not installed (apt-get install redis-tools)")
    return binary


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (errors count as false) until true, or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def info_field(port: int, command: tuple[str, ...], field: str) -> str:
    """One ``field:value`` line of an INFO-style reply from the server on ``port``."""
    with redis.Redis(LOOPBACK, port, decode_responses=True) as client:
        text = client.execute_command(*command)
    if isinstance(text, dict):  # redis-py parses INFO into a dict
        return str(text.get(field, ""))
    for line in str(text).splitlines():
        key, _, value = line.strip().partition(":")
        if key == field:
            return value
    return ""


class Sentinel:
    """A redis-server in sentinel mode, monitoring one master as ``svc``."""

    def __init__(self, binary: str, master_port: int) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ae-sentinel-")
        self.conf = Path(self.dir, "sentinel.conf")
        self.conf.write_text(
            f"port {self.port}\n"
            f"bind {LOOPBACK}\n"
            f"dir {self.dir}\n"
            f"sentinel monitor svc {LOOPBACK} {master_port} 1\n"
            "sentinel down-after-milliseconds svc 1000\n"
            "sentinel failover-timeout svc 3000\n"
        )
        self.proc = subprocess.Popen(
            [binary, str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def master_port(self) -> int | None:
        """The master's port as clients see it (none while it is down)."""
        sentinels = redis.sentinel.Sentinel([(LOOPBACK, self.port)])
        try:
            return int(sentinels.discover_master("svc")[1])
        except redis.sentinel.MasterNotFoundError:
            return None
        finally:
            for connection in sentinels.sentinels:
                connection.close()

    def known_replicas(self) -> int:
        with redis.Redis(LOOPBACK, self.port, decode_responses=True) as client:
            replicas = client.sentinel_slaves("svc")
        return sum(1 for r in replicas if not r["is_sdown"])

    def remove(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class SentinelDeployment:
    """One master, one replica of it, and one sentinel that watches them."""

    def __init__(self) -> None:
        self.binary = redis_binary()
        # Sync a new replica at once, not after the default 5 s of waiting for more.
        self.master = RedisServer(self.binary, "--repl-diskless-sync-delay", "0")
        self.replica: RedisServer | None = None
        self.sentinel: Sentinel | None = None

    @property
    def url(self) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://{LOOPBACK}:{self.sentinel.port}/svc"

    def start(self) -> None:
        self.master.start()
        self.replica = RedisServer(
            self.binary, "--replicaof", LOOPBACK, str(self.master.port)
        )
        self.replica.start()
        replica_port = self.replica.port
        wait_for(
            lambda: (
                info_field(replica_port, ("INFO", "replication"), "master_link_status")
                == "up"
            ),
            15,
            "the replica to sync with its master",
        )
        self.sentinel = Sentinel(self.binary, self.master.port)
        sentinel = self.sentinel
        wait_for(lambda: sentinel.known_replicas() == 1, 15, "the sentinel")

    def remove(self) -> None:
        if self.sentinel is not None:
            self.sentinel.remove()
        for server in (self.replica, self.master):
            if server is not None:
                server.remove()


class Cluster:
    """Three cluster-enabled redis-servers made into one Cluster, no replicas."""

    def __init__(self) -> None:
        binary = redis_binary()
        self.cli = redis_cli()
        self.nodes: list[RedisServer] = []
        for _ in range(3):
            node = RedisServer(binary)
            node.extra = (
                *("--cluster-enabled", "yes"),
                *("--cluster-config-file", f"nodes-{node.port}.conf"),
                # The bus port is usually port + 10000; choose a free one instead.
                *("--cluster-port", str(free_port())),
            )
            self.nodes.append(node)

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        created = subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"{LOOPBACK}:{node.port}" for node in self.nodes),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if created.returncode != 0:
            pytest.fail(f"redis-cli --cluster create failed:\n{created.stdout}")
        for node in self.nodes:
            wait_for(
                functools.partial(self.state_is_ok, node.port),
                15,
                f"cluster_state:ok on node {node.port}",
            )

    @staticmethod
    def state_is_ok(port: int) -> bool:
        return info_field(port, ("CLUSTER", "INFO"), "cluster_state") == "ok"

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(
            startup_nodes=[
                redis.cluster.ClusterNode(LOOPBACK, node.port) for node in self.nodes
            ]
        )

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    servers = Cluster()
    try:
        servers.start()
        yield servers
    finally:
        servers.remove()


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelDeployment]:
    deployment = SentinelDeployment()
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.remove()


@pytest.fixture(params=["cluster", "sentinel"])
def store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    """A store on the Cluster or through Sentinel, opened from its URL, under a
    fresh prefix (so on the Cluster each test lands on some node)."""
    deployment: Cluster | SentinelDeployment = request.getfixturevalue(request.param)
    opened = open_store(deployment.url, prefix=f"c{uuid.uuid4().hex[:8]}")
    assert isinstance(opened, RedisStore)
    yield opened
    opened.close()


# -- helpers ---------------------------------------------------------------------------


def make_app(
    store_url: str, prefix: str, **config: Any
) -> tuple[Flask, AsyncEndpoints]:
    """An app whose background worker runs ``Double`` jobs from ``store_url``."""
    app = Flask(__name__)
    app.config.update(
        {
            "TESTING": True,
            "ASYNC_ENDPOINTS_STORE_URL": store_url,
            "ASYNC_ENDPOINTS_KEY_PREFIX": prefix,
            "ASYNC_ENDPOINTS_MAX_QUEUE_SIZE": 0,
            "ASYNC_ENDPOINTS_MAX_CONCURRENCY": 8,
            "ASYNC_ENDPOINTS_POLL_INTERVAL_SECONDS": 0.5,
            "ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS": 2,
            **config,
        }
    )
    ae = AsyncEndpoints(app)

    @ae.post("/double", name="Double")
    def double(ctx: AsyncContext) -> dict[str, int]:
        time.sleep(float(ctx.request.get("sleep", 0)))
        return {"n": 2 * int(ctx.request["n"])}

    return app, ae


def post_job(client: FlaskClient, n: int, sleep: float = 0.0) -> str:
    response = client.post("/double", json={"n": n, "sleep": sleep})
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def wait_all_completed(
    app: Flask, ae: AsyncEndpoints, ids: dict[str, int], timeout: float
) -> None:
    """Wait until every job in ``ids`` (id -> n) is Completed with ``2 * n``."""
    deadline = time.monotonic() + timeout
    pending = dict(ids)
    with app.app_context():
        while pending:
            for job_id in list(pending):
                job = ae.get_job(job_id)
                assert job is not None, f"job {job_id} was lost"
                assert job.status is not JobStatus.FAILED, job.to_dict()
                if job.status is JobStatus.COMPLETED:
                    assert job.result == {"n": 2 * pending.pop(job_id)}
            if pending and time.monotonic() > deadline:
                pytest.fail(f"{len(pending)} of {len(ids)} jobs did not complete")
            time.sleep(0.1)


# -- URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",
        "redis+cluster://127.0.0.1:port",
        "redis+cluster://127.0.0.1:7000/1",
        "redis+cluster://127.0.0.1:7000?db=2",
        "redis+sentinel://127.0.0.1:26379",
        "redis+sentinel://127.0.0.1:26379/",
        "redis+sentinel://127.0.0.1:26379/svc/0",
        "redis+sentinel://127.0.0.1:26379/svc?socket_timeout=soon",
    ],
)
def test_a_malformed_cluster_or_sentinel_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(url)


@pytest.mark.parametrize("scheme", ["redis+cluster", "redis+sentinel"])
def test_nothing_is_contacted_until_the_store_is_used(scheme: str) -> None:
    """Opening the store (``init_app``) connects to nothing; using it while no
    server answers raises StoreUnavailableError (503 over HTTP), at once."""
    hosts = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"  # nobody there
    path = "/svc" if scheme == "redis+sentinel" else ""
    store = open_store(f"{scheme}://user:s3cret@{hosts}{path}", prefix="down")
    try:
        assert repr(store).startswith(f"<RedisStore {scheme}://user:***@{hosts}")
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            store.submit(make_job(), max_queue_size=0, now=1000.0)
        with pytest.raises(StoreUnavailableError):
            store.get(uuid.uuid4(), now=1000.0)
        with pytest.raises(StoreUnavailableError):
            store.wait_for_work(0.1)
        assert time.monotonic() - started < 5
    finally:
        store.close()


def test_a_master_without_enough_replicas_is_unavailable() -> None:
    """``min-replicas-to-write`` refuses writes: 503 over HTTP, not a 500."""
    server = RedisServer(redis_binary(), "--min-replicas-to-write", "1")
    try:
        server.start()
        client = redis.Redis(LOOPBACK, server.port)
        store = RedisStore(client, prefix="noreplicas")
        try:
            with pytest.raises(StoreUnavailableError, match="NOREPLICAS"):
                store.submit(make_job(), max_queue_size=0, now=1000.0)
        finally:
            store.close()
            client.close()
    finally:
        server.remove()


# -- Cluster ---------------------------------------------------------------------------


def test_a_cluster_runs_hundreds_of_jobs_from_its_url(cluster: Cluster) -> None:
    app, ae = make_app(cluster.url, "e2e")
    try:
        client = app.test_client()
        ids = {post_job(client, n): n for n in range(300)}
        wait_all_completed(app, ae, ids, timeout=30)
    finally:
        with app.app_context():
            ae.shutdown()


def test_prefixes_spread_over_the_nodes(cluster: Cluster) -> None:
    """One prefix per master: each prefix's keys live on its own node, and an app
    (a queue) on each prefix runs its jobs."""
    client = cluster.client()
    try:
        primaries = {node.name for node in client.get_primaries()}
        assert len(primaries) == 3
        by_node: dict[str, str] = {}
        for i in range(1000):
            prefix = f"queue{i}"
            node = client.get_node_from_key("{" + prefix + "}:ready").name
            by_node.setdefault(node, prefix)
            if len(by_node) == len(primaries):
                break
        assert set(by_node) == primaries
        apps = [make_app(cluster.url, prefix) for prefix in by_node.values()]
        posted = []
        for app, ae in apps:
            test_client = app.test_client()
            posted.append((app, ae, {post_job(test_client, n): n for n in range(50)}))
        try:
            for app, ae, ids in posted:
                wait_all_completed(app, ae, ids, timeout=20)
        finally:
            for app, ae in apps:
                with app.app_context():
                    ae.shutdown()
        # Each prefix's jobs are on its node, and on no other.
        for node_name, prefix in by_node.items():
            for node in client.get_primaries():
                connection = client.get_redis_connection(node)
                keys = list(connection.scan_iter(match="{" + prefix + "}:*"))
                if node.name == node_name:
                    assert len(keys) >= 50
                else:
                    assert keys == []
    finally:
        client.close()


def test_a_jobs_events_stream_from_the_cluster(cluster: Cluster) -> None:
    """The store's announcements of changes reach an event stream on the Cluster:
    the job's state at once, then each change as the worker makes it, and the
    stream ends with the job (well before its time limit, which bounds the test)."""
    app, ae = make_app(cluster.url, "events", ASYNC_ENDPOINTS_MAX_STREAM_SECONDS=10)
    halfway, finish = threading.Event(), threading.Event()

    @ae.post("/halves", name="Halves")
    def halves(ctx: AsyncContext) -> str:
        assert halfway.wait(10), "the test did not let the job go on"
        ctx.report_progress(0.5, "half")
        assert finish.wait(10), "the test did not let the job finish"
        return "done"

    client = app.test_client()
    response = client.post("/halves", json={})
    assert response.status_code == 202, response.get_data(as_text=True)
    stream = Stream(client, f"/jobs/{response.get_json()['id']}/events")
    try:
        assert stream.response.status_code == 200
        assert stream.response.mimetype == "text/event-stream"
        opened = time.monotonic()
        event = stream.next_event()
        assert event is not None
        assert event["job"]["status"] in ("Queued", "InProgress")
        while event is not None and event["job"]["status"] != "InProgress":
            event = stream.next_event()
        assert event is not None, "the stream ended before the job started"
        started = event
        halfway.set()
        half = stream.next_event()
        assert half is not None
        assert half["job"]["progress"] == {"fraction": 0.5, "message": "half"}
        finish.set()
        final = stream.next_event()
        assert final is not None
        assert final["job"]["status"] == "Completed"
        assert final["job"]["result"] == "done"
        assert stream.next_block() is None
        assert time.monotonic() - opened < 10, "the stream ended by its time limit"
    finally:
        halfway.set()
        finish.set()
        stream.close()
        with app.app_context():
            ae.shutdown()
    ids = [started["id"], half["id"], final["id"]]
    assert ids == sorted(set(ids))
    assert ids == [e["job"]["version"] for e in (started, half, final)]


def test_a_cluster_client_can_be_passed_in(cluster: Cluster) -> None:
    client = cluster.client()
    try:
        store = open_store(client, prefix="passed")
        assert repr(store).startswith("<RedisStore redis+cluster://")
        job = make_job()
        store.submit(job, max_queue_size=0, now=1000.0)
        (claim,) = store.claim("w", limit=1, lease=30, now=1000.0)
        assert store.complete(claim, "ok", ttl=60, now=1001.0)
        done = store.get(job.id, now=1001.0)
        assert done is not None
        assert done.status is JobStatus.COMPLETED
        store.close()
    finally:
        client.close()


# -- Sentinel --------------------------------------------------------------------------


def test_a_client_from_master_for_can_be_passed_in(
    sentinel: SentinelDeployment,
) -> None:
    assert sentinel.sentinel is not None
    sentinels = redis.sentinel.Sentinel([(LOOPBACK, sentinel.sentinel.port)])
    client = sentinels.master_for("svc")
    try:
        store = open_store(client, prefix="passed")
        assert repr(store).startswith(
            f"<RedisStore redis+sentinel://{LOOPBACK}:{sentinel.sentinel.port}/svc"
        )
        job = make_job()
        store.submit(job, max_queue_size=0, now=1000.0)
        assert store.queue_size() == 1
        store.close()
    finally:
        client.close()
        for connection in sentinels.sentinels:
            connection.close()


@pytest.mark.xfail(
    "register_worker" in MISSING,
    reason="the worker's housekeeping calls store.register_worker before it sweeps; "
    "without it no expired lease is recovered, so jobs whose completion the "
    "failover cut off stay InProgress",
    run=False,
)
def test_workers_carry_on_through_a_sentinel_failover() -> None:
    """Jobs acknowledged (and replicated) before the master dies, and jobs
    submitted once Sentinel has promoted the replica, all complete; while there
    is no master, submissions answer 503 with Retry-After."""
    deployment = SentinelDeployment()
    try:
        deployment.start()
        assert deployment.sentinel is not None
        assert deployment.replica is not None
        old_master, new_master = deployment.master.port, deployment.replica.port
        app, ae = make_app(
            deployment.url,
            "failover",
            ASYNC_ENDPOINTS_MAX_CONCURRENCY=4,
            ASYNC_ENDPOINTS_CLAIM_TIMEOUT_SECONDS=2,
            ASYNC_ENDPOINTS_SWEEP_INTERVAL_SECONDS=0.5,
            ASYNC_ENDPOINTS_RETRY_DELAY_BASE_SECONDS=0.1,
            ASYNC_ENDPOINTS_MAX_RETRIES=50,
        )
        client = app.test_client()
        try:
            # About 2.5 s of work for 4 threads: the failover cuts into it.
            before = {post_job(client, n, sleep=0.05): n for n in range(200)}
            # Replicated, not only acknowledged: WAIT returns once the replica
            # has this connection's write, hence every write the master made
            # before it (asynchronous replication could lose those otherwise).
            with redis.Redis(LOOPBACK, old_master) as direct:
                direct.set("failover-probe", "1")
                assert direct.wait(1, 5000) == 1
            deployment.master.stop()  # terminate the process we started, by pid
            stopped_at = time.time()
            during: dict[str, int] = {}
            n = len(before)
            deadline = time.monotonic() + 30
            while deployment.sentinel.master_port() != new_master:
                assert time.monotonic() < deadline, "Sentinel did not fail over"
                response = client.post("/double", json={"n": n})
                if response.status_code == 202:
                    during[str(response.get_json()["id"])] = n
                    n += 1
                else:
                    assert response.status_code == 503
                    assert response.headers["Retry-After"].isdigit()
                time.sleep(0.05)
            after = {post_job(client, m): m for m in range(n, n + 100)}
            wait_all_completed(app, ae, before | during | after, timeout=30)
            with app.app_context():
                ended = [ae.get_job(job_id) for job_id in before]
        finally:
            with app.app_context():
                ae.shutdown()
    finally:
        deployment.remove()
    # The worker was still busy with jobs from before when the master went away.
    assert any(
        job is not None
        and job.completed_at is not None
        and job.completed_at > stopped_at
        for job in ended
    )


def test_while_a_prefix_slot_moves_no_transition_runs_on_the_importing_node(
    cluster: Cluster,
) -> None:
    """The operator has marked the prefix's slot MIGRATING (source) and
    IMPORTING (target) and moved no key yet. A submit, claim or completion must
    then run on the source, where the data is, or not at all (Redis answers
    TRYAGAIN by the keys the script declares): never on the target, where it
    would see no jobs and leave keys that make the slot's move fail."""
    prefix = f"m{uuid.uuid4().hex[:8]}"
    store = open_store(cluster.url, prefix=prefix)
    assert isinstance(store, RedisStore)
    nodes = {n.port: redis.Redis(host=LOOPBACK, port=n.port) for n in cluster.nodes}
    try:
        first = make_job(name="Double")
        store.submit(first, max_queue_size=0, now=time.time())
        slot = redis.cluster.key_slot(("{" + prefix + "}").encode())
        [source] = [p for p, c in nodes.items() if c.cluster("countkeysinslot", slot)]
        target = next(p for p in nodes if p != source)
        ids = {p: nodes[p].cluster("myid") for p in (source, target)}
        nodes[target].cluster("setslot", slot, "importing", ids[source])
        nodes[source].cluster("setslot", slot, "migrating", ids[target])
        try:
            accepted: list[uuid.UUID] = []
            second = make_job(name="Double")
            # Refused (TRYAGAIN) is a 503: the client may send it again.
            with contextlib.suppress(StoreUnavailableError):
                accepted.append(
                    store.submit(second, max_queue_size=0, now=time.time()).id
                )
            claims = []
            with contextlib.suppress(StoreUnavailableError):
                claims = store.claim("w", limit=5, lease=30, now=time.time())
            for claim in claims:
                with contextlib.suppress(StoreUnavailableError):
                    store.complete(claim, None, ttl=60, now=time.time())
            assert nodes[target].cluster("getkeysinslot", slot, 10) == []
        finally:
            for port in (source, target):
                nodes[port].cluster("setslot", slot, "stable")
        # The slot is back where it was: every accepted job is there.
        for job_id in [first.id, *accepted]:
            assert store.get(job_id, now=time.time()) is not None
    finally:
        store.close()
        for client in nodes.values():
            client.close()

"""Self-tests of the fault proxy against a real redis-server."""

from __future__ import annotations

import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.conftest import RedisServer, wait_until
from tests.faults.conftest import ClientFactory
from tests.faults.proxy import RedisFaultProxy, _frame_end

INCR_SCRIPT = "return redis.call('INCR', KEYS[1])"


def is_incr(cmd: list[bytes]) -> bool:
    """Matches ``Redis.incr``, which redis-py sends as ``INCRBY key 1``."""
    return cmd[0].upper() == b"INCRBY"


def ping(sock: socket.socket) -> bytes:
    """An inline PING on a raw socket, outside redis-py's pools and retries."""
    sock.sendall(b"PING\r\n")
    return sock.recv(64)


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("redis-fault-proxy")]


@pytest.mark.parametrize(
    "frame",
    [
        b"+OK\r\n",
        b"-ERR no\r\n",
        b":42\r\n",
        b"$5\r\nhello\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"_\r\n",
        b",3.14\r\n",
        b"#t\r\n",
        b"(12345678901234567890\r\n",
        b"!3\r\nerr\r\n",
        b"=7\r\ntxt:abc\r\n",
        b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
        b"%2\r\n+a\r\n:1\r\n+b\r\n%0\r\n",
        b"~1\r\n$0\r\n\r\n",
        b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n",
        b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",  # an attribute, then its reply
    ],
)
def test_framing_finds_each_frame_end_and_waits_for_the_rest(frame: bytes) -> None:
    assert _frame_end(bytearray(frame + b"+next\r\n"), 0) == len(frame)
    for cut in range(len(frame)):
        assert _frame_end(bytearray(frame[:cut]), 0) is None, frame[:cut]


@pytest.mark.redis
@pytest.mark.parametrize("protocol", [2, 3])
def test_commands_pipelines_and_scripts_pass_through(
    proxied_client: ClientFactory, fault_proxy: RedisFaultProxy, protocol: int
) -> None:
    client = proxied_client(protocol=protocol)
    assert client.set("k", "v")
    assert client.get("k") == b"v"
    assert client.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert client.hgetall("h") == {b"a": b"1", b"b": b"2"}
    pipe = client.pipeline()
    pipe.incr("n")
    pipe.incr("n")
    pipe.get("n")
    assert pipe.execute() == [1, 2, b"2"]
    script = client.register_script(INCR_SCRIPT)
    assert [script(keys=["s"]) for _ in range(2)] == [1, 2]  # loads on NOSCRIPT
    assert fault_proxy.commands == fault_proxy.replies > 0
    assert fault_proxy.dropped == 0


@pytest.mark.redis
def test_a_dropped_reply_is_a_connection_error_after_the_command_ran(
    proxied_client: ClientFactory,
    fault_proxy: RedisFaultProxy,
    direct_redis: redis.Redis,
) -> None:
    client = proxied_client()
    fault_proxy.drop_reply_once(is_incr)
    with pytest.raises(redis.ConnectionError):
        client.incr("k")
    assert direct_redis.get("k") == b"1"
    assert fault_proxy.dropped_commands == [(b"INCRBY", b"k", b"1")]
    assert client.incr("k") == 2  # fires once; reconnects


@pytest.mark.redis
def test_a_dropped_script_reply_is_matched_by_sha(
    proxied_client: ClientFactory,
    fault_proxy: RedisFaultProxy,
    direct_redis: redis.Redis,
) -> None:
    script = proxied_client().register_script(INCR_SCRIPT)
    direct_redis.script_load(INCR_SCRIPT)  # so EVALSHA runs it, not NOSCRIPT
    sha = script.sha.encode()
    fault_proxy.drop_reply_once(
        lambda cmd: cmd[0].upper() == b"EVALSHA" and cmd[1] == sha
    )
    with pytest.raises(redis.ConnectionError):
        script(keys=["k"])
    assert direct_redis.get("k") == b"1"
    assert fault_proxy.dropped == 1


@pytest.mark.redis
def test_a_default_redis_client_retries_and_runs_the_command_twice(
    fault_proxy: RedisFaultProxy, direct_redis: redis.Redis
) -> None:
    # redis.Redis(host=..., port=...) retries connection errors by default in
    # redis-py 8: the hazard a store must survive, a non-idempotent command run twice.
    with redis.Redis(host="127.0.0.1", port=fault_proxy.port) as client:
        fault_proxy.drop_reply_once(is_incr)
        assert client.incr("k") == 2
    assert direct_redis.get("k") == b"2"
    assert fault_proxy.dropped == 1


@pytest.mark.redis
def test_a_default_from_url_client_does_not_retry(
    fault_proxy: RedisFaultProxy, direct_redis: redis.Redis
) -> None:
    # Redis.from_url builds its pool without the constructor's default Retry
    # (redis-py 8.1), so the error surfaces and the command ran once.
    with redis.Redis.from_url(fault_proxy.url) as client:
        fault_proxy.drop_reply_once(is_incr)
        with pytest.raises(redis.ConnectionError):
            client.incr("k")
    assert direct_redis.get("k") == b"1"


@pytest.mark.redis
def test_random_drops_follow_the_seed_and_are_counted(
    proxied_client: ClientFactory,
    fault_proxy: RedisFaultProxy,
    direct_redis: redis.Redis,
) -> None:
    client = proxied_client()

    def failures() -> list[int]:
        failed = []
        for i in range(60):
            try:
                client.incr("k")
            except redis.ConnectionError:
                failed.append(i)
        return failed

    rng = random.Random(7)  # one draw per matching command, in order
    expected = [i for i in range(60) if rng.random() < 0.2]
    fault_proxy.drop_replies(0.2, seed=7, match=is_incr)
    assert failures() == expected
    fault_proxy.drop_replies(0.2, seed=7, match=is_incr)
    assert failures() == expected
    assert 0 < len(expected) < 60
    assert fault_proxy.dropped == 2 * len(expected)
    assert direct_redis.get("k") == b"120"  # every INCR ran exactly once


@pytest.mark.redis
def test_a_black_hole_times_out_clients_until_healed(
    proxied_client: ClientFactory,
    fault_proxy: RedisFaultProxy,
) -> None:
    client = proxied_client(socket_timeout=0.5)
    assert client.ping()
    fault_proxy.blackhole()
    with pytest.raises(redis.TimeoutError):
        client.get("k")
    fresh = proxied_client(socket_timeout=0.5, socket_connect_timeout=0.5)
    with pytest.raises(redis.TimeoutError):
        fresh.ping()  # the connection is accepted, then nothing comes back
    wait_until(lambda: fault_proxy.accepted == 2, 5, "the proxy to accept `fresh`")
    fault_proxy.heal()
    assert client.set("k", "v")
    assert fresh.get("k") == b"v"


@pytest.mark.redis
def test_cut_all_breaks_a_blocked_command_and_new_connections_work(
    proxied_client: ClientFactory,
    fault_proxy: RedisFaultProxy,
    direct_redis: redis.Redis,
) -> None:
    client = proxied_client()

    def blocked() -> bool:
        return any(info["cmd"] == "blpop" for info in direct_redis.client_list())

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.blpop, ["q"], 10)
        wait_until(blocked, 5, "BLPOP to block on the server")
        assert fault_proxy.cut_all() == 1
        with pytest.raises(redis.ConnectionError):
            waiting.result(timeout=5)
    assert proxied_client().ping()
    assert client.ping()


@pytest.mark.redis
def test_cut_all_resets_an_open_connection(fault_proxy: RedisFaultProxy) -> None:
    with socket.create_connection(("127.0.0.1", fault_proxy.port), 5) as sock:
        assert ping(sock) == b"+PONG\r\n"
        assert fault_proxy.cut_all() == 1
        with pytest.raises(ConnectionResetError):
            ping(sock)


@pytest.mark.redis
def test_an_idle_pooled_connection_reconnects_silently_after_a_cut(
    proxied_client: ClientFactory, fault_proxy: RedisFaultProxy
) -> None:
    # The pool checks a connection before lending it and reconnects a dead one,
    # so cuts are only visible to commands in flight.
    client = proxied_client()
    assert client.ping()
    assert fault_proxy.cut_all() == 1
    assert client.ping()
    assert fault_proxy.accepted == 2


@pytest.mark.redis
def test_stop_closes_connections_and_joins_its_thread(
    redis_server: RedisServer,
) -> None:
    with RedisFaultProxy(redis_server.port) as proxy:
        assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
        sock = socket.create_connection(("127.0.0.1", proxy.port), 5)
        assert ping(sock) == b"+PONG\r\n"
        assert len(proxy_threads()) == 1
    with sock:
        assert proxy_threads() == []
        with pytest.raises(ConnectionResetError):
            ping(sock)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), 5)

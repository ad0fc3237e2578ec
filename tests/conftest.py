"""Shared fixtures: a Flask app with the extension, and a real redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest
from flask import Flask
from flask.testing import FlaskClient

if TYPE_CHECKING:
    from async_endpoints import AsyncEndpoints


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A redis-server this test session started on a loopback port."""

    def __init__(self, binary: str, *extra: str) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ae-redis-")
        self.binary = binary
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = [] if "--appendonly" in self.extra else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--dir", self.dir, *persistence, *self.extra),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_binary() -> str:
    """The redis-server binary; skips the test when absent, unless ``CI`` is set."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run should install it")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1; skips when absent, unless ``CI`` is set."""
    server = RedisServer(redis_binary())
    server.start()
    yield server
    server.remove()


@pytest.fixture
def redis_server_aof() -> Iterator[RedisServer]:
    """A redis-server of this test alone, persisting every write (restartable)."""
    server = RedisServer(
        redis_binary(), "--appendonly", "yes", "--appendfsync", "always"
    )
    server.start()
    yield server
    server.remove()


@pytest.fixture
def app() -> Flask:
    """A fresh app on the memory store with no background worker."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        ASYNC_ENDPOINTS_START_WORKER=False,
    )
    return app


@pytest.fixture
def store_kind() -> str:
    """Which store ``ae`` uses; test modules override it to run on every store."""
    return "memory"


@pytest.fixture
def ae(
    app: Flask, store_kind: str, request: pytest.FixtureRequest
) -> Iterator[AsyncEndpoints]:
    """The extension, initialised on ``app`` with the store ``store_kind`` names."""
    from async_endpoints import AsyncEndpoints

    store = None
    client = None
    if store_kind == "fakeredis":
        import fakeredis

        from async_endpoints.stores.redis import RedisStore

        store = RedisStore(fakeredis.FakeRedis(), prefix="ext")
    elif store_kind == "redis":
        import redis

        from async_endpoints.stores.redis import RedisStore

        server: RedisServer = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        client.flushdb()
        store = RedisStore(client, prefix="ext")
    ext = AsyncEndpoints(app, store=store)
    yield ext
    with app.app_context():
        ext.shutdown()
    if client is not None:
        client.close()


@pytest.fixture
def client(app: Flask, ae: AsyncEndpoints) -> FlaskClient:
    """A test client of ``app``."""
    return app.test_client()

"""Fixtures for fault injection: a proxy in front of the session's redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import RedisServer
from tests.faults.proxy import RedisFaultProxy

ClientFactory = Callable[..., "redis.Redis"]


@pytest.fixture
def direct_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client straight to the server, bypassing the proxy; flushes around the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def fault_proxy(
    redis_server: RedisServer, direct_redis: redis.Redis
) -> Iterator[RedisFaultProxy]:
    """A started :class:`RedisFaultProxy` to the session's redis-server."""
    with RedisFaultProxy(redis_server.port) as proxy:
        yield proxy


@pytest.fixture
def proxied_client(fault_proxy: RedisFaultProxy) -> Iterator[ClientFactory]:
    """Makes clients through the proxy that never retry; closes them afterwards.

    Keyword arguments go to ``redis.Redis.from_url``; ``retry`` defaults to none.
    """
    made: list[redis.Redis] = []

    def make(**options: Any) -> redis.Redis:
        options.setdefault("retry", Retry(NoBackoff(), 0))
        client = redis.Redis.from_url(fault_proxy.url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()

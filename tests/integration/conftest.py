"""Fixtures of the tests that run real processes against a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.conftest import RedisServer


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of the session's redis-server, flushed before and after."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield redis_server.url
    client.flushdb()
    client.close()

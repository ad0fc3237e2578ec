"""Store fixtures: the same contract suite runs against every backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from async_endpoints.jobs import Job, JobStatus
from async_endpoints.stores import JobStore, MemoryStore
from tests.conftest import RedisServer


@pytest.fixture
def memory_store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def fakeredis_store() -> Iterator[JobStore]:
    import fakeredis

    from async_endpoints.stores.redis import RedisStore

    client = fakeredis.FakeRedis()
    store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:8]}")
    yield store
    store.close()


@pytest.fixture
def redis_store(redis_server: RedisServer) -> Iterator[JobStore]:
    import redis

    from async_endpoints.stores.redis import RedisStore

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    store = RedisStore(client, prefix="contract")
    yield store
    client.flushdb()
    store.close()


@pytest.fixture(params=["memory_store", "fakeredis_store", "redis_store"])
def store(request: pytest.FixtureRequest) -> JobStore:
    """Every JobStore implementation in turn."""
    result: JobStore = request.getfixturevalue(request.param)
    return result


def make_job(name: str = "Echo", now: float = 1000.0, **overrides: Any) -> Job:
    """A new job as the manager would build it before ``submit``."""
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "name": name,
        "status": JobStatus.QUEUED,
        "max_retries": 3,
        "created_at": now,
        "last_updated_at": now,
    }
    fields.update(overrides)
    return Job(**fields)

"""Job stores: the ``JobStore`` protocol, its implementations, and ``open_store``."""

from __future__ import annotations

from typing import Any

from async_endpoints.errors import ConfigurationError
from async_endpoints.stores.base import JobStore
from async_endpoints.stores.memory import MemoryStore

__all__ = ["JobStore", "MemoryStore", "open_store"]

_REDIS_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "redis+sentinel://",
)


def open_store(
    target: Any, *, prefix: str = "async_endpoints", socket_timeout: float = 10.0
) -> JobStore:
    """Turn a URL, a redis client or a store into a :class:`JobStore`.

    :param target: ``"memory://"``; a ``redis://``, ``rediss://`` or ``unix://``
        URL; ``redis+sentinel://host:port,host:port/service_name``;
        ``redis+cluster://host:port,host:port``; a ``redis.Redis`` client (also one
        from ``Sentinel(...).master_for(...)``) or a ``redis.cluster.RedisCluster``;
        or an object that already is a store.
    :param prefix: the Redis key namespace (``ASYNC_ENDPOINTS_KEY_PREFIX``).
    :param socket_timeout: for a Redis URL, the longest a read waits unless the
        URL says otherwise (the extension passes a third of the lease, at most
        10 s).
    :raises ConfigurationError: the URL's scheme is not supported.
    """
    if target == "memory://":
        return MemoryStore()
    if hasattr(target, "claim") and hasattr(target, "submit"):
        store: JobStore = target
        return store

    import redis
    import redis.cluster

    from async_endpoints.stores.redis import RedisStore

    if isinstance(target, str):
        if target.startswith(_REDIS_SCHEMES):
            return RedisStore.from_url(
                target, prefix=prefix, socket_timeout=socket_timeout
            )
        raise ConfigurationError(
            f"ASYNC_ENDPOINTS_STORE_URL={target.partition('://')[0]}://... is not "
            "supported: use 'memory://' or a redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster:// URL."
        )
    if isinstance(target, redis.Redis | redis.cluster.RedisCluster):
        return RedisStore(target, prefix=prefix)
    raise ConfigurationError(
        f"store={target!r} is neither a JobStore, a redis.Redis or "
        "redis.cluster.RedisCluster client, nor a URL."
    )

"""Redis URLs to clients: one server, Sentinel or Cluster; the clients' names
with passwords redacted."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import (
    Any,
    Final,
    TypeAlias,
)
from urllib.parse import quote, urlsplit

import redis
import redis.backoff
import redis.cluster
import redis.connection
import redis.exceptions
import redis.retry
import redis.sentinel

from async_endpoints.errors import (
    ConfigurationError,
)

_CLUSTER_SCHEME: Final = "redis+cluster://"
_SENTINEL_SCHEME: Final = "redis+sentinel://"
_SCHEMES: Final = (
    "redis://",
    "rediss://",
    "unix://",
    _CLUSTER_SCHEME,
    _SENTINEL_SCHEME,
)
_CONNECT_TIMEOUT: Final = 5.0
"""Default ``socket_connect_timeout`` of the clients a URL makes, in seconds."""
_SOCKET_TIMEOUT: Final = 10.0
"""Default ``socket_timeout`` of the clients a URL makes, at most, in seconds."""


def _socket_defaults(timeout: float = _SOCKET_TIMEOUT) -> dict[str, Any]:
    """Socket options of the clients a URL makes, unless the URL sets them.

    :param timeout: the longest a read may wait: a connection whose peer vanished
        without a reset (a black hole) fails within it, and the next call makes a
        new one. TCP keepalive probes an idle connection after a few seconds too
        (where the platform lets us say so).
    """
    keepalive: dict[int, int] = {}
    idle = max(1, int(timeout))
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", idle),
        ("TCP_KEEPCNT", 3),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            keepalive[option] = value
    return {
        "socket_connect_timeout": min(_CONNECT_TIMEOUT, timeout),
        "socket_timeout": timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive,
    }


# types-redis makes Redis generic; redis-py's own inline types do not.
_Client: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"  # type: ignore[type-arg,unused-ignore]
"""What the store talks to: one server (plain or through Sentinel) or a Cluster."""


# -- URLs and clients -------------------------------------------------------------


def _auth(kwargs: Mapping[str, Any]) -> str:
    """The ``user:***@`` part of a URL-like name (the password redacted)."""
    user = quote(str(kwargs.get("username") or ""), safe="")
    return f"{user}:***@" if kwargs.get("password") else (f"{user}@" if user else "")


def _describe_client(client: _Client) -> str:
    """A URL-like name of the client's target, with any password redacted."""
    if isinstance(client, redis.cluster.RedisCluster):
        cluster: Any = client  # redis-py leaves these methods unannotated
        kwargs: Mapping[str, Any] = cluster.nodes_manager.connection_kwargs
        return _cluster_name([(n.host, n.port) for n in cluster.get_nodes()], kwargs)
    return _describe(client.connection_pool)


def _cluster_name(nodes: Sequence[tuple[str, int]], kwargs: Mapping[str, Any]) -> str:
    hosts = ",".join(f"{host}:{port}" for host, port in nodes)
    return f"{_CLUSTER_SCHEME}{_auth(kwargs)}{hosts}"


def _describe(pool: Any) -> str:
    """A URL-like name of the pool's target, with any password redacted."""
    kwargs: Mapping[str, Any] = getattr(pool, "connection_kwargs", {})
    db = kwargs.get("db", 0)
    auth = _auth(kwargs)
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        sentinels: Any = pool.sentinel_manager.sentinels
        hosts = ",".join(
            f"{s.connection_pool.connection_kwargs.get('host')}:"
            f"{s.connection_pool.connection_kwargs.get('port')}"
            for s in sentinels
        )
        return f"{_SENTINEL_SCHEME}{auth}{hosts}/{pool.service_name}?db={db}"
    if kwargs.get("path"):
        return f"unix://{auth}{kwargs['path']}?db={db}"
    connection_class = getattr(pool, "connection_class", None)
    secure = isinstance(connection_class, type) and issubclass(
        connection_class, redis.SSLConnection
    )
    scheme = "rediss" if secure else "redis"
    host = kwargs.get("host", "localhost")
    return f"{scheme}://{auth}{host}:{kwargs.get('port', 6379)}/{db}"


def _split_url(
    url: str, scheme: str, default_port: int, timeout: float = _SOCKET_TIMEOUT
) -> tuple[list[tuple[str, int]], str, dict[str, Any]]:
    """``scheme[user:password@]host:port,host:port[/path][?options]``, taken apart.

    :returns: the ``(host, port)`` pairs, the path without its leading slash, and
        the connection options redis-py reads from a ``redis://`` URL (credentials,
        ``socket_timeout`` and the like), with a 5 s connect timeout by default.
    :raises ConfigurationError: no host, or a port that is not a number.
    """
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    nodes: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, port = item, str(default_port)
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":") or port
        elif ":" in item:
            host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(
                f"{_redact(url)!r} is not a valid {scheme} URL: expected "
                f"{scheme}host:port,host:port,..."
            )
        nodes.append((host, int(port)))
    auth = f"{userinfo}@" if userinfo else ""
    query = f"?{parts.query}" if parts.query else ""
    try:
        parse: Any = redis.connection.parse_url  # unannotated in redis-py
        options: dict[str, Any] = parse(f"redis://{auth}localhost{query}")
    except ValueError as exc:
        raise ConfigurationError(f"Invalid Redis URL {_redact(url)!r}: {exc}") from exc
    options.pop("host", None)
    return (
        nodes,
        parts.path.removeprefix("/"),
        {**_socket_defaults(timeout), **options},
    )


def _redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    if ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return str(parts._replace(netloc=f"{user}:***{at}{hostlist}").geturl())


def _cluster_connector(
    url: str, timeout: float = _SOCKET_TIMEOUT
) -> tuple[Callable[[], _Client], str]:
    """A ``redis+cluster://`` URL's client factory (it connects when called), and
    the URL's name with any password redacted.

    :raises ConfigurationError: the URL is malformed or names a database.
    """
    nodes, path, options = _split_url(url, _CLUSTER_SCHEME, 6379, timeout)
    if path or options.get("db", 0) != 0:
        raise ConfigurationError(
            f"{_redact(url)!r}: a Redis Cluster has only database 0; drop the path "
            "and any db= option."
        )
    options.pop("db", None)
    node: Any = redis.cluster.ClusterNode  # unannotated in redis-py
    startup = [node(host, port) for host, port in nodes]

    def connect() -> _Client:
        return redis.cluster.RedisCluster(startup_nodes=startup, **options)

    return connect, _cluster_name(nodes, options)


def _sentinel_client(
    url: str, timeout: float = _SOCKET_TIMEOUT
) -> tuple[_Client, Callable[[], None]]:
    """The master's client for a ``redis+sentinel://`` URL (nothing connects yet),
    and a function that closes the connections to the sentinels.

    :raises ConfigurationError: the URL is malformed or names no service.
    """
    nodes, service, options = _split_url(url, _SENTINEL_SCHEME, 26379, timeout)
    if not service or "/" in service:
        raise ConfigurationError(
            f"{_redact(url)!r} names no Sentinel service: use "
            f"{_SENTINEL_SCHEME}host:port,host:port/service_name"
        )
    # socket_* options also apply to the sentinels, credentials only to the master.
    # An unreachable sentinel is not retried (redis-py's default backs off for
    # seconds): the next one is asked at once.
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel_options["retry"] = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    make_sentinel: Any = redis.sentinel.Sentinel  # unannotated in redis-py
    sentinel = make_sentinel(nodes, sentinel_kwargs=sentinel_options, **options)
    client: _Client = sentinel.master_for(service)

    def close_sentinels() -> None:
        for connection in sentinel.sentinels:
            connection.close()

    return client, close_sentinels

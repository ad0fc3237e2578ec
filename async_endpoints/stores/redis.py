"""``RedisStore``: the job store every process of a deployment shares through Redis.

Each state transition is one Lua script (``stores/lua/<method>.lua``), registered
once per store and run by SHA (redis-py reloads it on ``NOSCRIPT``). The caller's
clock arrives in ``ARGV`` as ``now``; scripts never read Redis ``TIME``.

Key layout (``P`` is the prefix; the braces make ``{P}`` a Redis Cluster hash tag,
so every key of one prefix lives in one slot)::

    {P}:job:<uuid>       hash    one job (fields below); finished jobs carry an
                                 EXPIRE of ceil(ttl) seconds
    {P}:ready            zset    waiting (Queued and Scheduled) job ids, scored by
                                 due time (epoch seconds)
    {P}:claimed          zset    InProgress job ids, scored by lease end
    {P}:wake             list    wake-up tokens for idle workers (BLPOP), at most 64
    {P}:idem:<key>       string  "<job uuid>:<fingerprint>", PX = the key's ttl
    {P}:workers          hash    live worker name -> last heartbeat

and two kinds of Pub/Sub channels (not keys): ``{P}:ended:<uuid>``, told when
the job ends (long polls), and ``{P}:cancels``, told the id of a running job
whose cancellation was requested (every worker process listens).

Key names are built in Python by ``_Keys`` and passed in ``KEYS``, with one
exception: ``claim.lua``, ``recover_expired.lua`` and ``submit.lua`` (for the job an
idempotency key names) learn job ids only inside the atomic step, so they receive
the tagged prefix ``{P}:job:`` as a key and derive ``{P}:job:`` .. id. Those keys
share the hash tag, hence the slot. No script calls ``KEYS`` or ``SCAN``.

Job hash fields are short, and a field is absent when its value is ``None`` (or an
empty mapping), to keep a finished job small (a few hundred bytes, listpack)::

    n  name            s  status (JobStatus value)   m  max_retries
    a  retry_count     c  created_at                 u  last_updated_at
    b  started_at      e  completed_at               d  due_at (waiting only)
    p  payload (JSON)  h  headers (JSON)             rp route_params (JSON)
    qp query_params    o  owner                      r  result (JSON)
    x  error (JSON [type, message, stack_trace])
    g  progress (JSON [fraction, message])
    k  "1" once cancellation was requested
    hb hand-backs in a row (absent: none)
    t  claim token     w  claiming worker            (InProgress only)

Times are ``repr(float)`` strings, so they read back exactly. Values are JSON, never
pickle.

Deployments: a single Redis (``redis://``, ``rediss://``, ``unix://``), Sentinel
(``redis+sentinel://``: a ``redis.Redis`` on a ``SentinelConnectionPool``, which asks
the sentinels for the master on every new connection) or Cluster
(``redis+cluster://``: a ``redis.cluster.RedisCluster``, which routes each command,
EVALSHA included, by its keys' slot; all keys of one prefix share one slot). The
Cluster client is made on first use, because redis-py's connects at construction:
like the other URLs, opening the store contacts no server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.resources
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeAlias, get_args
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
    IdempotencyConflictError,
    JobFinishedError,
    JobNotFoundError,
    QueueFullError,
    StoreError,
    StoreUnavailableError,
)
from async_endpoints.jobs import (
    Claim,
    ErrorInfo,
    HeartbeatResult,
    Idempotency,
    Job,
    JobStatus,
    JSONValue,
    Progress,
    StoreStats,
)

if TYPE_CHECKING:
    from redis.commands.core import Script

__all__ = ["RedisStore"]

_ScriptName: TypeAlias = Literal[
    "submit",
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
]
_SCRIPT_NAMES: Final[tuple[_ScriptName, ...]] = get_args(_ScriptName)
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
_MIN_BLOCK: Final = 0.01
"""Shortest BLPOP, in seconds: 0 would mean "block forever"."""
_RESUBSCRIBE: Final = 10.0
"""How often the cancel listener subscribes anew, in seconds (drops a connection
that went silent without a reset)."""
_END_POLL: Final = 0.05
"""How often ``wait_for_end`` looks at the job, in seconds."""

# types-redis makes Redis generic; redis-py's own inline types do not.
_Client: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"  # type: ignore[type-arg,unused-ignore]
"""What the store talks to: one server (plain or through Sentinel) or a Cluster."""

_Reply: TypeAlias = "str | int | list[_Reply] | None"
"""A script reply with bulk strings decoded: what the decoders below read."""


@functools.cache
def _script_source(name: _ScriptName) -> str:
    package = __package__ or __name__.rpartition(".")[0]
    resource = importlib.resources.files(package).joinpath("lua", f"{name}.lua")
    return resource.read_text(encoding="utf-8")


class _Keys:
    """Every key name the store uses, under the ``{prefix}`` hash tag."""

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"Redis key prefix {prefix!r} is invalid: use a non-empty prefix "
                "without braces (it becomes the {prefix} Cluster hash tag)."
            )
        tag = "{" + prefix + "}"
        self.ready: Final = f"{tag}:ready"
        self.claimed: Final = f"{tag}:claimed"
        self.wake: Final = f"{tag}:wake"
        self.workers: Final = f"{tag}:workers"
        self.job_prefix: Final = f"{tag}:job:"
        self._idem_prefix: Final = f"{tag}:idem:"
        self._ended_prefix: Final = f"{tag}:ended:"
        self.cancels: Final = f"{tag}:cancels"

    def job(self, job_id: uuid.UUID | str) -> str:
        return f"{self.job_prefix}{job_id}"

    def idem(self, key: str) -> str:
        return f"{self._idem_prefix}{key}"

    def ended(self, job_id: uuid.UUID | str) -> str:
        """The Pub/Sub channel (not a key) told when the job ends."""
        return f"{self._ended_prefix}{job_id}"


class _BlockingConnection(Protocol):
    """The part of a redis-py connection that ``wait_for_work`` drives by hand."""

    def send_command(self, *args: object) -> None: ...

    def read_response(self) -> object: ...

    def disconnect(self) -> None: ...


# -- encoding and decoding ------------------------------------------------------


def _num(value: float) -> str:
    return repr(float(value))


def _dump(value: object) -> str:
    # ASCII only: a lone surrogate ("\ud800" is valid JSON) cannot be UTF-8 encoded.
    return json.dumps(value, separators=(",", ":"))


def _encode_job(job: Job) -> list[str]:
    """The job as a flat ``field, value, ...`` list for HSET (``None`` left out)."""
    fields: dict[str, str | None] = {
        "n": job.name,
        "s": job.status.value,
        "m": str(job.max_retries),
        "a": str(job.retry_count) if job.retry_count else None,
        "c": _num(job.created_at),
        "u": _num(job.last_updated_at),
        "b": None if job.started_at is None else _num(job.started_at),
        "e": None if job.completed_at is None else _num(job.completed_at),
        "d": None if job.due_at is None else _num(job.due_at),
        "p": None if job.payload is None else _dump(job.payload),
        "h": _dump(job.headers) if job.headers else None,
        "rp": _dump(job.route_params) if job.route_params else None,
        "qp": _dump(job.query_params) if job.query_params else None,
        "o": job.owner,
        "r": None if job.result is None else _dump(job.result),
        "x": None if job.error is None else _dump_error(job.error),
        "g": None if job.progress is None else _dump_progress(job.progress),
        "k": "1" if job.cancel_requested else None,
        "hb": str(job.handbacks) if job.handbacks else None,
    }
    return [
        item
        for key, value in fields.items()
        if value is not None
        for item in (key, value)
    ]


def _dump_error(error: ErrorInfo) -> str:
    return _dump([error.type, error.message, error.stack_trace])


def _dump_progress(progress: Progress) -> str:
    return _dump([progress.fraction, progress.message])


def _plain(value: object) -> _Reply:
    """A raw script reply with bytes decoded, checked to be what scripts return."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str | int) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    raise StoreError(f"Unexpected reply from Redis: {value!r}")


def _list(value: _Reply) -> list[_Reply]:
    if not isinstance(value, list):
        raise StoreError(f"Expected an array from Redis, got {value!r}")
    return value


def _str(value: _Reply) -> str:
    if not isinstance(value, str):
        raise StoreError(f"Expected a string from Redis, got {value!r}")
    return value


def _int(value: _Reply) -> int:
    if not isinstance(value, int):
        raise StoreError(f"Expected an integer from Redis, got {value!r}")
    return value


def _opt_float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _decode_job(job_id: str, flat: _Reply) -> Job:
    """The one decoder: a job hash (``HGETALL``-style flat array) into a ``Job``."""
    items = _list(flat)
    f = {_str(items[i]): _str(items[i + 1]) for i in range(0, len(items), 2)}
    error = progress = None
    if "x" in f:
        kind, message, stack_trace = json.loads(f["x"])
        error = ErrorInfo(type=kind, message=message, stack_trace=stack_trace)
    if "g" in f:
        fraction, note = json.loads(f["g"])
        progress = Progress(fraction=fraction, message=note)
    return Job(
        id=uuid.UUID(job_id),
        name=f["n"],
        status=JobStatus(f["s"]),
        max_retries=int(f["m"]),
        created_at=float(f["c"]),
        last_updated_at=float(f["u"]),
        retry_count=int(f.get("a", "0")),
        started_at=_opt_float(f.get("b")),
        completed_at=_opt_float(f.get("e")),
        due_at=_opt_float(f.get("d")),
        payload=json.loads(f["p"]) if "p" in f else None,
        headers=json.loads(f["h"]) if "h" in f else {},
        route_params=json.loads(f["rp"]) if "rp" in f else {},
        query_params=json.loads(f["qp"]) if "qp" in f else {},
        owner=f.get("o"),
        result=json.loads(f["r"]) if "r" in f else None,
        error=error,
        progress=progress,
        cancel_requested="k" in f,
        handbacks=int(f.get("hb", "0")),
    )


def _decode_claims(items: Sequence[_Reply], lease_until: float) -> list[Claim]:
    """``id, token, fields`` triples (claim/recover replies) into claims."""
    return [
        Claim(
            job=_decode_job(_str(items[i]), items[i + 2]),
            token=_str(items[i + 1]),
            lease_until=lease_until,
        )
        for i in range(0, len(items), 3)
    ]


def _ttl_seconds(ttl: float) -> str:
    """A finished job's relative EXPIRE: whole seconds, at least 1."""
    return str(max(1, math.ceil(ttl)))


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
    url: str, scheme: str, default_port: int
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
        {
            "socket_connect_timeout": _CONNECT_TIMEOUT,
            **options,
        },
    )


def _redact(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    if ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return str(parts._replace(netloc=f"{user}:***{at}{hostlist}").geturl())


def _cluster_connector(url: str) -> tuple[Callable[[], _Client], str]:
    """A ``redis+cluster://`` URL's client factory (it connects when called), and
    the URL's name with any password redacted.

    :raises ConfigurationError: the URL is malformed or names a database.
    """
    nodes, path, options = _split_url(url, _CLUSTER_SCHEME, 6379)
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


def _sentinel_client(url: str) -> tuple[_Client, Callable[[], None]]:
    """The master's client for a ``redis+sentinel://`` URL (nothing connects yet),
    and a function that closes the connections to the sentinels.

    :raises ConfigurationError: the URL is malformed or names no service.
    """
    nodes, service, options = _split_url(url, _SENTINEL_SCHEME, 26379)
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


# -- the store --------------------------------------------------------------------


class RedisStore:
    """Keeps jobs in Redis, shared by every process and host that uses the prefix.

    :param client: a ``redis.Redis`` client (one server, or the master through
        Sentinel: ``Sentinel(...).master_for(...)``) or a
        ``redis.cluster.RedisCluster``; the store never closes it.
    :param prefix: the key namespace (``ASYNC_ENDPOINTS_KEY_PREFIX``); it becomes the
        ``{prefix}`` hash tag, so it may not contain braces.
    :raises ConfigurationError: the prefix is empty or contains braces.
    """

    def __init__(self, client: _Client, *, prefix: str = "async_endpoints") -> None:
        self._setup(prefix, _describe_client(client))
        self._bind(client)

    def _setup(self, prefix: str, target: str) -> None:
        self._keys = _Keys(prefix)
        self._prefix = prefix
        self._target = target
        self._client: _Client | None = None
        self._scripts: dict[_ScriptName, Script] = {}
        self._connect: Callable[[], _Client] | None = None
        self._connect_lock = threading.Lock()
        self._closers: list[Callable[[], None]] = []
        self._next_due: float | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._blocked: set[_BlockingConnection] = set()
        self._cancel_lock = threading.Lock()
        self._cancel_pubsub: Any = None
        self._cancel_renew_at = 0.0

    def _bind(self, client: _Client) -> _Client:
        self._scripts = {
            name: client.register_script(_script_source(name)) for name in _SCRIPT_NAMES
        }
        self._client = client
        return client

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "async_endpoints") -> RedisStore:
        """A store on a client it creates (and closes in :meth:`close`).

        No server is contacted until the store is used.

        :param url: ``redis://``, ``rediss://`` or ``unix://`` (one server),
            ``redis+sentinel://host:port,host:port/service_name`` (the master that
            the sentinels name) or ``redis+cluster://host:port,host:port`` (a
            Cluster, found through any of these nodes). Credentials and redis-py's
            connection options (``?socket_timeout=5``) may be given as in a
            ``redis://`` URL.
        :param prefix: the key namespace, as for the constructor.
        :raises ConfigurationError: the URL is not a valid Redis URL.
        """
        if not url.startswith(_SCHEMES):
            raise ConfigurationError(
                f"{_redact(url)!r} is not a Redis URL: use redis://, rediss://, "
                f"unix://, {_CLUSTER_SCHEME} or {_SENTINEL_SCHEME}."
            )
        store = cls.__new__(cls)
        if url.startswith(_CLUSTER_SCHEME):
            connect, target = _cluster_connector(url)
            store._setup(prefix, target)
            store._connect = connect
            return store
        close_more: Callable[[], None] | None = None
        if url.startswith(_SENTINEL_SCHEME):
            client, close_more = _sentinel_client(url)
        else:
            try:
                client = redis.Redis.from_url(
                    url, socket_connect_timeout=_CONNECT_TIMEOUT
                )
            except ValueError as exc:
                raise ConfigurationError(
                    f"Invalid Redis URL {_redact(url)!r}: {exc}"
                ) from exc
        try:
            store._setup(prefix, _describe_client(client))
            store._bind(client)
        except BaseException:
            client.close()
            raise
        store._closers.append(client.close)
        if close_more is not None:
            store._closers.append(close_more)
        return store

    def __repr__(self) -> str:
        return f"<RedisStore {self._target} prefix={self._prefix!r}>"

    # -- plumbing ------------------------------------------------------------------

    def _redis(self) -> _Client:
        """The client; a Cluster client a URL describes is made on first use."""
        client = self._client
        if client is not None:
            return client
        with self._connect_lock:
            if self._client is not None:
                return self._client
            if self._connect is None:  # pragma: no cover - set by from_url
                raise StoreError("This RedisStore has no client.")
            with self._translate_errors():
                client = self._bind(self._connect())
            self._closers.append(client.close)
            return client

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        """Turn redis-py's infrastructure errors into the library's store errors."""
        try:
            yield
        except (
            redis.ConnectionError,
            redis.TimeoutError,
            # A Cluster that is down, resharding, or that no node of can be reached.
            redis.exceptions.ClusterDownError,
            redis.exceptions.TryAgainError,
            redis.exceptions.RedisClusterException,
            # A master demoted to replica by a failover (READONLY).
            redis.exceptions.ReadOnlyError,
        ) as exc:
            raise self._unavailable(exc) from exc
        except redis.RedisError as exc:
            if str(exc).startswith("NOREPLICAS"):  # min-replicas-to-write unmet
                raise self._unavailable(exc) from exc
            raise StoreError(f"Redis at {self._target} failed: {exc}") from exc

    def _unavailable(self, exc: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"Redis at {self._target} is unavailable ({exc}). Check that the "
            "server is running and that ASYNC_ENDPOINTS_STORE_URL points at it."
        )

    def _call(
        self, name: _ScriptName, keys: Sequence[str], args: Sequence[str]
    ) -> _Reply:
        with self._translate_errors():
            self._redis()
            script: Script = self._scripts[name]
            reply: object = script(keys=list(keys), args=list(args))
        return _plain(reply)

    # -- JobStore --------------------------------------------------------------------

    def submit(
        self,
        job: Job,
        *,
        max_queue_size: int,
        idempotency: Idempotency | None = None,
        now: float,
    ) -> Job:
        """Store ``job`` as Queued, due at ``now``, and wake one idle worker.

        :param job: the new job.
        :param max_queue_size: how many jobs may wait; 0 means no limit.
        :param idempotency: a key whose live job is returned instead.
        :param now: epoch seconds.
        :returns: the stored job, or the one the idempotency key made.
        :raises QueueFullError: ``max_queue_size`` jobs already wait.
        :raises IdempotencyConflictError: the key was used with another fingerprint.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        stored = dataclasses.replace(
            job, status=JobStatus.QUEUED, due_at=now, last_updated_at=now
        )
        keys = [self._keys.job(job.id), self._keys.ready, self._keys.wake]
        record = ttl_ms = ""
        if idempotency is not None:
            keys += [self._keys.idem(idempotency.key), self._keys.job_prefix]
            record = f"{job.id}:{idempotency.fingerprint}"
            ttl_ms = str(max(1, math.ceil(idempotency.ttl * 1000)))
        args = [str(max_queue_size), _num(now), str(job.id), record, ttl_ms]
        reply = _list(self._call("submit", keys, args + _encode_job(stored)))
        code = _int(reply[0])
        if code == -1:
            raise QueueFullError(
                f"The queue is full ({max_queue_size} jobs wait); try again later.",
                retry_after=1.0,
            )
        if code == -2:
            raise IdempotencyConflictError(
                "This Idempotency-Key was already used with a different request; "
                "send a new key for a new request."
            )
        if code == 1:
            return _decode_job(_str(reply[1]), reply[2])
        return stored

    def find_idempotent(self, idempotency: Idempotency, *, now: float) -> Job | None:
        """The live job that ``idempotency.key`` made, or ``None``.

        A read, not a transition: the key, then the job it names (a job that
        expired in between reads as no job). Redis expires both keys itself, so
        ``now`` is not consulted.

        :raises IdempotencyConflictError: the key was used with another fingerprint.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            raw: object = self._redis().get(self._keys.idem(idempotency.key))
        record = _plain(raw)
        if record is None:
            return None
        record = _str(record)
        job = self.get(uuid.UUID(record[:36]), now=now)
        if job is not None and record[37:] != idempotency.fingerprint:
            raise IdempotencyConflictError(
                "This Idempotency-Key was already used with a different request; "
                "send a new key for a new request."
            )
        return job

    def get(self, job_id: uuid.UUID, *, now: float) -> Job | None:
        """The job with this id, or ``None`` if unknown or expired.

        Redis expires finished jobs itself, so ``now`` is not consulted.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            raw: object = self._redis().hgetall(self._keys.job(job_id))
        if not isinstance(raw, Mapping):
            raise StoreError(f"Expected a hash from Redis, got {raw!r}")
        if not raw:
            return None
        flat = _plain([item for pair in raw.items() for item in pair])
        return _decode_job(str(job_id), flat)

    def claim(self, owner: str, *, limit: int, lease: float, now: float) -> list[Claim]:
        """Lease up to ``limit`` due jobs to ``owner``, earliest due first.

        Also remembers when the earliest job left waiting falls due, so that
        :meth:`wait_for_work` sleeps no longer than that.

        :param owner: the worker's name, kept on the job while it runs.
        :param limit: the most jobs to take.
        :param lease: seconds each lease lasts unless renewed.
        :param now: epoch seconds.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if limit <= 0:
            return []
        keys, args = self._claim_call(owner, limit, now + lease, now)
        return self._claimed(self._call("claim", keys, args), now + lease)

    def _claim_call(
        self, owner: str, limit: int, lease_until: float, now: float
    ) -> tuple[list[str], list[str]]:
        args = [_num(now), str(limit), _num(lease_until), uuid.uuid4().hex, owner]
        return [self._keys.ready, self._keys.claimed, self._keys.job_prefix], args

    def _claimed(self, raw: _Reply, lease_until: float) -> list[Claim]:
        reply = _list(raw)
        next_due = _str(reply[0])
        self._next_due = float(next_due) if next_due else None
        return _decode_claims(reply[1:], lease_until)

    def heartbeat(
        self, claims: Sequence[Claim], *, lease: float, now: float
    ) -> HeartbeatResult:
        """Renew, in one step, the leases of ``claims`` still held.

        :param claims: the claims the worker believes it holds.
        :param lease: seconds from ``now`` the renewed leases last.
        :param now: epoch seconds.
        :returns: which claims are still held, and which of those were canceled.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if not claims:
            return HeartbeatResult(held=frozenset())
        keys = [self._keys.claimed] + [self._keys.job(c.job_id) for c in claims]
        args = [_num(now + lease)]
        for c in claims:
            args += [str(c.job_id), c.token]
        codes = _list(self._call("heartbeat", keys, args))
        held = {c.job_id for c, code in zip(claims, codes, strict=True) if code}
        canceling = {
            c.job_id for c, code in zip(claims, codes, strict=True) if code == 2
        }
        return HeartbeatResult(
            held=frozenset(held), cancel_requested=frozenset(canceling)
        )

    def complete(
        self, claim: Claim, result: JSONValue, *, ttl: float, now: float
    ) -> bool:
        """Mark the job Completed with ``result`` (Canceled if cancel was asked).

        :param claim: the worker's claim; its token must still be current.
        :param result: the handler's JSON result.
        :param ttl: seconds the finished job is kept.
        :param now: epoch seconds.
        :returns: whether the claim was still held (and the job finished).
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        keys, args = self._complete_call(claim, result, ttl, now)
        return _int(self._call("complete", keys, args)) == 1

    def _complete_call(
        self, claim: Claim, result: JSONValue, ttl: float, now: float
    ) -> tuple[list[str], list[str]]:
        keys = [self._keys.job(claim.job_id), self._keys.ready, self._keys.claimed]
        encoded = "" if result is None else _dump(result)
        args = [str(claim.job_id), claim.token, _num(now), encoded, _ttl_seconds(ttl)]
        return keys, [*args, self._keys.ended(claim.job_id)]

    def complete_and_claim(
        self,
        claim: Claim,
        result: JSONValue,
        *,
        ttl: float,
        owner: str,
        limit: int,
        lease: float,
        now: float,
    ) -> tuple[bool, list[Claim]]:
        """:meth:`complete`, then :meth:`claim`, in one round trip (a pipeline of
        the two scripts; each is atomic, the pair need not be).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if limit <= 0:
            return self.complete(claim, result, ttl=ttl, now=now), []
        with self._translate_errors():
            client = self._redis()
        if isinstance(client, redis.cluster.RedisCluster):
            done = self.complete(claim, result, ttl=ttl, now=now)
            return done, self.claim(owner, limit=limit, lease=lease, now=now)
        complete_keys, complete_args = self._complete_call(claim, result, ttl, now)
        claim_keys, claim_args = self._claim_call(owner, limit, now + lease, now)
        calls: list[tuple[_ScriptName, list[str], list[str]]] = [
            ("complete", complete_keys, complete_args),
            ("claim", claim_keys, claim_args),
        ]
        completed, claimed = self._pipeline(client, calls)
        return _int(completed) == 1, self._claimed(claimed, now + lease)

    def _pipeline(
        self, client: _Client, calls: Sequence[tuple[_ScriptName, list[str], list[str]]]
    ) -> list[_Reply]:
        """Several scripts in one round trip.

        A script the server does not have (``NOSCRIPT``: first use, a flush, a
        failover) is run again on its own, which loads it; the others' replies
        stand, since each script is atomic and already ran.
        """
        with self._translate_errors():
            pipe = client.pipeline(transaction=False)
            for name, keys, args in calls:
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
            raw: list[object] = pipe.execute(raise_on_error=False)
        replies: list[_Reply] = []
        for (name, keys, args), reply in zip(calls, raw, strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                replies.append(self._call(name, keys, args))
                continue
            if isinstance(reply, Exception):
                with self._translate_errors():
                    raise reply
            replies.append(_plain(reply))
        return replies

    def fail(
        self,
        claim: Claim,
        error: ErrorInfo,
        *,
        retry_at: float | None,
        ttl: float,
        now: float,
    ) -> bool:
        """Record a failed attempt: Scheduled at ``retry_at``, or Failed if ``None``.

        A job whose cancellation was requested ends Canceled instead.

        :param claim: the worker's claim; its token must still be current.
        :param error: what went wrong.
        :param retry_at: epoch seconds of the next attempt, or ``None`` to give up.
        :param ttl: seconds a finished job is kept.
        :param now: epoch seconds.
        :returns: whether the claim was still held.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        keys = [
            self._keys.job(claim.job_id),
            self._keys.ready,
            self._keys.claimed,
            self._keys.wake,
        ]
        args = [
            str(claim.job_id),
            claim.token,
            _num(now),
            _dump_error(error),
            "" if retry_at is None else _num(retry_at),
            _ttl_seconds(ttl),
            self._keys.ended(claim.job_id),
        ]
        return _int(self._call("fail", keys, args)) == 1

    def report_progress(self, claim: Claim, progress: Progress, *, now: float) -> bool:
        """Record the running job's progress.

        :param claim: the worker's claim; its token must still be current.
        :param progress: the fraction done and an optional message.
        :param now: epoch seconds.
        :returns: whether the claim was still held.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        keys = [self._keys.job(claim.job_id)]
        args = [claim.token, _num(now), _dump_progress(progress)]
        return _int(self._call("report_progress", keys, args)) == 1

    def release(self, claims: Sequence[Claim], *, ttl: float, now: float) -> None:
        """Hand claimed jobs back as Queued, due at ``now``, counting no attempt
        (Canceled instead if their cancellation was requested).

        Claims no longer held are skipped.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if not claims:
            return
        keys = [self._keys.ready, self._keys.claimed, self._keys.wake]
        keys += [self._keys.job(c.job_id) for c in claims]
        args = [_num(now), _ttl_seconds(ttl), self._keys.ended("")]
        for c in claims:
            args += [str(c.job_id), c.token]
        self._call("release", keys, args)

    def cancel(self, job_id: uuid.UUID, *, ttl: float, now: float) -> Job:
        """Cancel a waiting job, or flag a running one; return the job.

        :param job_id: the job to cancel.
        :param ttl: seconds a canceled job is kept.
        :param now: epoch seconds.
        :raises JobNotFoundError: no such job.
        :raises JobFinishedError: the job is Completed or Failed.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        keys = [self._keys.job(job_id), self._keys.ready]
        args = [
            str(job_id),
            _num(now),
            _ttl_seconds(ttl),
            self._keys.ended(job_id),
            self._keys.cancels,
        ]
        reply = _list(self._call("cancel", keys, args))
        code = _int(reply[0])
        if code == -1:
            raise JobNotFoundError(f"No job with id '{job_id}'.")
        if code == -2:
            raise JobFinishedError(
                f"Job {job_id} has already ended ({_str(reply[1])})."
            )
        return _decode_job(str(job_id), reply[1])

    def recover_expired(
        self, owner: str, *, limit: int, lease: float, now: float
    ) -> list[Claim]:
        """Re-claim for ``owner`` up to ``limit`` jobs whose lease ended by ``now``.

        :param owner: the sweeping worker's name.
        :param limit: the most jobs to take.
        :param lease: seconds each new lease lasts.
        :param now: epoch seconds.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if limit <= 0:
            return []
        lease_until = now + lease
        args = [_num(now), str(limit), _num(lease_until), uuid.uuid4().hex, owner]
        keys = [self._keys.claimed, self._keys.job_prefix]
        reply = _list(self._call("recover_expired", keys, args))
        return _decode_claims(reply, lease_until)

    def retry(self, job_id: uuid.UUID, *, now: float) -> Job:
        """Put a Failed job back in the queue (Queued, due now, retry count 0).

        :raises JobNotFoundError: no such job.
        :raises JobFinishedError: the job is not Failed.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        keys = [self._keys.job(job_id), self._keys.ready, self._keys.wake]
        reply = _list(self._call("retry", keys, [str(job_id), _num(now)]))
        code = _int(reply[0])
        if code == -1:
            raise JobNotFoundError(f"No job with id '{job_id}'.")
        if code == -2:
            raise JobFinishedError(
                f"Only a Failed job can be retried; job {job_id} is {_str(reply[1])}."
            )
        return _decode_job(str(job_id), reply[1])

    def _job_ids(self) -> Iterator[str]:
        """Every job id of the prefix, by ``SCAN`` (on a Cluster, of the one node
        that holds the prefix's slot)."""
        client = self._redis()
        pattern = f"{self._keys.job_prefix}*"
        start = len(self._keys.job_prefix)
        found: Iterator[object]
        if isinstance(client, redis.cluster.RedisCluster):
            cluster: Any = client  # redis-py leaves get_node_from_key unannotated
            node = cluster.get_node_from_key(self._keys.ready)
            found = client.scan_iter(match=pattern, count=1000, target_nodes=node)
        else:
            found = client.scan_iter(match=pattern, count=1000)
        for key in found:
            yield _str(_plain(key))[start:]

    def _all_jobs(self) -> list[Job]:
        jobs: list[Job] = []
        with self._translate_errors():
            ids = list(self._job_ids())
            client = self._redis()
            for chunk in range(0, len(ids), 500):
                batch = ids[chunk : chunk + 500]
                pipe = client.pipeline(transaction=False)
                for job_id in batch:
                    pipe.hgetall(self._keys.job(job_id))
                replies: list[object] = pipe.execute()
                for job_id, raw in zip(batch, replies, strict=True):
                    if isinstance(raw, Mapping) and raw:
                        flat = _plain([item for pair in raw.items() for item in pair])
                        jobs.append(_decode_job(job_id, flat))
        return jobs

    def list_jobs(
        self, *, status: JobStatus | None, offset: int, limit: int, now: float
    ) -> list[Job]:
        """Jobs (of one status, or all), newest first, paged.

        Reads every job of the prefix (``SCAN``): an operator's tool, O(jobs).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        jobs = [j for j in self._all_jobs() if status in (None, j.status)]
        jobs.sort(key=lambda j: (j.created_at, str(j.id)), reverse=True)
        return jobs[offset : offset + limit]

    def purge(self, *, status: JobStatus, older_than: float, now: float) -> int:
        """Delete finished jobs of ``status`` that ended before ``older_than``.

        Candidates come from ``SCAN``; each is checked again atomically by
        ``purge.lua`` before it is deleted.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if not status.is_finished:
            raise ValueError(f"only finished jobs can be purged, not {status.value}")
        with self._translate_errors():
            ids = list(self._job_ids())
        deleted = 0
        for chunk in range(0, len(ids), 200):
            keys = [self._keys.job(i) for i in ids[chunk : chunk + 200]]
            deleted += _int(self._call("purge", keys, [status.value, _num(older_than)]))
        return deleted

    def register_worker(self, owner: str, *, ttl: float, now: float) -> None:
        """Record that worker ``owner`` is alive; forgotten ``ttl`` s after ``now``.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        self._call(
            "register_worker", [self._keys.workers], [owner, _num(now), _num(ttl)]
        )

    def unregister_worker(self, owner: str) -> None:
        """Forget worker ``owner`` at once (it stopped).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            self._redis().hdel(self._keys.workers, owner)

    def wait_for_cancels(self, timeout: float) -> list[uuid.UUID]:
        """Block up to ``timeout`` seconds for cancellations of running jobs;
        return their ids.

        Listens on the ``{P}:cancels`` channel through one subscription per store
        and process, made again every few seconds so that a connection that went
        silent (a black hole) is not kept. On a Cluster it only waits: there
        the heartbeats carry cancellations.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            client = self._redis()
        if isinstance(client, redis.cluster.RedisCluster):
            self._closed.wait(timeout)
            return []
        deadline = time.monotonic() + timeout
        with self._cancel_lock:
            pubsub = self._cancel_pubsub
            if pubsub is None or time.monotonic() > self._cancel_renew_at:
                if pubsub is not None:
                    pubsub.close()
                    self._cancel_pubsub = None
                plain: Any = client  # redis-py leaves pubsub() unannotated
                with self._translate_errors():
                    pubsub = plain.pubsub(ignore_subscribe_messages=True)
                    self._cancel_pubsub = pubsub
                    pubsub.subscribe(self._keys.cancels)
                self._cancel_renew_at = time.monotonic() + _RESUBSCRIBE
        ids: list[uuid.UUID] = []
        try:
            with self._translate_errors():
                while not self._closed.is_set():
                    remaining = deadline - time.monotonic()
                    message = pubsub.get_message(
                        timeout=max(0.0, remaining) if not ids else 0.0
                    )
                    if message is None:
                        if ids or remaining <= 0:
                            break
                        continue
                    data = _plain(message.get("data"))
                    if isinstance(data, str):
                        with contextlib.suppress(ValueError):
                            ids.append(uuid.UUID(data))
        except StoreUnavailableError:
            with self._cancel_lock:
                if self._cancel_pubsub is pubsub:
                    self._cancel_pubsub = None
            pubsub.close()
            raise
        return ids

    def stats(self, *, now: float) -> StoreStats:
        """Counts per status (by ``SCAN``), the oldest waiting job, live workers.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        counts = dict.fromkeys(JobStatus, 0)
        for job in self._all_jobs():
            counts[job.status] += 1
        with self._translate_errors():
            client = self._redis()
            first: object = client.zrange(self._keys.ready, 0, 0, withscores=True)
            workers: object = client.hgetall(self._keys.workers)
        oldest = None
        if isinstance(first, list) and first:
            oldest = float(first[0][1])
        alive: dict[str, float] = {}
        if isinstance(workers, Mapping):
            for name, seen in workers.items():
                alive[_str(_plain(name))] = float(_str(_plain(seen)))
        return StoreStats(counts=counts, oldest_waiting_at=oldest, workers=alive)

    def queue_size(self) -> int:
        """How many jobs wait (Queued + Scheduled).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            return int(self._redis().zcard(self._keys.ready))

    def wait_for_work(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds, or until new work may be due.

        Blocks in ``BLPOP`` on the wake-up list (pushed by submit, retry and
        release), no longer than until the earliest waiting job the last
        :meth:`claim` saw falls due. :meth:`close` cuts the wait short. On a
        Cluster it blocks on the node that holds the prefix's slot.

        :returns: ``False`` when the whole timeout passed with no wake-up and no
            known job falling due (claiming now would find nothing new).
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if self._closed.is_set():
            return True
        seconds = timeout
        next_due = self._next_due
        due_first = next_due is not None and next_due - time.time() <= timeout
        if due_first:
            assert next_due is not None
            self._next_due = None  # one wait uses it up: the claim after it renews it
            seconds = next_due - time.time()
        with self._translate_errors():
            pool = self._wake_pool()
            connection = self._checkout(pool)
        # A read may not outlast the connection's socket timeout (redis-py may set
        # one by default without listing it in the pool's kwargs); waking early is
        # allowed.
        socket_timeout = getattr(connection, "socket_timeout", None)
        if socket_timeout is None:
            socket_timeout = pool.connection_kwargs.get("socket_timeout")
        if socket_timeout:
            seconds = min(seconds, 0.8 * float(socket_timeout))
        seconds = max(seconds, _MIN_BLOCK)
        woken = True
        try:
            with self._lock:
                self._blocked.add(connection)
            if self._closed.is_set():
                return True
            with self._translate_errors():
                connection.send_command("BLPOP", self._keys.wake, seconds)
                try:
                    woken = connection.read_response() is not None or due_first
                except redis.exceptions.AskError:
                    # MOVED or ASK: the slot is moving to another Cluster node. The
                    # next command through the Cluster client learns where it went,
                    # and the next wait blocks there; pause so as not to spin.
                    self._closed.wait(min(seconds, _END_POLL))
        except Exception:
            connection.disconnect()
            if not self._closed.is_set():
                raise
        finally:
            with self._lock:
                self._blocked.discard(connection)
            pool.release(connection)
        return woken

    def _wake_pool(self) -> Any:
        """The connection pool of the server that holds the wake-up list."""
        client = self._redis()
        if isinstance(client, redis.cluster.RedisCluster):
            cluster: Any = client  # redis-py leaves these methods unannotated
            node = cluster.get_node_from_key(self._keys.wake)
            return cluster.get_redis_connection(node).connection_pool
        return client.connection_pool

    @staticmethod
    def _checkout(pool: Any) -> _BlockingConnection:
        """A connection of the client's pool, for one blocking BLPOP."""
        try:
            connection: _BlockingConnection = pool.get_connection()
        except TypeError:  # redis-py < 5.3 requires a command name
            connection = pool.get_connection("BLPOP")
        return connection

    def notify(self) -> None:
        """Push one wake-up token, for one waiter of :meth:`wait_for_work`.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            pipe = self._redis().pipeline(transaction=False)
            pipe.lpush(self._keys.wake, "1")
            pipe.ltrim(self._keys.wake, 0, 63)
            pipe.execute()

    def wait_for_end(self, job_id: uuid.UUID, timeout: float) -> None:
        """Block up to ``timeout`` seconds, or until the job has ended or is gone.

        Subscribes to the job's end channel (the scripts that end a job publish
        to it), then looks at the job once, so an end between the two is not
        missed. On a Cluster, where plain Pub/Sub is broadcast to every node, it
        looks at the job every 50 ms instead. :meth:`close` cuts the wait short.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        deadline = time.monotonic() + timeout
        with self._translate_errors():
            client = self._redis()
        if isinstance(client, redis.cluster.RedisCluster):
            self._poll_for_end(job_id, deadline)
            return
        plain: Any = client  # redis-py leaves pubsub() unannotated
        with self._translate_errors():
            pubsub = plain.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._keys.ended(job_id))
                job = self.get(job_id, now=time.time())
                while job is not None and not job.status.is_finished:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed.is_set():
                        return
                    message = pubsub.get_message(timeout=min(remaining, 1.0))
                    if message is not None:
                        return
            finally:
                pubsub.close()

    def _poll_for_end(self, job_id: uuid.UUID, deadline: float) -> None:
        while not self._closed.is_set():
            job = self.get(job_id, now=time.time())
            if job is None or job.status.is_finished:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._closed.wait(min(_END_POLL, remaining))

    def close(self) -> None:
        """Wake blocked waiters and, if :meth:`from_url` made the client, close it
        (and, for Sentinel, its connections to the sentinels).

        A client passed to the constructor stays open: it belongs to the caller.
        """
        with self._lock:
            self._closed.set()
            blocked = list(self._blocked)
        for connection in blocked:
            connection.disconnect()
        with self._cancel_lock:
            pubsub, self._cancel_pubsub = self._cancel_pubsub, None
        if pubsub is not None:
            pubsub.close()
        with self._connect_lock:
            closers, self._closers = self._closers, []
        for close in closers:
            close()

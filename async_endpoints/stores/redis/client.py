"""The connection half of ``RedisStore``: its client, error translation and
script calls."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Protocol,
    Self,
)

import redis
import redis.backoff
import redis.cluster
import redis.connection
import redis.exceptions
import redis.retry
import redis.sentinel

from async_endpoints.errors import (
    ConfigurationError,
    StoreError,
    StoreUnavailableError,
)
from async_endpoints.jobs import Job

if TYPE_CHECKING:
    from redis.commands.core import Script
from async_endpoints.stores.redis.codec import _decode_job, _plain, _Reply
from async_endpoints.stores.redis.connect import (
    _CLUSTER_SCHEME,
    _SCHEMES,
    _SENTINEL_SCHEME,
    _SOCKET_TIMEOUT,
    _Client,
    _cluster_connector,
    _describe_client,
    _redact,
    _sentinel_client,
    _socket_defaults,
)
from async_endpoints.stores.redis.keys import (
    _SCRIPT_NAMES,
    _Keys,
    _script_source,
    _ScriptName,
)

logger = logging.getLogger(__name__)


class _BlockingConnection(Protocol):
    """The part of a redis-py connection that ``wait_for_work`` drives by hand."""

    def send_command(self, *args: object) -> None: ...

    def pack_commands(self, commands: Sequence[Sequence[object]]) -> list[bytes]: ...

    def send_packed_command(self, command: list[bytes]) -> None: ...

    def read_response(self) -> object: ...

    def disconnect(self) -> None: ...

    def can_read(self, timeout: float | None = 0) -> bool: ...


class _Translated:
    """The context manager of :meth:`_Connection._translate_errors` (a plain
    class: a generator-based one costs a few microseconds per call)."""

    __slots__ = ("_store",)

    def __init__(self, store: _Connection) -> None:
        self._store = store

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            return
        if isinstance(
            exc,
            (
                redis.ConnectionError,
                redis.TimeoutError,
                # A Cluster down, resharding, or no node of which can be reached.
                redis.exceptions.ClusterDownError,
                redis.exceptions.TryAgainError,
                redis.exceptions.RedisClusterException,
                # Redirections and TRYAGAIN past their count (a slot being moved).
                redis.exceptions.ClusterError,
                # A master demoted to replica by a failover (READONLY).
                redis.exceptions.ReadOnlyError,
            ),
        ):
            raise self._store._unavailable(exc) from exc
        if isinstance(exc, redis.RedisError):
            if str(exc).startswith("NOREPLICAS"):  # min-replicas-to-write unmet
                raise self._store._unavailable(exc) from exc
            raise StoreError(f"Redis at {self._store._target} failed: {exc}") from exc


class _Grouped:
    """One thread's scripts waiting to be sent with other threads' (group
    commit: see :meth:`_Connection._grouped`)."""

    __slots__ = ("calls", "done", "error", "lead", "replies", "sent")

    def __init__(self, calls: Sequence[tuple[_ScriptName, list[str], list[str]]]):
        self.calls = calls
        self.done = threading.Lock()
        self.done.acquire()  # released when its replies are in, or it leads
        self.lead = False
        self.replies: list[object] = []
        self.error: BaseException | None = None
        self.sent = False  # taken into a pipeline by a leader


class _Connection:
    """A Redis client bound to one key prefix, with the scripts registered."""

    def __init__(self, client: _Client, *, prefix: str = "async_endpoints") -> None:
        self._setup(prefix, _describe_client(client))
        self._bind(client)
        self._warn_without_timeout(client)

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
        self._offset: float | None = None
        self._wall_offset = 0.0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._blocked: set[_BlockingConnection] = set()
        self._stopped_workers: set[str] = set()  # see stop_waiting
        self._group_lock = threading.Lock()
        self._group: list[_Grouped] = []  # waiting for the pipeline in flight
        self._group_busy = False  # a pipeline of grouped calls is in flight
        self._group_pid = os.getpid()  # whose calls these are (see _grouped)
        self._cancel_lock = threading.Lock()
        self._cancel_pubsub: Any = None
        self._translated = _Translated(self)
        # The cancel listener's health check: when its next PING is due, and
        # the deadline of the pong it waits for (None: none outstanding).
        self._cancel_ping_at = 0.0
        self._cancel_pong_by: float | None = None
        self._events_pubsub: Any = None
        self._events_renew_at = 0.0
        self._events_pid = 0

    def _warn_without_timeout(self, client: _Client) -> None:
        """A client passed in without ``socket_timeout`` can wait forever on a
        connection to a host that vanished without a reset: say so."""
        if isinstance(client, redis.cluster.RedisCluster):
            cluster: Any = client  # redis-py leaves these unannotated
            kwargs = cluster.nodes_manager.connection_kwargs
        else:
            kwargs = client.connection_pool.connection_kwargs
        if kwargs.get("socket_timeout") is None:
            logger.warning(
                "the Redis client passed to async-endpoints (%s) has no "
                "socket_timeout: a connection to a host that vanished without a "
                "reset would block its caller for good. Pass socket_timeout=5 (and "
                "socket_keepalive=True) when you make it, or give a URL instead.",
                self._target,
            )

    def _bind(self, client: _Client) -> _Client:
        self._scripts = {
            name: client.register_script(_script_source(name)) for name in _SCRIPT_NAMES
        }
        self._client = client
        return client

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "async_endpoints",
        socket_timeout: float = _SOCKET_TIMEOUT,
    ) -> Self:
        """A store on a client it creates (and closes in :meth:`close`).

        No server is contacted until the store is used.

        :param url: ``redis://``, ``rediss://`` or ``unix://`` (one server),
            ``redis+sentinel://host:port,host:port/service_name`` (the master that
            the sentinels name) or ``redis+cluster://host:port,host:port`` (a
            Cluster, found through any of these nodes). Credentials and redis-py's
            connection options (``?socket_timeout=5``) may be given as in a
            ``redis://`` URL.
        :param prefix: the key namespace, as for the constructor.
        :param socket_timeout: the longest any read waits (unless the URL sets
            ``socket_timeout``): keep it well under the lease, so that a
            connection to a vanished host is dropped while the lease lasts.
        :raises ConfigurationError: the URL is not a valid Redis URL.
        """
        if not url.startswith(_SCHEMES):
            raise ConfigurationError(
                f"{_redact(url)!r} is not a Redis URL: use redis://, rediss://, "
                f"unix://, {_CLUSTER_SCHEME} or {_SENTINEL_SCHEME}."
            )
        store = cls.__new__(cls)
        if url.startswith(_CLUSTER_SCHEME):
            connect, target = _cluster_connector(url, socket_timeout)
            store._setup(prefix, target)
            store._connect = connect
            return store
        close_more: Callable[[], None] | None = None
        if url.startswith(_SENTINEL_SCHEME):
            client, close_more = _sentinel_client(url, socket_timeout)
        else:
            try:
                # Options the URL names win over these defaults.
                client = redis.Redis.from_url(url, **_socket_defaults(socket_timeout))
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

    def _declared(self, *keys: str) -> list[str]:
        """The ``KEYS`` of a script that names its keys from ``{P}:`` (its
        ``KEYS[1]``). On a Cluster, also ``keys``, the ones it touches: while the
        prefix's slot moves, Redis answers ASK or TRYAGAIN by the declared keys,
        and ``{P}:`` alone (never a key) would send the script to the importing
        node, to run there without the data."""
        if isinstance(self._redis(), redis.cluster.RedisCluster):
            return [self._keys.base, *keys]
        return [self._keys.base]

    def _translate_errors(self) -> _Translated:
        """Turn redis-py's infrastructure errors into the library's store errors
        (a context manager: one per store, reused by every call)."""
        return self._translated

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

    def _pipeline(
        self,
        client: _Client,
        calls: Sequence[tuple[_ScriptName, list[str], list[str]]],
        *,
        atomic: bool = False,
    ) -> list[_Reply]:
        """Several scripts in one round trip (``atomic``: in one MULTI/EXEC, so
        that no other command runs between them).

        A script the server does not have (``NOSCRIPT``: first use, a flush, a
        failover) is run again on its own, which loads it; the others' replies
        stand, since each script is atomic and already ran.
        """
        with self._translate_errors():
            pipe = client.pipeline(transaction=atomic)
            for name, keys, args in calls:
                pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
            raw: list[object] = pipe.execute(raise_on_error=False)
        return self._replies(calls, raw)

    def _replies(
        self,
        calls: Sequence[tuple[_ScriptName, list[str], list[str]]],
        raw: Sequence[object],
    ) -> list[_Reply]:
        """The replies of scripts sent in one pipeline: a script the server did
        not have (``NOSCRIPT``) is run again on its own, which loads it; the
        first error is raised, translated."""
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

    def _grouped(
        self, calls: Sequence[tuple[_ScriptName, list[str], list[str]]]
    ) -> list[_Reply]:
        """``calls`` (scripts run one after the other, each atomic) in one round
        trip, shared with the calls other threads of this process make
        meanwhile: while one pipeline is in flight, the calls that come in wait
        and then leave together in the next one, sent by the first of them
        (group commit). A thread alone sends at once. Every script here is
        safe to send again, so a pipeline whose reply was lost is retried as
        its calls would be one by one; each caller gets its own replies and
        errors. Used by the worker's calls (claims and completions): submits
        are sent on their own, as grouping them cost the web process more
        CPU than it saved (``bench/README.md``).

        On a Cluster, the calls are sent one by one.
        """
        with self._translate_errors():
            client = self._redis()
        if isinstance(client, redis.cluster.RedisCluster):
            return [self._call(name, keys, args) for name, keys, args in calls]
        if self._group_pid != os.getpid():
            self._reset_group()  # forked: what was in flight belongs to the parent
        mine = _Grouped(calls)
        with self._group_lock:
            self._group.append(mine)
            lead = not self._group_busy
            self._group_busy = True
        try:
            if not lead:
                mine.done.acquire()
            if mine.lead or lead:
                self._send_group(client, mine)
        except BaseException:
            self._abandon(mine, lead)
            raise
        if mine.error is not None:
            raise mine.error
        return self._replies(calls, mine.replies)

    def _reset_group(self) -> None:
        self._group_lock = threading.Lock()
        self._group = []
        self._group_busy = False
        self._group_pid = os.getpid()

    def _abandon(self, mine: _Grouped, led: bool) -> None:
        """A call given up before its pipeline went out (its thread was
        interrupted): it leaves the queue, and the turn to send, if it had
        it (``led``: it came first), passes on."""
        with self._group_lock:
            if mine.sent:
                return  # its pipeline's leader passed the turn on
            if mine in self._group:
                self._group.remove(mine)
            if led or mine.lead:
                if self._group:
                    self._group[0].lead = True
                    self._group[0].done.release()
                else:
                    self._group_busy = False

    def _send_group(self, client: _Client, mine: _Grouped) -> None:
        """Send every grouped call waiting, as the group's leader (``mine`` is
        the leader's own); then make the first call that came in meanwhile the
        next leader."""
        group: list[_Grouped] = []
        try:
            with self._group_lock:
                group, self._group = self._group, []
                for grouped in group:
                    grouped.sent = True
            sent = [call for grouped in group for call in grouped.calls]
            with self._translate_errors():
                if len(sent) == 1:
                    name, keys, args = sent[0]
                    raw: list[object] = [
                        self._scripts[name](keys=list(keys), args=list(args))
                    ]
                else:
                    pipe = client.pipeline(transaction=False)
                    for name, keys, args in sent:
                        pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
                    raw = pipe.execute(raise_on_error=False)
            at = 0
            for grouped in group:
                grouped.replies = raw[at : at + len(grouped.calls)]
                at += len(grouped.calls)
        except BaseException as exc:
            # An interrupt of the leader's thread (KeyboardInterrupt) is its own:
            # the others learn that their calls may or may not have run.
            unknown = exc
            if not isinstance(exc, Exception):
                unknown = StoreUnavailableError(
                    "The call went out with another thread's, which was "
                    "interrupted before the reply was read; it may have run."
                )
                unknown.__cause__ = exc
            for grouped in group:
                grouped.error = exc if grouped is mine else unknown
        finally:
            with self._group_lock:
                if self._group:
                    self._group[0].lead = True
                    self._group[0].done.release()
                else:
                    self._group_busy = False
            for grouped in group:
                if not grouped.lead:
                    grouped.done.release()

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
            _close_quietly(pubsub)
        with self._cancel_lock:
            events, self._events_pubsub = self._events_pubsub, None
        if events is not None:
            _close_quietly(events)
        with self._connect_lock:
            closers, self._closers = self._closers, []
        for close in closers:
            close()


def _close_quietly(pubsub: Any) -> None:
    """Close a redis-py ``PubSub`` that another thread may be closing or reading
    at the same time (redis-py's ``close`` is not thread-safe): a second close
    is a no-op, not an error."""
    try:
        pubsub.close()
    except (AttributeError, redis.RedisError, OSError) as exc:
        logger.debug("closing a subscription: %s", exc)

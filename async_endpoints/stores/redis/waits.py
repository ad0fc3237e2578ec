"""The blocking half of ``RedisStore``: wake-ups, long polls, cancel notices.

Every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import (
    Any,
    Final,
)

import redis
import redis.backoff
import redis.cluster
import redis.connection
import redis.exceptions
import redis.retry
import redis.sentinel

from async_endpoints.errors import (
    StoreUnavailableError,
)
from async_endpoints.jobs import Job, JobStatus
from async_endpoints.stores.redis.client import (
    _BlockingConnection,
    _close_quietly,
    _Connection,
)
from async_endpoints.stores.redis.codec import _decode_job, _plain

logger = logging.getLogger(__name__)

_ENDED: Final = frozenset(s.value for s in JobStatus if s.is_finished)
_MIN_BLOCK: Final = 0.01
"""Shortest BLPOP, in seconds: 0 would mean "block forever"."""
_CANCEL_PING: Final = 30.0
"""How often the cancel listener PINGs through its subscription, in seconds: a
subscription whose pong does not come within ``_REPLY_GRACE`` went silent
without a reset (a black hole) and is made anew. Cancellations missed meanwhile
still arrive with the next heartbeat (each lists the canceled jobs it holds)."""
_DUE_BLOCK: Final = 0.001
"""Shortest BLPOP before a known job falls due, in seconds."""
_REPLY_GRACE: Final = 5.0
"""How much longer than a BLPOP's own timeout its reply may take, in seconds."""
_EVENTS_RENEW: Final = 30.0
"""How often the events subscription is made anew, in seconds (the new one
before the old one is let go, so that no announcement falls between)."""
_PONG_WAIT: Final = 1.0
"""How long an old events subscription may take to answer a PING before it is
judged dead (and every followed job re-read), in seconds."""
_STOPPED_MS: Final = 60_000
"""How long a stopped worker's marker and wake-up list are kept, in ms: longer
than any of its waits."""
_END_POLL: Final = 0.05
"""How often ``wait_for_end`` looks at the job, in seconds."""


class _BeforeUnloaded:
    """The reply of a wait's ``then``, when its ``before`` script was not
    loaded (NOSCRIPT): the caller runs that one again on its own."""

    __slots__ = ("reply",)

    def __init__(self, reply: object) -> None:
        self.reply = reply


class _Waits(_Connection):
    """Blocking waits on the store's Redis."""

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
        return self._wait_for_work(timeout)[0]

    def _wait_for_work(
        self,
        timeout: float,
        then: tuple[Any, ...] | None = None,
        worker: str | None = None,
        before: tuple[Any, ...] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> tuple[bool, object]:
        """:meth:`wait_for_work`; with ``then``, a command sent in the same
        round trip behind the ``BLPOP`` (Redis runs it when the wait ends);
        with ``worker``, the wait also ends when that worker stops
        (:meth:`stop_waiting`); ``before``, a command sent in the same write
        ahead of the ``BLPOP`` (its reply is read and dropped; when it was a
        script Redis did not have, ``then``'s reply comes wrapped in a
        ``_BeforeUnloaded``); ``on_sent`` is called once the write
        is out (or when none was made), before the wait.

        :returns: whether woken, and ``then``'s reply (``None`` without it, or
            when the store was closed before the wait began); an error reply
            is returned, not raised.
        """
        if self._closed.is_set():
            if on_sent is not None:
                on_sent()
            return True, None
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
        # A job falling due in a moment is waited for to the millisecond (BLPOP
        # takes fractions); an idle wait no shorter than _MIN_BLOCK.
        seconds = max(seconds, _DUE_BLOCK if due_first else _MIN_BLOCK)
        woken = True
        reply: object = None
        before_unloaded = False
        try:
            with self._lock:
                self._blocked.add(connection)
            if self._closed.is_set():
                return True, None
            # The worker's own list first: a stop does not take a wake-up meant
            # for a job.
            lists = [self._keys.wake]
            if worker is not None:
                lists.insert(0, self._keys.stop_wake(worker))
            with self._translate_errors():
                if then is None and before is None:
                    connection.send_command("BLPOP", *lists, seconds)
                else:
                    commands: list[tuple[Any, ...]] = [("BLPOP", *lists, seconds)]
                    if before is not None:
                        commands.insert(0, before)
                    if then is not None:
                        commands.append(then)
                    connection.send_packed_command(connection.pack_commands(commands))
                if on_sent is not None:
                    sent: Callable[[], None] = on_sent
                    on_sent = None
                    sent()
                if before is not None:
                    if not connection.can_read(timeout=_REPLY_GRACE):
                        raise redis.TimeoutError(
                            f"no reply within {_REPLY_GRACE:.1f} s"
                        )
                    try:
                        connection.read_response()
                    except redis.exceptions.NoScriptError:
                        before_unloaded = True
                # Our own bound, whatever the client's socket timeout (a client
                # passed in may have none): a black hole does not hold us.
                if not connection.can_read(timeout=seconds + _REPLY_GRACE):
                    raise redis.TimeoutError(
                        f"no reply to BLPOP within {seconds + _REPLY_GRACE:.1f} s"
                    )
                try:
                    woken = connection.read_response() is not None or due_first
                    if then is not None:
                        try:
                            reply = connection.read_response()
                        except redis.exceptions.ResponseError as exc:
                            reply = exc  # the caller decides (NOSCRIPT: load it)
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
            if on_sent is not None:  # the write was never made
                on_sent()
        if before_unloaded:
            reply = _BeforeUnloaded(reply)
        return woken, reply

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

    def stop_waiting(self, worker: str) -> None:
        """End ``worker``'s wait at once and make the claim sent behind it
        (and any later :meth:`wait_and_claim` of it) take nothing.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._lock:
            self._stopped_workers.add(worker)
        with self._translate_errors():
            pipe = self._redis().pipeline(transaction=False)
            pipe.set(self._keys.stopped(worker), "1", px=_STOPPED_MS)
            pipe.lpush(self._keys.stop_wake(worker), "1")
            pipe.pexpire(self._keys.stop_wake(worker), _STOPPED_MS)
            pipe.execute()

    def wait_for_end(self, job_id: uuid.UUID, timeout: float) -> None:
        """Block up to ``timeout`` seconds, or until the job has ended or is gone.

        Subscribes to the job's end channel, then marks the job as awaited and
        reads its status (``await.lua``): the scripts that end a job publish to
        that channel only for an awaited job, and an end between the two steps
        is seen by the read. On a Cluster, where plain Pub/Sub is broadcast to
        every node, it looks at the job every 50 ms instead. :meth:`close` cuts
        the wait short.

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
                status = self._call("await", [self._keys.job(job_id)], [])
                while isinstance(status, str) and status not in _ENDED:
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

    def wait_for_cancels(self, timeout: float) -> list[uuid.UUID]:
        """Block up to ``timeout`` seconds for cancellations of running jobs;
        return their ids.

        Listens on the ``{P}:cancels`` channel through one subscription per store
        and process, PINGed through every few seconds and made anew when the
        pong does not come, so that a connection that went silent (a black
        hole) is not kept. On a Cluster it only waits: there the heartbeats
        carry cancellations.

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
            pong_by, now = self._cancel_pong_by, time.monotonic()
            if pubsub is None or (pong_by is not None and now > pong_by):
                if pubsub is not None:
                    logger.warning(
                        "the cancel listener's subscription did not answer a PING "
                        "within %g s; subscribing anew",
                        _REPLY_GRACE,
                    )
                    _close_quietly(pubsub)
                    self._cancel_pubsub = None
                plain: Any = client  # redis-py leaves pubsub() unannotated
                with self._translate_errors():
                    pubsub = plain.pubsub(ignore_subscribe_messages=True)
                    try:
                        pubsub.subscribe(self._keys.cancels)
                    except BaseException:
                        _close_quietly(pubsub)
                        raise
                self._cancel_pubsub = pubsub
                self._cancel_ping_at = now + _CANCEL_PING
                self._cancel_pong_by = None
            elif pong_by is None and now > self._cancel_ping_at:
                with self._translate_errors():
                    pubsub.ping()
                self._cancel_pong_by = now + _REPLY_GRACE
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
                    if message.get("type") == "pong":
                        with self._cancel_lock:
                            self._cancel_pong_by = None
                            self._cancel_ping_at = time.monotonic() + _CANCEL_PING
                        continue
                    data = _plain(message.get("data"))
                    if isinstance(data, str):
                        with contextlib.suppress(ValueError):
                            ids.append(uuid.UUID(data))
        except StoreUnavailableError:
            with self._cancel_lock:
                if self._cancel_pubsub is pubsub:
                    self._cancel_pubsub = None
            _close_quietly(pubsub)
            if self._closed.is_set():  # close() cut the connection: not an outage
                return ids
            raise
        return ids

    def wait_for_changes(self, timeout: float) -> list[Job] | None:
        """Block up to ``timeout`` seconds for changes of followed jobs; return
        each changed job as the change left it, in order, or ``None`` after
        subscribing anew (see
        :meth:`JobStore.wait_for_changes`).

        One subscription to ``{P}:events`` per store and process, made anew
        every 30 s: the new one first, then the old one is read to its end (a
        PING through it shows it was alive, so nothing was missed), then closed.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            client = self._redis()
        pubsub = self._events_pubsub
        if self._events_pid != os.getpid():
            pubsub = None  # the parent's, across a fork: left to the parent
        if pubsub is None:
            self._events_pubsub = self._subscribe_events(client)
            self._events_pid = os.getpid()
            return None
        ids: list[Job] = []
        try:
            with self._translate_errors():
                if time.monotonic() > self._events_renew_at:
                    fresh = self._subscribe_events(client)
                    alive = self._drain_events(pubsub, ids)
                    self._events_pubsub = fresh
                    _close_quietly(pubsub)
                    return ids if alive else None
                self._read_events(pubsub, timeout, ids)
        except StoreUnavailableError:
            if self._events_pubsub is pubsub:
                self._events_pubsub = None
            _close_quietly(pubsub)
            if self._closed.is_set():
                return ids
            raise
        return ids

    def _subscribe_events(self, client: Any) -> Any:
        """A new subscription to the events channel, confirmed by Redis."""
        with self._translate_errors():
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(self._keys.events)
                deadline = time.monotonic() + _REPLY_GRACE
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise redis.TimeoutError("no confirmation of SUBSCRIBE")
                    message = pubsub.get_message(timeout=remaining)
                    if message is not None and message.get("type") == "subscribe":
                        break
            except BaseException:
                _close_quietly(pubsub)
                raise
        with self._cancel_lock:
            if self._closed.is_set():
                _close_quietly(pubsub)
                raise StoreUnavailableError("the store is closed")
        self._events_renew_at = time.monotonic() + _EVENTS_RENEW
        return pubsub

    def _read_events(self, pubsub: Any, timeout: float, ids: list[Job]) -> None:
        """Messages of ``pubsub`` for up to ``timeout`` s, until some arrived."""
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            remaining = deadline - time.monotonic()
            message = pubsub.get_message(timeout=max(0.0, remaining) if not ids else 0)
            if message is None:
                if ids or remaining <= 0:
                    return
                continue
            _take_job(message, ids)

    def _drain_events(self, pubsub: Any, ids: list[Job]) -> bool:
        """Read an old subscription to its end; whether it answered a PING."""
        try:
            pubsub.ping("renew")
            deadline = time.monotonic() + _PONG_WAIT
            while (remaining := deadline - time.monotonic()) > 0:
                message = pubsub.get_message(timeout=remaining)
                if message is None:
                    continue
                if message.get("type") == "pong":
                    return True
                _take_job(message, ids)
        except (redis.RedisError, OSError):
            pass
        return False


def _take_job(message: dict[str, Any], jobs: list[Job]) -> None:
    """The job a script announced (``[id, hash]`` as JSON), if readable."""
    if message.get("type") != "message":
        return
    try:
        job_id, flat = json.loads(message["data"])
        jobs.append(_decode_job(job_id, flat))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        logger.warning("an announcement of a job change cannot be read: %s", exc)

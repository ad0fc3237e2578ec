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
    t  claim token     w  claiming worker            (InProgress only)

Times are ``repr(float)`` strings, so they read back exactly. Values are JSON, never
pickle.
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
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeAlias
from urllib.parse import quote

import redis

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
]
_SCRIPT_NAMES: Final[tuple[_ScriptName, ...]] = (
    "submit",
    "claim",
    "heartbeat",
    "complete",
    "fail",
    "report_progress",
    "release",
    "cancel",
    "recover_expired",
)
_SCHEMES: Final = ("redis://", "rediss://", "unix://")
_MIN_BLOCK: Final = 0.01
"""Shortest BLPOP, in seconds: 0 would mean "block forever"."""
_END_POLL: Final = 0.05
"""How often ``wait_for_end`` looks at the job, in seconds."""

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
        self.job_prefix: Final = f"{tag}:job:"
        self._idem_prefix: Final = f"{tag}:idem:"

    def job(self, job_id: uuid.UUID | str) -> str:
        return f"{self.job_prefix}{job_id}"

    def idem(self, key: str) -> str:
        return f"{self._idem_prefix}{key}"


class _BlockingConnection(Protocol):
    """The part of a redis-py connection that ``wait_for_work`` drives by hand."""

    def send_command(self, *args: object) -> None: ...

    def read_response(self) -> object: ...

    def disconnect(self) -> None: ...


# -- encoding and decoding ------------------------------------------------------


def _num(value: float) -> str:
    return repr(float(value))


def _dump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


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


def _describe(pool: Any) -> str:
    """A URL-like name of the pool's target, with any password redacted."""
    kwargs: Mapping[str, Any] = getattr(pool, "connection_kwargs", {})
    db = kwargs.get("db", 0)
    user = quote(str(kwargs.get("username") or ""), safe="")
    auth = f"{user}:***@" if kwargs.get("password") else (f"{user}@" if user else "")
    if kwargs.get("path"):
        return f"unix://{auth}{kwargs['path']}?db={db}"
    connection_class = getattr(pool, "connection_class", None)
    secure = isinstance(connection_class, type) and issubclass(
        connection_class, redis.SSLConnection
    )
    scheme = "rediss" if secure else "redis"
    host = kwargs.get("host", "localhost")
    return f"{scheme}://{auth}{host}:{kwargs.get('port', 6379)}/{db}"


# -- the store --------------------------------------------------------------------


class RedisStore:
    """Keeps jobs in Redis, shared by every process and host that uses the prefix.

    :param client: a ``redis.Redis`` client; the store never closes it.
    :param prefix: the key namespace (``ASYNC_ENDPOINTS_KEY_PREFIX``); it becomes the
        ``{prefix}`` hash tag, so it may not contain braces.
    :raises ConfigurationError: the prefix is empty or contains braces.
    """

    # types-redis makes Redis generic; redis-py's own inline types do not.
    def __init__(
        self,
        client: redis.Redis,  # type: ignore[type-arg,unused-ignore]
        *,
        prefix: str = "async_endpoints",
    ) -> None:
        self._keys = _Keys(prefix)
        self._prefix = prefix
        self._client = client
        self._owns_client = False
        self._target = _describe(client.connection_pool)
        self._scripts = {
            name: client.register_script(_script_source(name)) for name in _SCRIPT_NAMES
        }
        self._next_due: float | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._blocked: set[_BlockingConnection] = set()

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "async_endpoints") -> RedisStore:
        """A store on a client it creates (and closes in :meth:`close`).

        :param url: a ``redis://``, ``rediss://`` or ``unix://`` URL.
        :param prefix: the key namespace, as for the constructor.
        :raises ConfigurationError: the URL is not a Redis URL.
        """
        if not url.startswith(_SCHEMES):
            raise ConfigurationError(
                f"{url!r} is not a Redis URL: use redis://, rediss:// or unix://."
            )
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=5.0)
        except ValueError as exc:
            raise ConfigurationError(f"Invalid Redis URL: {exc}") from exc
        try:
            store = cls(client, prefix=prefix)
        except BaseException:
            client.close()
            raise
        store._owns_client = True
        return store

    def __repr__(self) -> str:
        return f"<RedisStore {self._target} prefix={self._prefix!r}>"

    # -- plumbing ------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        """Turn redis-py's infrastructure errors into the library's store errors."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailableError(
                f"Redis at {self._target} is unavailable ({exc}). Check that the "
                "server is running and that ASYNC_ENDPOINTS_STORE_URL points at it."
            ) from exc
        except redis.RedisError as exc:
            raise StoreError(f"Redis at {self._target} failed: {exc}") from exc

    def _call(
        self, name: _ScriptName, keys: Sequence[str], args: Sequence[str]
    ) -> _Reply:
        script: Script = self._scripts[name]
        with self._translate_errors():
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
        return _decode_job(_str(reply[1]), reply[2])

    def find_idempotent(self, idempotency: Idempotency, *, now: float) -> Job | None:
        """The live job that ``idempotency.key`` made, or ``None``.

        A read, not a transition: the key, then the job it names (a job that
        expired in between reads as no job). Redis expires both keys itself, so
        ``now`` is not consulted.

        :raises IdempotencyConflictError: the key was used with another fingerprint.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            raw: object = self._client.get(self._keys.idem(idempotency.key))
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
            raw: object = self._client.hgetall(self._keys.job(job_id))
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
        lease_until = now + lease
        args = [_num(now), str(limit), _num(lease_until), uuid.uuid4().hex, owner]
        keys = [self._keys.ready, self._keys.claimed, self._keys.job_prefix]
        reply = _list(self._call("claim", keys, args))
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
        keys = [self._keys.job(claim.job_id), self._keys.ready, self._keys.claimed]
        encoded = "" if result is None else _dump(result)
        args = [str(claim.job_id), claim.token, _num(now), encoded, _ttl_seconds(ttl)]
        return _int(self._call("complete", keys, args)) == 1

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

    def release(self, claims: Sequence[Claim], *, now: float) -> None:
        """Hand claimed jobs back as Queued, due at ``now``, counting no attempt.

        Claims no longer held are skipped.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if not claims:
            return
        keys = [self._keys.ready, self._keys.claimed, self._keys.wake]
        keys += [self._keys.job(c.job_id) for c in claims]
        args = [_num(now)]
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
        args = [str(job_id), _num(now), _ttl_seconds(ttl)]
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

    def queue_size(self) -> int:
        """How many jobs wait (Queued + Scheduled).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        with self._translate_errors():
            return int(self._client.zcard(self._keys.ready))

    def wait_for_work(self, timeout: float) -> None:
        """Block up to ``timeout`` seconds, or until new work may be due.

        Blocks in ``BLPOP`` on the wake-up list (pushed by submit, retry and
        release), no longer than until the earliest waiting job the last
        :meth:`claim` saw falls due. :meth:`close` cuts the wait short.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if self._closed.is_set():
            return
        seconds = timeout
        next_due, self._next_due = self._next_due, None
        if next_due is not None:
            seconds = min(seconds, next_due - time.time())
        pool: Any = self._client.connection_pool
        socket_timeout = pool.connection_kwargs.get("socket_timeout")
        if socket_timeout:
            # A read may not outlast the socket timeout; waking early is allowed.
            seconds = min(seconds, 0.8 * float(socket_timeout))
        seconds = max(seconds, _MIN_BLOCK)
        with self._translate_errors():
            connection = self._checkout(pool)
        try:
            with self._lock:
                self._blocked.add(connection)
            if self._closed.is_set():
                return
            with self._translate_errors():
                connection.send_command("BLPOP", self._keys.wake, seconds)
                connection.read_response()
        except Exception:
            connection.disconnect()
            if not self._closed.is_set():
                raise
        finally:
            with self._lock:
                self._blocked.discard(connection)
            pool.release(connection)

    @staticmethod
    def _checkout(pool: Any) -> _BlockingConnection:
        """A connection of the client's pool, for one blocking BLPOP."""
        try:
            connection: _BlockingConnection = pool.get_connection()
        except TypeError:  # redis-py < 5.3 requires a command name
            connection = pool.get_connection("BLPOP")
        return connection

    def wait_for_end(self, job_id: uuid.UUID, timeout: float) -> None:
        """Block up to ``timeout`` seconds, or until the job has ended or is gone.

        Looks at the job every 50 ms; :meth:`close` cuts the wait short.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            job = self.get(job_id, now=time.time())
            if job is None or job.status.is_finished:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._closed.wait(min(_END_POLL, remaining))

    def close(self) -> None:
        """Wake blocked waiters and, if :meth:`from_url` made the client, close it.

        A client passed to the constructor stays open: it belongs to the caller.
        """
        with self._lock:
            self._closed.set()
            blocked = list(self._blocked)
        for connection in blocked:
            connection.disconnect()
        if self._owns_client:
            self._client.close()

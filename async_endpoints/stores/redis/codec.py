"""How jobs, claims and replies are encoded in Redis (JSON and short hash
fields; never pickle)."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from typing import (
    TypeAlias,
)

from async_endpoints.errors import (
    StoreError,
)
from async_endpoints.jobs import (
    Callback,
    CallbackStatus,
    Claim,
    Delivery,
    ErrorInfo,
    Job,
    JobStatus,
    Progress,
)

_Reply: TypeAlias = "str | int | list[_Reply] | None"
"""A script reply with bulk strings decoded: what the decoders below read."""


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
        "v": str(job.version),
        "tc": _dump(job.trace) if job.trace else None,
        "cc": None if job.concurrency is None else str(job.concurrency),
        "rl": job.rate_limit,
    }
    if job.callback is not None:
        fields["cu"] = job.callback.url
        fields["cs"] = job.callback.status.value
        fields["ca"] = str(job.callback.attempts) if job.callback.attempts else None
        fields["ce"] = job.callback.last_error
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
        # Most items are bytes (hash fields): decoded here, without a call each.
        return [
            item.decode("utf-8") if type(item) is bytes else _plain(item)
            for item in value
        ]
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


def _decode_job(job_id: str, flat: _Reply, claimed_at: float | None = None) -> Job:
    """The one decoder: a job hash (``HGETALL``-style flat array) into a ``Job``.

    :param claimed_at: the hash was read by a claim before it changed it: a
        waiting job is decoded as that claim left it (InProgress, started and
        updated then, no due time).
    """
    items = iter(_list(flat))
    # HGETALL gives strings only; an odd count fails here (ValueError), missing
    # fields below (KeyError): a record that cannot be read.
    f: dict[str, str] = dict(zip(items, items, strict=True))  # type: ignore[arg-type]
    error = progress = None
    if "x" in f:
        kind, message, stack_trace = json.loads(f["x"])
        error = ErrorInfo(type=kind, message=message, stack_trace=stack_trace)
    if "g" in f:
        fraction, note = json.loads(f["g"])
        progress = Progress(fraction=fraction, message=note)
    status = JobStatus(f["s"])
    version = int(f.get("v", "0"))
    if claimed_at is not None and status.is_waiting:
        status = JobStatus.IN_PROGRESS
        f["b"] = f["u"] = repr(claimed_at)
        version += 1
    return Job(
        id=uuid.UUID(job_id),
        name=f["n"],
        status=status,
        max_retries=int(f["m"]),
        created_at=float(f["c"]),
        # A finished job keeps no u: its last update is its end.
        last_updated_at=float(f["u"] if "u" in f else f["e"]),
        retry_count=int(f.get("a", "0")),
        started_at=_opt_float(f.get("b")),
        completed_at=_opt_float(f.get("e")),
        # A claim leaves d behind: it means something only while the job waits.
        due_at=_opt_float(f.get("d")) if status.is_waiting else None,
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
        version=version,
        callback=None
        if "cu" not in f
        else Callback(
            url=f["cu"],
            status=CallbackStatus(f.get("cs", "Pending")),
            attempts=int(f.get("ca", "0")),
            last_error=f.get("ce"),
        ),
        trace=json.loads(f["tc"]) if "tc" in f else {},
        concurrency=int(f["cc"]) if "cc" in f else None,
        rate_limit=f.get("rl"),
    )


def _decode_claims(
    items: Sequence[_Reply], lease_until: float, claimed_at: float | None = None
) -> tuple[list[Claim], list[tuple[str, str, Exception]]]:
    """``id, token, fields`` triples (claim/recover replies) into claims, and the
    ``(id, token, error)`` of each record that cannot be read (kept apart, so that
    one bad record does not cost the others)."""
    claims: list[Claim] = []
    unreadable: list[tuple[str, str, Exception]] = []
    for i in range(0, len(items), 3):
        job_id, token = _str(items[i]), _str(items[i + 1])
        try:
            job = _decode_job(job_id, items[i + 2], claimed_at)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            unreadable.append((job_id, token, exc))
            continue
        claims.append(
            Claim(
                job=job,
                token=token,
                lease_until=lease_until,
                provisional=_provisional(items[i + 2], token),
            )
        )
    return claims, unreadable


def _provisional(fields: _Reply, token: str) -> bool:
    """Whether a claimed hash (HGETALL-style) marks the claim ``token`` as
    provisional (field ``pv``: see claim.lua)."""
    if not isinstance(fields, list):
        return False
    for i in range(len(fields) - 2, -1, -2):  # pv is written last: look there first
        if fields[i] == "pv":
            return fields[i + 1] == token
    return False


def _lease_ms(lease: float) -> str:
    """How long a claim request's record is kept: its lease, in milliseconds."""
    return str(max(1, math.ceil(lease * 1000)))


def _ttl_seconds(ttl: float) -> str:
    """A finished job's relative EXPIRE: whole seconds, at least 1."""
    return str(max(1, math.ceil(ttl)))


def _decode_deliveries(items: Sequence[_Reply], lease_until: float) -> list[Delivery]:
    """``id, token, fields`` triples (callback claims) into deliveries; a record
    that cannot be read is skipped (its lease ends and it is tried again)."""
    deliveries: list[Delivery] = []
    for i in range(0, len(items), 3):
        job_id, token = _str(items[i]), _str(items[i + 1])
        try:
            job = _decode_job(job_id, items[i + 2])
        except (ValueError, TypeError, KeyError, IndexError):
            continue
        deliveries.append(Delivery(job=job, token=token, lease_until=lease_until))
    return deliveries

"""The opaque cursors of listing pages: where the last page ended (its last job's
creation time and id), the same for every store."""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid

from async_endpoints.errors import InvalidParameterError


def make_cursor(created_at: float, job_id: str) -> str:
    """The cursor of the page that goes on after this job."""
    raw = json.dumps([repr(float(created_at)), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_cursor(cursor: str | None) -> tuple[float, str] | None:
    """A cursor's (creation time, job id), or ``None`` for the first page.

    :raises InvalidParameterError: not a cursor :func:`make_cursor` made.
    """
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        value = float(str(created_at))
        if not math.isfinite(value):
            raise ValueError(created_at)
        return value, str(uuid.UUID(str(job_id)))
    except (ValueError, TypeError, AttributeError, binascii.Error, RecursionError):
        raise InvalidParameterError(
            f"cursor={cursor[:40]!r} is not a cursor this server gave."
        ) from None

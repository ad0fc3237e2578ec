"""The lease half of ``RedisStore``: claiming, renewing, handing back and
recovering jobs, each sent again safely under its request id."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence

from async_endpoints.errors import (
    StoreError,
)
from async_endpoints.jobs import (
    Claim,
    ErrorInfo,
    HeartbeatResult,
)
from async_endpoints.stores.redis.clock import _Clock
from async_endpoints.stores.redis.codec import (
    _decode_claims,
    _dump_error,
    _lease_ms,
    _list,
    _num,
    _Reply,
    _str,
    _ttl_seconds,
)

logger = logging.getLogger(__name__)

_UNREADABLE_TTL = 7 * 86400.0
"""How long a job whose record cannot be read is kept, Failed, for operators."""


class _Leases(_Clock):
    """Claims and their leases."""

    def claim(
        self,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float,
        request_id: str | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` due jobs to ``owner``, fairly between owners
        (round robin; in order within one owner: see ``claim.lua``).

        Also remembers when the earliest job left waiting falls due, so that
        :meth:`wait_for_work` sleeps no longer than that.

        :param owner: the worker's name, kept on the job while it runs.
        :param limit: the most jobs to take.
        :param lease: seconds each lease lasts unless renewed.
        :param now: epoch seconds.
        :param request_id: names this request, so that sending it again (after
            its reply was lost) answers with the same claims; a new one if
            ``None``.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if limit <= 0:
            return []
        keys, args = self._claim_call(owner, limit, lease, now, request_id)
        (reply,) = self._grouped([("claim", keys, args)])
        return self._claimed(reply, now, lease)

    def _claim_call(
        self,
        owner: str,
        limit: int,
        lease: float,
        now: float,
        request_id: str | None,
    ) -> tuple[list[str], list[str]]:
        request_id = request_id or uuid.uuid4().hex
        server = self._server(now)
        args = [
            _num(server),
            str(limit),
            _num(server + lease),
            request_id,
            owner,
            _num(now),
            _lease_ms(lease),
        ]
        keys = self._declared(
            self._keys.ready,
            self._keys.claimed,
            self._keys.job_prefix,
            self._keys.request(request_id),
            self._keys.status_prefix,
            self._keys.owner_waiting_prefix,
            self._keys.rate_prefix,
            self._keys.running,
            self._keys.parked_prefix,
            self._keys.fair,
        )
        return keys, args

    def _claimed(self, raw: _Reply, now: float, lease: float) -> list[Claim]:
        """A claim's reply: each job as it was, with the claim's changes applied
        here (claim.lua returns the hash it read, rather than read it again)."""
        reply = _list(raw)
        next_due = _str(reply[0])
        self._next_due = self._local(float(next_due)) if next_due else None
        return self._readable(reply[1:], now + lease, claimed_at=now)

    def _readable(
        self,
        items: Sequence[_Reply],
        lease_until: float,
        *,
        claimed_at: float | None = None,
    ) -> list[Claim]:
        """The claims of a claim or recover reply; a record that cannot be read
        is logged and ended Failed (``UnreadableJob``), not handed out, so it
        neither stops the others nor comes back at every sweep."""
        claims, unreadable = _decode_claims(items, lease_until, claimed_at)
        for job_id, token, exc in unreadable:
            logger.error(
                "job %s in Redis cannot be read (%s); it is failed as UnreadableJob",
                job_id,
                exc,
            )
            error = ErrorInfo(
                type="UnreadableJob",
                message=f"The job's record in Redis cannot be read: {exc}",
            )
            keys, args = self._fail_call(
                job_id, token, error, None, _UNREADABLE_TTL, time.time()
            )
            try:
                self._call("fail", keys, args)
            except StoreError:
                logger.exception("could not fail unreadable job %s", job_id)
        return claims

    def _ending_keys(self) -> list[str]:
        """The keys of every script that may end a held job or give it back
        (``fail.lua`` after the job's hash, ``release.lua`` before the hashes),
        in their order."""
        return [
            self._keys.ready,
            self._keys.claimed,
            self._keys.wake,
            self._keys.callbacks,
            self._keys.status_prefix,
            self._keys.finished,
            self._keys.owner_waiting_prefix,
            self._keys.running,
            self._keys.parked_prefix,
            self._keys.name_prefix,
            self._keys.names,
        ]

    def _fail_call(
        self,
        job_id: str,
        token: str,
        error: ErrorInfo,
        retry_at: float | None,
        ttl: float,
        now: float,
    ) -> tuple[list[str], list[str]]:
        """``fail.lua``'s keys and arguments (see the script)."""
        keys = [self._keys.job(job_id), *self._ending_keys()]
        args = [
            job_id,
            token,
            _num(now),
            _dump_error(error),
            "" if retry_at is None else _num(retry_at),
            _ttl_seconds(ttl),
            self._keys.ended(job_id),
            "" if retry_at is None else _num(self._server(retry_at)),
            self._keys.events,
        ]
        return keys, args

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
        keys, args = self._heartbeat_call(claims, lease, now)
        codes = _list(self._call("heartbeat", keys, args))
        held = {c.job_id for c, code in zip(claims, codes, strict=True) if code}
        canceling = {
            c.job_id for c, code in zip(claims, codes, strict=True) if code == 2
        }
        tokens = {c.token for c, code in zip(claims, codes, strict=True) if code}
        return HeartbeatResult(
            held=frozenset(held),
            cancel_requested=frozenset(canceling),
            held_tokens=frozenset(tokens),
        )

    def _heartbeat_call(
        self, claims: Sequence[Claim], lease: float, now: float
    ) -> tuple[list[str], list[str]]:
        keys = [self._keys.claimed] + [self._keys.job(c.job_id) for c in claims]
        server = self._server(now)
        args = [_num(server + lease)]
        for c in claims:
            args += [str(c.job_id), c.token]
        args += [_num(server), _num(self._sent_at())]
        return keys, args

    def release(self, claims: Sequence[Claim], *, ttl: float, now: float) -> None:
        """Hand claimed jobs back as Queued, due at ``now``, counting no attempt
        (Canceled instead if their cancellation was requested).

        Claims no longer held are skipped.

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if not claims:
            return
        keys = self._ending_keys() + [self._keys.job(c.job_id) for c in claims]
        args = [
            _num(now),
            _ttl_seconds(ttl),
            self._keys.ended(""),
            _num(self._server(now)),
            self._keys.events,
        ]
        for c in claims:
            args += [str(c.job_id), c.token]
        self._call("release", keys, args)

    def recover_owner(
        self,
        dead: str,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float,
    ) -> list[Claim]:
        """Re-claim for ``owner`` the jobs worker ``dead`` holds (see
        :meth:`JobStore.recover_owner`).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        server = self._server(now)
        args = [dead, str(limit), _num(server + lease), uuid.uuid4().hex, owner]
        keys = [self._keys.claimed, self._keys.job_prefix]
        reply = _list(self._call("recover_owner", keys, args))
        return self._readable(reply, now + lease)

    def recover_expired(
        self,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float,
        request_id: str | None = None,
    ) -> list[Claim]:
        """Re-claim for ``owner`` up to ``limit`` jobs whose lease ended by ``now``.

        :param owner: the sweeping worker's name.
        :param limit: the most jobs to take.
        :param lease: seconds each new lease lasts.
        :param now: epoch seconds.
        :param request_id: as for :meth:`claim`.
        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if limit <= 0:
            return []
        request_id = request_id or uuid.uuid4().hex
        server = self._server(now)
        args = [
            _num(server),
            str(limit),
            _num(server + lease),
            request_id,
            owner,
            _lease_ms(lease),
        ]
        keys = [
            self._keys.claimed,
            self._keys.job_prefix,
            self._keys.request(request_id),
        ]
        reply = _list(self._call("recover_expired", keys, args))
        return self._readable(reply, now + lease)

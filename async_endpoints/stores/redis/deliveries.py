"""The callback deliveries of ``RedisStore``: leased and fenced like jobs, in
the ``{P}:callbacks`` zset (score: when due, then the lease end)."""

from __future__ import annotations

import uuid

from async_endpoints.jobs import Delivery
from async_endpoints.stores.redis.clock import _Clock
from async_endpoints.stores.redis.codec import _decode_deliveries, _int, _list, _num


class _Deliveries(_Clock):
    """Claiming and finishing callback deliveries."""

    def claim_callbacks(
        self, owner: str, *, limit: int, lease: float, now: float
    ) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries (see :meth:`JobStore.claim_callbacks`).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if limit <= 0:
            return []
        server = self._server(now)
        keys = [self._keys.callbacks, self._keys.job_prefix]
        args = [_num(server), str(limit), _num(server + lease), uuid.uuid4().hex]
        reply = _list(self._call("callback_claim", keys, args))
        return _decode_deliveries(reply, now + lease)

    def finish_callback(
        self,
        delivery: Delivery,
        *,
        error: str | None,
        retry_at: float | None,
        now: float,
    ) -> bool:
        """Record a delivery's outcome (see :meth:`JobStore.finish_callback`).

        :raises StoreUnavailableError: Redis cannot be reached.
        """
        if error is None:
            outcome = "Delivered"
        elif retry_at is None:
            outcome = "Failed"
        else:
            outcome = "Retry"
        job_id = str(delivery.job.id)
        keys = [self._keys.job(job_id), self._keys.callbacks]
        args = [
            job_id,
            delivery.token,
            outcome,
            error or "",
            "" if retry_at is None else _num(self._server(retry_at)),
        ]
        return _int(self._call("callback_finish", keys, args)) == 1

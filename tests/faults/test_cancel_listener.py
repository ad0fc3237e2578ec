"""The cancel listener's health check through a fault proxy: its subscription is
PINGed now and then (not made anew on a timer, which would cost a connection's
handshake every few seconds), and one whose pong is lost is made anew, so that
cancellations keep arriving."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import Any

import pytest

from async_endpoints.errors import StoreUnavailableError
from async_endpoints.stores.redis import RedisStore, waits
from tests.faults.conftest import ClientFactory
from tests.faults.proxy import RedisFaultProxy
from tests.stores.conftest import make_job

pytestmark = pytest.mark.redis

NOW = 1000.0


def is_ping(cmd: list[bytes]) -> bool:
    return cmd[0].upper() == b"PING"


def hear(store: RedisStore, job_id: uuid.UUID, seconds: float) -> bool:
    """Whether the listener reports ``job_id`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if job_id in store.wait_for_cancels(0.2):
            return True
    return False


def running_job(store: RedisStore) -> uuid.UUID:
    job = store.submit(make_job(now=NOW), max_queue_size=0, now=NOW)
    (claim,) = store.claim("w", limit=1, lease=60, now=NOW)
    assert claim.job_id == job.id
    return job.id


def test_a_subscription_that_goes_silent_is_made_anew(
    fault_proxy: RedisFaultProxy,
    proxied_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(waits, "_CANCEL_PING", 0.2)
    monkeypatch.setattr(waits, "_REPLY_GRACE", 0.5)
    store = RedisStore(proxied_client(socket_timeout=5), prefix="pong")
    try:
        store.wait_for_cancels(0.01)  # subscribed
        first: Any = store._cancel_pubsub
        # A black hole: no reset, no reply. The listener PINGs, hears no pong
        # within the grace, and lets it go (subscribing anew fails while the
        # hole lasts: an outage, as the worker's listener loop sees it).
        fault_proxy.blackhole()
        deadline = time.monotonic() + 10
        while store._cancel_pubsub is first and time.monotonic() < deadline:
            with contextlib.suppress(StoreUnavailableError):
                store.wait_for_cancels(0.1)
        assert store._cancel_pubsub is not first, "the silent subscription was kept"
        fault_proxy.heal()
        store.wait_for_cancels(0.01)  # subscribed again
        job_id = running_job(store)
        store.cancel(job_id, ttl=60, now=NOW)
        assert hear(store, job_id, 5.0)
    finally:
        fault_proxy.heal()
        store.close()


def test_a_healthy_subscription_is_kept_and_answers_its_pings(
    fault_proxy: RedisFaultProxy,
    proxied_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(waits, "_CANCEL_PING", 0.1)
    store = RedisStore(proxied_client(socket_timeout=5), prefix="pong")
    try:
        store.wait_for_cancels(0.01)
        first: Any = store._cancel_pubsub
        pings: list[object] = []
        ping = first.ping

        def counted(*args: object) -> object:
            pings.append(args)
            return ping(*args)

        first.ping = counted
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            store.wait_for_cancels(0.15)
        assert len(pings) >= 3  # it did ask, more than once
        assert store._cancel_pubsub is first  # and every pong came back
        job_id = running_job(store)
        ready = threading.Event()

        def cancel() -> None:
            ready.wait(5)
            store.cancel(job_id, ttl=60, now=NOW)

        thread = threading.Thread(target=cancel)
        thread.start()
        ready.set()
        assert hear(store, job_id, 5.0)
        thread.join(5)
    finally:
        store.close()

"""Completion callbacks: which ``Callback-Url`` is accepted, and how one
delivery is sent and signed (Standard Webhooks). Flask-free.

A delivery is work in the store (:meth:`JobStore.claim_callbacks`): leased,
fenced by a token, retried with backoff, recovered when its process dies. This
module only checks addresses and makes the HTTP request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import time
from typing import Final
from urllib.parse import urlsplit

import urllib3

from async_endpoints.errors import CallbackRefusedError, StoreError
from async_endpoints.jobs import Delivery, Job, JobStatus, format_timestamp
from async_endpoints.settings import PREFIX, Settings
from async_endpoints.stores.base import JobStore

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS: Final = 5.0
"""Connect and read timeout of one delivery, each."""
MAX_DELAY_SECONDS: Final = 300.0
"""Longest wait between two attempts."""
MAX_URL_LENGTH: Final = 2048

_EVENT_TYPES: Final = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
}


class _RefusedError(Exception):
    """A delivery that cannot be attempted (no allowed address)."""


def check_callback_url(url: str, settings: Settings) -> str:
    """The ``Callback-Url`` to store, once checked (host allowed, address public
    unless private ones are allowed).

    :raises CallbackRefusedError: callbacks are off, or the URL is refused; the
        message says why.
    """
    if not settings.callback_hosts:
        raise CallbackRefusedError(
            "Callbacks are off on this server (ASYNC_ENDPOINTS_CALLBACK_HOSTS is "
            "empty); poll the job or follow its events instead."
        )
    url = url.strip()
    parts = urlsplit(url)
    if len(url) > MAX_URL_LENGTH or parts.scheme not in ("http", "https"):
        raise CallbackRefusedError(
            "Callback-Url must be an absolute http or https URL."
        )
    if parts.username is not None or parts.password is not None:
        raise CallbackRefusedError("Callback-Url may not carry credentials.")
    host = _host(url)
    if host not in settings.callback_hosts:
        raise CallbackRefusedError(
            f"The host {host!r} is not one this server sends callbacks to."
        )
    try:
        allowed_addresses(url, settings)
    except _RefusedError as exc:
        raise CallbackRefusedError(str(exc)) from None
    return url


def _host(url: str) -> str:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises for a malformed port
    except ValueError:
        raise CallbackRefusedError("Callback-Url has a malformed port.") from None
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise CallbackRefusedError("Callback-Url has no host.")
    return host


def allowed_addresses(url: str, settings: Settings) -> list[str]:
    """The addresses of the URL's host that may be called, in resolver order.

    :raises _RefusedError: it does not resolve, or only to refused addresses.
    """
    parts = urlsplit(url)
    host = _host(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _RefusedError(
            f"The callback host {host!r} cannot be resolved: {exc}"
        ) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    allowed = [a for a in addresses if settings.callback_allow_private or _public(a)]
    if not allowed:
        raise _RefusedError(
            f"The callback host {host!r} resolves to a loopback, private or "
            f"link-local address; set {PREFIX}CALLBACK_ALLOW_PRIVATE = True to "
            "allow it."
        )
    return allowed


def _public(address: str) -> bool:
    """Whether an address is on the public internet: not loopback, private,
    link-local, shared (carrier-grade NAT), reserved or multicast, nor an IPv6
    form that wraps such an IPv4 address (mapped, 6to4, Teredo)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if any(v4 is not None and not _public(str(v4)) for v4 in inner):
            return False
        if ip.ipv4_mapped is not None:
            return _public(str(ip.ipv4_mapped))
    return ip.is_global and not ip.is_multicast


def message_id(job: Job) -> str:
    """The ``webhook-id`` of a job's delivery: the same for every attempt of it,
    another for the job's next end (after an operator's retry)."""
    ended = round((job.completed_at or 0.0) * 1000)
    return f"msg_{job.id.hex}_{ended}"


def payload(job: Job, *, expose_traceback: bool) -> bytes:
    """The JSON body: the event type, when the job ended, and the job."""
    body = {
        "type": _EVENT_TYPES.get(job.status, "job.ended"),
        "timestamp": format_timestamp(job.completed_at),
        "data": job.to_dict(expose_traceback=expose_traceback),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` and the base64 HMAC-SHA256 of
    ``"<id>.<timestamp>.<body>"`` keyed by the UTF-8 bytes of ``secret``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed: 2, 4, 8, ...
    capped at 5 minutes."""
    return float(min(MAX_DELAY_SECONDS, 2.0 ** min(attempts, 20)))


def send(delivery: Delivery, settings: Settings, *, timeout: float) -> str | None:
    """POST the delivery once; ``None`` on a 2xx answer, else why it failed.

    The host is resolved here and the connection made to an allowed address
    (with the host name in ``Host`` and for TLS), so an answer of the resolver
    that changed since the submission cannot reach inside. No redirect is
    followed and nothing is retried here.
    """
    job = delivery.job
    assert job.callback is not None
    secret = settings.callback_secret or ""
    url = job.callback.url
    parts = urlsplit(url)
    try:
        addresses = allowed_addresses(url, settings)
    except (_RefusedError, CallbackRefusedError) as exc:
        return str(exc)
    body = payload(job, expose_traceback=settings.expose_tracebacks)
    msg_id = message_id(job)
    stamp = int(time.time())
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    headers = {
        "Host": parts.netloc.rpartition("@")[2],
        "Content-Type": "application/json",
        "User-Agent": "async-endpoints-callback",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
    }
    host = _host(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    limits = urllib3.Timeout(connect=timeout, read=timeout)
    pool: urllib3.HTTPConnectionPool
    if parts.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            addresses[0],
            port,
            timeout=limits,
            retries=False,
            server_hostname=host,
            assert_hostname=host,
            ssl_context=ssl.create_default_context(),
        )
    else:
        pool = urllib3.HTTPConnectionPool(
            addresses[0], port, timeout=limits, retries=False
        )
    try:
        response = pool.urlopen(
            "POST",
            target,
            body=body,
            headers=headers,
            redirect=False,
            retries=False,
            assert_same_host=False,
            preload_content=False,
        )
        # The status is all that counts: the body is not read (a receiver that
        # trickles one would hold the delivery thread).
        status = response.status
    except urllib3.exceptions.HTTPError as exc:
        return f"{type(exc).__name__}: {_reason(exc)}"
    finally:
        pool.close()
    if 200 <= status < 300:
        return None
    return f"HTTP {status}"


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc)[:200]


def deliver_due(
    store: JobStore, settings: Settings, owner: str, *, limit: int
) -> tuple[int, float | None]:
    """Claim up to ``limit`` due deliveries, send each once, record each outcome.

    :returns: how many were tried, and the earliest retry time they set (epoch
        seconds), if any.
    :raises StoreUnavailableError: the claim could not reach the store.
    """
    lease = settings.claim_timeout_seconds
    deliveries = store.claim_callbacks(owner, limit=limit, lease=lease, now=time.time())
    earliest: float | None = None
    for delivery in deliveries:
        retry_at = deliver(store, settings, delivery, lease=lease)
        if retry_at is not None and (earliest is None or retry_at < earliest):
            earliest = retry_at
    return len(deliveries), earliest


def deliver(
    store: JobStore, settings: Settings, delivery: Delivery, *, lease: float
) -> float | None:
    """Send one delivery and record its outcome; return when it is due again
    (``None``: delivered, or no attempt left)."""
    job = delivery.job
    assert job.callback is not None
    attempts = job.callback.attempts
    try:
        # Within the lease, so that no second worker sends it while this one does.
        error = send(delivery, settings, timeout=min(TIMEOUT_SECONDS, lease / 3))
    except Exception as exc:  # a bug here must not stop the other deliveries
        logger.exception("sending the callback of job %s failed", job.id)
        error = f"{type(exc).__name__}: {exc}"[:200]
    retry_at = None
    if error is None:
        logger.info("callback of job %s delivered (attempt %d)", job.id, attempts)
    else:
        if attempts < settings.callback_max_attempts:
            retry_at = time.time() + retry_delay(attempts)
        logger.warning(
            "callback of job %s failed (attempt %d of %d): %s%s",
            job.id,
            attempts,
            settings.callback_max_attempts,
            error,
            "" if retry_at is not None else "; no attempt left",
        )
    try:
        applied = store.finish_callback(
            delivery, error=error, retry_at=retry_at, now=time.time()
        )
    except StoreError as exc:
        logger.warning(
            "recording the callback of job %s failed (%s); it is tried again when "
            "its lease ends",
            job.id,
            exc,
        )
        return time.time() + lease
    if not applied:
        logger.warning("the callback delivery of job %s was taken over", job.id)
    return retry_at

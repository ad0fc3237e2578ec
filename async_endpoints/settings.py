"""``Settings``: the extension's configuration, read once from ``app.config``."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from async_endpoints.errors import ConfigurationError

PREFIX: Final = "ASYNC_ENDPOINTS_"

_N = TypeVar("_N", int, float)

#: Headers never persisted with a job unless listed in PRESERVED_HEADERS.
DEFAULT_REDACTED_HEADERS: Final = (
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "x-auth-token",
    "x-csrf-token",
    "x-xsrf-token",
)

#: Every key with its default (``None`` marks a default computed at init_app).
DEFAULTS: Final[dict[str, Any]] = {
    "STORE_URL": "memory://",
    "KEY_PREFIX": "async_endpoints",
    "JOBS_URL": "/jobs",
    "MAX_CONCURRENCY": None,
    "MAX_QUEUE_SIZE": 1000,
    "MAX_RETRIES": 3,
    "RETRY_DELAY_BASE_SECONDS": 2.0,
    "RETRY_MAX_DELAY_SECONDS": 300.0,
    "RETRY_JITTER_SECONDS": 0.0,
    "JOB_TIMEOUT_SECONDS": 1800.0,
    "CLAIM_TIMEOUT_SECONDS": 30.0,
    "SWEEP_INTERVAL_SECONDS": 10.0,
    "POLL_INTERVAL_SECONDS": 1.0,
    "RESULT_TTL_SECONDS": 86400.0,
    "SHUTDOWN_GRACE_SECONDS": 20.0,
    "START_WORKER": True,
    "IDEMPOTENCY_TTL_SECONDS": 86400.0,
    "MAX_WAIT_SECONDS": 20.0,
    "MAX_RESULT_BYTES": 1024 * 1024,
    "MAX_REQUEST_BYTES": 1024 * 1024,
    "MAX_HANDBACKS": 3,
    "EXPOSE_TRACEBACKS": None,
    "PRESERVED_HEADERS": (),
    "REDACTED_HEADERS": (),
    "MAX_STREAM_SECONDS": 300.0,
    "CALLBACK_HOSTS": (),
    "CALLBACK_ALLOW_PRIVATE": False,
    "CALLBACK_SECRET": None,
    "CALLBACK_MAX_ATTEMPTS": 8,
    "LIST_JOBS": False,
    "MAX_QUEUED_PER_OWNER": 0,
    "DASHBOARD_URL": None,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Parsed ``ASYNC_ENDPOINTS_*`` configuration; durations are float seconds."""

    store_url: Any
    key_prefix: str
    jobs_url: str
    max_concurrency: int
    max_queue_size: int
    max_retries: int
    retry_delay_base_seconds: float
    retry_max_delay_seconds: float
    retry_jitter_seconds: float
    job_timeout_seconds: float
    claim_timeout_seconds: float
    sweep_interval_seconds: float
    poll_interval_seconds: float
    result_ttl_seconds: float
    shutdown_grace_seconds: float
    start_worker: bool
    idempotency_ttl_seconds: float
    max_wait_seconds: float
    max_result_bytes: int
    max_request_bytes: int
    max_handbacks: int
    expose_tracebacks: bool
    preserved_headers: frozenset[str]
    redacted_headers: frozenset[str]
    max_stream_seconds: float
    callback_hosts: frozenset[str]
    callback_allow_private: bool
    callback_secret: str | None
    callback_max_attempts: int
    list_jobs: bool
    max_queued_per_owner: int
    dashboard_url: str | None

    def __repr__(self) -> str:
        # The callback secret never reaches a log through a repr.
        secret = "'***'" if self.callback_secret else "None"
        fields = (
            f"{name}={getattr(self, name)!r}"
            for name in self.__dataclass_fields__
            if name != "callback_secret"
        )
        return f"Settings({', '.join(fields)}, callback_secret={secret})"

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, debug: bool = False) -> Settings:
        """Parse and validate the ``ASYNC_ENDPOINTS_*`` keys of ``config``.

        :param config: ``app.config`` (missing keys take their defaults).
        :param debug: the app's debug flag, the default of ``EXPOSE_TRACEBACKS``.
        :raises ConfigurationError: a value has the wrong type or range; the
            message names the key.
        """
        raw = {k: config.get(PREFIX + k, v) for k, v in DEFAULTS.items()}
        if raw["MAX_CONCURRENCY"] is None:
            raw["MAX_CONCURRENCY"] = os.cpu_count() or 1
        if raw["EXPOSE_TRACEBACKS"] is None:
            raw["EXPOSE_TRACEBACKS"] = debug
        jobs_url = str(raw["JOBS_URL"]).rstrip("/")
        if not jobs_url.startswith("/"):
            raise ConfigurationError(
                f"{PREFIX}JOBS_URL={raw['JOBS_URL']!r} must start with '/'."
            )
        redacted = set(DEFAULT_REDACTED_HEADERS) | _names(raw, "REDACTED_HEADERS")
        hosts = _hosts(raw)
        secret = raw["CALLBACK_SECRET"]
        if hosts and (not isinstance(secret, str) or not secret):
            raise ConfigurationError(
                f"{PREFIX}CALLBACK_HOSTS turns callbacks on: set "
                f"{PREFIX}CALLBACK_SECRET too (a non-empty string; receivers "
                "verify the signatures with it)."
            )
        preserved = _names(raw, "PRESERVED_HEADERS")
        return cls(
            store_url=raw["STORE_URL"],
            key_prefix=_text(raw, "KEY_PREFIX"),
            jobs_url=jobs_url,
            max_concurrency=_number(raw, "MAX_CONCURRENCY", int, minimum=1),
            max_queue_size=_number(raw, "MAX_QUEUE_SIZE", int, minimum=0),
            max_retries=_number(raw, "MAX_RETRIES", int, minimum=0),
            retry_delay_base_seconds=_number(raw, "RETRY_DELAY_BASE_SECONDS", float),
            retry_max_delay_seconds=_number(raw, "RETRY_MAX_DELAY_SECONDS", float),
            retry_jitter_seconds=_number(raw, "RETRY_JITTER_SECONDS", float),
            job_timeout_seconds=_number(
                raw, "JOB_TIMEOUT_SECONDS", float, positive=True
            ),
            claim_timeout_seconds=_number(
                raw, "CLAIM_TIMEOUT_SECONDS", float, positive=True
            ),
            sweep_interval_seconds=_number(
                raw, "SWEEP_INTERVAL_SECONDS", float, positive=True
            ),
            poll_interval_seconds=_number(
                raw, "POLL_INTERVAL_SECONDS", float, positive=True
            ),
            result_ttl_seconds=_number(raw, "RESULT_TTL_SECONDS", float, positive=True),
            shutdown_grace_seconds=_number(raw, "SHUTDOWN_GRACE_SECONDS", float),
            start_worker=bool(raw["START_WORKER"]),
            idempotency_ttl_seconds=_number(
                raw, "IDEMPOTENCY_TTL_SECONDS", float, positive=True
            ),
            max_wait_seconds=_number(raw, "MAX_WAIT_SECONDS", float),
            max_result_bytes=_number(raw, "MAX_RESULT_BYTES", int, minimum=1),
            max_request_bytes=_number(raw, "MAX_REQUEST_BYTES", int, minimum=0),
            max_handbacks=_number(raw, "MAX_HANDBACKS", int, minimum=0),
            expose_tracebacks=bool(raw["EXPOSE_TRACEBACKS"]),
            preserved_headers=frozenset(preserved),
            redacted_headers=frozenset(redacted - preserved),
            max_stream_seconds=_number(raw, "MAX_STREAM_SECONDS", float, positive=True),
            callback_hosts=frozenset(hosts),
            callback_allow_private=bool(raw["CALLBACK_ALLOW_PRIVATE"]),
            callback_secret=secret if hosts else None,
            callback_max_attempts=_number(raw, "CALLBACK_MAX_ATTEMPTS", int, minimum=1),
            list_jobs=bool(raw["LIST_JOBS"]),
            max_queued_per_owner=_number(raw, "MAX_QUEUED_PER_OWNER", int, minimum=0),
            dashboard_url=_dashboard_url(raw["DASHBOARD_URL"]),
        )


def _text(raw: Mapping[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value:
        raise ConfigurationError(
            f"{PREFIX}{key} must be a non-empty string, not {value!r}."
        )
    return value


def _dashboard_url(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or value == "/":
        raise ConfigurationError(
            f"{PREFIX}DASHBOARD_URL must be None or a path such as '/admin/jobs', "
            f"not {value!r}."
        )
    return value.rstrip("/")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _hosts(raw: Mapping[str, Any]) -> set[str]:
    value = raw["CALLBACK_HOSTS"]
    if isinstance(value, str):
        value = value.split(",")
    try:
        hosts = {str(v).strip().lower().rstrip(".").strip("[]") for v in value}
    except TypeError:
        raise ConfigurationError(
            f"{PREFIX}CALLBACK_HOSTS must be a list of host names, not {value!r}."
        ) from None
    hosts.discard("")
    for host in hosts:
        if "/" in host or (":" in host and not _is_ip(host)):
            raise ConfigurationError(
                f"{PREFIX}CALLBACK_HOSTS takes host names without ports or paths, "
                f"not {host!r}."
            )
    return hosts


def _names(raw: Mapping[str, Any], key: str) -> set[str]:
    value = raw[key]
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    try:
        return {str(v).strip().lower() for v in value}
    except TypeError:
        raise ConfigurationError(
            f"{PREFIX}{key} must be a list of header names, not {value!r}."
        ) from None


def _number(
    raw: Mapping[str, Any],
    key: str,
    kind: type[_N],
    *,
    minimum: float = 0,
    positive: bool = False,
) -> _N:
    value = raw[key]
    try:
        if isinstance(value, bool):
            raise TypeError
        number = kind(value)
        if kind is int and number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{PREFIX}{key} must be a{'n integer' if kind is int else ' number'}, "
            f"not {value!r}."
        ) from None
    if number < minimum or (positive and number <= 0):
        bound = "greater than 0" if positive else f"at least {minimum:g}"
        raise ConfigurationError(f"{PREFIX}{key} must be {bound}, not {value!r}.")
    return number

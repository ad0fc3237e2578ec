"""``AsyncEndpoints``: the Flask extension object, a thin shell over the core."""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, tzinfo
from typing import Any, TypeVar
from uuid import UUID

from flask import Flask, current_app, has_app_context, has_request_context

from async_endpoints.errors import ConfigurationError, JobNotFoundError
from async_endpoints.events import hub_of
from async_endpoints.jobs import Job, parse_job_id
from async_endpoints.manager import (
    Handler,
    HandlerSpec,
    JobManager,
    Validator,
)
from async_endpoints.schedules import Schedule
from async_endpoints.settings import DEFAULTS, PREFIX, Settings
from async_endpoints.signals import SIGNALS
from async_endpoints.state import INSTANCES, AppState, ResponseHook
from async_endpoints.stores import open_store
from async_endpoints.views import events_view, job_view, list_view, submit_view
from async_endpoints.worker import Worker

logger = logging.getLogger(__name__)

_H = TypeVar("_H", bound=Handler)
OwnerFunc = Callable[[], "str | None"]
AccessFunc = Callable[[], "str | None"]
"""Answers ``"read"``, ``"write"`` or ``None`` for the current dashboard request."""


class AsyncEndpoints:
    """Asynchronous request-reply endpoints for a Flask app.

    A client POSTs to a handler's route and gets ``202 Accepted`` with a job at
    once; a background worker runs the handler with retries and backoff; the
    client polls ``GET <jobs url>/<id>``. ::

        ae = AsyncEndpoints(app)          # or AsyncEndpoints() + init_app(app)

        @ae.post("/api/process-data", name="ProcessData")
        def process_data(ctx: AsyncContext) -> dict:
            return {"processedData": ctx.request["data"].upper()}

    :param app: the app to initialise now, or ``None`` to call :meth:`init_app`
        later (the application-factory pattern).
    :param store: a :class:`JobStore`, a ``redis.Redis`` client, or a store URL; it
        wins over ``ASYNC_ENDPOINTS_STORE_URL``.
    """

    def __init__(self, app: Flask | None = None, *, store: Any = None) -> None:
        self._store_arg = store
        self._handlers: dict[str, HandlerSpec] = {}
        self._states: weakref.WeakKeyDictionary[Flask, AppState] = (
            weakref.WeakKeyDictionary()
        )
        self._owner_func: OwnerFunc | None = None
        self._access_func: AccessFunc | None = None
        self._submitted_response: ResponseHook | None = None
        self._status_response: ResponseHook | None = None
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        state = self._current_state()
        if state is None:
            return f"<{type(self).__name__}>"
        return (
            f"<{type(self).__name__} store={state.store!r} "
            f"handlers={len(self._handlers)}>"
        )

    # -- setup ---------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Read the configuration, open the store and install the routes on ``app``.

        Starts no thread and opens no connection: the worker starts on first use.

        :raises ConfigurationError: the app already has an ``AsyncEndpoints``, or a
            configuration value is invalid.
        """
        if "async_endpoints" in app.extensions:
            raise ConfigurationError(
                "This app already has an AsyncEndpoints extension; use the existing "
                "instance (app.extensions['async_endpoints'])."
            )
        for key, default in DEFAULTS.items():
            if default is not None:
                app.config.setdefault(PREFIX + key, default)
        settings = Settings.from_config(app.config, debug=app.debug)
        target = self._store_arg if self._store_arg is not None else settings.store_url
        store = open_store(
            target,
            prefix=settings.key_prefix,
            socket_timeout=min(10.0, settings.claim_timeout_seconds / 3),
        )
        app_ref = weakref.ref(app)

        def app_context() -> Any:
            bound = app_ref()
            if bound is None:
                raise RuntimeError("the Flask app of this job no longer exists")
            return bound.app_context()

        def on_event(event: str, job: Job, **details: Any) -> None:
            bound = app_ref()
            if bound is not None:
                SIGNALS[event].send(bound, job=job, **details)

        manager = JobManager(store, settings, self._handlers, app_context, on_event)
        self._states[app] = AppState(
            settings=settings,
            store=store,
            manager=manager,
            events=hub_of(store),
            config_read={k: v for k, v in app.config.items() if k.startswith(PREFIX)},
        )
        app.extensions["async_endpoints"] = self
        INSTANCES.add(self)

        app.add_url_rule(
            f"{settings.jobs_url}/<job_id>",
            endpoint="async_endpoints.job",
            view_func=job_view(self),
            methods=["GET", "DELETE"],
        )
        app.add_url_rule(
            settings.jobs_url,
            endpoint="async_endpoints.jobs",
            view_func=list_view(self),
            methods=["GET"],
        )
        app.add_url_rule(
            f"{settings.jobs_url}/<job_id>/events",
            endpoint="async_endpoints.job_events",
            view_func=events_view(self),
            methods=["GET"],
        )
        for spec in self._handlers.values():
            self._install(app, spec)
        if settings.dashboard_url is not None:
            from async_endpoints.dashboard import dashboard_blueprint

            app.register_blueprint(dashboard_blueprint(self, settings.dashboard_url))
        app.before_request(self._before_request)

        from async_endpoints.cli import cli

        app.cli.add_command(cli)
        if _marked_gunicorn_worker():
            from async_endpoints.gunicorn import warn_if_memory_store

            warn_if_memory_store(store)
            if settings.start_worker:
                self._ensure_worker(self._states[app])

    def _install(self, app: Flask, spec: HandlerSpec) -> None:
        if spec.schedule is not None:
            return  # a periodic job has no route
        app.add_url_rule(
            spec.rule,
            endpoint=f"async_endpoints.{spec.name}",
            view_func=submit_view(self, spec),
            methods=[spec.method],
        )

    def _before_request(self) -> None:
        state = self._current_state()
        if state is not None:
            if state.config_read is not None:
                _warn_of_late_config(state.config_read, current_app.config)
                state.config_read = None
            self._ensure_worker(state)

    # -- handlers ------------------------------------------------------------------

    def post(
        self,
        rule: str,
        name: str | None = None,
        *,
        request_model: type[Any] | None = None,
        validate: Validator | None = None,
        max_retries: int | None = None,
        concurrency: int | None = None,
        rate_limit: str | None = None,
    ) -> Callable[[_H], _H]:
        """Register a handler for ``POST rule``; returns the function unchanged.

        :param rule: the URL rule, e.g. ``"/api/<tenant>/reports"``.
        :param name: the job name; defaults to the function's name.
        :param request_model: a dataclass or pydantic model the JSON body must fit
            (else ``422``); the handler gets an instance as ``ctx.request``.
        :param validate: ``validate(ctx)`` runs in the request before queuing; if
            it returns a response, that is sent and no job is made.
        :param max_retries: retries after the first attempt (default
            ``ASYNC_ENDPOINTS_MAX_RETRIES``).
        :param concurrency: at most this many of its jobs run at once, across
            every process and machine; the others wait, Queued.
        :param rate_limit: at most ``"N/second"``, ``"N/minute"`` or ``"N/hour"``
            of its jobs start in any such interval, across every process.
        :raises ConfigurationError: a handler of that name exists, or an option
            is invalid.
        """
        return self._register(
            "POST",
            rule,
            name,
            request_model,
            validate,
            max_retries,
            concurrency=concurrency,
            rate_limit=rate_limit,
        )

    def put(
        self,
        rule: str,
        name: str | None = None,
        *,
        request_model: type[Any] | None = None,
        validate: Validator | None = None,
        max_retries: int | None = None,
        concurrency: int | None = None,
        rate_limit: str | None = None,
    ) -> Callable[[_H], _H]:
        """Register a handler for ``PUT rule``; see :meth:`post`."""
        return self._register(
            "PUT",
            rule,
            name,
            request_model,
            validate,
            max_retries,
            concurrency=concurrency,
            rate_limit=rate_limit,
        )

    def patch(
        self,
        rule: str,
        name: str | None = None,
        *,
        request_model: type[Any] | None = None,
        validate: Validator | None = None,
        max_retries: int | None = None,
        concurrency: int | None = None,
        rate_limit: str | None = None,
    ) -> Callable[[_H], _H]:
        """Register a handler for ``PATCH rule``; see :meth:`post`."""
        return self._register(
            "PATCH",
            rule,
            name,
            request_model,
            validate,
            max_retries,
            concurrency=concurrency,
            rate_limit=rate_limit,
        )

    def delete(
        self,
        rule: str,
        name: str | None = None,
        *,
        request_model: type[Any] | None = None,
        validate: Validator | None = None,
        max_retries: int | None = None,
        concurrency: int | None = None,
        rate_limit: str | None = None,
    ) -> Callable[[_H], _H]:
        """Register a handler for ``DELETE rule``; see :meth:`post`."""
        return self._register(
            "DELETE",
            rule,
            name,
            request_model,
            validate,
            max_retries,
            concurrency=concurrency,
            rate_limit=rate_limit,
        )

    def periodic(
        self,
        *,
        every: timedelta | float | None = None,
        cron: str | None = None,
        name: str | None = None,
        tz: str | tzinfo | None = None,
        max_retries: int | None = None,
    ) -> Callable[[_H], _H]:
        """Register a periodic job: the decorated function (taking an
        :class:`AsyncContext`, with no request) runs once per tick, as one job
        across every process and machine, with the usual retries.

        :param every: the interval (ticks at its whole multiples since the epoch).
        :param cron: or a cron expression, e.g. ``"*/5 * * * *"`` (needs the
            ``cron`` extra), read in ``tz`` (UTC by default).
        :param name: the job name; the function's name by default.
        :raises ConfigurationError: neither or both of ``every`` and ``cron``, or
            an invalid one.
        """
        schedule = Schedule.build(every=every, cron=cron, tz=tz)
        return self._register("", "", name, None, None, max_retries, schedule=schedule)

    def _register(
        self,
        method: str,
        rule: str,
        name: str | None,
        request_model: type[Any] | None,
        validate: Validator | None,
        max_retries: int | None,
        *,
        schedule: Schedule | None = None,
        concurrency: int | None = None,
        rate_limit: str | None = None,
    ) -> Callable[[_H], _H]:
        if concurrency is not None and (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or concurrency < 1
        ):
            raise ConfigurationError(
                f"concurrency= must be a whole number >= 1, not {concurrency!r}."
            )
        rate = _rate(rate_limit)
        if validate is not None and not callable(validate):
            raise ConfigurationError(f"validate= must be callable, not {validate!r}.")
        if max_retries is not None and (
            not isinstance(max_retries, int) or max_retries < 0
        ):
            raise ConfigurationError(
                f"max_retries= must be a whole number >= 0, not {max_retries!r}."
            )
        if request_model is not None and not (
            hasattr(request_model, "model_validate")
            or hasattr(request_model, "__dataclass_fields__")
        ):
            raise ConfigurationError(
                f"request_model={request_model!r} must be a dataclass or a pydantic "
                "model."
            )

        def decorator(func: _H) -> _H:
            job_name = name or func.__name__
            if job_name in self._handlers:
                raise ConfigurationError(
                    f"A handler named {job_name!r} is already registered; give this "
                    "one another name= ."
                )
            spec = HandlerSpec(
                name=job_name,
                method=method,
                rule=rule,
                func=func,
                request_model=request_model,
                validate=validate,
                max_retries=max_retries,
                schedule=schedule,
                concurrency=concurrency,
                rate_limit=rate,
            )
            self._handlers[job_name] = spec
            for app in list(self._states.keys()):
                self._install(app, spec)
            return func

        return decorator

    def job_owner(self, func: OwnerFunc) -> OwnerFunc:
        """Decorate the function that names the owner of the current request.

        It runs in the request when a job is submitted; a job with an owner is
        visible through HTTP only to requests with the same owner (others get 404).
        """
        self._owner_func = func
        return func

    def dashboard_access(self, func: AccessFunc) -> AccessFunc:
        """Decorate the function that decides what the current request may do
        on the dashboard (``ASYNC_ENDPOINTS_DASHBOARD_URL``): ``"read"`` (look),
        ``"write"`` (also retry, cancel, purge) or ``None`` (``403``). Without
        it the dashboard refuses every request.
        """
        self._access_func = func
        return func

    def submitted_response(self, func: ResponseHook) -> ResponseHook:
        """Decorate ``func(job, response) -> response`` to change the submit answer."""
        self._submitted_response = func
        return func

    def status_response(self, func: ResponseHook) -> ResponseHook:
        """Decorate ``func(job, response) -> response`` to change status answers."""
        self._status_response = func
        return func

    # -- jobs from Python --------------------------------------------------------

    def submit(
        self,
        name: str,
        payload: Any = None,
        *,
        headers: dict[str, str] | None = None,
        route_params: dict[str, str] | None = None,
        query_params: dict[str, list[str]] | None = None,
        owner: str | None = None,
        callback_url: str | None = None,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
    ) -> Job:
        """Queue a job for the handler ``name`` from Python (needs an app context).

        Submitting starts no worker in this process: outside a request (a script,
        a CLI command) the job waits for a worker elsewhere (a web process, or
        ``flask async-endpoints worker``).

        :param payload: the request body (JSON data or a ``request_model`` instance).
        :param owner: the job's owner; by default the ``@job_owner`` function's
            answer inside a request, else none.
        :param callback_url: receives one signed ``POST`` when the job ends (its
            host must be in ``ASYNC_ENDPOINTS_CALLBACK_HOSTS``).
        :param delay: run it no sooner than this many seconds from now (it is
            ``Scheduled`` until then).
        :param at: or no sooner than this moment (an aware ``datetime``).
        :raises ValueError: both ``delay`` and ``at``, a negative delay, or a
            naive ``at``.
        :raises QueueFullError: the queue is full (``retry_after`` says when to retry).
        :raises CallbackRefusedError: ``callback_url`` is not one to call.
        """
        state = self._state()
        due_at = _due_at(delay, at)
        if owner is None:
            owner = self._current_owner()
        job = state.manager.submit(
            name,
            payload,
            headers=headers,
            route_params=route_params,
            query_params=query_params,
            owner=owner,
            callback_url=callback_url,
            due_at=due_at,
        )
        # No worker is started here: a script or CLI command that submits and
        # exits would strand the jobs its worker claimed. Workers start on the
        # first request, in gunicorn's post_fork, or in the CLI worker.
        return job

    def get_job(self, job_id: UUID | str) -> Job | None:
        """The job with this id, or ``None`` (unknown, malformed or expired)."""
        parsed = parse_job_id(job_id)
        return None if parsed is None else self._state().manager.get(parsed)

    def cancel(self, job_id: UUID | str) -> Job:
        """Cancel a waiting job, or ask a running one to stop.

        :raises JobNotFoundError: (a ``LookupError``) no such job.
        :raises JobFinishedError: the job already ended (HTTP meaning 409).
        """
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise JobNotFoundError(f"No job with id '{job_id}'.")
        return self._state().manager.cancel(parsed)

    def run_due_jobs(self) -> int:
        """Recover expired leases, then run every job due now in this thread.

        For tests: with ``ASYNC_ENDPOINTS_START_WORKER = False`` nothing runs in
        the background. A retry scheduled by this call waits for a later one.

        :returns: how many jobs ran.
        """
        state = self._state()
        return state.manager.run_due_jobs(state.sync_owner)

    def shutdown(self, grace: float | None = None) -> None:
        """Stop this process's worker: finish running jobs within the grace period
        (``ASYNC_ENDPOINTS_SHUTDOWN_GRACE_SECONDS``), hand the rest back.

        Inside an app context it stops that app's worker, otherwise every app's.
        """
        current = self._current_state()
        states = [current] if current is not None else list(self._states.values())
        for state in states:
            state.events.close()  # open event streams end
            with state.lock:
                worker, state.worker = state.worker, None
            if worker is not None and worker.pid == os.getpid():
                worker.stop(grace)

    def openapi(self, *, title: str = "Jobs API") -> dict[str, Any]:
        """An OpenAPI 3.1 document of this app's handlers and job endpoints.

        Serve it as JSON, e.g. ``app.get("/openapi.json")(ae.openapi)`` or from
        your own view (needs an app context).
        """
        from async_endpoints.openapi import build_openapi

        state = self._state()
        return build_openapi(
            self._handlers.values(), jobs_url=state.settings.jobs_url, title=title
        )

    # -- internals -------------------------------------------------------------

    def _start_workers(self) -> None:
        """Start the worker of every app of this extension (after a fork)."""
        from async_endpoints.gunicorn import warn_if_memory_store

        for state in list(self._states.values()):
            warn_if_memory_store(state.store)
            self._ensure_worker(state)

    def _current_state(self) -> AppState | None:
        if not has_app_context():
            return None
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        return self._states.get(app)

    def _state(self) -> AppState:
        if not has_app_context():
            raise ConfigurationError(
                "Working outside of an application context; use "
                "'with app.app_context():'."
            )
        state = self._current_state()
        if state is None:
            raise ConfigurationError(
                "AsyncEndpoints is not initialised on this app; did you call "
                "init_app(app)?"
            )
        return state

    def _current_owner(self) -> str | None:
        if self._owner_func is None or not has_request_context():
            return None
        owner = self._owner_func()
        # An empty owner is no owner, for visibility and idempotency alike.
        return str(owner) if owner else None

    def _ensure_worker(self, state: AppState) -> None:
        if not state.settings.start_worker:
            return
        worker = state.worker
        if worker is not None and worker.pid == os.getpid():
            return
        with state.lock:
            worker = state.worker
            if worker is not None and worker.pid == os.getpid():
                return
            # A worker inherited through fork() has no threads here: discard it.
            state.worker = Worker(state.manager)
            state.worker.start()
            if _marked_gunicorn_worker():
                from async_endpoints.gunicorn import register_worker

                # The URL of the store in use: a store object passed in cannot be
                # described (its jobs keep lease-based recovery).
                given = self._store_arg
                url = given if given is not None else state.settings.store_url
                register_worker(url, state.settings, state.worker.owner)


def _warn_of_late_config(read: dict[str, object], config: Mapping[str, Any]) -> None:
    """Log the ``ASYNC_ENDPOINTS_*`` keys set or changed after ``init_app``
    read them: they have no effect, and nothing else would say so."""
    now = {k: v for k, v in config.items() if k.startswith(PREFIX)}
    late = sorted(k for k in read.keys() | now.keys() if read.get(k) != now.get(k))
    if late:
        logger.warning(
            "%s changed after AsyncEndpoints read the configuration, so the "
            "change has no effect: set ASYNC_ENDPOINTS_* keys in app.config before "
            "AsyncEndpoints(app) or ae.init_app(app)",
            ", ".join(late),
        )


def _marked_gunicorn_worker() -> bool:
    from async_endpoints import gunicorn

    return gunicorn.marked_pid() == os.getpid()


def _due_at(delay: float | timedelta | None, at: datetime | None) -> float | None:
    """When a job submitted with ``delay=`` or ``at=`` may run (epoch seconds)."""
    if delay is not None and at is not None:
        raise ValueError("give delay= or at=, not both")
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if not seconds >= 0:
            raise ValueError(f"delay= must be >= 0 seconds, not {delay!r}")
        return time.time() + float(seconds)
    if at is not None:
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(
                "at= must be an aware datetime (e.g. datetime(..., tzinfo=UTC))"
            )
        return at.timestamp()
    return None


_RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600}


def _rate(value: str | None) -> str | None:
    """``"100/minute"`` as the store keeps it, ``"100/60"``."""
    if value is None:
        return None
    count, _, unit = str(value).partition("/")
    seconds = _RATE_UNITS.get(unit.strip().lower().removesuffix("s"))
    if not count.strip().isdigit() or int(count) < 1 or seconds is None:
        raise ConfigurationError(
            f"rate_limit={value!r} must look like '100/minute' (per second, minute "
            "or hour, at least 1)."
        )
    return f"{int(count)}/{seconds}"

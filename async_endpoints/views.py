"""The HTTP side: submit views, job status views, and problem+json errors.

Domain errors know nothing of HTTP; :data:`ERROR_MAP` is the one table that maps
them to a status, a title and an optional ``Retry-After``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar

from flask import Response, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from async_endpoints.context import AsyncContext, Headers
from async_endpoints.errors import (
    AsyncEndpointsError,
    CallbackRefusedError,
    IdempotencyConflictError,
    InvalidParameterError,
    InvalidRequestError,
    JobFinishedError,
    JobNotFoundError,
    OwnerQuotaError,
    PayloadTooLargeError,
    QueueFullError,
    StoreUnavailableError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from async_endpoints.events import Follower, changed_since
from async_endpoints.jobs import Job, JobStatus, parse_job_id, retry_after_seconds
from async_endpoints.models import parse_model

if TYPE_CHECKING:
    from async_endpoints.manager import HandlerSpec
    from async_endpoints.state import AppState, Extension

logger = logging.getLogger(__name__)

#: exception type -> (status, title, Retry-After seconds or None); first match wins.
ERROR_MAP: Final[list[tuple[type[Exception], int, str, float | None]]] = [
    (JobNotFoundError, 404, "Job not found", None),
    (JobFinishedError, 409, "Job already finished", None),
    (OwnerQuotaError, 429, "Too many waiting jobs", 1.0),
    (QueueFullError, 429, "Queue full", 1.0),
    (UnsupportedMediaTypeError, 415, "Unsupported media type", None),
    (PayloadTooLargeError, 413, "Request body too large", None),
    (ValidationError, 422, "Invalid request body", None),
    (IdempotencyConflictError, 422, "Idempotency key reused", None),
    (CallbackRefusedError, 422, "Callback refused", None),
    (InvalidParameterError, 400, "Invalid query parameter", None),
    (InvalidRequestError, 400, "Malformed request body", None),
    (StoreUnavailableError, 503, "Job store unavailable", 5.0),
]

PROBLEM_JSON: Final = "application/problem+json"
_WAIT_RE: Final = re.compile(
    r"(?:^|[;,])\s*wait\s*=\s*\"?([0-9]+)\"?\s*(?=$|[;,])", re.I
)
_SECONDS_RE: Final = re.compile(r"[0-9]+")
KEEP_ALIVE_SECONDS: Final = 15.0
"""How often an idle event stream sends a comment line, in seconds."""

_F = TypeVar("_F", bound=Callable[..., ResponseReturnValue])


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    retry_after: float | None = None,
    **extra: Any,
) -> Response:
    """An RFC 9457 ``application/problem+json`` response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    body.update(extra)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after_seconds(retry_after))
    return response


def error_response(exc: Exception) -> Response:
    """The problem response for a domain error or an HTTP error."""
    for kind, status, title, retry_after in ERROR_MAP:
        if isinstance(exc, kind):
            extra: dict[str, Any] = {}
            if isinstance(exc, ValidationError):
                extra["errors"] = exc.errors
            if isinstance(exc, QueueFullError):
                retry_after = exc.retry_after
            detail = str(exc)
            if isinstance(exc, StoreUnavailableError):
                # The full story (which server, which setting) is for the log,
                # not for HTTP clients.
                logger.warning("job store unavailable: %s", exc)
                detail = "The job store cannot be reached right now; try again later."
            return problem(status, title, detail, retry_after=retry_after, **extra)
    if isinstance(exc, HTTPException) and exc.code is not None:
        return problem(exc.code, exc.name, exc.description or exc.name)
    raise exc


def problems(view: _F) -> _F:
    """Answer our errors (and Werkzeug's, e.g. 413) as problem+json."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        try:
            return view(*args, **kwargs)
        except (AsyncEndpointsError, HTTPException) as exc:
            return error_response(exc)

    return wrapper  # type: ignore[return-value]


def job_response(
    state: AppState, job: Job, status: int = 200, *extra: tuple[str, str]
) -> Response:
    """The job JSON with ``Location``, while pending ``Retry-After``, and ``extra``
    headers."""
    body = job.to_dict(expose_traceback=state.settings.expose_tracebacks)
    headers = [("Location", jobs_location(state, job)), *extra]
    if not job.status.is_finished:
        wait = 1.0
        if job.due_at is not None and job.status.is_waiting:
            wait = max(1.0, job.due_at - time.time())
        headers.append(("Retry-After", str(retry_after_seconds(wait))))
    return Response(
        json.dumps(body), status=status, headers=headers, mimetype="application/json"
    )


def jobs_location(state: AppState, job: Job) -> str:
    """The path of the job's status resource."""
    return f"{request.script_root}{state.settings.jobs_url}/{job.id}"


def read_body(max_bytes: int = 0) -> Any:
    """The request's JSON body, or ``None`` when there is none.

    :param max_bytes: the largest body taken (0: no limit of ours); Flask's
        ``MAX_CONTENT_LENGTH`` still applies when it is lower. A body whose
        ``Content-Length`` is larger is refused before it is read.
    :raises PayloadTooLargeError: the body is larger than ``max_bytes``.
    :raises UnsupportedMediaTypeError: a body in a non-JSON content type.
    :raises InvalidRequestError: malformed JSON.
    """
    app_limit = request.max_content_length
    ours = max_bytes > 0 and (app_limit is None or max_bytes < app_limit)
    limit = max_bytes if ours else app_limit
    if limit is not None and request.content_length is None:
        # Without Content-Length (chunked) the reader stops at the maximum without
        # an error: read one byte more, so that a longer body is seen and refused
        # instead of being cut to the limit.
        request.max_content_length = limit + 1
    elif ours:
        request.max_content_length = max_bytes
    try:
        data = request.get_data(cache=True)
        if limit is not None and len(data) > limit:
            raise RequestEntityTooLarge()
    except RequestEntityTooLarge:
        if not ours:
            raise
        raise PayloadTooLargeError(
            f"The request body is larger than {max_bytes} bytes "
            "(ASYNC_ENDPOINTS_MAX_REQUEST_BYTES)."
        ) from None
    if not data:
        return None
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaTypeError(
            f"The body's content type is {mimetype or 'not given'!r}; send JSON "
            "with 'Content-Type: application/json'."
        )
    try:
        return json.loads(data, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"The body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequestError("The body's JSON is nested too deeply.") from None


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259), though Python's parser takes them.
    raise ValueError(f"{name} is not a JSON value")


def request_headers() -> dict[str, str]:
    """The request's headers by lower-case name, repeated ones joined with ``", "``."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
    return headers


def wait_seconds(value: str | None, cap: float) -> int | None:
    """The ``wait=N`` of a ``Prefer`` header, capped; ``None`` if absent or bad."""
    if not value:
        return None
    match = _WAIT_RE.search(value)
    if match is None:
        return None
    return _capped(match.group(1), cap)


def _capped(digits: str, cap: float) -> int:
    """Whole seconds from ASCII digits, at most ``cap`` (any length of digits)."""
    # Ten significant digits are above any cap; Python's int() refuses numbers of
    # thousands of digits, so longer ones are not parsed in full.
    significant = digits.lstrip("0")[:11] or "0"
    return int(min(int(significant), cap))


def submit_view(
    ext: Extension, spec: HandlerSpec
) -> Callable[..., ResponseReturnValue]:
    """The view of a handler's route: validate, queue, answer 202."""

    @problems
    def view(**route_params: Any) -> ResponseReturnValue:
        state = ext._state()
        payload = read_body(state.settings.max_request_bytes)
        headers = request_headers()
        query = request.args.to_dict(flat=False)
        route = {k: str(v) for k, v in route_params.items()}
        owner = ext._current_owner()
        key = headers.get("idempotency-key") or headers.get("async-job-id")
        job = None
        if key is not None:
            job = state.manager.find_idempotent(
                spec.name,
                key,
                payload,
                route_params=route,
                query_params=query,
                owner=owner,
            )
        if job is None:
            request_obj = payload
            if spec.request_model is not None:
                request_obj = parse_model(spec.request_model, payload)
            if spec.validate is not None:
                ctx = AsyncContext(
                    request=request_obj,
                    headers=Headers(state.manager.filter_headers(headers)),
                    route_params=route,
                    query_params=query,
                )
                rejection = spec.validate(ctx)
                if rejection is not None:
                    return rejection  # type: ignore[return-value]
            job = state.manager.submit(
                spec.name,
                payload,
                payload_is_json=True,
                headers=headers,
                route_params=route,
                query_params=query,
                owner=owner,
                idempotency_key=key,
                callback_url=headers.get("callback-url"),
            )
        ext._ensure_worker(state)
        wait = wait_seconds(headers.get("prefer"), state.settings.max_wait_seconds)
        extra = [("Vary", "Prefer")]
        status = 202
        if wait:
            # Answered with the job as it is when the wait ends, finished or not.
            job = state.manager.wait_for_end(job.id, wait) or job
            extra.append(("Preference-Applied", f"wait={wait}"))
            if job.status.is_finished:
                status = 200
        response = job_response(state, job, status, *extra)
        if ext._submitted_response is not None:
            return ext._submitted_response(job, response)
        return response

    return view


def _job_or_404(ext: Extension, state: AppState, job_id: str) -> Job:
    parsed = parse_job_id(job_id)
    if parsed is None:
        raise JobNotFoundError(f"No job with id '{job_id[:64]}'.")
    job = state.manager.get(parsed)
    if job is None or (job.owner is not None and job.owner != ext._current_owner()):
        raise JobNotFoundError(f"No job with id '{job_id}'.")
    return job


def job_view(ext: Extension) -> Callable[..., ResponseReturnValue]:
    """``GET``/``DELETE <jobs url>/<id>``: status and cancellation."""

    @problems
    def view(job_id: str) -> ResponseReturnValue:
        state = ext._state()
        job = _job_or_404(ext, state, job_id)
        extra: list[tuple[str, str]] = []
        if request.method == "DELETE":
            job = state.manager.cancel(job.id)
        elif "wait" in request.args:
            raw = request.args["wait"]
            if _SECONDS_RE.fullmatch(raw) is None:
                raise InvalidParameterError(
                    f"wait={raw[:20]!r} is not a whole number of seconds."
                )
            wait = _capped(raw, state.settings.max_wait_seconds)
            # Says how long the server waited at most, so that a capped wait
            # is not silent.
            extra.append(("Wait-Applied", str(wait)))
            if wait > 0 and not job.status.is_finished:
                job = state.manager.wait_for_end(job.id, wait) or job
        response = job_response(state, job, 200, *extra)
        if ext._status_response is not None:
            return ext._status_response(job, response)
        return response

    return view


def events_view(ext: Extension) -> Callable[..., ResponseReturnValue]:
    """``GET <jobs url>/<id>/events``: the job's changes as Server-Sent Events."""

    @problems
    def view(job_id: str) -> ResponseReturnValue:
        state = ext._state()
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise JobNotFoundError(f"No job with id '{job_id[:64]}'.")
        raw_last = request.headers.get("Last-Event-ID", "").strip()
        last = int(raw_last) if _SECONDS_RE.fullmatch(raw_last[:18]) else None
        job = state.manager.get(parsed)
        if job is None or (job.owner is not None and job.owner != ext._current_owner()):
            raise JobNotFoundError(f"No job with id '{job_id}'.")
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":
            return Response(mimetype="text/event-stream", headers=headers)
        # Followed before it is read again: a change after the read is not missed.
        follower = state.events.follow(parsed)
        try:
            job = state.manager.watch(parsed)
            if job is None:
                raise JobNotFoundError(f"No job with id '{job_id}'.")
        except BaseException:
            follower.close()
            raise
        return Response(
            _EventStream(_stream(state, follower, job, last), follower),
            mimetype="text/event-stream",
            headers=headers,
        )

    return view


class _EventStream:
    """A stream's body: its events, and a ``close`` that stops following even
    when the server never started reading (a HEAD, a client gone at once)."""

    def __init__(self, events: Iterator[str], follower: Follower) -> None:
        self._events = events
        self._follower = follower

    def __iter__(self) -> Iterator[str]:
        return self._events

    def close(self) -> None:
        self._follower.close()
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


def _stream(
    state: AppState, follower: Follower, job: Job, last: int | None
) -> Iterator[str]:
    """The events of one stream: the job now (unless the client has it), then
    each state it takes, until it ends, the stream's time is up, or the process
    stops."""
    expose = state.settings.expose_tracebacks
    deadline = time.monotonic() + state.settings.max_stream_seconds

    def event(job: Job) -> str:
        body = json.dumps(job.to_dict(expose_traceback=expose))
        return f"event: job\nid: {job.version}\ndata: {body}\n\n"

    try:
        if changed_since(job, last):
            yield event(job)
        else:
            # Nothing to send yet: the client gets the headers now, not with
            # the first change.
            yield ": following\n\n"
        if job.status.is_finished:
            return
        # A Last-Event-ID from ahead of the job (another store, a typo) is not
        # trusted to hold back the job's next states.
        sent = job.version if last is None or last > job.version else last
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or follower.stopped:
                return
            news = follower.wait(min(KEEP_ALIVE_SECONDS, remaining))
            if follower.stopped:
                return
            if not news:
                yield ": keep-alive\n\n"
                continue
            for n, item in enumerate(news):
                if item is None and any(later is not None for later in news[n + 1 :]):
                    # Announcements may have been missed before the states that
                    # follow: those are newer, and each of them is sent.
                    continue
                if item is None:  # announcements may have been missed
                    try:
                        item = state.manager.get(job.id)
                    except StoreUnavailableError as exc:
                        # The client reconnects (Last-Event-ID) once it is back.
                        logger.warning("event stream of job %s ended: %s", job.id, exc)
                        return
                    if item is None:  # expired or purged
                        return
                if item.version > sent or item.status.is_finished:
                    sent = item.version
                    yield event(item)
                    if item.status.is_finished:
                        return
    finally:
        follower.close()


MAX_PAGE: Final = 100
"""The largest ``limit`` of a listing page."""


def list_view(ext: Extension) -> Callable[..., ResponseReturnValue]:
    """``GET <jobs url>?status=&name=&limit=&cursor=``: the caller's jobs, newest
    first, a page at a time."""

    @problems
    def view() -> ResponseReturnValue:
        state = ext._state()
        scoped = ext._owner_func is not None
        if not scoped and not state.settings.list_jobs:
            return problem(
                404,
                "Not Found",
                "Listing jobs is off: it needs a @job_owner function (each caller "
                "sees their own jobs) or ASYNC_ENDPOINTS_LIST_JOBS = True.",
            )
        args = request.args
        status = parse_status(args.get("status"))
        raw_limit = args.get("limit") or "20"  # limit= (empty): the default
        if _SECONDS_RE.fullmatch(raw_limit) is None or not (
            1 <= int(raw_limit[:4]) <= MAX_PAGE and len(raw_limit) <= 3
        ):
            raise InvalidParameterError(
                f"limit={raw_limit[:20]!r} must be a whole number from 1 to {MAX_PAGE}."
            )
        cursor = args.get("cursor") or None
        owner = ext._current_owner() if scoped else None
        if scoped and owner is None:
            jobs: list[Job] = []  # no owner, no jobs of one's own
            nxt = None
        else:
            jobs, nxt = state.manager.list_page(
                status=status,
                name=args.get("name") or None,
                owner=owner,
                limit=int(raw_limit),
                cursor=cursor,
            )
        expose = state.settings.expose_tracebacks
        body = {
            "jobs": [job.to_dict(expose_traceback=expose) for job in jobs],
            "nextCursor": nxt,
        }
        return Response(json.dumps(body), mimetype="application/json")

    return view


def parse_status(value: str | None) -> JobStatus | None:
    """A ``status`` query parameter: ``None`` when absent.

    :raises InvalidParameterError: not one of the statuses.
    """
    if not value:
        return None
    try:
        return JobStatus(value)
    except ValueError:
        names = ", ".join(s.value for s in JobStatus)
        raise InvalidParameterError(
            f"status={value[:40]!r} is not a job status (one of {names})."
        ) from None

"""The operator dashboard at ``ASYNC_ENDPOINTS_DASHBOARD_URL``: an overview, a
job list with filters and search, a job page, and retry / cancel / purge.

Rendered on the server with Flask's Jinja; a few lines of plain JavaScript
refresh the counts. Access is decided per request by the ``@ae.dashboard_access``
function (``"read"``, ``"write"`` or ``None``); without it every request gets
``403``. Actions are POSTs that carry a CSRF token (a random value in a
``SameSite=Strict`` cookie, repeated in the form).
"""

from __future__ import annotations

import hmac
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    redirect,
    render_template,
    request,
    url_for,
)

from async_endpoints.errors import (
    AsyncEndpointsError,
    InvalidParameterError,
    JobFinishedError,
    JobNotFoundError,
)
from async_endpoints.jobs import Job, JobStatus, format_timestamp, parse_job_id
from async_endpoints.views import error_response, parse_status

if TYPE_CHECKING:
    from flask.typing import ResponseReturnValue

    from async_endpoints.extension import AsyncEndpoints
    from async_endpoints.state import AppState

CSRF_COOKIE: Final = "ae_dashboard_csrf"
PAGE_SIZE: Final = 50
REFRESH_MS = 5000
"""How often the overview's counts refresh, in milliseconds."""
_ACCESS: Final = ("read", "write")


def dashboard_blueprint(ext: AsyncEndpoints, url: str) -> Blueprint:
    """The dashboard's routes under ``url``, for one app."""
    bp = Blueprint(
        "async_endpoints_dashboard",
        __name__,
        url_prefix=url,
        template_folder="templates",
    )

    def access() -> str:
        func = ext._access_func
        level = func() if func is not None else None
        if level not in _ACCESS:
            abort(403)
        return str(level)

    def state() -> AppState:
        return ext._state()

    def csrf_token() -> str:
        token = request.cookies.get(CSRF_COOKIE)
        if token is None or len(token) != 43:
            token = secrets.token_urlsafe(32)
        return token

    def page(template: str, **context: Any) -> Response:
        token = csrf_token()
        body = render_template(
            f"async_endpoints/{template}",
            base=url,
            level=context.pop("level"),
            csrf=token,
            statuses=[s.value for s in JobStatus],
            ts=format_timestamp,
            refresh_ms=REFRESH_MS,
            **context,
        )
        response = Response(body, mimetype="text/html")
        response.set_cookie(
            CSRF_COOKIE,
            token,
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
            path=url,
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
        )
        return response

    def check_write() -> None:
        if access() != "write":
            abort(403)
        # The form must come from this site's own page: a browser names the page's
        # origin (Origin, else Referer) on a POST; and it must carry the token of
        # the cookie (a cookie another subdomain planted does not pass the first
        # test).
        origin = request.headers.get("Origin") or _origin(request.referrer or "")
        if origin != request.host_url.rstrip("/"):
            abort(403)
        cookie = request.cookies.get(CSRF_COOKIE, "").encode()
        sent = request.form.get("csrf", "").encode()
        if not cookie or not hmac.compare_digest(cookie, sent):
            abort(403)

    @bp.errorhandler(AsyncEndpointsError)
    def store_error(exc: AsyncEndpointsError) -> ResponseReturnValue:
        # Store outages answer 503 (with Retry-After), as on the API.
        return error_response(exc)

    @bp.get("/")
    def overview() -> ResponseReturnValue:
        level = access()
        st = state()
        args = request.args
        try:
            status = parse_status(args.get("status"))
        except InvalidParameterError:
            abort(400)
        name = args.get("name") or None
        owner = args.get("owner") or None
        query = (args.get("q") or "").strip()
        if query:
            found = _search(st, query, owner)
            if found is not None:
                return redirect(url_for(".job", job_id=str(found.id)))
        try:
            jobs, nxt = st.manager.list_page(
                status=status,
                name=name,
                owner=owner,
                limit=PAGE_SIZE,
                cursor=args.get("cursor") or None,
            )
        except InvalidParameterError:
            abort(400)
        return page(
            "dashboard.html",
            level=level,
            overview=_overview(st),
            jobs=jobs,
            next_cursor=nxt,
            handlers=sorted(st.manager.handlers),
            filters={
                "status": status.value if status else "",
                "name": name or "",
                "owner": owner or "",
                "q": query,
            },
            not_found=bool(query),
        )

    @bp.get("/stats.json")
    def stats() -> ResponseReturnValue:
        access()
        return _overview(state())

    @bp.get("/jobs/<job_id>")
    def job(job_id: str) -> ResponseReturnValue:
        level = access()
        parsed = parse_job_id(job_id)
        found = state().manager.get(parsed) if parsed is not None else None
        if found is None:
            abort(404)
        return page("job.html", level=level, job=found, data=found.to_dict())

    @bp.post("/jobs/<job_id>/<action>")
    def act(job_id: str, action: str) -> ResponseReturnValue:
        check_write()
        parsed = parse_job_id(job_id)
        if parsed is None or action not in ("retry", "cancel"):
            abort(404)
        manager = state().manager
        try:
            if action == "retry":
                manager.retry(parsed)
            else:
                manager.cancel(parsed)
        except JobNotFoundError:
            abort(404)
        except JobFinishedError as exc:
            return Response(str(exc), status=409, mimetype="text/plain")
        return redirect(url_for(".job", job_id=str(parsed)), code=303)

    @bp.post("/purge")
    def purge() -> ResponseReturnValue:
        check_write()
        try:
            status = JobStatus(request.form.get("status", ""))
            hours = float(request.form.get("older_than_hours", "24"))
        except ValueError:
            abort(400)
        if not status.is_finished or hours < 0:
            abort(400)
        try:
            state().manager.purge(status, hours * 3600)
        except AsyncEndpointsError:
            abort(400)
        return redirect(url_for(".overview"), code=303)

    return bp


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, or ``""``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def _search(st: AppState, query: str, owner: str | None) -> Job | None:
    """The job a search names: by id, else by idempotency key (of ``owner``)."""
    job_id = parse_job_id(query)
    if job_id is not None:
        return st.manager.get(job_id)
    return st.manager.find_by_idempotency_key(query, owner)


def _overview(st: AppState) -> dict[str, Any]:
    """What the overview shows (and ``stats.json`` answers)."""
    manager = st.manager
    stats = manager.stats()
    per_minute = manager.finished_per_minute(60)
    now = time.time()
    this_minute = int(now // 60)
    return {
        "counts": {s.value: stats.counts.get(s, 0) for s in JobStatus},
        "handlers": manager.handler_counts(),
        "limits": manager.limit_usage(),
        "queueDepth": stats.queue_depth,
        "oldestWaitingAt": format_timestamp(stats.oldest_waiting_at),
        "oldestWaitingSeconds": (
            None
            if stats.oldest_waiting_at is None
            else max(0, round(now - stats.oldest_waiting_at))
        ),
        "workers": {
            name: format_timestamp(seen) for name, seen in sorted(stats.workers.items())
        },
        "finishedLastMinute": per_minute.get(this_minute - 1, 0),
        "finishedLastHour": sum(per_minute.values()),
        "finishedPerMinute": [per_minute[m] for m in sorted(per_minute)],
        "at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }

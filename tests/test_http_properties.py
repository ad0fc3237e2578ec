"""Property-based tests of the HTTP contract: random requests at a small app.

Hypothesis sends sequences of random requests (methods, paths under the handlers'
rules, the jobs URL and elsewhere, headers, content types, bodies, query strings),
sometimes repeating an earlier one (idempotency) or running the due jobs in
between, at an app on the memory store with no background worker, a small queue
and a small ``MAX_CONTENT_LENGTH``. After every request it checks:

* no 5xx (the store is memory, so not even 503);
* every error from our routes is ``application/problem+json`` with ``type``,
  ``title``, ``status`` (the HTTP status) and ``detail``, except the response a
  ``validate`` returned, which is sent as it is (documented); a request that
  matches no route, or a route with another method, gets Flask's own 404/405;
* ``Retry-After`` is always a whole number of seconds;
* every ``202`` carries the job JSON and ``Location: /jobs/<id>`` of a job that
  exists, and a ``GET`` of that location answers it;
* the store holds exactly the jobs that ``202`` answers introduced: a rejected
  request creates no job, an idempotent repeat none either;
* an idempotent repeat (same handler, owner and key) answers ``202`` with the same
  job when the request is the same, ``422`` when it differs;
* the queue never holds more than ``ASYNC_ENDPOINTS_MAX_QUEUE_SIZE`` jobs, and a
  ``429`` comes only when it is full;
* job routes answer ``404`` for unknown, malformed or foreign ids, ``409`` for a
  ``DELETE`` of a Completed or Failed job, ``200`` otherwise.

The tests at the end pin inputs that once gave a 500: Unicode digits and huge
numbers in ``wait``, and deeply nested JSON.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pydantic
from flask import Flask, request
from hypothesis import example, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from async_endpoints import AsyncContext, AsyncEndpoints, JobStatus
from async_endpoints.jobs import Job
from async_endpoints.stores import MemoryStore
from tests.test_http import JOB_KEYS

MAX_QUEUE = 3
MAX_BODY = 4096
PROBLEM_KEYS = {"type", "title", "status", "detail"}
REJECTED = {"error": "rejected by validate"}


# -- the app under test -------------------------------------------------------


@dataclass
class Order:
    item: str
    quantity: int
    note: str = ""


class Payment(pydantic.BaseModel):
    amount: int = pydantic.Field(gt=0)
    currency: str = pydantic.Field(min_length=3, max_length=3)


@dataclass(frozen=True)
class HandlerInfo:
    name: str
    method: str
    rule: str  # with "{tenant}" where the rule has a variable


HANDLERS = (
    HandlerInfo("Plain", "POST", "/api/plain"),
    HandlerInfo("Orders", "POST", "/api/{tenant}/orders"),
    HandlerInfo("Payments", "PUT", "/api/payments"),
    HandlerInfo("Validated", "PATCH", "/api/validated"),
)


@dataclass
class App:
    flask: Flask
    ae: AsyncEndpoints
    store: MemoryStore
    validate_calls: list[tuple[object, int]] = field(default_factory=list)

    def job_ids(self) -> set[uuid.UUID]:
        """Every job the store holds (the memory store's own table: honest count)."""
        with self.store._lock:
            return set(self.store._jobs)


def build_app() -> App:
    flask_app = Flask(__name__)
    flask_app.config.update(
        TESTING=True,
        MAX_CONTENT_LENGTH=MAX_BODY,
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_MAX_QUEUE_SIZE=MAX_QUEUE,
        # No worker runs, so any wait would last its whole length: cap it at 0.
        ASYNC_ENDPOINTS_MAX_WAIT_SECONDS=0,
    )
    ae = AsyncEndpoints(flask_app)
    with flask_app.app_context():
        store = ae._state().store
    assert isinstance(store, MemoryStore)
    built = App(flask=flask_app, ae=ae, store=store)

    @ae.job_owner
    def owner() -> str | None:
        return request.headers.get("X-Owner") or None

    @ae.post("/api/plain", name="Plain", max_retries=0)
    def plain(ctx: AsyncContext) -> object:
        if isinstance(ctx.request, dict) and "fail" in ctx.request:
            raise ValueError("asked to fail")
        return ctx.request

    @ae.post("/api/<tenant>/orders", name="Orders", request_model=Order)
    def orders(ctx: AsyncContext) -> object:
        assert isinstance(ctx.request, Order)
        return {"item": ctx.request.item, "tenant": ctx.route_params["tenant"]}

    @ae.put("/api/payments", name="Payments", request_model=Payment)
    def payments(ctx: AsyncContext) -> object:
        assert isinstance(ctx.request, Payment)
        return ctx.request

    def check(ctx: AsyncContext) -> object:
        built.validate_calls.append((ctx.job_id, ctx.attempt))
        if isinstance(ctx.request, dict) and "reject" in ctx.request:
            return REJECTED, 400
        return None

    @ae.patch("/api/validated", name="Validated", validate=check)
    def validated(ctx: AsyncContext) -> object:
        return ctx.request

    return built


# -- strategies -----------------------------------------------------------------

LATIN1 = st.characters(
    min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"
)
NO_SURROGATES = st.characters(exclude_categories=["Cs"])
header_text = st.text(LATIN1, max_size=24)

METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PURGE"]
)
JSON_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/merge-patch+json",
    "application/problem+json",
]
content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            *JSON_TYPES,
            "",
            "text/plain",
            "text/json",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=xyz",
            "application/octet-stream",
            "json",
            ";;;",
        ]
    ),
    header_text,
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
    ),
    max_leaves=12,
)
model_shaped = st.one_of(
    st.fixed_dictionaries(
        {"item": st.one_of(st.text(max_size=8), st.integers())},
        optional={
            "quantity": st.one_of(st.integers(), st.booleans(), st.text(max_size=3)),
            "note": st.text(max_size=5),
            "extra": st.integers(),
        },
    ),
    st.fixed_dictionaries(
        {"amount": st.one_of(st.integers(-5, 100), st.text(max_size=3))},
        optional={"currency": st.sampled_from(["EUR", "usd", "EURO", ""])},
    ),
    st.fixed_dictionaries(
        {}, optional={"reject": st.booleans(), "fail": st.booleans(), "x": json_scalars}
    ),
)


def dump(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


bodies = st.one_of(
    st.just(b""),
    st.builds(dump, json_values, st.booleans()),
    st.builds(dump, model_shaped, st.booleans()),
    st.sampled_from(
        [
            b"{",
            b"{'a': 1}",
            b"[1,]",
            b"NaN",
            b'{"a": Infinity}',
            b"1e999",
            b"\xff\xfe\x00",
            b'"\\ud800"',
            b'{"item": "pen", "item": 3}',
            b"  ",
            b"null",
        ]
    ),
    st.binary(max_size=48),
    # Around and above MAX_CONTENT_LENGTH.
    st.integers(MAX_BODY - 40, 3 * MAX_BODY).map(
        lambda n: json.dumps({"data": "x" * n}).encode()
    ),
    # Nested, but shallower than Python's recursion limit: deeper is covered by
    # test_deeply_nested_json_is_not_a_5xx.
    st.integers(1, 150).map(lambda depth: b"[" * depth + b"]" * depth),
)

# ?wait= values: ASCII only and short. Unicode digits and numbers of more than 4300
# digits have their own tests below.
wait_values = st.text(alphabet="0123456789-+ .ab", max_size=12)
param_names = st.text(NO_SURROGATES, max_size=5).filter(lambda name: name != "wait")
queries = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), wait_values),
        st.tuples(st.sampled_from(["tag", "q"]), st.text(NO_SURROGATES, max_size=8)),
        st.tuples(param_names, st.text(NO_SURROGATES, max_size=8)),
    ),
    max_size=3,
)
keys = st.one_of(st.sampled_from(["k1", "k2", "K1", ""]), header_text)
prefer_values = st.one_of(
    st.sampled_from(
        [
            "wait=5",
            "wait=0",
            "respond-async, wait=10",
            'wait="3"',
            "wait=abc",
            "wait",
            "handling=lenient; wait=3",
            "wait=-1",
        ]
    ),
    st.text(alphabet="0123456789", max_size=20).map(lambda n: f"wait={n}"),
    header_text,
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Idempotency-Key": keys,
        "Async-Job-Id": keys,
        "Prefer": prefer_values,
        "X-Owner": st.sampled_from(["alice", "bob", ""]),
        "Authorization": header_text,
        "X-Trace": header_text,
        "Accept": st.sampled_from(["application/json", "*/*", "text/html"]),
    },
)


@dataclass(frozen=True)
class HandlerTarget:
    handler: HandlerInfo
    tenant: str

    def path(self, known: list[uuid.UUID]) -> str:
        return self.handler.rule.replace("{tenant}", quote(self.tenant, safe=""))


@dataclass(frozen=True)
class KnownJobTarget:
    index: int
    form: str

    def path(self, known: list[uuid.UUID]) -> str:
        job_id = known[self.index % len(known)] if known else uuid.uuid4()
        text = {
            "plain": str(job_id),
            "upper": str(job_id).upper(),
            "hex": job_id.hex,
            "braces": "{" + str(job_id) + "}",
            "urn": job_id.urn,
            "suffix": f"{job_id}x",
        }[self.form]
        return f"/jobs/{quote(text, safe=':')}"


@dataclass(frozen=True)
class RawTarget:
    raw: str

    def path(self, known: list[uuid.UUID]) -> str:
        return self.raw


Target = HandlerTarget | KnownJobTarget | RawTarget

raw_paths = st.one_of(
    st.uuids().map(lambda u: f"/jobs/{u}"),
    st.text(NO_SURROGATES, max_size=20).map(lambda t: f"/jobs/{quote(t, safe='')}"),
    st.sampled_from(
        ["/jobs", "/jobs/", "/jobs//x", "/jobs/a/b", "/", "/api", "/api/plain/"]
    ),
    st.text(NO_SURROGATES, max_size=20).map(lambda t: "/" + quote(t, safe="/")),
)


@dataclass(frozen=True)
class Send:
    method: str
    target: Target
    query: list[tuple[str, str]]
    headers: dict[str, str]
    content_type: str | None
    body: bytes


@dataclass(frozen=True)
class Repeat:
    """Send an earlier request again, maybe with another body (idempotency)."""

    index: int
    body: bytes | None


@dataclass(frozen=True)
class RunDueJobs:
    pass


Action = Send | Repeat | RunDueJobs


@st.composite
def handler_sends(draw: st.DrawFn) -> Send:
    handler = draw(st.sampled_from(HANDLERS))
    tenant = draw(st.one_of(st.just("acme"), st.text(NO_SURROGATES, max_size=6)))
    return Send(
        method=draw(st.one_of(st.just(handler.method), METHODS)),
        target=HandlerTarget(handler, tenant),
        query=draw(queries),
        headers=draw(headers),
        content_type=draw(st.one_of(st.sampled_from(JSON_TYPES[:2]), content_types)),
        body=draw(bodies),
    )


VALID_BODIES: dict[str, st.SearchStrategy[Any]] = {
    "Plain": st.one_of(json_values, st.just({"fail": True})),
    "Orders": st.builds(
        lambda item, quantity: {"item": item, "quantity": quantity},
        st.text(max_size=6),
        st.integers(-3, 3),
    ),
    "Payments": st.builds(
        lambda amount: {"amount": amount, "currency": "EUR"}, st.integers(1, 9)
    ),
    "Validated": st.one_of(
        st.just({}), st.just({"reject": True}), st.just({"x": 1}), json_values
    ),
}


@st.composite
def good_handler_sends(draw: st.DrawFn) -> Send:
    """A request the handler should take: its method, JSON, a fitting body."""
    handler = draw(st.sampled_from(HANDLERS))
    key = draw(st.one_of(st.none(), st.sampled_from(["k1", "k2"])))
    extra = draw(
        st.fixed_dictionaries(
            {}, optional={"X-Owner": st.sampled_from(["alice", "bob"])}
        )
    )
    return Send(
        method=handler.method,
        target=HandlerTarget(handler, draw(st.sampled_from(["acme", "emca"]))),
        query=draw(st.one_of(st.just([]), queries)),
        headers={**extra, **({"Idempotency-Key": key} if key else {})},
        content_type="application/json",
        body=dump(draw(VALID_BODIES[handler.name]), ascii_only=True),
    )


@st.composite
def job_sends(draw: st.DrawFn) -> Send:
    target: Target = draw(
        st.one_of(
            st.builds(
                KnownJobTarget,
                st.integers(0, 20),
                st.sampled_from(["plain", "plain", "upper", "hex", "braces", "urn"])
                | st.just("suffix"),
            ),
            st.builds(RawTarget, raw_paths),
        )
    )
    return Send(
        method=draw(st.one_of(st.sampled_from(["GET", "DELETE", "HEAD"]), METHODS)),
        target=target,
        query=draw(queries),
        headers=draw(headers),
        content_type=draw(content_types),
        body=draw(st.one_of(st.just(b""), bodies)),
    )


actions: st.SearchStrategy[Action] = st.one_of(
    good_handler_sends(),
    handler_sends(),
    job_sends(),
    st.builds(Repeat, st.integers(0, 20), st.none()),
    st.builds(Repeat, st.integers(0, 20), bodies),
    st.just(RunDueJobs()),
)


# -- the checks -------------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """What Flask's routing makes of a request, and what our views will see."""

    endpoint: str | None
    view_args: dict[str, Any]
    wait: str | None
    has_wait: bool
    query: dict[str, list[str]]
    owner: str | None
    key: str | None
    content_length: int
    payload_ok: bool
    payload: Any


def route(app: App, path: str, send: Send) -> Routing:
    """Route the request like the view will (same parsing), without running it."""
    with app.flask.test_request_context(
        path,
        method=send.method,
        query_string=urlencode(send.query),
        headers=send.headers,
        data=send.body,
        content_type=send.content_type,
    ):
        rule = request.url_rule
        endpoint = None
        if rule is not None and rule.endpoint.startswith("async_endpoints."):
            endpoint = rule.endpoint
        length = request.content_length or 0
        payload_ok, payload = False, None
        if length <= MAX_BODY:
            payload_ok, payload = parse_like_a_client_would_expect(
                request.get_data(), request.mimetype
            )
        return Routing(
            endpoint=endpoint,
            view_args=dict(request.view_args or {}),
            wait=request.args.get("wait"),
            has_wait="wait" in request.args,
            query=request.args.to_dict(flat=False),
            owner=request.headers.get("X-Owner") or None,
            key=request.headers.get("Idempotency-Key")
            or request.headers.get("Async-Job-Id"),
            content_length=length,
            payload_ok=payload_ok,
            payload=payload,
        )


def parse_like_a_client_would_expect(data: bytes, mimetype: str) -> tuple[bool, Any]:
    """``(True, value)`` for a body the contract says is valid: none, or JSON data
    in a JSON content type that can be stored as JSON (no NaN)."""
    if not data:
        return True, None
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        return False, None
    try:
        value = json.loads(data)
        json.dumps(value, allow_nan=False)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False, None
    return True, value


def fingerprint(payload: Any, route_params: dict[str, Any], query: Any) -> str:
    """What makes two requests "the same" for an idempotency key (the contract's
    body, route and query; equal JSON data means the same body)."""
    route_text = {k: str(v) for k, v in route_params.items()}
    return json.dumps([payload, route_text, query], sort_keys=True)


def assert_problem(response: TestResponse, method: str) -> None:
    assert response.mimetype == "application/problem+json", response.data[:300]
    if method == "HEAD":
        return
    body = json.loads(response.data)
    assert isinstance(body, dict)
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == response.status_code, body
    assert all(isinstance(body[k], str) and body[k] for k in ("type", "title")), body
    assert isinstance(body["detail"], str), body


def assert_job_json(response: TestResponse) -> dict[str, Any]:
    assert response.mimetype == "application/json"
    body = json.loads(response.data)
    assert isinstance(body, dict)
    assert set(body) >= JOB_KEYS, body
    assert body["status"] in {s.value for s in JobStatus}
    assert uuid.UUID(body["id"])
    assert response.headers["Location"] == f"/jobs/{body['id']}"
    return body


@dataclass
class Model:
    """What the test knows: the jobs 202s introduced and the idempotency keys."""

    app: App
    created: list[uuid.UUID] = field(default_factory=list)
    # (handler, owner, key) -> (fingerprint, job id)
    keys: dict[tuple[str, str | None, str], tuple[str, uuid.UUID]] = field(
        default_factory=dict
    )
    sent: list[Send] = field(default_factory=list)


def run_actions(app: App, steps: list[Action]) -> None:
    model = Model(app)
    client = app.flask.test_client()
    for step in steps:
        if isinstance(step, RunDueJobs):
            with app.flask.app_context():
                app.ae.run_due_jobs()
            check_store(model)
            continue
        if isinstance(step, Repeat):
            if not model.sent:
                continue
            earlier = model.sent[step.index % len(model.sent)]
            send = Send(
                earlier.method,
                earlier.target,
                earlier.query,
                earlier.headers,
                earlier.content_type,
                earlier.body if step.body is None else step.body,
            )
        else:
            send = step
        model.sent.append(send)
        check_one(model, client, send)


def check_one(model: Model, client: Any, send: Send) -> None:
    app = model.app
    path = send.target.path(model.created)
    routing = route(app, path, send)
    before = app.job_ids()
    queued_before = app.store.queue_size()
    validated_before = len(app.validate_calls)
    jobs_before = {job_id: get(app, job_id) for job_id in before}

    response: TestResponse = client.open(
        path,
        method=send.method,
        query_string=urlencode(send.query),
        headers=send.headers,
        data=send.body,
        content_type=send.content_type,
    )
    status = response.status_code
    where = f"{send.method} {path} -> {status}: {response.data[:300]!r}"

    assert status < 500, where
    if "Retry-After" in response.headers:
        value = response.headers["Retry-After"]
        assert value.isascii(), where
        assert value.isdigit(), where
        assert int(value) >= 1, where

    after = app.job_ids()
    new = after - before
    assert before <= after, where  # no request removes a job
    if status == 202 and send.method != "HEAD":
        body = assert_job_json(response)
        job_id = uuid.UUID(body["id"])
        assert job_id in after, where
        assert new <= {job_id}, where
        if new:
            model.created.append(job_id)
        else:
            # An existing job comes back only for an idempotent repeat.
            assert job_id in before, where
            assert routing.key is not None, where
        if routing.endpoint is not None:
            assert body["name"] == routing.endpoint.removeprefix("async_endpoints.")
        followed = client.get(response.headers["Location"], headers=owner_of(send))
        assert followed.status_code == 200, where
        assert followed.get_json()["id"] == body["id"]
    else:
        assert not new, f"a {status} created jobs {new}: {where}"
    assert app.store.queue_size() <= MAX_QUEUE, where
    assert set(app.validate_calls) <= {(None, 0)}, "validate saw a job id or attempt"

    endpoint = routing.endpoint
    if endpoint is None or send.method == "OPTIONS":
        # Flask's own answer: 404/405/308 for unmatched routes, OPTIONS.
        assert status in {200, 308, 404, 405}, where
        return
    if endpoint == "async_endpoints.job":
        check_job_route(model, send, routing, jobs_before, response, where)
    else:
        check_submit_route(
            model, send, routing, queued_before, validated_before, response, where
        )


def owner_of(send: Send) -> dict[str, str]:
    owner = send.headers.get("X-Owner")
    return {"X-Owner": owner} if owner else {}


def get(app: App, job_id: uuid.UUID) -> Job | None:
    with app.flask.app_context():
        return app.ae.get_job(job_id)


def check_job_route(
    model: Model,
    send: Send,
    routing: Routing,
    jobs_before: dict[uuid.UUID, Job | None],
    response: TestResponse,
    where: str,
) -> None:
    status = response.status_code
    raw_id = routing.view_args["job_id"]
    try:
        job_id: uuid.UUID | None = uuid.UUID(raw_id)
    except ValueError:
        job_id = None
    job = jobs_before.get(job_id) if job_id is not None else None
    if job is None or job.owner not in (None, routing.owner):
        expected = 404
    elif send.method == "DELETE":
        finished = job.status in {JobStatus.COMPLETED, JobStatus.FAILED}
        expected = 409 if finished else 200
    elif routing.has_wait and not (routing.wait or "").isdigit():
        expected = 400
    else:
        expected = 200
    canonical = job_id is not None and raw_id == str(job_id)
    if status == 404 and expected != 404 and not canonical:
        # "{uuid}", "urn:uuid:...", upper case or 32 hex digits name the job for
        # uuid.UUID; a 404 for such a "malformed" id would keep the contract too.
        expected = 404
    assert status == expected, where
    if status >= 400:
        assert_problem(response, send.method)
        if job_id is not None and job is not None:
            assert get(model.app, job_id) == job, "an error changed the job"
        return
    if send.method != "HEAD":
        body = assert_job_json(response)
        assert body["id"] == str(job_id)
    assert job_id is not None
    now = get(model.app, job_id)
    assert now is not None
    if send.method == "DELETE":
        assert now.status is JobStatus.CANCELED, where
    else:
        assert now == job, "a GET changed the job"


def check_submit_route(
    model: Model,
    send: Send,
    routing: Routing,
    queued_before: int,
    validated_before: int,
    response: TestResponse,
    where: str,
) -> None:
    status = response.status_code
    name = (routing.endpoint or "").removeprefix("async_endpoints.")
    assert status in {202, 400, 413, 415, 422, 429}, where
    if routing.content_length > MAX_BODY:
        assert status == 413, where
    if status == 415:
        assert routing.content_length > 0, "415 for a request without a body"
    if status == 429:
        assert queued_before >= MAX_QUEUE, where

    valid = routing.payload_ok and routing.content_length <= MAX_BODY
    key = routing.key
    scope = (name, routing.owner, key or "")
    known = model.keys.get(scope) if key is not None and valid else None
    print_ = fingerprint(routing.payload, routing.view_args, routing.query)

    rejects = (
        name == "Validated"
        and valid
        and isinstance(routing.payload, dict)
        and "reject" in routing.payload
    )
    if rejects and known is None:
        # validate's own response, sent as it is (documented), and no job.
        assert status == 400, where
        assert response.mimetype == "application/json", where
        assert response.get_json() == REJECTED, where
        assert model.app.validate_calls[-1] == (None, 0)
        return
    if status >= 400:
        assert_problem(response, send.method)
    if known is None:
        if status == 202 and key is not None and valid:
            job_id = uuid.UUID(response.get_json()["id"])
            model.keys[scope] = (print_, job_id)
        return
    # A live key: the same request is the same job (no validate, no queue
    # limit); another request with the key is 422.
    assert len(model.app.validate_calls) == validated_before, "validate ran"
    if known[0] == print_:
        assert status == 202, where
        assert response.get_json()["id"] == str(known[1]), where
    else:
        assert status == 422, where


def check_store(model: Model) -> None:
    assert model.app.job_ids() == set(model.created)
    for job_id in model.created:
        job = get(model.app, job_id)
        assert job is not None
        assert job.status is not JobStatus.IN_PROGRESS


# -- the tests ---------------------------------------------------------------------


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(steps=st.lists(actions, min_size=1, max_size=16))
def test_random_requests_keep_the_http_contract(steps: list[Action]) -> None:
    run_actions(build_app(), steps)


def fill_queue_and_repeat() -> list[Action]:
    """A full queue must not stop an idempotent repeat (nor validate run again)."""
    plain = HandlerTarget(HANDLERS[0], "acme")
    first = Send("POST", plain, [], {"Idempotency-Key": "k"}, "application/json", b"1")
    other = Send("POST", plain, [], {}, "application/json", b"2")
    return [first, other, other, other, Repeat(0, None), Repeat(0, b"3")]


def test_idempotent_repeat_skips_the_full_queue() -> None:
    # A fixed sequence through the same checks: it shows the model's expectations
    # (202 same job on a full queue, 422 for another body) are met.
    run_actions(build_app(), fill_queue_and_repeat())


def app_with_job() -> tuple[App, str]:
    """A fresh app (per example: no state shared) with one queued job."""
    built = build_app()
    response = built.flask.test_client().post("/api/plain", json={"a": 1})
    assert response.status_code == 202
    return built, response.headers["Location"]


def answer_is_contract_shaped(response: TestResponse) -> None:
    assert response.status_code < 500, response.data[:200]
    if response.status_code >= 400:
        assert_problem(response, "GET")


@settings(max_examples=30, derandomize=True, deadline=None, database=None)
@given(value=st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=3))
@example(value="²")
def test_wait_query_with_any_digits_is_not_a_5xx(value: str) -> None:
    built, location = app_with_job()
    response = built.flask.test_client().get(location, query_string={"wait": value})
    answer_is_contract_shaped(response)


@settings(max_examples=10, derandomize=True, deadline=None, database=None)
@given(digits=st.integers(1, 6000))
@example(digits=4301)
def test_wait_query_with_a_huge_number_is_not_a_5xx(digits: int) -> None:
    built, location = app_with_job()
    response = built.flask.test_client().get(f"{location}?wait={'9' * digits}")
    answer_is_contract_shaped(response)


@settings(max_examples=10, derandomize=True, deadline=None, database=None)
@given(digits=st.integers(1, 6000))
@example(digits=4301)
def test_prefer_wait_with_a_huge_number_is_not_a_5xx(digits: int) -> None:
    built = build_app()
    response = built.flask.test_client().post(
        "/api/plain", json={"a": 1}, headers={"Prefer": f"wait={'9' * digits}"}
    )
    answer_is_contract_shaped(response)
    assert response.status_code == 202


@settings(max_examples=20, derandomize=True, deadline=None, database=None)
@given(depth=st.integers(1, MAX_BODY // 2))
@example(depth=MAX_BODY // 2)
def test_deeply_nested_json_is_not_a_5xx(depth: int) -> None:
    built = build_app()
    before = built.job_ids()
    response = built.flask.test_client().post(
        "/api/plain",
        data=b"[" * depth + b"]" * depth,
        content_type="application/json",
    )
    answer_is_contract_shaped(response)
    if response.status_code != 202:
        assert built.job_ids() == before

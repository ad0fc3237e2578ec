"""Job events: ``GET <jobs url>/<id>/events`` as Server-Sent Events, on every store."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time

from async_endpoints import AsyncContext, AsyncEndpoints
from async_endpoints.events import EventsHub
from async_endpoints.stores.redis import RedisStore
from tests.conftest import RedisServer
from tests.sse import next_event
from tests.stores.conftest import make_job
from tests.test_http import assert_problem


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def echo(ae: AsyncEndpoints) -> None:
    @ae.post("/echo", name="Echo")
    def echo_handler(ctx: AsyncContext) -> Any:
        return ctx.request


class Stream:
    """An open event stream of the test client, read event by event."""

    def __init__(self, client: FlaskClient, url: str, **headers: str) -> None:
        self.response = client.get(url, headers=headers, buffered=False)
        self._chunks: Iterator[bytes] = iter(self.response.response)
        self._buffer = ""

    def next_block(self) -> str | None:
        """The next event or comment block, or ``None`` once the stream ended."""
        while "\n\n" not in self._buffer:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                return None
            self._buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        block, self._buffer = self._buffer.split("\n\n", 1)
        return block

    def next_event(self) -> dict[str, Any] | None:
        """The next ``job`` event (comments skipped) as its fields."""
        return next_event(self.next_block)

    def close(self) -> None:
        self.response.close()


def submit(client: FlaskClient, body: Any = None) -> str:
    response = client.post("/echo", json=body or {"n": 1})
    assert response.status_code == 202
    job_id: str = response.get_json()["id"]
    return job_id


@pytest.mark.usefixtures("echo")
def test_a_stream_sends_the_state_then_each_change_then_ends(
    client: FlaskClient, ae: AsyncEndpoints, app: Flask
) -> None:
    job_id = submit(client)
    stream = Stream(client, f"/jobs/{job_id}/events")
    assert stream.response.status_code == 200
    assert stream.response.mimetype == "text/event-stream"
    assert stream.response.headers["Cache-Control"] == "no-cache"
    first = stream.next_event()
    assert first is not None
    assert first["event"] == "job"
    assert first["job"]["status"] == "Queued"
    assert first["id"] == first["job"]["version"] == 1
    with app.app_context():
        assert ae.run_due_jobs() == 1
    running = stream.next_event()
    assert running is not None
    assert running["job"]["status"] == "InProgress"
    assert running["id"] == running["job"]["version"] == first["id"] + 1
    last = stream.next_event()
    assert last is not None
    assert last["job"]["status"] == "Completed"
    assert last["job"]["result"] == {"n": 1}
    assert last["id"] == last["job"]["version"] == running["id"] + 1
    assert stream.next_block() is None  # closed after the final state


@pytest.mark.usefixtures("echo")
def test_last_event_id_resumes_without_the_state_already_seen(
    client: FlaskClient, ae: AsyncEndpoints, app: Flask
) -> None:
    job_id = submit(client)
    stream = Stream(client, f"/jobs/{job_id}/events", **{"Last-Event-ID": "1"})
    with app.app_context():
        ae.run_due_jobs()
    running = stream.next_event()
    assert running is not None  # not the Queued it had seen
    assert (running["id"], running["job"]["status"]) == (2, "InProgress")
    event = stream.next_event()
    assert event is not None
    assert (event["id"], event["job"]["status"]) == (3, "Completed")
    # An ended job's final state is always sent, even to a client that has it.
    again = Stream(
        client, f"/jobs/{job_id}/events", **{"Last-Event-ID": str(event["id"])}
    )
    final = again.next_event()
    assert final is not None
    assert final["id"] == event["id"]
    assert again.next_block() is None


@pytest.mark.usefixtures("echo")
def test_a_stale_last_event_id_gets_the_current_state_at_once(
    client: FlaskClient, ae: AsyncEndpoints
) -> None:
    job_id = submit(client)
    client.delete(f"/jobs/{job_id}")
    stream = Stream(client, f"/jobs/{job_id}/events", **{"Last-Event-ID": "0"})
    event = stream.next_event()
    assert event is not None
    assert event["job"]["status"] == "Canceled"
    assert stream.next_block() is None


@pytest.mark.usefixtures("echo")
def test_a_malformed_last_event_id_is_ignored(
    client: FlaskClient, ae: AsyncEndpoints
) -> None:
    job_id = submit(client)
    stream = Stream(client, f"/jobs/{job_id}/events", **{"Last-Event-ID": "x1"})
    event = stream.next_event()
    assert event is not None
    assert event["id"] == 1
    stream.close()


@pytest.mark.usefixtures("echo")
def test_unknown_and_malformed_ids_are_404(client: FlaskClient) -> None:
    assert_problem(client.get(f"/jobs/{uuid.uuid4()}/events"), 404)
    assert_problem(client.get("/jobs/not-a-uuid/events"), 404)


def test_owner_binding_applies_to_events(app: Flask, ae: AsyncEndpoints) -> None:
    @ae.post("/mine", name="Mine")
    def mine(ctx: AsyncContext) -> None:
        return None

    @ae.job_owner
    def owner() -> str | None:
        from flask import request

        return request.headers.get("X-User")

    client = app.test_client()
    job_id = client.post("/mine", headers={"X-User": "alice"}).get_json()["id"]
    assert_problem(client.get(f"/jobs/{job_id}/events", headers={"X-User": "bob"}), 404)
    stream = Stream(client, f"/jobs/{job_id}/events", **{"X-User": "alice"})
    assert stream.next_event() is not None
    stream.close()


def test_an_idle_stream_keeps_alive_then_closes_at_its_time_limit(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    import async_endpoints.views

    monkeypatch.setattr(async_endpoints.views, "KEEP_ALIVE_SECONDS", 0.05)
    limited = app
    limited.config["ASYNC_ENDPOINTS_MAX_STREAM_SECONDS"] = 0.3
    ext = AsyncEndpoints(limited)

    @ext.post("/echo", name="Echo")
    def echo_handler(ctx: AsyncContext) -> None:
        return None

    client = limited.test_client()
    job_id = submit(client)
    stream = Stream(client, f"/jobs/{job_id}/events")
    assert stream.next_event() is not None
    blocks = []
    while (block := stream.next_block()) is not None:  # ends by itself
        blocks.append(block)
    assert ": keep-alive" in blocks
    assert all(b == ": keep-alive" for b in blocks)
    with limited.app_context():
        ext.shutdown()


@pytest.fixture
def idle_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[float]]]:
    """A frozen clock, and the timeouts of the waits of every stream for news:
    each wait takes no real time, moves the clock on by its timeout and answers
    what came meanwhile (nothing, while the job does not change)."""
    from async_endpoints.events import Follower

    waits: list[float] = []
    wait = Follower.wait

    def timed_wait(self: Follower, timeout: float) -> list[Any]:
        waits.append(timeout)
        clock.tick(timeout)
        return wait(self, 0)

    monkeypatch.setattr(Follower, "wait", timed_wait)
    with freeze_time("2026-12-06 12:00:00", tick=False) as clock:
        yield clock, waits


def stream_of_a_waiting_job(client: FlaskClient) -> tuple[Stream, float]:
    """The stream of a new job that nothing runs, past its first event, and the
    (frozen) monotonic time at which it was opened."""
    job_id = submit(client)
    opened = time.monotonic()
    stream = Stream(client, f"/jobs/{job_id}/events")
    assert stream.next_event() is not None
    return stream, opened


@pytest.mark.parametrize("store_kind", ["memory"])  # the clock is the view's
@pytest.mark.usefixtures("echo")
def test_an_idle_stream_sends_a_keep_alive_every_15_seconds(
    client: FlaskClient, idle_clock: tuple[Any, list[float]]
) -> None:
    _, waits = idle_clock
    stream, opened = stream_of_a_waiting_job(client)
    for n in range(1, 5):
        assert stream.next_block() == ": keep-alive"
        assert time.monotonic() - opened == 15 * n
    assert waits == [15.0] * 4
    stream.close()


@pytest.mark.parametrize("store_kind", ["memory"])  # the clock is the view's
@pytest.mark.usefixtures("echo")
def test_a_stream_closes_after_300_seconds_by_default(
    client: FlaskClient, idle_clock: tuple[Any, list[float]]
) -> None:
    _, waits = idle_clock
    stream, opened = stream_of_a_waiting_job(client)
    blocks = []
    while (block := stream.next_block()) is not None:
        blocks.append(block)
        assert len(blocks) <= 100, "the stream did not close by itself"
    assert time.monotonic() - opened == 300
    assert sum(waits) == 300
    assert blocks == [": keep-alive"] * 20


@pytest.mark.usefixtures("echo")
def test_shutdown_ends_open_streams(
    client: FlaskClient, ae: AsyncEndpoints, app: Flask
) -> None:
    job_id = submit(client)
    stream = Stream(client, f"/jobs/{job_id}/events")
    assert stream.next_event() is not None
    with app.app_context():
        ae.shutdown()
    assert stream.next_block() is None


def test_every_progress_report_is_an_event(app: Flask) -> None:
    """A worker thread runs the job step by step; the stream sees each step."""
    app.config["ASYNC_ENDPOINTS_START_WORKER"] = True
    app.config["ASYNC_ENDPOINTS_MAX_CONCURRENCY"] = 1
    ae = AsyncEndpoints(app)
    steps = [threading.Event() for _ in range(3)]

    @ae.post("/steps", name="Steps")
    def stepped(ctx: AsyncContext) -> str:
        for n, step in enumerate(steps):
            assert step.wait(10), "the test did not release the step"
            ctx.report_progress((n + 1) / 4, f"step {n + 1}")
        return "done"

    client = app.test_client()
    job_id = client.post("/steps").get_json()["id"]
    stream = Stream(client, f"/jobs/{job_id}/events")
    seen = []
    try:
        event = stream.next_event()
        while event is not None and event["job"]["status"] != "InProgress":
            event = stream.next_event()
        for n, step in enumerate(steps):
            step.set()
            event = stream.next_event()
            assert event is not None
            seen.append(event)
            assert event["job"]["progress"] == {
                "fraction": (n + 1) / 4,
                "message": f"step {n + 1}",
            }
        final = stream.next_event()
        assert final is not None
        assert final["job"]["status"] == "Completed"
        ids = [e["id"] for e in seen] + [final["id"]]
        assert ids == sorted(set(ids))
    finally:
        for step in steps:
            step.set()
        with app.app_context():
            ae.shutdown()


def test_the_first_stream_gets_every_change_that_run_due_jobs_makes(
    client: FlaskClient, ae: AsyncEndpoints, app: Flask
) -> None:
    @ae.post("/halves", name="Halves")
    def halves(ctx: AsyncContext) -> str:
        ctx.report_progress(0.5, "half")
        return "done"

    job_id = client.post("/halves").get_json()["id"]
    stream = Stream(client, f"/jobs/{job_id}/events")
    first = stream.next_event()
    assert first is not None
    with app.app_context():
        assert ae.run_due_jobs() == 1
    events = [first]
    while (event := stream.next_event()) is not None:
        events.append(event)
    assert [(e["id"], e["job"]["status"]) for e in events] == [
        (1, "Queued"),
        (2, "InProgress"),
        (3, "InProgress"),
        (4, "Completed"),
    ]
    assert events[2]["job"]["progress"] == {"fraction": 0.5, "message": "half"}


@pytest.mark.usefixtures("echo")
def test_a_last_event_id_from_ahead_of_the_job_still_gets_its_states(
    client: FlaskClient, ae: AsyncEndpoints, app: Flask
) -> None:
    job_id = submit(client)
    stream = Stream(client, f"/jobs/{job_id}/events", **{"Last-Event-ID": "99"})
    with app.app_context():
        ae.run_due_jobs()
    events = []
    while (event := stream.next_event()) is not None:
        events.append((event["id"], event["job"]["status"]))
    assert events == [(2, "InProgress"), (3, "Completed")]


@pytest.mark.usefixtures("echo")
def test_a_head_request_follows_nothing(
    client: FlaskClient, ae: AsyncEndpoints, app: Flask
) -> None:
    job_id = submit(client)
    for _ in range(3):
        response = client.head(f"/jobs/{job_id}/events")
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
    with app.app_context():
        hub = ae._state().events
    assert hub._followers == {}


@pytest.mark.usefixtures("echo")
def test_a_stream_closed_before_it_was_read_stops_following(
    client: FlaskClient, ae: AsyncEndpoints, app: Flask
) -> None:
    job_id = submit(client)
    stream = Stream(client, f"/jobs/{job_id}/events")
    stream.close()
    with app.app_context():
        assert ae._state().events._followers == {}


@pytest.mark.usefixtures("echo")
def test_streams_work_again_after_a_shutdown(
    client: FlaskClient, ae: AsyncEndpoints, app: Flask
) -> None:
    job_id = submit(client)
    first = Stream(client, f"/jobs/{job_id}/events")
    assert first.next_event() is not None
    with app.app_context():
        ae.shutdown()
    assert first.next_block() is None
    again = Stream(client, f"/jobs/{job_id}/events")
    assert again.response.status_code == 200
    with app.app_context():
        ae.run_due_jobs()
    events = []
    while (event := again.next_event()) is not None:
        events.append(event["job"]["status"])
    assert events[-1] == "Completed"


def test_two_apps_on_one_store_share_one_hub() -> None:
    from async_endpoints.stores import MemoryStore

    store = MemoryStore()
    apps = [Flask(f"app{n}") for n in range(2)]
    exts = [AsyncEndpoints(a, store=store) for a in apps]
    hubs = []
    for app, ext in zip(apps, exts, strict=True):
        with app.app_context():
            hubs.append(ext._state().events)
    assert hubs[0] is hubs[1]


@pytest.mark.redis
def test_a_hub_started_again_wakes_its_streams_after_a_resubscription(
    redis_server: RedisServer,
) -> None:
    """A hub closed and started again (one of two apps that share a store shut
    down) finds the store's subscription still open: its first answer is not a
    new subscription. When that subscription drops later, changes made while
    it is down are announced to nobody, so the resubscription must wake every
    stream to read its job again."""
    client = redis.Redis.from_url(redis_server.url)
    store = RedisStore.from_url(redis_server.url, prefix=f"hub{uuid.uuid4().hex[:6]}")
    hub = EventsHub(store)
    try:
        job = make_job()
        store.submit(job, max_queue_size=0, now=time.time())
        hub.follow(job.id).close()
        hub.close()
        follower = hub.follow(job.id)  # a new thread, the same subscription
        store.watch(job.id, now=time.time())
        assert client.client_kill_filter(_type="pubsub") >= 1
        assert follower.wait(5.0) == [None]  # the outage: read the job again
        # While the hub waits to subscribe again, the job runs and ends.
        [claim] = store.claim("w", limit=1, lease=30, now=time.time())
        store.complete(claim, None, ttl=60, now=time.time())
        assert follower.wait(5.0) == [None]  # subscribed again: read it again
    finally:
        hub.close()
        store.close()
        client.close()

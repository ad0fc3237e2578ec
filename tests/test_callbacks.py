"""Completion callbacks: a real receiver on 127.0.0.1, signed deliveries (Standard
Webhooks), retries with backoff, refusals, and a process killed mid-delivery."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from freezegun import freeze_time

from async_endpoints import AsyncContext, AsyncEndpoints, ConfigurationError
from async_endpoints.callbacks import retry_delay
from tests.conftest import RedisServer, wait_until
from tests.integration.processes import start_worker, stop_workers
from tests.test_http import assert_problem

SECRET = "s3cret-for-tests"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that answers each POST with the next status of
    ``answers`` (then 200), optionally after holding it."""

    answers: list[int] = field(default_factory=list)
    hold: threading.Event | None = None
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}/hooks/done?src=ae"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            state.received.append(Received(dict(self.headers.items()), body))
            if state.hold is not None and len(state.received) == 1:
                state.hold.wait(30)
            status = state.answers.pop(0) if state.answers else 200
            self.send_response(status)
            if status in (301, 302, 307, 308):
                self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    if state.hold is not None:
        state.hold.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does (the README's snippet): recompute the signature."""
    lower = {k.lower(): v for k, v in headers.items()}
    signed = f"{lower['webhook-id']}.{lower['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(
        hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    ).decode()
    return any(
        hmac.compare_digest(expected, sig.partition(",")[2])
        for sig in lower["webhook-signature"].split()
        if sig.startswith("v1,")
    )


def callback_app(**config: Any) -> tuple[Flask, AsyncEndpoints]:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_CALLBACK_HOSTS=["127.0.0.1", "localhost"],
        ASYNC_ENDPOINTS_CALLBACK_ALLOW_PRIVATE=True,
        ASYNC_ENDPOINTS_CALLBACK_SECRET=SECRET,
    )
    app.config.update({f"ASYNC_ENDPOINTS_{k}": v for k, v in config.items()})
    ae = AsyncEndpoints(app)

    @ae.post("/work", name="Work")
    def work(ctx: AsyncContext) -> Any:
        if ctx.request and ctx.request.get("fail"):
            raise ValueError("as asked")
        return {"echo": ctx.request}

    return app, ae


def submit(client: FlaskClient, url: str, body: Any = None) -> dict[str, Any]:
    response = client.post(
        "/work", json=body or {"n": 1}, headers={"Callback-Url": url}
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    job: dict[str, Any] = response.get_json()
    return job


# -- refusals --------------------------------------------------------------------


def test_callbacks_are_off_by_default() -> None:
    app = Flask(__name__)
    app.config["ASYNC_ENDPOINTS_START_WORKER"] = False
    ae = AsyncEndpoints(app)

    @ae.post("/work", name="Work")
    def work(ctx: AsyncContext) -> None:
        return None

    client = app.test_client()
    response = client.post(
        "/work", json={}, headers={"Callback-Url": "https://example.com/hook"}
    )
    body = assert_problem(response, 422)
    assert "off" in str(body["detail"])
    with app.app_context():
        assert ae._state().store.queue_size() == 0  # no job was created


def test_callback_hosts_need_a_secret() -> None:
    app = Flask(__name__)
    app.config["ASYNC_ENDPOINTS_CALLBACK_HOSTS"] = ["hooks.example.com"]
    with pytest.raises(ConfigurationError, match="CALLBACK_SECRET"):
        AsyncEndpoints(app)


def test_the_secret_stays_out_of_the_settings_repr() -> None:
    app, ae = callback_app()
    with app.app_context():
        assert SECRET not in repr(ae._state().settings)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://evil.example.org/hook", "not one this server"),
        ("ftp://127.0.0.1/hook", "http or https"),
        ("/relative/hook", "http or https"),
        ("http://user:pw@127.0.0.1/hook", "credentials"),
        ("http://127.0.0.1:99999/hook", "port"),
    ],
)
def test_a_refused_callback_url_is_422_and_creates_no_job(url: str, why: str) -> None:
    app, ae = callback_app()
    body = assert_problem(
        app.test_client().post("/work", json={}, headers={"Callback-Url": url}), 422
    )
    assert body["title"] == "Callback refused"
    assert why in str(body["detail"])
    with app.app_context():
        assert ae._state().store.queue_size() == 0


@pytest.mark.parametrize(
    "entry", ["example.com:8443", "127.0.0.1:8080", "[::1]:8443", "example.com/hooks"]
)
def test_callback_hosts_with_a_port_or_a_path_are_a_configuration_error(
    entry: str,
) -> None:
    with pytest.raises(ConfigurationError, match="CALLBACK_HOSTS takes host names"):
        callback_app(CALLBACK_HOSTS=["hooks.example.com", entry])


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/hook",
        "http://localhost:8443/hook",
        "https://localhost:9/hook",
        "http://LocalHost.:8080/hook",
    ],
)
def test_a_listed_host_name_is_accepted_on_any_port(url: str) -> None:
    app, _ = callback_app(CALLBACK_HOSTS=["localhost"])
    client = app.test_client()
    assert submit(client, url)["callback"]["url"] == url


def test_a_host_is_matched_by_its_name_not_by_its_address() -> None:
    app, ae = callback_app(CALLBACK_HOSTS=["localhost"])
    body = assert_problem(
        app.test_client().post(
            "/work", json={}, headers={"Callback-Url": "http://127.0.0.1:8443/hook"}
        ),
        422,
    )
    assert "not one this server" in str(body["detail"])
    with app.app_context():
        assert ae._state().store.queue_size() == 0


def test_a_private_address_is_refused_unless_allowed() -> None:
    app, _ = callback_app(CALLBACK_ALLOW_PRIVATE=False)
    client = app.test_client()
    for url in ("http://127.0.0.1/hook", "http://localhost:8080/hook"):
        body = assert_problem(
            client.post("/work", json={}, headers={"Callback-Url": url}), 422
        )
        assert "CALLBACK_ALLOW_PRIVATE" in str(body["detail"])


# -- deliveries ------------------------------------------------------------------


def test_a_job_that_ends_is_posted_once_signed(receiver: Receiver) -> None:
    app, ae = callback_app()
    client = app.test_client()
    job = submit(client, receiver.url)
    assert job["callback"] == {
        "url": receiver.url,
        "status": "Pending",
        "attempts": 0,
        "lastError": None,
    }
    with app.app_context():
        ae.run_due_jobs()
    (got,) = receiver.received
    assert verify(SECRET, got.headers, got.body)
    assert not verify("another secret", got.headers, got.body)
    assert got.headers["Content-Type"] == "application/json"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    payload = json.loads(got.body)
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == job["id"]
    assert payload["data"]["result"] == {"echo": {"n": 1}}
    assert payload["timestamp"] == payload["data"]["completedAt"]
    final = client.get(f"/jobs/{job['id']}").get_json()
    assert final["callback"] == {
        "url": receiver.url,
        "status": "Delivered",
        "attempts": 1,
        "lastError": None,
    }
    assert SECRET not in json.dumps(final)


def test_a_failing_receiver_is_retried_with_backoff_then_reached(
    receiver: Receiver,
) -> None:
    receiver.answers = [500, 503]
    app, ae = callback_app()
    client = app.test_client()
    with freeze_time("2026-12-06 12:00:00", tick=False) as clock:
        job = submit(client, receiver.url)
        with app.app_context():
            ae.run_due_jobs()
            assert len(receiver.received) == 1
            body = client.get(f"/jobs/{job['id']}").get_json()
            assert body["callback"]["status"] == "Pending"
            assert body["callback"]["lastError"] == "HTTP 500"
            clock.tick(1.9)  # the first retry waits 2 s
            ae.run_due_jobs()
            assert len(receiver.received) == 1
            clock.tick(0.1)
            ae.run_due_jobs()
            assert len(receiver.received) == 2
            clock.tick(3.9)  # the second waits 4 s
            ae.run_due_jobs()
            assert len(receiver.received) == 2
            clock.tick(0.1)
            ae.run_due_jobs()
    assert len(receiver.received) == 3
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert len(ids) == 1  # one delivery, tried three times
    assert all(verify(SECRET, r.headers, r.body) for r in receiver.received)
    final = client.get(f"/jobs/{job['id']}").get_json()
    assert final["callback"]["status"] == "Delivered"
    assert final["callback"]["attempts"] == 3


def test_backoff_doubles_up_to_five_minutes() -> None:
    assert [retry_delay(n) for n in range(1, 10)] == [
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
    ]


def assert_attempts_after(
    gaps: list[float], app: Flask, ae: AsyncEndpoints, clock: Any, receiver: Receiver
) -> None:
    """Each next attempt comes exactly ``gaps[n]`` seconds after the one before."""
    with app.app_context():
        for gap in gaps:
            sent = len(receiver.received)
            clock.tick(gap - 0.1)
            ae.run_due_jobs()
            assert len(receiver.received) == sent, f"an attempt before {gap} s"
            clock.tick(0.1)
            ae.run_due_jobs()
            assert len(receiver.received) == sent + 1, f"no attempt after {gap} s"


def test_a_callback_gets_8_attempts_by_default_2_4_8_seconds_apart(
    receiver: Receiver,
) -> None:
    receiver.answers = [500] * 10
    app, ae = callback_app()
    client = app.test_client()
    with freeze_time("2026-12-06 12:00:00", tick=False) as clock:
        job = submit(client, receiver.url)
        with app.app_context():
            ae.run_due_jobs()
        assert len(receiver.received) == 1
        assert_attempts_after([2, 4, 8, 16, 32, 64, 128], app, ae, clock, receiver)
        with app.app_context():
            for _ in range(3):
                clock.tick(600)
                ae.run_due_jobs()
    assert len(receiver.received) == 8
    final = client.get(f"/jobs/{job['id']}").get_json()
    assert final["callback"]["status"] == "Failed"
    assert final["callback"]["attempts"] == 8


def test_the_wait_between_attempts_stops_growing_at_5_minutes(
    receiver: Receiver,
) -> None:
    receiver.answers = [500] * 12
    app, ae = callback_app(CALLBACK_MAX_ATTEMPTS=11)
    client = app.test_client()
    with freeze_time("2026-12-06 12:00:00", tick=False) as clock:
        job = submit(client, receiver.url)
        with app.app_context():
            ae.run_due_jobs()
        gaps = [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
        assert_attempts_after(gaps, app, ae, clock, receiver)
    assert len(receiver.received) == 11
    final = client.get(f"/jobs/{job['id']}").get_json()
    assert final["callback"]["status"] == "Failed"


def test_after_the_last_attempt_the_callback_is_failed(receiver: Receiver) -> None:
    receiver.answers = [500, 500, 500]
    app, ae = callback_app(CALLBACK_MAX_ATTEMPTS=2)
    client = app.test_client()
    with freeze_time("2026-12-06 12:00:00") as clock:
        job = submit(client, receiver.url, {"fail": True})
        with app.app_context():
            for _ in range(6):  # the job's four attempts, then two deliveries
                ae.run_due_jobs()
                clock.tick(600)
    assert len(receiver.received) == 2
    payload = json.loads(receiver.received[0].body)
    assert payload["type"] == "job.failed"
    assert payload["data"]["error"]["type"] == "ValueError"
    final = client.get(f"/jobs/{job['id']}").get_json()
    assert final["status"] == "Failed"
    assert final["callback"] == {
        "url": receiver.url,
        "status": "Failed",
        "attempts": 2,
        "lastError": "HTTP 500",
    }


def test_a_canceled_job_is_delivered_too(receiver: Receiver) -> None:
    app, ae = callback_app()
    client = app.test_client()
    job = submit(client, receiver.url)
    assert client.delete(f"/jobs/{job['id']}").status_code == 200
    with app.app_context():
        ae.run_due_jobs()
    (got,) = receiver.received
    assert json.loads(got.body)["type"] == "job.canceled"


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.answers = [302]
    app, ae = callback_app(CALLBACK_MAX_ATTEMPTS=1)
    client = app.test_client()
    job = submit(client, receiver.url)
    with app.app_context():
        ae.run_due_jobs()
    assert len(receiver.received) == 1
    final = client.get(f"/jobs/{job['id']}").get_json()
    assert final["callback"]["lastError"] == "HTTP 302"
    assert final["callback"]["status"] == "Failed"


def test_a_receiver_that_hangs_times_out(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import async_endpoints.callbacks

    monkeypatch.setattr(async_endpoints.callbacks, "TIMEOUT_SECONDS", 0.3)
    receiver.hold = threading.Event()
    app, ae = callback_app(CALLBACK_MAX_ATTEMPTS=1)
    client = app.test_client()
    job = submit(client, receiver.url)
    began = time.monotonic()
    with app.app_context():
        ae.run_due_jobs()
    assert time.monotonic() - began < 5
    final = client.get(f"/jobs/{job['id']}").get_json()
    assert "timed out" in final["callback"]["lastError"].lower()


def test_a_delivery_times_out_after_5_seconds_and_is_tried_again(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each attempt is sent with a 5 s timeout (here shortened, once recorded,
    for the receiver that never answers the first); the attempt that timed out
    is a failed one, retried 2 s later."""
    import async_endpoints.callbacks

    timeouts: list[float] = []
    send = async_endpoints.callbacks.send

    def timed_send(*args: Any, timeout: float) -> str | None:
        timeouts.append(timeout)
        return send(*args, timeout=0.2)

    monkeypatch.setattr(async_endpoints.callbacks, "send", timed_send)
    receiver.hold = threading.Event()  # the first attempt is never answered
    app, ae = callback_app()
    client = app.test_client()
    with freeze_time("2026-12-06 12:00:00", tick=False) as clock:
        job = submit(client, receiver.url)
        with app.app_context():
            ae.run_due_jobs()
            body = client.get(f"/jobs/{job['id']}").get_json()
            assert body["callback"]["status"] == "Pending"
            assert body["callback"]["attempts"] == 1
            assert "timed out" in body["callback"]["lastError"].lower()
            clock.tick(2)
            ae.run_due_jobs()
    assert timeouts == [5.0, 5.0]
    assert len(receiver.received) == 2
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    final = client.get(f"/jobs/{job['id']}").get_json()
    assert final["callback"]["status"] == "Delivered"
    assert final["callback"]["attempts"] == 2


def test_the_secret_never_reaches_the_log(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answers = [500]
    app, ae = callback_app()
    client = app.test_client()
    with caplog.at_level(logging.DEBUG):
        submit(client, receiver.url)
        with app.app_context():
            ae.run_due_jobs()
    assert "callback of job" in caplog.text
    assert SECRET not in caplog.text


def test_a_running_worker_delivers_at_once(receiver: Receiver) -> None:
    app, ae = callback_app(START_WORKER=True)
    client = app.test_client()
    job = submit(client, receiver.url)
    try:
        wait_until(lambda: len(receiver.received) == 1, 10, "the delivery")
        wait_until(
            lambda: (
                client.get(f"/jobs/{job['id']}").get_json()["callback"]["status"]
                == "Delivered"
            ),
            10,
            "the delivery's record",
        )
    finally:
        with app.app_context():
            ae.shutdown()


# -- durability: a process killed mid-delivery -----------------------------------


@pytest.mark.redis
@pytest.mark.slow
def test_a_delivery_survives_the_death_of_its_sender(
    redis_server: RedisServer, receiver: Receiver, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    receiver.hold = threading.Event()  # the first delivery is never answered
    config = {
        "CALLBACK_HOSTS": ["127.0.0.1"],
        "CALLBACK_ALLOW_PRIVATE": True,
        "CALLBACK_SECRET": SECRET,
        "CLAIM_TIMEOUT_SECONDS": 3,
        "SWEEP_INTERVAL_SECONDS": 0.5,
    }
    env = dict(os.environ, AE_TEST_REDIS_URL=redis_server.url)
    env.update({f"ASYNC_ENDPOINTS_{k}": json.dumps(v) for k, v in config.items()})
    app = Flask(__name__)
    app.config.update(
        ASYNC_ENDPOINTS_STORE_URL=redis_server.url,
        ASYNC_ENDPOINTS_KEY_PREFIX="itest",
        ASYNC_ENDPOINTS_START_WORKER=False,
        **{f"ASYNC_ENDPOINTS_{k}": v for k, v in config.items()},
    )
    ae = AsyncEndpoints(app)

    @ae.post("/count", name="Count")
    def count(ctx: AsyncContext) -> None:
        raise AssertionError("this process never runs jobs")

    first = start_worker(env, tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        with app.app_context():
            job = ae.submit("Count", {"n": 1}, callback_url=receiver.url)
        wait_until(lambda: len(receiver.received) == 1, 20, "the first delivery")
        first.send_signal(signal.SIGKILL)  # mid-delivery: no answer was read
        first.wait(10)
        receiver.hold.set()
        second = start_worker(env, tmp_path / "second.log")

        def delivered() -> bool:
            with app.app_context():
                current = ae.get_job(job.id)
            return (
                current is not None
                and current.callback is not None
                and current.callback.status.value == "Delivered"
            )

        wait_until(delivered, 30, "the delivery by the second worker")
        assert len(receiver.received) == 2
        ids = {r.headers["webhook-id"] for r in receiver.received}
        assert len(ids) == 1
        with app.app_context():
            final = ae.get_job(job.id)
        assert final is not None
        assert final.callback is not None
        assert final.callback.attempts == 2
    finally:
        stop_workers([p for p in (first, second) if p is not None])
        client.flushdb()
        client.close()


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("169.254.169.254", False),
        ("100.100.100.200", False),  # shared address space (carrier-grade NAT)
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:10.0.0.1", False),  # IPv4-mapped
        ("2002:a9fe:a9fe::1", False),  # 6to4 around 169.254.169.254
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo around 10.0.0.1
        ("224.0.0.1", False),
        ("0.0.0.0", False),
    ],
)
def test_only_public_addresses_pass(address: str, public: bool) -> None:
    from async_endpoints.callbacks import _public

    assert _public(address) is public


def test_an_ipv6_literal_host_can_be_allowed(receiver: Receiver) -> None:
    app, _ = callback_app(CALLBACK_HOSTS=["[::1]"])
    response = app.test_client().post(
        "/work", json={}, headers={"Callback-Url": "http://[::1]:8080/hook"}
    )
    assert response.status_code == 202, response.get_data(as_text=True)


def test_a_slow_receiver_holds_up_no_other_delivery(receiver: Receiver) -> None:
    receiver.hold = threading.Event()  # the first delivery is not answered yet
    app, ae = callback_app(START_WORKER=True)
    client = app.test_client()
    try:
        slow = submit(client, receiver.url)
        wait_until(lambda: len(receiver.received) == 1, 10, "the first delivery")
        fast = submit(client, receiver.url)

        def delivered(job_id: str) -> bool:
            body = client.get(f"/jobs/{job_id}").get_json()
            return bool(body["callback"]["status"] == "Delivered")

        wait_until(lambda: delivered(fast["id"]), 10, "the second delivery")
        assert not delivered(slow["id"])  # still held by its receiver
        receiver.hold.set()
        wait_until(lambda: delivered(slow["id"]), 10, "the first delivery's end")
    finally:
        receiver.hold.set()
        with app.app_context():
            ae.shutdown()

"""The operator dashboard: access, CSRF, actions (test client), and the page in a
real headless browser (Chromium, driven by selenium) on a real threaded server."""

from __future__ import annotations

import http.client
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from werkzeug.serving import make_server

from async_endpoints import AsyncContext, AsyncEndpoints, ConfigurationError
from tests.conftest import free_port
from tests.test_browser import browser  # noqa: F401 - the fixture

URL = "/admin/jobs"


def dashboard_app(**config: Any) -> tuple[Flask, AsyncEndpoints]:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        ASYNC_ENDPOINTS_START_WORKER=False,
        ASYNC_ENDPOINTS_DASHBOARD_URL=URL,
        ASYNC_ENDPOINTS_MAX_QUEUE_SIZE=0,
    )
    app.config.update(config)
    ae = AsyncEndpoints(app)

    @ae.post("/ok", name="Ok")
    def ok(ctx: AsyncContext) -> str:
        return "fine"

    @ae.post("/bad", name="Bad", max_retries=0)
    def bad(ctx: AsyncContext) -> None:
        raise ValueError("broken on purpose")

    @ae.dashboard_access
    def access() -> str | None:
        return request.cookies.get("role") or request.headers.get("X-Role")

    return app, ae


def ids_on(html: str) -> list[str]:
    return re.findall(rf"{URL}/jobs/([0-9a-f-]{{36}})", html)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def test_without_an_access_function_the_dashboard_is_403() -> None:
    app = Flask(__name__)
    app.config["ASYNC_ENDPOINTS_DASHBOARD_URL"] = URL
    AsyncEndpoints(app)
    client = app.test_client()
    assert client.get(f"{URL}/").status_code == 403
    assert client.get(f"{URL}/stats.json").status_code == 403


def test_off_by_default_and_a_bad_url_is_refused() -> None:
    app = Flask(__name__)
    AsyncEndpoints(app)
    assert app.test_client().get("/admin/jobs/").status_code == 404
    bad = Flask(__name__)
    bad.config["ASYNC_ENDPOINTS_DASHBOARD_URL"] = "admin"
    with pytest.raises(ConfigurationError, match="DASHBOARD_URL"):
        AsyncEndpoints(bad)


def test_access_levels_and_csrf() -> None:
    app, ae = dashboard_app()
    client = app.test_client()
    failed = client.post("/bad").get_json()["id"]
    with app.app_context():
        ae.run_due_jobs()
    assert client.get(f"{URL}/", headers={"X-Role": "nobody"}).status_code == 403
    page = client.get(f"{URL}/jobs/{failed}", headers={"X-Role": "read"})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "broken on purpose" in html
    assert 'id="retry"' not in html  # read access: no actions offered
    token = client.get_cookie("ae_dashboard_csrf", path=URL)
    assert token is not None
    # A reader's POST is refused even with a good token...
    response = client.post(
        f"{URL}/jobs/{failed}/retry",
        data={"csrf": token.value},
        headers={"X-Role": "read"},
    )
    assert response.status_code == 403
    # ... and so is a writer's without it, or with another.
    for data in ({}, {"csrf": "forged"}, {"csrf": "non-ascii-é"}):
        response = client.post(
            f"{URL}/jobs/{failed}/retry", data=data, headers={"X-Role": "write"}
        )
        assert response.status_code == 403
    with app.app_context():
        assert ae.get_job(failed).status.value == "Failed"  # type: ignore[union-attr]
    html = client.get(f"{URL}/jobs/{failed}", headers={"X-Role": "write"}).get_data(
        as_text=True
    )
    # A good token from another origin (a sibling site that planted the cookie)
    # or with no origin at all is refused too.
    for origin in ({"Origin": "http://evil.localhost"}, {}):
        response = client.post(
            f"{URL}/jobs/{failed}/retry",
            data={"csrf": csrf_of(html)},
            headers={"X-Role": "write", **origin},
        )
        assert response.status_code == 403
    response = client.post(
        f"{URL}/jobs/{failed}/retry",
        data={"csrf": csrf_of(html)},
        headers={"X-Role": "write", "Origin": "http://localhost"},
    )
    assert response.status_code == 303
    with app.app_context():
        assert ae.get_job(failed).status.value == "Queued"  # type: ignore[union-attr]


def test_search_filters_paging_and_purge() -> None:
    app, ae = dashboard_app()
    client = app.test_client()
    role = {"X-Role": "write"}
    ok = [client.post("/ok").get_json()["id"] for _ in range(3)]
    keyed = client.post("/ok", headers={"Idempotency-Key": "order-7"}).get_json()["id"]
    with app.app_context():
        ae.run_due_jobs()
    found = client.get(f"{URL}/?q={ok[1]}", headers=role)
    assert found.status_code == 302
    assert found.headers["Location"].endswith(f"/jobs/{ok[1]}")
    by_key = client.get(f"{URL}/?q=order-7", headers=role)
    assert by_key.headers["Location"].endswith(f"/jobs/{keyed}")
    missing = client.get(f"{URL}/?q={uuid.uuid4()}", headers=role).get_data(
        as_text=True
    )
    assert 'id="not-found"' in missing
    listed = ids_on(
        client.get(f"{URL}/?status=Completed", headers=role).get_data(as_text=True)
    )
    assert listed == [keyed, *ok[::-1]]
    assert (
        ids_on(client.get(f"{URL}/?status=Failed", headers=role).get_data(as_text=True))
        == []
    )
    assert client.get(f"{URL}/?status=Nope", headers=role).status_code == 400
    html = client.get(f"{URL}/", headers=role).get_data(as_text=True)
    response = client.post(
        f"{URL}/purge",
        data={"csrf": csrf_of(html), "status": "Completed", "older_than_hours": "0"},
        headers={**role, "Referer": f"http://localhost{URL}/"},
    )
    assert response.status_code == 303
    stats = client.get(f"{URL}/stats.json", headers=role).get_json()
    assert stats["counts"]["Completed"] == 0
    assert stats["handlers"] == {"Bad": 0, "Ok": 0}


def test_paging_goes_through_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    import async_endpoints.dashboard

    monkeypatch.setattr(async_endpoints.dashboard, "PAGE_SIZE", 4)
    app, _ = dashboard_app()
    client = app.test_client()
    ids = [client.post("/ok").get_json()["id"] for _ in range(10)]
    seen: list[str] = []
    url = f"{URL}/"
    for _ in range(10):
        html = client.get(url, headers={"X-Role": "read"}).get_data(as_text=True)
        seen += ids_on(html)
        match = re.search(r'id="next" href="([^"]+)"', html)
        if match is None:
            break
        url = match.group(1).replace("&amp;", "&")
    assert seen == ids[::-1]


# -- in a real browser ----------------------------------------------------------------


@pytest.fixture
def served(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Flask, AsyncEndpoints, int]]:
    import async_endpoints.dashboard

    monkeypatch.setattr(async_endpoints.dashboard, "REFRESH_MS", 300)
    app, ae = dashboard_app()
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, ae, port
    finally:
        server.shutdown()
        thread.join(10)


@pytest.mark.slow
def test_the_dashboard_in_a_browser(
    served: tuple[Flask, AsyncEndpoints, int],
    browser: Any,  # noqa: F811 - the fixture
) -> None:
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait as Wait

    def WebDriverWait(driver: Any, seconds: float) -> Any:  # noqa: N802 - as selenium's
        # A page that is being replaced (after a click) has stale elements, and
        # Chrome may say so as "Node with given id does not belong to the
        # document" (a plain WebDriverException); the wait still fails when its
        # condition never holds.
        ignored = (
            StaleElementReferenceException,
            NoSuchElementException,
            WebDriverException,
        )
        return Wait(driver, seconds, ignored_exceptions=ignored)

    app, ae, port = served
    client = app.test_client()
    failed = client.post("/bad", json={"order": 7}).get_json()["id"]
    with app.app_context():
        ae.run_due_jobs()
    queued = client.post("/ok").get_json()["id"]
    base = f"http://127.0.0.1:{port}{URL}"
    browser.get(f"{base}/stats.json")  # a page of the site, to set its cookie
    browser.add_cookie({"name": "role", "value": "write", "path": "/"})
    browser.get(f"{base}/")
    assert browser.find_element(By.ID, "count-Failed").text == "1"
    assert browser.find_element(By.ID, "count-Queued").text == "1"

    # Live counts: new jobs show without a reload.
    for _ in range(3):
        client.post("/ok")
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "count-Queued").text == "4"
    )
    if os.environ.get("AE_SCREENSHOT"):
        browser.set_window_size(1100, 900)
        browser.save_screenshot(os.environ["AE_SCREENSHOT"])

    # Find the failed job by its id, see why it failed, retry it.
    search = browser.find_element(By.ID, "q")
    search.send_keys(failed)
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, 10).until(lambda b: failed in b.title)
    assert "broken on purpose" in browser.page_source
    assert '"order": 7' in browser.find_element(By.ID, "payload").text
    browser.find_element(By.ID, "retry").click()
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "job-status").text == "Queued"
    )

    # Cancel a queued one.
    browser.get(f"{base}/jobs/{queued}")
    browser.find_element(By.ID, "cancel").click()
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "job-status").text == "Canceled"
    )

    # A reader sees no actions, and a POST of theirs is refused.
    browser.add_cookie({"name": "role", "value": "read", "path": "/"})
    browser.get(f"{base}/jobs/{failed}")
    assert not browser.find_elements(By.ID, "cancel")
    token = browser.get_cookie("ae_dashboard_csrf")
    assert token is not None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(
        "POST",
        f"{URL}/jobs/{failed}/cancel",
        body=f"csrf={token['value']}",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"role=read; ae_dashboard_csrf={token['value']}",
        },
    )
    assert conn.getresponse().status == 403
    conn.close()
    # Nor does a writer's POST without its token get through.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(
        "POST",
        f"{URL}/jobs/{failed}/cancel",
        body="",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": "role=write",
        },
    )
    assert conn.getresponse().status == 403
    conn.close()
    with app.app_context():
        assert ae.get_job(failed).status.value == "Queued"  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_page_with_100k_jobs_loads_in_a_second(
    served: tuple[Flask, AsyncEndpoints, int],
    browser: Any,  # noqa: F811 - the fixture
) -> None:
    from async_endpoints.jobs import Job, JobStatus

    app, ae, port = served
    with app.app_context():
        store = ae._state().store
    now = time.time()
    for n in range(100_000):
        job = Job(
            id=uuid.uuid4(),
            name="Ok",
            status=JobStatus.QUEUED,
            max_retries=3,
            created_at=now + n / 1e5,
            last_updated_at=now,
            owner=f"user-{n % 100}",
        )
        store.submit(job, max_queue_size=0, now=now)
    base = f"http://127.0.0.1:{port}{URL}"
    browser.get(f"{base}/stats.json")
    browser.add_cookie({"name": "role", "value": "read", "path": "/"})
    for path in ("/", "/?status=Queued&owner=user-7"):
        began = time.monotonic()
        browser.get(f"{base}{path}")
        took = time.monotonic() - began
        assert len(browser.find_elements("css selector", "#jobs tbody tr")) == 50
        assert took < 1.0, f"{path} took {took:.2f} s"
    assert browser.find_element("id", "count-Queued").text == "100000"


def test_the_screenshot_in_the_readme_exists() -> None:
    assert (Path(__file__).resolve().parents[1] / "docs" / "dashboard.png").is_file()


def test_bad_cursors_and_store_outages_are_not_500s() -> None:
    import base64
    import json

    from async_endpoints import StoreUnavailableError

    app, ae = dashboard_app(ASYNC_ENDPOINTS_LIST_JOBS=True)
    client = app.test_client()
    role = {"X-Role": "read"}
    for raw in ([1, 2], ["nan", "0b5e4f0e-8d0c-4d7e-9f56-0c1f4a3e6a51"], ["x", "y"]):
        cursor = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode()
        assert client.get(f"{URL}/?cursor={cursor}", headers=role).status_code == 400
        assert client.get(f"/jobs?cursor={cursor}").status_code == 400

    def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailableError("down for the test")

    with app.app_context():
        ae._state().manager.stats = down  # type: ignore[method-assign]
    response = client.get(f"{URL}/", headers=role)
    assert response.status_code == 503
    assert "Retry-After" in response.headers

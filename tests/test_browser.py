"""The example page follows a live job in a real headless browser (Chromium,
driven by selenium), through a real threaded server on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.conftest import free_port
from tests.test_examples import load

pytestmark = pytest.mark.slow


def chromium_and_driver() -> tuple[str, str]:
    """Debian's chromium and chromedriver; skips when absent, unless ``CI`` is set."""
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver missing; .ci/run should install them")
        pytest.skip("apt-get install chromium chromium-driver to run browser tests")
    return browser, driver


@pytest.fixture
def served_quickstart() -> Iterator[tuple[ModuleType, int]]:
    module = load("quickstart")
    port = free_port()
    server = make_server("127.0.0.1", port, module.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield module, port
    finally:
        module.ae.shutdown(grace=0)  # ends open streams, so the server can stop
        server.shutdown()
        thread.join(10)


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver")
    binary, driver = chromium_and_driver()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=driver)
    chrome = webdriver.Chrome(options=options, service=service)
    chrome.set_page_load_timeout(20)
    try:
        yield chrome
    finally:
        chrome.quit()


def test_the_example_page_shows_a_live_job(
    served_quickstart: tuple[ModuleType, int], browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, port = served_quickstart
    browser.get(f"http://127.0.0.1:{port}/")
    browser.find_element(By.ID, "data").clear()
    browser.find_element(By.ID, "data").send_keys("live")
    browser.find_element(By.ID, "start").click()

    def status() -> str:
        text: str = browser.find_element(By.ID, "status").text
        return text

    WebDriverWait(browser, 20).until(lambda _: status() == "Completed")
    assert browser.find_element(By.ID, "result").text == (
        '{"processedData":"LIVE","characterCount":4,"attempt":1}'
    )
    bar = browser.find_element(By.ID, "bar")
    assert float(bar.get_attribute("value")) == 1.0
    log = [e.text for e in browser.find_elements(By.CLASS_NAME, "event")]
    # The job moved before the browser's eyes: a progress report per step, each
    # an event of its own with a growing id, and the stream closed at the end.
    assert any("InProgress 33%" in line for line in log), log
    assert any("InProgress 67%" in line for line in log), log
    assert log[-1].endswith("Completed 100%"), log
    ids = [int(line.split()[0].lstrip("#")) for line in log]
    assert ids == sorted(set(ids)), log

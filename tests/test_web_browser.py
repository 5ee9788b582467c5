"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium, against a real
Redis and real kiq workers. One browser serves the whole module; each test has its own Redis
and dashboard. Every page is saved as a screenshot under the test's tmp_path (screenshots/).

Skipped, with the reason, only where Chromium or ChromeDriver is not installed (``make
system-deps`` installs Debian's chromium and chromium-driver).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, free_port, sample_env, wait_for
from selenium import webdriver
from selenium.common.exceptions import (
    StaleElementReferenceException,
    UnexpectedAlertPresentException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait
from webdata import SCRIPT, accepts, add, executions, failure, fill

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")
FAST_BEATS = {"heartbeat_interval": 0.3, "heartbeat_ttl": 5}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("headless Chromium is not installed (chromium and chromedriver not on PATH): "
                    "`make system-deps` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def dashboard(redis_server, tmp_path: Path) -> Iterator[str]:
    """``kiq web`` on this test's Redis, on a free port; its base URL."""
    config = tmp_path / "web.yml"
    config.write_text(f"redis_url: {redis_server.url}\n")
    port = free_port()
    with open(tmp_path / "web.log", "wb") as log:
        command = [sys.executable, "-m", "kiq", "web", "-c", str(config), "--port", str(port)]
        process = subprocess.Popen(command, cwd=ROOT, env=sample_env(redis_server.url), stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: process.poll() is not None or accepts(port), timeout=30)
        assert process.poll() is None, (tmp_path / "web.log").read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


class Screens:
    """Saves numbered screenshots of what the browser shows."""

    def __init__(self, browser: WebDriver, directory: Path) -> None:
        self.browser = browser
        self.directory = directory
        directory.mkdir()

    def save(self, name: str) -> None:
        path = self.directory / f"{len(list(self.directory.iterdir())):02d}-{name}.png"
        assert self.browser.save_screenshot(str(path)), path


@pytest.fixture
def screens(browser: WebDriver, tmp_path: Path) -> Screens:
    return Screens(browser, tmp_path / "screenshots")


def heading(browser: WebDriver) -> str:
    return text_of(browser, "h1")


def text_of(browser: WebDriver, css: str) -> str:
    """The text of the first element ``css`` selects; "" while the page is being replaced (an
    alert, which a script injected through a job would raise, still fails the test)."""
    try:
        return browser.find_element(By.CSS_SELECTOR, css).text
    except UnexpectedAlertPresentException:
        raise
    except WebDriverException:
        return ""


def replaced(old: WebElement) -> bool:
    """Whether ``old`` is gone from the page. Chromium reports a node of a page being replaced
    either as stale or, mid-navigation, as a node that "does not belong to the document"."""
    try:
        old.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as error:
        if "does not belong to the document" in str(error):
            return True
        raise
    return False


def navigate(browser: WebDriver, action: Callable[[], object], confirm: bool = False) -> None:
    """Click (``action``), accept the confirmation it asks for if ``confirm``, and wait until the
    page it leads to has replaced this one and loaded."""
    old = browser.find_element(By.TAG_NAME, "html")
    action()
    if confirm:
        browser.switch_to.alert.accept()
    WebDriverWait(browser, 15).until(lambda _: replaced(old))
    WebDriverWait(browser, 15).until(lambda b: b.execute_script("return document.readyState") == "complete")


def test_clicking_through_every_page(browser, dashboard, screens, r):
    fill(r)
    add(r, "retry", *((failure(n), time.time() + 600 + n) for n in range(100, 140)))
    for ago in range(1, 50, 3):
        executions(r, "RecordJob", ago, [5.0 + ago] * 20 + [120.0], failed=ago % 4)
    executions(r, SCRIPT, 2, [40.0])
    browser.get(dashboard)
    assert heading(browser) == "Dashboard"
    r.incrby("stat:processed", 50)
    wait_for(lambda: text_of(browser, "[data-rate=processed]") not in ("-", ""), timeout=10)  # polled twice
    assert text_of(browser, "[data-stat=retries]") == "42"
    screens.save("dashboard")

    pages = (("busy", "Busy"), ("queues", "Queues"), ("scheduled", "Scheduled"), ("retries", "Retries"),
             ("dead", "Dead"), ("metrics", "Metrics"), ("periodic", "Periodic"), ("search", "Search"))
    for name, title in pages:
        navigate(browser, browser.find_element(By.ID, f"nav-{name}").click)
        wait_for(lambda title=title: heading(browser).startswith(title))
        assert "active" in browser.find_element(By.ID, f"nav-{name}").get_attribute("class")
        screens.save(name)
        if name == "busy":  # a script in a tag and in a running job's arguments shows as text
            assert SCRIPT in text_of(browser, "#processes") and SCRIPT in text_of(browser, "#running")
        if name == "retries":
            navigate(browser, browser.find_element(By.CSS_SELECTOR, "a[rel=next]").click)
            wait_for(lambda: "page 2 of 2" in text_of(browser, ".pager"))
            assert "page=2" in browser.current_url
            navigate(browser, browser.find_element(By.CSS_SELECTOR, "a[rel=first]").click)
            wait_for(lambda: "page 1 of 2" in text_of(browser, ".pager"))
            navigate(browser, browser.find_element(By.CSS_SELECTOR, "#jobs tbody tr a").click)  # its own page
            wait_for(lambda: "in retries" in heading(browser))
            assert "RuntimeError: boom 30" in text_of(browser, "#job")
            screens.save("retry-job")
        if name == "metrics":  # a class name with a script shows as text; a heading sorts; a class's charts
            assert SCRIPT in text_of(browser, "#metrics")
            navigate(browser, browser.find_element(By.ID, "sort-class").click)
            wait_for(lambda: "sort=class" in browser.current_url)
            assert text_of(browser, "#metrics tbody tr td").startswith("<script>")  # "<" sorts before "R"
            navigate(browser, browser.find_element(By.LINK_TEXT, "RecordJob").click)
            wait_for(lambda: heading(browser) == "Metrics / RecordJob")
            assert text_of(browser, "#totals tbody tr").startswith("last hour 382 25 ")  # 17 x 21 + 0-3
            assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline")) == 2  # processed, failed
            assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart circle.p99")) == 17  # 1 every 3 min
            screens.save("metrics-class")
    search = browser.find_element(By.NAME, "q")
    search.send_keys("alert")
    navigate(browser, search.submit)
    wait_for(lambda: "contain" in text_of(browser, "main"))
    assert SCRIPT in text_of(browser, "main")  # found, and shown as text
    screens.save("search-results")

    browser.get(f"{dashboard}/queues/default")
    browser.find_element(By.CSS_SELECTOR, "button[value=clear]").click()
    browser.switch_to.alert.dismiss()  # asked first: dismissed, nothing happens
    assert r.llen("queue:default") == 4
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "button[value=clear]").click, confirm=True)
    wait_for(lambda: "job(s) cleared" in text_of(browser, "main"))
    assert not r.exists("queue:default")
    screens.save("cleared")
    assert len(list(screens.directory.iterdir())) == 13


def test_retrying_a_job_from_the_retries_page_runs_it_on_a_worker(browser, dashboard, screens, r, start_kiq):
    start_kiq(**FAST_BEATS)
    later = time.time() + 3600  # not due: only the button moves it
    add(r, "retry", (failure(1, args=["from-the-browser"]), later), (failure(2, args=["stays"]), later + 1))
    browser.get(f"{dashboard}/retries")
    screens.save("retries")
    boxes = browser.find_elements(By.CSS_SELECTOR, "input[name=key]")
    assert len(boxes) == 2
    boxes[0].click()
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "button[value=retry]").click)
    wait_for(lambda: "1 job(s) enqueued to run now" in text_of(browser, "main"))
    wait_for(lambda: r.lrange("results", 0, -1) == ["from-the-browser"], timeout=20)
    assert r.zcard("retry") == 1
    browser.refresh()
    assert "stays" in text_of(browser, "#jobs") and "from-the-browser" not in text_of(browser, "#jobs")
    screens.save("retried")


def test_quieting_and_stopping_a_process_from_busy(browser, dashboard, screens, r, start_kiq):
    kiq_ = start_kiq(**FAST_BEATS)
    [pid] = kiq_.wait_workers(1)
    identity = wait_for(lambda: next(iter(r.smembers("processes")), None), timeout=20)
    browser.get(f"{dashboard}/busy")
    row = f"tr[data-identity='{identity}']"
    assert text_of(browser, f"{row} .state") == "running"
    screens.save("busy-running")
    navigate(browser, browser.find_element(By.CSS_SELECTOR, f"{row} button[value=quiet]").click)
    wait_for(lambda: "1 process(es) asked to quiet" in text_of(browser, "main"))

    def quiet_shown() -> bool:
        browser.refresh()
        return text_of(browser, f"{row} .state") == "quiet"

    wait_for(quiet_shown, timeout=15, interval=0.3)
    screens.save("busy-quiet")
    navigate(browser, browser.find_element(By.CSS_SELECTOR, f"{row} button[value=stop]").click, confirm=True)
    wait_for(lambda: "1 process(es) asked to stop" in text_of(browser, "main"))

    def gone() -> bool:
        browser.refresh()
        return identity not in text_of(browser, "main")

    wait_for(gone, timeout=20, interval=0.3)
    assert pid not in kiq_.workers()
    screens.save("busy-stopped")

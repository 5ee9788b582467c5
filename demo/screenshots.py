"""``make screenshots``: the README's pictures of the dashboard, docs/images/dashboard.png and busy.png.

Starts a redis-server of its own on a free port, enqueues the demo's jobs in every state
(waiting, scheduled, running, retrying, dead), runs ``kiq start`` and ``kiq web`` on it, and
saves the pages as Debian's headless Chromium (through Selenium) shows them at 1280x800, once
the live chart has a minute of data. The daily counters of the 29 days before today are made
up, so that the history chart has something to show; everything else is what kiq does with
the demo's jobs. Every process it starts is stopped again by pid.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

import kiq
from kiq.keys import Keys, day

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
SIZE = (1280, 800)
LIVE_SECONDS = 90  # of the live chart's two minutes, filled before the picture
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")
SHOP = {"require": ["demo.jobs"], "processes": 2, "concurrency": 10, "tag": "shop", "timeout": 3,
        "heartbeat_interval": 1, "heartbeat_ttl": 10, "metrics": {"port": 0},
        "queues": [["critical", 3], ["default", 1], ["low", 1]]}
REPORTS = {**SHOP, "processes": 1, "concurrency": 5, "tag": "reports", "queues": ["reports"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"screenshots: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


def answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def started(argv: list[str], log: Path, port: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A process for the ``with`` block, waited for until it listens on ``port``; stopped by pid."""
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        if port is not None:
            wait_for(lambda: process.poll() is not None or answers(port), 30, f"{argv[0]} listening")
            if process.poll() is not None:
                sys.exit(f"screenshots: {' '.join(argv[:4])} exited {process.returncode}: see {log}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def made_up_history(conn: redis.Redis, keys: Keys) -> None:
    """29 days of daily counters before today, and totals that include them."""
    rng = random.Random(18)
    processed = failed = 0
    for back in range(1, 30):
        date = day(time.time() - 86400 * back)
        done, errors = rng.randint(38_000, 61_000), rng.randint(150, 900)
        conn.set(keys.processed_on(date), done)
        conn.set(keys.failed_on(date), errors)
        processed, failed = processed + done, failed + errors
    conn.incrby(keys.processed, processed)
    conn.incrby(keys.failed, failed)


def enqueue(url: str) -> None:
    from demo.jobs import BuildReportJob, FlakyJob, ImportFeedJob, ResizeImageJob, SendReceiptJob

    kiq.configure(url)
    made_up_history(redis.Redis.from_url(url), Keys())
    ResizeImageJob.perform_bulk([[n] for n in range(40_000)])
    SendReceiptJob.perform_bulk([[order, None] for order in range(300)])
    FlakyJob.perform_bulk([[n] for n in range(400)])
    BuildReportJob.perform_bulk([[name, "2026-11"] for name in ("sales", "stock", "churn", "payroll") * 40])
    for site in ("example.com/blog", "shop.example.net/news", "old.example.org/rss"):
        ImportFeedJob.perform_later(f"https://{site}")
    for n in range(12):
        ResizeImageJob.set(wait=timedelta(minutes=5 + 7 * n)).perform_later(1000 + n, size="large")


def shoot(base: str) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which("chromium"))
    for flag in FLAGS:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(str(shutil.which("chromedriver"))), options=options)
    try:  # the page's own size, whatever the window's frame takes
        metrics = {"width": SIZE[0], "height": SIZE[1], "deviceScaleFactor": 1, "mobile": False}
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        browser.get(base)
        time.sleep(LIVE_SECONDS)
        IMAGES.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(IMAGES / "dashboard.png"))
        browser.get(f"{base}/busy")
        time.sleep(1)
        browser.save_screenshot(str(IMAGES / "busy.png"))
    finally:
        browser.quit()


def main() -> None:
    for binary in ("redis-server", "chromium", "chromedriver"):
        if shutil.which(binary) is None:
            sys.exit(f"screenshots: {binary} is not installed (make system-deps installs it)")
    work = Path(tempfile.mkdtemp(prefix="kiq-screenshots-"))
    redis_port, web_port = free_port(), free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    configs = {name: work / f"{name}.yml" for name in ("shop", "reports")}
    for name, settings in (("shop", SHOP), ("reports", REPORTS)):
        configs[name].write_text(yaml.safe_dump({**settings, "redis_url": url}))
    kiq_command = [sys.executable, "-m", "kiq"]
    redis_command = [str(shutil.which("redis-server")), "--port", str(redis_port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", str(work)]
    with contextlib.ExitStack() as stack:
        stack.enter_context(started(redis_command, work / "redis.log", redis_port))
        enqueue(url)
        for name, config in configs.items():
            stack.enter_context(started([*kiq_command, "start", "-c", str(config)], work / f"{name}.log"))
        web = [*kiq_command, "web", "-c", str(configs["shop"]), "--port", str(web_port)]
        stack.enter_context(started(web, work / "web.log", web_port))
        shoot(f"http://127.0.0.1:{web_port}")
    print(f"screenshots: saved {IMAGES / 'dashboard.png'} and busy.png (logs in {work})", file=sys.stderr)


if __name__ == "__main__":
    main()

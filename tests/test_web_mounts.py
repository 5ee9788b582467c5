"""The dashboard mounted in Flask (DispatcherMiddleware), Django (a URL pattern, under its WSGI
and its ASGI handler) and FastAPI (through a2wsgi): the apps of examples/dashboard, served for
real (``flask run``, ``django runserver``, uvicorn) on a test's Redis and visited over HTTP with a
cookie jar, as a browser would. Without the app's login every request under the mount is sent
to the login page; after it, every page renders under the prefix, every link on it works, and
a POST with the page's CSRF token changes Redis.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, HTTPRedirectHandler, Request, build_opener

import pytest
from conftest import ROOT, free_port, sample_env, wait_for
from webdata import accepts, csrf, fill, job, push

pytestmark = pytest.mark.slow

EXAMPLES = ROOT / "examples" / "dashboard"
MOUNT = "/admin/kiq"
PASSWORD = "staff pass"
PAGES = {"/": "Dashboard", "/busy": "Busy", "/queues": "Queues", "/scheduled": "Scheduled",
         "/retries": "Retries", "/dead": "Dead", "/periodic": "Periodic", "/search?q=RecordJob": "Search"}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    text: str


class NoRedirects(HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Visitor:
    """A browser's part that matters here: cookies kept, redirects shown rather than followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        self.opener = build_opener(HTTPCookieProcessor(self.jar), NoRedirects())

    def get(self, path: str) -> Reply:
        return self.send(Request(self.base + path))

    def post(self, path: str, data: dict[str, str]) -> Reply:
        return self.send(Request(self.base + path, data=urlencode(data).encode()))

    def send(self, request: Request) -> Reply:
        try:
            with self.opener.open(request, timeout=30) as response:
                return Reply(response.status, response.headers, response.read().decode())
        except HTTPError as error:
            with error:
                return Reply(error.code, error.headers, error.read().decode())

    def page(self, path: str) -> str:
        reply = self.get(path)
        assert reply.status == 200, (path, reply.status, reply.headers.get("Location"), reply.text[:1000])
        return reply.text


@dataclass(frozen=True)
class Site:
    """A framework's example app, served: its address, its login page, and how staff log in."""

    framework: str
    url: str
    login_page: str
    log_in: Callable[[Visitor], None]


def password_login(visitor: Visitor) -> None:
    """The Flask and FastAPI examples' stand-in login form."""
    reply = visitor.post("/login", {"password": PASSWORD})
    assert reply.status in (302, 303) and reply.headers["Location"] == f"{MOUNT}/", reply


def django_login(visitor: Visitor) -> None:
    """Django's admin login, with its own CSRF token (cookie and form field)."""
    form = visitor.page("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token, form[:1000]
    reply = visitor.post("/admin/login/", {"csrfmiddlewaretoken": token.group(1), "username": "ops",
                                           "password": PASSWORD, "next": f"{MOUNT}/"})
    assert reply.status == 302 and reply.headers["Location"] == f"{MOUNT}/", (reply.status, reply.text[:1000])


def commands(framework: str, port: int) -> list[list[str]]:
    """What starts the framework's example app on ``port``: set-up commands, then the server."""
    python = [sys.executable, "-m"]
    django_setup = [[*python, "django", "migrate", "-v0"],
                    [*python, "django", "createsuperuser", "--noinput", "--username", "ops",
                     "--email", "ops@example.com"]]
    return {
        "flask": [[*python, "flask", "--app", "flask_app", "run", "--port", str(port)]],
        "fastapi": [[*python, "uvicorn", "fastapi_app:app", "--port", str(port)]],
        "django": [*django_setup, [*python, "django", "runserver", "--noreload", f"127.0.0.1:{port}"]],
        "django-asgi": [*django_setup, [*python, "uvicorn", "--factory", "--port", str(port),
                                        "django.core.asgi:get_asgi_application"]],
    }[framework]


@pytest.fixture(params=["flask", "django", "django-asgi", "fastapi"])
def site(request: pytest.FixtureRequest, redis_server, tmp_path: Path) -> Iterator[Site]:
    framework: str = request.param
    env = {**sample_env(redis_server.url, EXAMPLES), "EXAMPLE_SECRET_KEY": "not a secret: a test",
           "EXAMPLE_STAFF_PASSWORD": PASSWORD, "EXAMPLE_DATABASE": str(tmp_path / "django.sqlite3"),
           "DJANGO_SETTINGS_MODULE": "django_site.settings", "DJANGO_SUPERUSER_PASSWORD": PASSWORD}
    port = free_port()
    *setup, serve = commands(framework, port)
    for command in setup:
        done = subprocess.run(command, cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    log_path = tmp_path / f"{framework}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(serve, cwd=EXAMPLES, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: server.poll() is not None or accepts(port), timeout=30)
        assert server.poll() is None, log_path.read_text()
        django = framework.startswith("django")
        yield Site(framework, f"http://127.0.0.1:{port}", "/admin/login/" if django else "/login",
                   django_login if django else password_login)
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        if server.poll() is None:
            server.kill()
            server.wait(10)


def links(html: str) -> list[str]:
    return re.findall(r'(?:href|src|action)="([^"#]+)"', html.replace("&amp;", "&"))


def test_without_the_apps_login_every_request_goes_to_the_login_page(site, r):
    fill(r)
    visitor = Visitor(site.url)
    for path in ("/", "/retries", "/static/kiq.css", "/stats.json"):
        reply = visitor.get(MOUNT + path)
        assert reply.status in (302, 303), (path, reply.status, reply.text[:500])
        assert reply.headers["Location"].startswith(site.login_page), reply.headers["Location"]
    retry = visitor.post(f"{MOUNT}/retries", {"action": "delete-all", "csrf": "made-up"})
    assert retry.status in (302, 303) and retry.headers["Location"].startswith(site.login_page)
    assert r.zcard("retry") == 2
    assert not any(cookie.name == "kiq_session" for cookie in visitor.jar)  # the dashboard saw nothing


def test_every_page_and_link_under_the_mount_and_a_post_with_its_token(site, r):
    fill(r)
    push(r, "café", job(60, "café"))  # a path that is not ASCII, through each framework's mount
    visitor = Visitor(site.url)
    site.log_in(visitor)
    found: set[str] = set()
    for path, title in PAGES.items():
        html = visitor.page(MOUNT + path)
        assert f"<title>{title} · kiq</title>" in html, (path, html[:300])
        on_page = links(html)
        assert on_page and all(link.startswith(f"{MOUNT}/") for link in on_page), (path, on_page)
        found.update(on_page)
    assert f"{MOUNT}/queues/caf%C3%A9" in found
    bare = visitor.get(MOUNT)  # the prefix alone: the dashboard, or a redirect to it
    assert "<title>Dashboard" in bare.text or bare.headers["Location"].endswith(f"{MOUNT}/"), bare
    for link in sorted(found):
        visitor.page(link)  # every link and form target answers 200
    assert job(60)["jid"] in visitor.page(f"{MOUNT}/queues/caf%C3%A9")
    assert [cookie.path for cookie in visitor.jar if cookie.name == "kiq_session"] == [f"{MOUNT}/"]

    refused = visitor.post(f"{MOUNT}/retries", {"action": "delete-all"})
    assert refused.status == 403 and r.zcard("retry") == 2  # the dashboard's own token is still needed
    token = csrf(visitor.page(f"{MOUNT}/retries"))
    done = visitor.post(f"{MOUNT}/retries", {"action": "delete-all", "csrf": token})
    assert done.status == 303 and done.headers["Location"] == f"{MOUNT}/retries?done=delete&count=2", done
    assert r.zcard("retry") == 0
    assert "2 job(s) deleted" in visitor.page(done.headers["Location"])

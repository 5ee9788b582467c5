"""The dashboard as a Django view, for a URL pattern of a Django project (docs/web.md).

Django mounts no WSGI application, so this view does what a WSGI mount does: it hands the
request to the dashboard with the matched prefix moved from ``PATH_INFO`` to ``SCRIPT_NAME``
(every link, form and cookie of the dashboard then carries it), and turns its answer into a
Django response. The dashboard's forms carry its own CSRF token, so the view is exempt from
Django's; the project's own login requirement wraps it (``staff_member_required``).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

View = Callable[..., HttpResponse]


def view(dashboard: WSGIApplication) -> View:
    """The view for ``re_path(r"^admin/kiq(?P<path>/.*)?$", view(dashboard))``: the pattern's
    ``path`` group is what follows the prefix, and the prefix is whatever the pattern matched
    before it."""

    def dashboard_view(request: HttpRequest, path: str | None = None) -> HttpResponse:
        rest = path or ""
        return call(dashboard, environ(request, request.path[:len(request.path) - len(rest)], rest))

    exempt: View = csrf_exempt(dashboard_view)
    return exempt


def environ(request: HttpRequest, script_name: str, path_info: str) -> dict[str, Any]:
    """The WSGI environment of ``request`` as the dashboard sees it. Built from ``META`` and the
    body Django read, so it serves under Django's ASGI handler too."""
    body: bytes = request.body
    return {
        **request.META,
        "SCRIPT_NAME": wsgi_text(script_name), "PATH_INFO": wsgi_text(path_info),
        "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": request.scheme, "wsgi.version": (1, 0), "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False,
    }


def call(dashboard: WSGIApplication, env: dict[str, Any]) -> HttpResponse:
    """The dashboard's answer to ``env`` as a Django response (its pages are small: read whole)."""
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return written.append

    result = dashboard(env, start_response)
    try:
        chunks = list(result)  # read first: the app may call write() until its iterable ends
        content = b"".join([*written, *chunks])
    finally:
        getattr(result, "close", lambda: None)()
    status, headers = started
    response = HttpResponse(content, status=int(status.split()[0]))
    for name, value in headers:
        if name.lower() == "set-cookie":
            response.cookies.load(value)
        else:
            response[name] = value
    return response


def wsgi_text(text: str) -> str:
    """A path as WSGI carries it: its UTF-8 bytes, one character each (PEP 3333)."""
    return text.encode().decode("latin-1")

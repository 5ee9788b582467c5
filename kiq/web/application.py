"""The dashboard's WSGI application: routing, the security every request goes through, and
rendering. What each page shows is in kiq.web.pages; what each button does, in kiq.web.actions.

Every request: a session cookie is set if missing (its id signs the CSRF tokens); a POST is
refused in read-only mode, or without the token of its own session; pages carry a strict
Content-Security-Policy (scripts, styles and images only from the dashboard itself).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import redis
from werkzeug.exceptions import Forbidden, HTTPException, NotFound
from werkzeug.routing import Map, MapAdapter, PathConverter, Rule
from werkzeug.wrappers import Request, Response

from kiq import __version__
from kiq.api import API, ShardedAPI
from kiq.connection import wrong_type
from kiq.web import actions, csrf, metrics, pages, render

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from kiq.periodic import Entry

SETS = "any(scheduled, retries, dead)"
ROUTES: dict[str, tuple[Callable[..., Response], ...]] = {  # path: its page, and the action its forms post
    "/": (pages.dashboard,),
    "/stats.json": (pages.stats,),
    "/busy": (pages.busy, actions.signal),
    "/queues": (pages.queues,),
    "/queues/<text:name>": (pages.queue, actions.change_queue),
    f"/<{SETS}:kind>": (pages.sorted_set, actions.change_set),
    f"/<{SETS}:kind>/<text:key>": (pages.job,),
    "/metrics": (metrics.metrics,),
    "/metrics/<text:name>": (metrics.job_metrics,),
    "/periodic": (pages.periodic, actions.enqueue_periodic),
    "/search": (pages.search,),
    "/static/<name>": (pages.static,),
}


class Text(PathConverter):
    """A queue's name or a job's key in a path: any text, "/" and line breaks included, as
    anything that writes to Redis may name a queue or a jid."""

    regex = "[^/](?s:.)*?"


URLS = Map([Rule(path, endpoint=handler, methods=[method])  # a rule's endpoint is its handler itself
            for path, handlers in ROUTES.items()
            for method, handler in zip(("GET", "POST"), handlers, strict=False)],
           strict_slashes=False, converters={"text": Text})
ENDPOINTS: dict[str, Callable[..., Response]] = {  # what templates name in view.url("busy")
    rule.endpoint.__name__: rule.endpoint for rule in URLS.iter_rules()}
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'")


class Dashboard:
    """The WSGI application ``kiq.web.app()`` returns, over every shard of ``shards`` (one API
    per Redis; with one Redis, that one and no shard shown anywhere)."""

    def __init__(self, shards: ShardedAPI, *, read_only: bool = False, periodic: Iterable[Entry] = (),
                 secret: bytes | None = None) -> None:
        self.shards = shards
        self.read_only = read_only
        self.periodic = list(periodic)
        self.secret = secret or os.urandom(32)
        self.templates = render.environment()
        self.templates.filters["key"] = pages.key_of

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self.respond(Request(environ))(environ, start_response)

    def respond(self, request: Request) -> Response:
        urls = URLS.bind_to_environ(request.environ)
        session = request.cookies.get(csrf.COOKIE) or ""
        fresh = not session
        view = View(self, request, urls, session or csrf.new_session())
        try:
            endpoint, values = urls.match()
            if request.method == "POST":
                self.check(request, session)
            handler: Callable[..., Response] = endpoint
            response = handler(view, **values)
        except HTTPException as error:
            response = view.render("error.html", error=error, status=error.code or 500)
        except redis.RedisError as error:
            hint = wrong_type(error)
            response = view.render("error.html", error=None, redis_error=f"{type(error).__name__}: {error}",
                                   wrong_type=hint, status=500 if hint else 503)
        if fresh:
            response.set_cookie(csrf.COOKIE, view.session, path=request.script_root + "/", httponly=True,
                                samesite="Lax", secure=request.is_secure)
        response.headers.update({"Content-Security-Policy": POLICY, "X-Frame-Options": "SAMEORIGIN",
                                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def check(self, request: Request, session: str) -> None:
        if self.read_only:
            raise Forbidden("This dashboard is read-only: it changes nothing.")
        if not csrf.valid(self.secret, session, request.form.get(csrf.FIELD)):
            raise Forbidden("The form's security token is missing or does not match this browser's "
                            "session: reload the page and try again.")


class View:
    """One request as a page or an action sees it, with what templates need to build links.

    A page of one shard's data (a sorted set, a queue, a job) names its shard in the query
    string, ``?shard=NAME``, so its links, its forms' actions and the page an action returns to
    keep it; with one Redis no link carries it."""

    def __init__(self, dashboard: Dashboard, request: Request, urls: MapAdapter, session: str) -> None:
        self.dashboard = dashboard
        self.shards = dashboard.shards
        self.sharded = dashboard.shards.sharded
        self.request = request
        self.urls = urls
        self.session = session
        self.read_only = dashboard.read_only

    @property
    def shard(self) -> str:
        """The shard this page shows or this action changes: ``?shard=``, else the first one."""
        return self.named(self.request.args.get("shard"), self.shards.routes.default.name)

    def queue_shard(self, queue: str) -> str:
        """The shard of a queue's page: ``?shard=``, else the one the queue lives on."""
        return self.named(self.request.args.get("shard"), self.shards.routes.route(queue).name)

    def named(self, name: str | None, default: str) -> str:
        try:
            return self.shards.routes.named(name).name if name else default
        except ValueError as error:
            raise NotFound(str(error)) from None

    @property
    def api(self) -> API:
        """The API of this page's shard."""
        return self.shards.api(self.shard)

    def on(self, shard: str) -> dict[str, str]:
        """What a link to a page of ``shard``'s data adds to its query string: nothing with one Redis."""
        return {"shard": shard} if self.sharded else {}

    @property
    def namespace(self) -> str:
        return self.shards.default.keys.namespace

    @property
    def csrf(self) -> str:
        return csrf.token(self.dashboard.secret, self.session)

    def url(self, endpoint: str, **values: Any) -> str:
        """The path of the page a handler's name names (``"busy"``, ``"job"``...). A name that
        is not UTF-8 in Redis (read with surrogate escapes) links with replacement characters:
        its page then shows nothing, where quoting it would have failed the whole page."""
        return self.urls.build(ENDPOINTS[endpoint], {key: readable(value) if isinstance(value, str) else value
                                                      for key, value in values.items()})

    def static(self, name: str) -> str:
        return self.url("static", name=name, v=__version__)

    @property
    def path(self) -> str:
        """This page's path, without its query string, quoted again: a queue named
        ``critical?order=newest`` (or holding a line break) is part of the path, not a query
        string of a form's action or a header's next line."""
        return quote(self.request.script_root + self.request.path, safe="/")

    def here(self, **changes: Any) -> str:
        """This page's path with its query string changed (a None value drops that argument)."""
        args: dict[str, Any] = {key: value for key, value in self.request.args.items()
                                if key not in ("done", "count", "left")}
        args.update(changes)
        query = urlencode(sorted((key, value) for key, value in args.items() if value is not None))
        return self.path + (f"?{query}" if query else "")

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        html = self.dashboard.templates.get_template(template).render(view=self, **context)
        return Response(utf8(html), status, content_type="text/html; charset=utf-8")

    def done(self, action: str, count: int, endpoint: str | None = None, left: int = 0,
             **values: Any) -> Response:
        """After a change, back to the page it was made from (its query string kept, so the same
        page of the same filtered list), or to ``endpoint``, saying what was done and how many
        it ``left`` where they were."""
        target = self.url(endpoint, **values) if endpoint else self.here()
        joiner = "&" if "?" in target else "?"
        said = {"done": action, "count": count, **({"left": left} if left else {})}
        return Response(status=303, headers={"Location": f"{target}{joiner}{urlencode(said)}"})


def utf8(text: str) -> bytes:
    """The page as UTF-8; bytes of a payload that were not UTF-8 (read with surrogate escapes,
    kiq.connection) show as U+FFFD."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return readable(text).encode()


def readable(text: str) -> str:
    """A string read with surrogate escapes (bytes that were not UTF-8), with U+FFFD for them."""
    return text if text.isascii() else text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

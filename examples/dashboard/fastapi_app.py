"""kiq's dashboard in a FastAPI app, under /admin/kiq through a2wsgi, for staff only.

    EXAMPLE_SECRET_KEY=... EXAMPLE_STAFF_PASSWORD=... uvicorn fastapi_app:app

A mounted application gets none of the app's dependencies, so the login requirement for it is
a middleware, reading the app's own session.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Annotated

from a2wsgi import WSGIMiddleware
from fastapi import FastAPI, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.middleware.sessions import SessionMiddleware

import kiq.web

MOUNT = "/admin/kiq"
app = FastAPI()


@app.middleware("http")
async def staff_only(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """The app's login requirement, for the dashboard: a staff member's session."""
    if request.url.path.startswith(MOUNT) and not request.session.get("staff"):
        return RedirectResponse("/login", status_code=303)
    return await call_next(request)


# added after staff_only, so it runs before it: the session is there when staff_only reads it
app.add_middleware(SessionMiddleware, secret_key=os.environ["EXAMPLE_SECRET_KEY"])
app.mount(MOUNT, WSGIMiddleware(kiq.web.app()))


@app.get("/login", response_class=HTMLResponse)
def login_form() -> str:
    """Stands for the app's own login (here one staff password)."""
    return '<form method="post"><input type="password" name="password"><button>Log in</button></form>'


@app.post("/login")
def login(request: Request, password: Annotated[str, Form()]) -> Response:
    if not hmac.compare_digest(password.encode(), os.environ["EXAMPLE_STAFF_PASSWORD"].encode()):
        return RedirectResponse("/login", status_code=303)
    request.session["staff"] = True
    return RedirectResponse(f"{MOUNT}/", status_code=303)

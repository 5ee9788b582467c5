"""kiq's dashboard in a Flask app, under /admin/kiq, for the app's logged-in staff only.

    EXAMPLE_SECRET_KEY=... EXAMPLE_STAFF_PASSWORD=... flask --app flask_app run

The dispatcher hands /admin/kiq/... to the dashboard before Flask sees the request, so Flask
would run none of its ``before_request`` checks for it: ``wsgi_app`` below runs them first.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from typing import Any

from flask import Flask, redirect, request, session, url_for
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response

import kiq.web

MOUNT = "/admin/kiq"
app = Flask(__name__)
app.secret_key = os.environ["EXAMPLE_SECRET_KEY"]


@app.before_request
def staff_only() -> Response | None:
    """The app's login requirement: every page but the login form needs a staff member."""
    if request.endpoint != "login" and not session.get("staff"):
        return redirect(url_for("login"))
    return None


@app.route("/login", methods=["GET", "POST"])
def login() -> Response | str:
    """Stands for the app's own login (here one staff password)."""
    given = request.form.get("password", "").encode()
    if request.method == "POST" and hmac.compare_digest(given, os.environ["EXAMPLE_STAFF_PASSWORD"].encode()):
        session["staff"] = True
        return redirect(f"{MOUNT}/")
    return '<form method="post"><input type="password" name="password"><button>Log in</button></form>'


dispatcher = DispatcherMiddleware(app.wsgi_app, {MOUNT: kiq.web.app()})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The app's before_request checks, for the dashboard's requests too."""
    if environ.get("PATH_INFO", "").startswith(MOUNT):
        with app.request_context(environ):
            refused = app.preprocess_request()
            if refused is not None:
                return app.make_response(refused)(environ, start_response)
    return dispatcher(environ, start_response)


app.wsgi_app = wsgi_app

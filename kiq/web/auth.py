"""HTTP basic auth around the dashboard, for ``kiq web`` on an address other people can reach.

Mounted in an app, the dashboard relies on that app's own login instead (docs/web.md).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class BasicAuth:
    """Passes a request on only with the right user and password; else 401 asking for them."""

    def __init__(self, app: WSGIApplication, user: str, password: str, realm: str = "kiq") -> None:
        self.app = app
        self.user = user.encode()
        self.password = password.encode()
        self.realm = realm

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.allowed(environ.get("HTTP_AUTHORIZATION", "")):
            return self.app(environ, start_response)
        challenge = f'Basic realm="{self.realm}", charset="UTF-8"'
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", challenge)])
        return [b"kiq web: this dashboard needs a user and password\n"]

    def allowed(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        # both compared, always: the time taken says nothing about which one was wrong
        right_user = hmac.compare_digest(user, self.user)
        return hmac.compare_digest(password, self.password) and right_user

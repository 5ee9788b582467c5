"""Who may reach ``kiq web``: HTTP basic auth on an address other people can reach, and on
loopback without a password, only requests addressed to this machine's own names.

Mounted in an app, the dashboard relies on that app's own login instead (docs/web.md).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
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


class LocalHosts:
    """Passes a request on only when its Host names loopback (localhost, 127.0.0.1, [::1]) or
    one of ``allowed``; else 403 saying how to allow it.

    Without it, any web page that the operator opens could drive a dashboard listening on
    127.0.0.1 without a password: its site's name, rebound to 127.0.0.1 by its DNS server (DNS
    rebinding), makes the dashboard the same origin as the page, cookie and token included."""

    def __init__(self, app: WSGIApplication, allowed: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {name.lower() for name in allowed}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        name = host_name(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
        if name in self.allowed or loopback_name(name):
            return self.app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"kiq web: refused a request addressed to {name!r}. Without a password the dashboard answers "
                "only to localhost and loopback addresses, so that no web page can reach it through a DNS "
                "name of its own (DNS rebinding). To use another name, add it with --allowed-host NAME (or "
                "web.hosts in the config file), or set a password.\n".encode("utf-8", "replace")]


def host_name(host: str) -> str:
    """The name or address of a Host header, without its port: ``[::1]:9292`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].partition("]")[0].lower()
    name, colon, port = host.rpartition(":")
    return (name if colon and port.isdigit() else host).lower()


def loopback_name(name: str) -> bool:
    """localhost (and its subdomains, which browsers resolve to loopback themselves) or a
    loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False

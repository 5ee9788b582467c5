"""``kiq web``: the dashboard on its own, served by waitress (a threaded WSGI server).

It binds 127.0.0.1 unless told otherwise, and refuses any address other people could reach
unless a password is set (``web.password`` in the config file or ``KIQ_WEB_PASSWORD``): the
dashboard can delete every job. Without a password it answers only requests addressed to
loopback's names (kiq.web.auth.LocalHosts). Importing this module needs only kiq's core; the ``web`` extra
is imported when the command runs.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import TYPE_CHECKING

import click

from kiq import exits
from kiq.admin import REDIS_URL_HELP, periodic_entries, settings

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from waitress.server import BaseWSGIServer, MultiSocketServer

EXTRA = "kiq web needs the web extra: pip install 'kiq[web]'"


@click.command()
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="Config file: redis_url or shards, namespace, periodic, web.user and web.password.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; other than loopback only with a password.")
@click.option("--port", default=9292, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at the start).")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="A name the dashboard answers to without a password, beyond localhost and loopback "
                   "addresses (a proxy's, e.g.). Repeatable.")
@click.option("--read-only", is_flag=True, help="Show everything, change nothing (no buttons, POST refused).")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Requests served at once.")
@click.option("-r", "--require", "require", multiple=True,
              help="Module that declares periodic entries. Repeatable.")
@click.option("--redis-url", help=REDIS_URL_HELP)
@click.option("--namespace", help="Key prefix.")
def web(config_path: str | None, host: str, port: int, allowed_hosts: tuple[str, ...], read_only: bool,
        threads: int, require: tuple[str, ...], redis_url: str | None, namespace: str | None) -> None:
    """Serve the web dashboard (docs/web.md)."""
    config = settings(config_path, redis_url, namespace)
    if not config.web_password and not loopback(host):
        click.echo(f"kiq web: refusing to listen on {host} without a password: anyone who reaches it "
                   "could delete every job. Set web.password in the config file (or KIQ_WEB_PASSWORD) "
                   "to require HTTP basic auth, or listen on 127.0.0.1 behind your own proxy.", err=True)
        sys.exit(exits.CONFIG)
    try:
        from waitress.server import create_server

        import kiq.web
        from kiq.web.auth import BasicAuth, LocalHosts
    except ImportError as error:
        click.echo(f"{EXTRA} ({error})", err=True)
        sys.exit(exits.CONFIG)
    entries = periodic_entries(config, require)
    application = kiq.web.app(config.redis_url, config.namespace, read_only=read_only, periodic=entries,
                              shards=config.routes)
    password = config.web_password
    if password:
        served: WSGIApplication = BasicAuth(application, config.web_user, password)
    else:
        served = LocalHosts(application, [host, *config.web_hosts, *allowed_hosts])
    try:
        server = create_server(served, host=host, port=port, threads=threads, ident="kiq")
    except OSError as error:
        click.echo(f"kiq web: cannot listen on {host} port {port}: {error.strerror or error}. Is another "
                   "kiq web (or another server) using it? Choose another with --port.", err=True)
        sys.exit(exits.CONFIG)
    for address, bound in listening(server):
        shown = f"[{address}]" if ":" in str(address) else address
        click.echo(f"kiq web: serving http://{shown}:{bound}/{' read-only' if read_only else ''}"
                   f"{' with basic auth' if password else ''}", err=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def listening(server: MultiSocketServer | BaseWSGIServer) -> list[tuple[str, int]]:
    """The (address, port) pairs a server listens on: a name such as localhost may give two."""
    from waitress.server import MultiSocketServer

    if isinstance(server, MultiSocketServer):
        return list(server.effective_listen)
    assert server.socket is not None
    address, port = server.socket.getsockname()[:2]
    return [(str(address), int(port))]


def loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (127.0.0.0/8, ::1)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(str(address).split("%")[0]).is_loopback
                                   for address in addresses)

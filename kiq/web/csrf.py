"""Tokens against cross-site request forgery, tied to a session cookie.

A browser gets a random session id in an HttpOnly, SameSite cookie on its first visit; every
form carries ``HMAC(secret, session id)``. A POST whose token does not match its own cookie is
refused, so another site can neither read a token nor make one up.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

COOKIE = "kiq_session"
FIELD = "csrf"


def new_session() -> str:
    return secrets.token_hex(16)


def token(secret: bytes, session: str) -> str:
    return hmac.new(secret, session.encode(), hashlib.sha256).hexdigest()


def valid(secret: bytes, session: str | None, given: str | None) -> bool:
    if not session or not given:
        return False
    return hmac.compare_digest(token(secret, session), given)

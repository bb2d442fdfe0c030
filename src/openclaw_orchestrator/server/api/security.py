"""Bearer-key authentication, compared in constant time.

With no key configured the API is open, which :mod:`openclaw_orchestrator.server.serve` allows
only on a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from pydantic import SecretStr
from starlette.requests import Request

from ...domain.sessions import TOKEN_PREFIX
from ...errors import ForbiddenError, UnauthorizedError

__all__ = [
    "UI_COOKIE",
    "Authenticator",
    "bearer_token",
    "is_session_token",
    "require_api_key",
    "ui_cookie_grants",
]

UI_COOKIE = "orchestrator_ui"
"""The dashboard's cookie (``/ui``): an expiry and ``HMAC(key, "ui:<expiry>")``, never the key."""
_SAFE_METHODS = ("GET", "HEAD")


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def is_session_token(token: str) -> bool:
    """Whether ``token`` has the form of a session token (not whether it is valid)."""
    return token.startswith(TOKEN_PREFIX)


async def require_api_key(request: Request) -> None:
    """The check of every route that only the API key grants (a route-class ``Check``)."""
    auth: Authenticator = request.app.state.authenticator
    if not ui_cookie_grants(request):
        auth.check(request.headers.get("authorization"))


def ui_cookie_grants(request: Request) -> bool:
    """Whether the dashboard's cookie stands in for the key: only for a read (GET, HEAD)
    without an ``Authorization`` header; a change still needs the bearer key (no CSRF)."""
    if request.method not in _SAFE_METHODS or "authorization" in request.headers:
        return False
    auth: Authenticator = request.app.state.authenticator
    return auth.is_ui_cookie(request.cookies.get(UI_COOKIE), time.time())


class Authenticator:
    """Checks the API key; never logs or echoes what it was given."""

    def __init__(self, api_key: SecretStr | None) -> None:
        self._key = api_key.get_secret_value().encode() if api_key else None

    @property
    def is_enabled(self) -> bool:
        """Whether requests need a key at all."""
        return self._key is not None

    def __repr__(self) -> str:
        return f"<Authenticator {'enabled' if self._key else 'open'}>"

    def is_api_key(self, token: str) -> bool:
        """Whether ``token`` is the API key (always true when no key is configured)."""
        return self._key is None or hmac.compare_digest(token.encode(), self._key)

    def ui_cookie(self, expires: int) -> str:
        """The dashboard cookie's value, valid until ``expires`` (Unix seconds): derived
        from the key, so it grants nothing once the key changes, and never reveals it."""
        return f"{expires}.{self._ui_mac(expires)}"

    def is_ui_cookie(self, value: str | None, now: float) -> bool:
        """Whether ``value`` is an unexpired :meth:`ui_cookie` of this key."""
        if self._key is None or not value:
            return False
        expires, _, mac = value.partition(".")
        if not expires.isdigit() or len(expires) > 12 or int(expires) <= now:
            return False
        return hmac.compare_digest(mac, self._ui_mac(int(expires)))

    def _ui_mac(self, expires: int) -> str:
        key = self._key or b""
        return hmac.new(key, f"ui:{expires}".encode(), hashlib.sha256).hexdigest()

    def check(self, authorization: str | None) -> None:
        """Raise unless the header carries the API key: ``UnauthorizedError`` for a missing or
        wrong key, ``ForbiddenError`` for a session token (valid elsewhere, not here)."""
        if self._key is None:
            return
        token = bearer_token(authorization)
        if token is None:
            raise UnauthorizedError("missing 'Authorization: Bearer <ORCHESTRATOR_API_KEY>'")
        if self.is_api_key(token):
            return
        if is_session_token(token):
            raise ForbiddenError("a session token grants its own session only, not this")
        raise UnauthorizedError("invalid API key")

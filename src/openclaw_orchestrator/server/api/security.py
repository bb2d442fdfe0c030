"""Bearer-key authentication, compared in constant time.

With no key configured the API is open, which :mod:`openclaw_orchestrator.server.serve` allows
only on a loopback address.
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.requests import Request

from ...domain.sessions import TOKEN_PREFIX
from ...errors import ForbiddenError, UnauthorizedError

__all__ = ["Authenticator", "bearer_token", "is_session_token", "require_api_key"]


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
    auth.check(request.headers.get("authorization"))


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

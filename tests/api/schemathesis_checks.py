"""The server-error check of the live fuzz run, loaded by schemathesis (``SCHEMATHESIS_HOOKS``).

It is schemathesis's ``not_a_server_error`` with one documented exception: a ``504 timeout``
answering a request whose *own* deadline (``timeout`` or ``attempt_timeout``) was under a
second. Generated data asks for deadlines like ``5e-324`` seconds, and no instance can answer
that fast: the 504 is the API doing what it documents, not a fault. Any other 5xx fails.
"""

from __future__ import annotations

from typing import Any

import schemathesis

from openclaw_orchestrator.domain.duration import parse_duration
from openclaw_orchestrator.errors import InvalidRequestError

__all__ = ["no_server_error"]

SHORT_DEADLINE = 1.0
"""Seconds: a request's own deadline under this may be missed by a healthy instance."""


def _own_short_deadline(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    for field in ("timeout", "attempt_timeout"):
        try:
            if body.get(field) is not None and parse_duration(body[field]) < SHORT_DEADLINE:
                return True
        except InvalidRequestError:
            continue
    return False


def _error_code(response: schemathesis.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


@schemathesis.check
def no_server_error(
    ctx: schemathesis.CheckContext,
    response: schemathesis.Response,
    case: schemathesis.Case[Any],
) -> bool | None:
    """No 5xx, except a 504 ``timeout`` for a deadline the request itself made too short."""
    status = response.status_code
    if status < 500:
        return None
    if status == 504 and _error_code(response) == "timeout" and _own_short_deadline(case.body):
        return None
    raise AssertionError(f"server error {status}: {response.text[:500]}")

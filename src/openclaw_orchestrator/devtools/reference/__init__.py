"""The reference instance: our documented instance protocol, served by a small Starlette app.

``create_instance_app`` builds the ASGI app (tests serve it with ``server.running``);
``run_instance`` serves it in the foreground and can self-register with an orchestrator.
Handlers are ``echo``, ``search``, ``demo``, ``stream`` (streams its text, protocol v1.3) or
any ``module:function``; faults are test-only knobs.
Sessions keep each conversation in memory (:mod:`.sessions`); handlers see it as
``HandlerContext.session``.
"""

from __future__ import annotations

from .app import DEFAULT_MAX_BODY_BYTES, create_instance_app
from .faults import FaultConfig
from .handlers import Handler, HandlerContext, HandlerError, resolve_handler
from .runner import Registrar, Registration, registration_lifespan, run_instance
from .sessions import DEFAULT_MAX_HISTORY, DEFAULT_MAX_SESSIONS, Exchange, SessionContext

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_HISTORY",
    "DEFAULT_MAX_SESSIONS",
    "Exchange",
    "FaultConfig",
    "Handler",
    "HandlerContext",
    "HandlerError",
    "Registrar",
    "Registration",
    "SessionContext",
    "create_instance_app",
    "registration_lifespan",
    "resolve_handler",
    "run_instance",
]

"""The HTTP API: a thin FastAPI layer over the core's
:class:`~openclaw_orchestrator.server.core.orchestrator.Orchestrator`."""

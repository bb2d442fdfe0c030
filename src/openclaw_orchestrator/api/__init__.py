"""The HTTP API: a thin FastAPI layer over :class:`~openclaw_orchestrator.service.Orchestrator`."""

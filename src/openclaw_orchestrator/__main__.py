"""``python -m openclaw_orchestrator`` is ``openclaw-orchestrator``."""

from .cli.entry import orchestrator_main

orchestrator_main()

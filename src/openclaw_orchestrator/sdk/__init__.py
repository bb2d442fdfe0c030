"""The SDK: what a program needs to call an orchestrator, and nothing of the server.

Requests are built and replies read with no I/O (:mod:`.calls`); :class:`.async_client.AsyncClient`
sends them on aiohttp and :class:`.sync_client.Client` on the standard library
(:mod:`.sync_transport`). It imports only the wire contract at the package root (``errors``,
``models``, ``settings``) and the pure ``domain``; ``tests/test_layers.py`` holds it to that.
The package root re-exports the public names: ``from openclaw_orchestrator import Client``.
"""

"""The orchestrator service: the core, the drivers and stores at its edge, the HTTP API and
the process that hosts them.

- :mod:`.core`: routing, fanout, sessions, health, retries and the in-memory registry; it
  imports nothing of the API or the CLI.
- :mod:`.drivers`: one call to one instance (our worker protocol, OpenClaw gateways).
- :mod:`.stores`: durable sessions (SQLite, PostgreSQL) and the health ledger.
- :mod:`.api`: FastAPI routes and the raw-ASGI fast path, thin over the core.
- :mod:`.composition` wires them from settings; :mod:`.serve` and :mod:`.hosting` run it.

Needs the ``server`` extra (``pip install 'openclaw-orchestrator[server]'``).
"""

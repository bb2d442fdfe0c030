"""Real OpenClaw gateways on this machine, for ``up --openclaw N`` and the tests.

One module per concept (see ``docs/openclaw.md``)::

    install      Node 24 (PyPI wheel) and openclaw@2026.9.6 (npm), pinned, into the cache
    gateway      one gateway process: its state folder, config, token, port, stop
    stub_model   a tiny OpenAI-compatible model server the gateways use offline
    fleet        the stub model plus N gateways, started and stopped together
    demo         the OpenClaw steps of ``up --openclaw N --demo``

The orchestrator talks to gateways through ``drivers.openclaw.OpenClawDriver``; nothing here
is needed for that, only to run gateways locally.
"""

"""The orchestrator's endpoints as MCP tools (docs/mcp.md), for agents that delegate.

- :mod:`.arguments`, :mod:`.tools`: what each tool takes (the HTTP API's models) and answers.
- :mod:`.backend`: the seam under the tools; :mod:`.core_backend` (in process) and
  :mod:`.sdk_backend` (an orchestrator's HTTP API) implement it.
- :mod:`.server`: the ``mcp`` SDK's low-level server over those tools.
- :mod:`.http`: streamable HTTP at ``/mcp`` on the orchestrator's app (needs the server).
- :mod:`.stdio`: stdio, for ``openclaw orchestrator mcp`` (needs ``mcp``, not the server).
"""

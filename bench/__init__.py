"""``make bench``: the orchestrator measured against the floor and the alternatives.

Everything runs on 127.0.0.1 as subprocesses started here (reference instances, orchestrators
with one uvicorn worker each, nginx with a generated config); the load generator is a lean
aiohttp client on uvloop in this process. See ``docs/performance.md`` for the schema of
``bench/results/latest.json`` and the numbers of the last full run.
"""

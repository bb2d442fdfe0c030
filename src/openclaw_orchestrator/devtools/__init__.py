"""Tools for running and trying the orchestrator locally, not part of the service itself.

``up`` (:mod:`.cluster`) with its demo, the reference instance (:mod:`.reference`) that speaks
our instance protocol, and real OpenClaw gateways with a scripted model (:mod:`.openclaw`).
"""

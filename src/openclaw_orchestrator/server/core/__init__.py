"""The core in parts, one job each, composed by the ``Orchestrator`` (``service.py``).

- :mod:`.dispatcher`: one call to one instance, with its deadline, outstanding count and
  outcome (fed to passive health).
- :mod:`.health_monitor`: probes, verdicts and heartbeat expiry.
- :mod:`.routing`: candidates, policy and failover.
- :mod:`.fanout`: gather, aggregate and stream.
- :mod:`.retrier`: the hooks and waits of the one retry decision
  (:class:`~openclaw_orchestrator.domain.backoff.RetryRules`).
- :mod:`.session_instances`: placing, reaching, moving and closing sessions on instances.
- :mod:`.interfaces`: the registry the parts read, as a Protocol (the health verdicts'
  Protocol is :class:`~openclaw_orchestrator.domain.health.HealthVerdicts`).
- :mod:`.clock`: the injected time.

No part imports the orchestrator, the sessions service or the API; the parts take what
they need through their constructors (``tests/test_layers.py`` checks there is no cycle).
"""

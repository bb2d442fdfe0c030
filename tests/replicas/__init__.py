"""Several orchestrator replicas on one PostgreSQL database, behind a round-robin front
(issue 11's proof): the harness is :mod:`.harness`, each ``test_replicas_*`` module one
cluster."""

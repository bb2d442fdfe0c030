"""Durable state behind one interface, :class:`~.base.Store`, with two implementations:
:class:`~.sqlite.SqliteStore` (a SQLite file, the default) and
:class:`~.postgres.PostgresStore` (PostgreSQL, when several orchestrator replicas share the
load). One schema (:mod:`.tables`), one mapping of records to rows (:mod:`.rows`), one
health state machine (:mod:`.health`)."""

"""Durable state behind one interface: :class:`~.base.Store`; SQLite by default, PostgreSQL
when several orchestrator replicas share the load (both through :class:`~.sql.SqlStore`)."""

"""Durable state behind one interface: :class:`~.base.Store`; SQLite by default, PostgreSQL
when several orchestrator replicas share the load. A SQLite file is served by
:class:`~.sqlite_writer.SqliteStore` (plain ``sqlite3``, one writer thread); PostgreSQL (and
an in-memory SQLite URL) by :class:`~.sql.SqlStore` (SQLAlchemy)."""

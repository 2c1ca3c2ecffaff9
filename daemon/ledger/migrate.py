"""The ledger's schema version, brought to the latest at start-up by Alembic (scripts in daemon/migrations).

A new ledger is built from daemon.schema and stamped with the head revision. A ledger from before Alembic (schema 1
to 4, its version in meta.schema_version) is stamped with that revision, then upgraded like any other. The version is
also kept in meta.schema_version, so that an older scm-daemon refuses a ledger newer than it knows.
"""

from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.pool import NullPool

from daemon import schema

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 6  # the head revision, "0006"; a test checks it against the scripts
HEAD = f"{SCHEMA_VERSION:04d}"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_LOCK = 7_316_016  # PostgreSQL advisory lock held while migrating: instances starting together migrate once


class LedgerVersionError(Exception):
    """The ledger was written by a newer scm-daemon than this one."""


def migration_config(conn: Connection) -> Config:
    """Alembic's configuration, built in code, to run on this connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    return config


def schema_version(conn: Connection) -> int:
    """The ledger's schema version (the Alembic revision as a number); 0 for an empty database."""
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is not None:
        return int(revision) if revision.isdigit() else -1  # a revision of a later scm-daemon's naming
    if not inspect(conn).has_table("meta"):
        return 0
    row = conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).first()
    return int(row[0]) if row else 0


def _refuse_newer(current: int) -> None:
    if current > SCHEMA_VERSION or current < 0:
        shown = "unknown" if current < 0 else str(current)
        raise LedgerVersionError(
            f"the ledger has schema version {shown}, newer than this scm-daemon knows ({SCHEMA_VERSION}); "
            "upgrade scm-daemon or point paths.ledger at another ledger"
        )


def migrate(engine: Engine) -> int:
    """Bring the ledger to the head revision; returns the schema version it is at."""
    with engine.connect() as conn:
        meta_version = _meta_version(conn)
        if meta_version is not None:
            _refuse_newer(meta_version)
        _refuse_newer(schema_version(conn))
        if MigrationContext.configure(conn).get_current_revision() == HEAD and meta_version == SCHEMA_VERSION:
            return SCHEMA_VERSION  # the common case: nothing to load or run
    if engine.dialect.name == "sqlite":
        migrating = _transactional_sqlite(engine)
        try:
            with migrating.connect() as conn:
                _upgrade(conn)
        finally:
            migrating.dispose()
        return SCHEMA_VERSION
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:lock)"), {"lock": _LOCK})
        conn.commit()
        try:
            _upgrade(conn)
        finally:
            conn.rollback()  # after a failed step the session must leave its transaction before it can unlock
            conn.execute(text("SELECT pg_advisory_unlock(:lock)"), {"lock": _LOCK})
            conn.commit()
    return SCHEMA_VERSION


def _transactional_sqlite(engine: Engine) -> Engine:
    """An engine on the same file whose transactions include DDL: Python's sqlite3 starts one only before an INSERT,
    UPDATE or DELETE, so an ALTER TABLE would be committed on its own. Here SQLAlchemy's BEGIN is SQLite's BEGIN
    IMMEDIATE: a migration is all or nothing, and two processes starting together migrate one after the other."""
    migrating = create_engine(engine.url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(migrating, "connect")
    def _no_implicit_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(migrating, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return migrating


def _meta_version(conn: Connection) -> int | None:
    if not inspect(conn).has_table("meta"):
        return None
    row = conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).first()
    return int(row[0]) if row else None


def _upgrade(conn: Connection) -> None:
    current = schema_version(conn)  # again: another instance may have migrated while this one waited
    adopted = MigrationContext.configure(conn).get_current_revision() is None
    conn.commit()  # Alembic runs its own transactions on this connection
    _refuse_newer(current)
    config = migration_config(conn)
    if current == 0:
        schema.metadata.create_all(conn)
        conn.commit()
        command.stamp(config, HEAD)
        log.info("ledger_created", version=SCHEMA_VERSION)
    else:
        if adopted:
            command.stamp(config, f"{current:04d}")  # a ledger from before Alembic: adopt its version
        command.upgrade(config, HEAD)
        if current != SCHEMA_VERSION:
            log.info("ledger_migrated", version=SCHEMA_VERSION, was=current)
    conn.commit()
    conn.execute(
        text(
            "INSERT INTO meta (key, value) VALUES ('schema_version', :v) "
            "ON CONFLICT (key) DO UPDATE SET value=excluded.value"
        ),
        {"v": str(SCHEMA_VERSION)},
    )
    conn.commit()

"""Alembic's environment for the ledger: run in code by daemon.ledger.migrate on the ledger's own connection."""

from alembic import context

from daemon.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()

"""Alembic's environment for the event store: always given a connection by event_store.migrate().

A new revision: copy versions/0001_events.py to the next number, set `down_revision` to the
previous `revision`, write upgrade() with `op.*`, and change event_store's tables to match
(tests/integration/test_event_store.py checks that the migrations build exactly those tables).
"""

from alembic import context

config = context.config
context.configure(
    connection=config.attributes["connection"],
    version_table=config.attributes["version_table"],
    render_as_batch=True,  # SQLite alters tables by copying them: let future revisions do the same
)
with context.begin_transaction():
    context.run_migrations()

"""Alembic migrations of the event store (serving/event_store.py); run by EventStore.upgrade()."""

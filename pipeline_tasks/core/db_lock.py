"""One process at a time, across processes and hosts, for a short step on a shared database.

    with exclusive(url, "tune-first-trials-recpipe.71b8ff3990cd"):
        ...  # read, decide, write: nobody else does the same step in between

SQLite (one host): an fcntl lock on a file beside the database, released when the file closes
or the process dies. PostgreSQL: a session-level advisory lock keyed by a hash of the name, on a
connection of its own. Other databases: no lock (the caller's step must then tolerate a race).
"""

from __future__ import annotations

import fcntl
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa


@contextmanager
def exclusive(url: str, name: str) -> Iterator[None]:
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        with open(f"{parsed.database}.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        return
    if backend != "postgresql":
        yield
        return
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()

"""Exposures and feedback in a database: what `recpipe serve` writes and `recpipe ab-report` reads.

- Where: `$RECPIPE_EVENT_STORE_URL` when set (a deployment: PostgreSQL, e.g.
  `postgresql+psycopg2://events@db:5432/events`), else `register.event_store` (default
  `sqlite:///logs/events.db`; a relative SQLite path is resolved against the project root).
- Durable on acknowledgement: each event is its own committed transaction before the HTTP
  answer leaves. SQLite runs in WAL mode with `synchronous=FULL` (the commit is fsynced) and a
  busy timeout, so several server processes append to one file and readers never block them.
- Schema by Alembic (event_migrations/, version table `recpipe_events_alembic_version` so the
  store can share a database with other tools); `upgrade()` runs at server start and in
  ab-report, a no-op once at head. Several servers starting at once on a new store migrate one
  at a time (core/db_lock.py): the others then find it at head.
- Feedback must name an exposure of the same user that showed the item (`resolve_exposure`);
  feedback without an exposure_id goes to the user's latest exposure that showed the item.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from pipeline_tasks.core.db_lock import exclusive
from pipeline_tasks.core.errors import PipelineError

URL_ENV = "RECPIPE_EVENT_STORE_URL"
VERSION_TABLE = "recpipe_events_alembic_version"
MIGRATIONS = Path(__file__).resolve().parent / "event_migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
# Feedback without an exposure_id is matched among the user's latest exposures only: a click
# comes minutes after the list it was on, and the lookup stays one indexed query.
LOOKBACK_EXPOSURES = 50

metadata = sa.MetaData()
# Keep in step with event_migrations/versions/: tests check that the migrations build these tables.
exposures = sa.Table(
    "exposures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # insertion order
    sa.Column("ts", sa.String(40), nullable=False),  # ISO 8601 UTC, as the server writes it
    sa.Column("exposure_id", sa.String(64), nullable=False, unique=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("variant", sa.String(32), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("k", sa.Integer, nullable=False),
    sa.Column("items", sa.JSON, nullable=False),
    sa.Column("cold_start", sa.Boolean, nullable=False),
    sa.Column("fallback", sa.Boolean, nullable=False),
    sa.Column("experiment_id", sa.Text, nullable=True),  # null: imported from logs older than experiments
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Index("ix_exposures_user_id_id", "user_id", "id"),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.String(40), nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("item_id", sa.Text, nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("exposure_id", sa.String(64), nullable=True),  # null only in imported old logs
    sa.Column("variant", sa.String(32), nullable=True),
    sa.Column("experiment_id", sa.Text, nullable=True),
    sa.Index("ix_feedback_exposure_id", "exposure_id"),
)
EXPOSURE_FIELDS = [c.name for c in exposures.columns if c.name != "id"]
FEEDBACK_FIELDS = [c.name for c in feedback.columns if c.name != "id"]


class EventStoreError(PipelineError):
    """The event store cannot be opened, migrated or read."""


class StoreUnavailable(Exception):
    """A write or read the server needs failed (database down, disk full): answer 503, acknowledge nothing."""


class FeedbackRejected(Exception):
    """Feedback that does not match a stored exposure; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def store_url(params: dict, root: str | Path) -> str:
    """$RECPIPE_EVENT_STORE_URL, else register.event_store with a relative SQLite path made absolute."""
    raw = os.environ.get(URL_ENV) or params["register"]["event_store"]
    url = sa.make_url(raw)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.is_absolute():
            url = url.set(database=str(Path(root) / path))
    return url.render_as_string(hide_password=False)


def make_engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)  # a restarted database: reconnect, do not fail
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @sa.event.listens_for(engine, "connect")
    def sqlite_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers and one writer at a time, across processes
        cursor.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a crash
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    return engine


class EventStore:
    """One database of exposures and feedback; every write is its own committed transaction."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)

    @property
    def where(self) -> str:
        """The URL without its password, for messages."""
        return sa.make_url(self.url).render_as_string(hide_password=True)

    def upgrade(self) -> None:
        """Create or migrate the schema to the package's head revision (Alembic)."""
        try:
            migrate(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            if current_revision(self.engine) != head_revision():  # not a concurrent starter that won
                raise EventStoreError(f"cannot create or migrate the event store {self.where}: {exc}") from exc

    def add_exposure(self, record: dict) -> None:
        self.insert(exposures, {name: record.get(name) for name in EXPOSURE_FIELDS})

    def add_feedback(self, record: dict) -> None:
        self.insert(feedback, {name: record.get(name) for name in FEEDBACK_FIELDS})

    def insert(self, table: sa.Table, row: dict) -> None:
        """One row, committed when this returns (a write-only transaction: SQLite takes its lock at once)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(table.insert(), [row])
        except sa.exc.OperationalError as exc:
            raise StoreUnavailable(
                f"the event store {self.where} did not record the {table.name} row ({exc.orig}): "
                "nothing was acknowledged; retry"
            ) from exc

    def exposure(self, exposure_id: str) -> dict | None:
        rows = self.read(exposures.select().where(exposures.c.exposure_id == exposure_id))
        return rows[0] if rows else None

    def latest_exposure_showing(self, user_id: str, item_id: str) -> dict | None:
        """The user's latest exposure (of their last LOOKBACK_EXPOSURES) whose list held item_id."""
        query = (
            exposures.select()
            .where(exposures.c.user_id == user_id)
            .order_by(exposures.c.id.desc())
            .limit(LOOKBACK_EXPOSURES)
        )
        return next((row for row in self.read(query) if item_id in row["items"]), None)

    def read(self, query) -> list[dict]:
        """The query's rows for a request being answered: a store that cannot be read is a 503."""
        try:
            with self.engine.connect() as conn:
                return [dict(row) for row in conn.execute(query).mappings().all()]
        except sa.exc.OperationalError as exc:
            raise StoreUnavailable(f"the event store {self.where} cannot be read ({exc.orig}); retry") from exc

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(exposures, feedback) in insertion order, one column per field: what ab-report analyses."""
        with self.engine.connect() as conn:
            exp = conn.execute(sa.select(*[exposures.c[n] for n in EXPOSURE_FIELDS]).order_by(exposures.c.id))
            fb = conn.execute(sa.select(*[feedback.c[n] for n in FEEDBACK_FIELDS]).order_by(feedback.c.id))
            return (
                pd.DataFrame(exp.mappings().all(), columns=EXPOSURE_FIELDS),
                pd.DataFrame(fb.mappings().all(), columns=FEEDBACK_FIELDS),
            )

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                for table in (exposures, feedback)
            }

    def import_jsonl(self, exposure_log: Path, feedback_log: Path) -> dict[str, int]:
        """Append the old JSON-lines logs once; lines already in the store are skipped (safe to re-run)."""
        with self.engine.connect() as conn:
            known_exposures = set(conn.execute(sa.select(exposures.c.exposure_id)).scalars())
            known_feedback = set(conn.execute(sa.select(*[feedback.c[n] for n in ("ts", "user_id", "item_id")])))
        new_exposures = [
            {name: line.get(name) for name in EXPOSURE_FIELDS}
            for line in read_jsonl(exposure_log)
            if line.get("exposure_id") not in known_exposures
        ]
        for row in new_exposures:  # lines from before these fields existed
            row["fallback"] = bool(row["fallback"])
            row["cold_start"] = bool(row["cold_start"])
        new_feedback = [
            {name: line.get(name) for name in FEEDBACK_FIELDS}
            for line in read_jsonl(feedback_log)
            if (line.get("ts"), line.get("user_id"), line.get("item_id")) not in known_feedback
        ]
        with self.engine.begin() as conn:  # all or nothing
            if new_exposures:
                conn.execute(exposures.insert(), new_exposures)
            if new_feedback:
                conn.execute(feedback.insert(), new_feedback)
        return {"exposures": len(new_exposures), "feedback": len(new_feedback)}

    def dispose(self) -> None:
        self.engine.dispose()


def open_store(params: dict, root: str | Path, upgrade: bool = True) -> EventStore:
    store = EventStore(store_url(params, root))
    if upgrade:
        store.upgrade()
    return store


def resolve_exposure(store: EventStore, user_id: str, item_id: str, exposure_id: str | None) -> dict:
    """The stored exposure a feedback event belongs to, or FeedbackRejected naming what does not match."""
    if exposure_id is None:
        found = store.latest_exposure_showing(user_id, item_id)
        if found is None:
            raise FeedbackRejected(
                404,
                f"no exposure of user {user_id!r} showed item {item_id!r} (among their latest "
                f"{LOOKBACK_EXPOSURES}): send the exposure_id of the /recommend answer the user acted on",
            )
        return found
    found = store.exposure(exposure_id)
    if found is None:
        raise FeedbackRejected(
            404, f"unknown exposure_id {exposure_id!r}: use the exposure_id of a /recommend answer of this service"
        )
    if found["user_id"] != user_id:
        raise FeedbackRejected(
            409, f"exposure {exposure_id!r} was served to another user, not {user_id!r}: feedback is not recorded"
        )
    if item_id not in found["items"]:
        raise FeedbackRejected(
            409,
            f"item {item_id!r} was not among the {len(found['items'])} items of exposure {exposure_id!r}: "
            "feedback is only recorded for items the user was shown",
        )
    return found


def read_jsonl(path: Path) -> list[dict]:
    """Every JSON line of an append-only log; a truncated last line (a crash mid-write) is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# --- Alembic ---------------------------------------------------------------------------------


def alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["version_table"] = VERSION_TABLE
    return config


def migrate(engine: sa.Engine) -> None:
    from alembic import command

    config = alembic_config()
    # Servers starting together on a new store: one migrates, the others then find it at head.
    # (pysqlite runs DDL outside a transaction: unlocked, the second failed with "table exposures
    # already exists" before the first had stamped the version.)
    with exclusive(engine.url.render_as_string(hide_password=False), "event-store-migrate"), engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()

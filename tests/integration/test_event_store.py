"""The event store on real databases: SQLite files (several processes) and a throwaway PostgreSQL.

The server's use of it (HTTP, workers, a killed worker) is in test_serve.py.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline_tasks.serving import event_store
from pipeline_tasks.serving.event_store import EventStore, FeedbackRejected


def exposure(n: int, user: str = "u1", items=("i1", "i2", "i3"), experiment: str | None = "exp-1") -> dict:
    return {
        "ts": f"2026-11-01T00:00:{n:02d}.000000+00:00",
        "exposure_id": f"e{n}",
        "user_id": user,
        "variant": "champion",
        "model_version": "1",
        "k": len(items),
        "items": list(items),
        "cold_start": False,
        "fallback": False,
        "experiment_id": experiment,
        "latency_ms": 1.5,
    }


def migrations_match_the_tables(store: EventStore) -> list:
    """Alembic's diff between what the migrations built and event_store's tables (empty: in step)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": event_store.VERSION_TABLE})
        return compare_metadata(context, event_store.metadata)


def round_trip(store: EventStore) -> None:
    """What the server and ab-report do with a store, on whatever database it is."""
    store.upgrade()
    store.upgrade()  # at head: a no-op, as at every server start
    assert event_store.current_revision(store.engine) == event_store.head_revision()
    assert migrations_match_the_tables(store) == []
    store.add_exposure(exposure(1))
    store.add_exposure(exposure(2, items=("i3", "i4")))
    store.add_exposure(exposure(3, user="u2"))
    with pytest.raises(sa.exc.IntegrityError):  # an exposure id is stored once
        store.add_exposure(exposure(1))
    assert store.exposure("e2")["items"] == ["i3", "i4"] and store.exposure("nope") is None
    # Without an exposure id: the user's latest exposure that showed the item.
    assert event_store.resolve_exposure(store, "u1", "i3", None)["exposure_id"] == "e2"
    assert event_store.resolve_exposure(store, "u1", "i1", None)["exposure_id"] == "e1"
    for args, status in (
        (("u1", "i9", None), 404),
        (("u1", "i1", "e9"), 404),
        (("u2", "i1", "e1"), 409),
        (("u1", "i4", "e1"), 409),
    ):
        with pytest.raises(FeedbackRejected) as refused:
            event_store.resolve_exposure(store, *args)
        assert refused.value.status == status
    store.add_feedback(
        {"ts": "2026-11-01T00:01:00+00:00", "user_id": "u1", "item_id": "i4", "event": "click", "exposure_id": "e2"}
    )
    exposures, feedback = store.frames()
    assert list(exposures.columns) == event_store.EXPOSURE_FIELDS and list(exposures["exposure_id"]) == [
        "e1",
        "e2",
        "e3",
    ]
    assert exposures["items"].iloc[1] == ["i3", "i4"] and exposures["cold_start"].dtype == bool
    assert feedback.to_dict(orient="records")[0]["exposure_id"] == "e2"
    assert store.counts() == {"exposures": 3, "feedback": 1}


def test_round_trip_on_sqlite(tmp_path):
    store = EventStore(f"sqlite:///{tmp_path / 'logs' / 'events.db'}")
    round_trip(store)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.dispose()


def test_round_trip_on_postgresql(postgres_parent_dir):
    from pipeline_tasks.infra import postgres

    with postgres.postgres_server(postgres_parent_dir / "cluster", database="events", user="events") as server:
        store = EventStore(server.url)
        try:
            round_trip(store)
            assert store.where.startswith("postgresql") and "***" in store.where  # no password in messages
        finally:
            store.dispose()


def test_the_url_comes_from_the_environment_else_params_relative_to_the_root(tmp_path, monkeypatch):
    params = {"register": {"event_store": "sqlite:///logs/events.db"}}
    monkeypatch.delenv(event_store.URL_ENV, raising=False)
    assert event_store.store_url(params, tmp_path) == f"sqlite:///{tmp_path / 'logs' / 'events.db'}"
    monkeypatch.setenv(event_store.URL_ENV, "postgresql+psycopg2://events:pw@db:5432/events")
    assert event_store.store_url(params, tmp_path) == "postgresql+psycopg2://events:pw@db:5432/events"


def append_exposures(url: str, worker: int, n: int) -> None:
    store = EventStore(url)
    for i in range(n):
        store.add_exposure({**exposure(0), "exposure_id": f"w{worker}-{i}", "user_id": f"u{worker}"})
    store.dispose()


def test_several_processes_append_to_one_sqlite_file_without_losing_a_row(tmp_path):
    url = f"sqlite:///{tmp_path / 'events.db'}"
    EventStore(url).upgrade()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=append_exposures, args=(url, w, 150)) for w in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    store = EventStore(url)
    exposures, _ = store.frames()
    assert len(exposures) == exposures["exposure_id"].nunique() == 450
    store.dispose()


def start_server_store(url: str, go, answers) -> None:
    """What a server process does at start, released at the same moment as its neighbours."""
    store = EventStore(url)
    go.wait()
    try:
        store.upgrade()
        answers.put("ok")
    except event_store.EventStoreError as exc:
        answers.put(str(exc))
    finally:
        store.dispose()


def start_at_once(url: str, servers: int = 6) -> list[str]:
    context = multiprocessing.get_context("spawn")
    go, answers = context.Event(), context.Queue()
    starters = [context.Process(target=start_server_store, args=(url, go, answers)) for _ in range(servers)]
    for starter in starters:
        starter.start()
    time.sleep(3)  # every process imported and connected: the migrations race for real
    go.set()
    for starter in starters:
        starter.join(timeout=120)
    return [answers.get(timeout=5) for _ in starters]


def test_servers_starting_at_once_on_a_new_sqlite_store_all_start(tmp_path):
    # Without the migration lock about one round in three failed: "table exposures already exists".
    for round_ in range(4):
        url = f"sqlite:///{tmp_path / f'round{round_}' / 'events.db'}"
        assert start_at_once(url) == ["ok"] * 6
        store = EventStore(url)
        assert event_store.current_revision(store.engine) == event_store.head_revision()
        assert migrations_match_the_tables(store) == []
        store.dispose()


def test_servers_starting_at_once_on_a_new_postgresql_store_all_start(postgres_parent_dir):
    # PostgreSQL's DDL is transactional, so a loser would fail only after the winner committed and
    # upgrade() would see head; the advisory lock makes it wait instead of failing at all.
    from pipeline_tasks.infra import postgres

    with postgres.postgres_server(postgres_parent_dir / "race", database="events", user="events") as server:
        assert start_at_once(server.url) == ["ok"] * 6
        store = EventStore(server.url)
        assert event_store.current_revision(store.engine) == event_store.head_revision()
        store.dispose()


def test_import_jsonl_appends_old_logs_once(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    old = {k: v for k, v in exposure(1).items() if k not in ("fallback", "experiment_id")}  # a pre-experiment line
    (logs / "exposures.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(exposure(2)) + "\n{truncated")
    click = {"ts": "2026-11-01T00:01:00+00:00", "user_id": "u1", "item_id": "i1", "event": "click"}
    (logs / "feedback.jsonl").write_text(json.dumps(click) + "\n")
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    store.upgrade()
    paths = (logs / "exposures.jsonl", logs / "feedback.jsonl")
    assert store.import_jsonl(*paths) == {"exposures": 2, "feedback": 1}
    assert store.import_jsonl(*paths) == {"exposures": 0, "feedback": 0}  # re-run: nothing twice
    exposures, feedback = store.frames()
    assert exposures["experiment_id"].isna().tolist() == [True, False] and not exposures["fallback"].any()
    assert feedback["exposure_id"].isna().all()  # ab-report attributes these to the user's latest exposure
    assert store.import_jsonl(Path("/nonexistent/a"), Path("/nonexistent/b")) == {"exposures": 0, "feedback": 0}
    store.dispose()


def test_cli_imports_the_logs_named_in_params(tmp_path, capsys, monkeypatch):
    from pipeline_tasks.core import params as P
    from pipeline_tasks.ops.cli import main

    monkeypatch.delenv(event_store.URL_ENV, raising=False)
    P.dump(P.defaults(), tmp_path / "params.yaml")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "exposures.jsonl").write_text(json.dumps(exposure(1)) + "\n")
    assert main(["--root", str(tmp_path), "events", "import-jsonl"]) == 0
    assert "imported 1 exposures" in capsys.readouterr().out
    store = EventStore(f"sqlite:///{tmp_path / 'logs' / 'events.db'}")  # register.event_store's default
    assert store.counts() == {"exposures": 1, "feedback": 0}
    store.dispose()

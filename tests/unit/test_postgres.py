"""pipeline_tasks.infra.postgres against a real PostgreSQL 15 server (runs as user `postgres` when we are root)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline_tasks.infra import postgres as pgmod
from pipeline_tasks.infra.postgres import PostgresError, is_running, postgres_server, start_postgres, stop_postgres


def _binaries_or_skip() -> Path:
    try:
        return pgmod.find_binaries()
    except PostgresError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def pg_dir(postgres_parent_dir):
    yield postgres_parent_dir / "cluster"
    if is_running(postgres_parent_dir / "cluster"):
        stop_postgres(postgres_parent_dir / "cluster")


def _scalar(url: str, sql: str):
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()
    finally:
        engine.dispose()


def test_server_accepts_the_url_and_stops(pg_dir):
    with postgres_server(pg_dir, database="optuna", user="optuna_user") as pg:
        assert pg.url.startswith("postgresql+psycopg2://optuna_user:") and pg.url.endswith(
            f"@127.0.0.1:{pg.port}/optuna"
        )
        assert _scalar(pg.url, "select current_user || '@' || current_database()") == "optuna_user@optuna"
        assert _scalar(pg.url, "show server_version_num").startswith("15")
        assert is_running(pg_dir)
        # The data dir is the server user's and private, as PostgreSQL demands.
        if os.geteuid() == 0:
            assert (pg_dir / "data").stat().st_uid == pgmod.pwd.getpwnam("postgres").pw_uid
        assert oct((pg_dir / "data").stat().st_mode & 0o777) == "0o700"
    assert not is_running(pg_dir)
    with socket.socket() as sock:  # nothing listens there any more
        # SO_REUSEADDR: the server's closed connections may linger in TIME_WAIT; a listener would still block.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", pg.port))


def test_extra_databases_are_separate_and_password_is_enforced(pg_dir):
    with postgres_server(pg_dir, password="q'uo:te/@d") as pg:
        mlflow_url = pg.create_database("mlflow", user="mlflow")
        engine = sa.create_engine(mlflow_url)
        with engine.begin() as conn:
            conn.execute(sa.text("create table only_in_mlflow (x int)"))
        engine.dispose()
        assert _scalar(mlflow_url, "select count(*) from pg_tables where tablename = 'only_in_mlflow'") == 1
        assert _scalar(pg.url, "select count(*) from pg_tables where tablename = 'only_in_mlflow'") == 0
        # The quoted password in the URL round-trips; a wrong one is refused (scram over TCP).
        wrong = pgmod.make_url(pg.user, "not-the-password", pg.port, pg.database)
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            _scalar(wrong, "select 1")


def test_restart_keeps_data_and_a_second_start_is_refused(pg_dir):
    pg = start_postgres(pg_dir, durable=True)
    try:
        engine = sa.create_engine(pg.url)
        with engine.begin() as conn:
            conn.execute(sa.text("create table kept (x int)"))
            conn.execute(sa.text("insert into kept values (42)"))
        engine.dispose()
        with pytest.raises(PostgresError, match="already runs"):
            start_postgres(pg_dir)
    finally:
        stop_postgres(pg)
    stop_postgres(pg_dir)  # stopping a stopped cluster is a no-op
    with postgres_server(pg_dir, password=pg.password) as again:
        assert _scalar(again.url, "select x from kept") == 42


def test_port_taken_is_a_clear_error(pg_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(PostgresError, match=f"did not start.*port {taken}"):
            start_postgres(pg_dir, port=taken, timeout_s=15)
    assert not is_running(pg_dir)


def test_missing_binaries_say_how_to_install(tmp_path):
    with pytest.raises(PostgresError, match="apt-get install postgresql-15"):
        start_postgres(tmp_path / "pg", bin_dir=tmp_path / "no-such-bin")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to the `postgres` user")
def test_private_parent_folder_is_a_clear_error(tmp_path):
    _binaries_or_skip()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(PostgresError, match="cannot reach"):
        start_postgres(private / "pg")

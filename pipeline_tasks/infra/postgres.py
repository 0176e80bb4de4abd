"""A throwaway PostgreSQL 15 cluster on loopback, for tests and `make services`.

    with postgres_server(tmp_dir, database="optuna", user="optuna") as pg:
        storage_url = pg.url                 # postgresql+psycopg2://optuna:...@127.0.0.1:PORT/optuna
        other_url = pg.create_database("mlflow", user="mlflow")

or `pg = start_postgres(dir, ...)` ... `stop_postgres(pg)` (or `stop_postgres(dir)`).

Layout under `base_dir` (the cluster is reused when `data/` already holds one):
    data/          the cluster (owned by the server user, mode 0700 as PostgreSQL demands)
    run/           unix socket and postgres.log (owned by the server user)

PostgreSQL refuses to run as root, so when we are root every server-side command runs as the
user `postgres` through `runuser`; as any other user it runs as that user. The server listens on
127.0.0.1 only, with password (scram) auth over TCP and trust only on its private unix socket,
which is how this module itself creates roles and databases.
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pipeline_tasks.core.errors import RecpipeError

DEFAULT_BIN_DIR = "/usr/lib/postgresql/15/bin"
SERVER_USER = "postgres"  # the OS user the server runs as when we are root
SUPERUSER = "postgres"  # the database superuser created by initdb
HOST = "127.0.0.1"
NEEDED_BINARIES = ("initdb", "pg_ctl", "psql", "pg_isready")


class PostgresError(RecpipeError):
    """PostgreSQL cannot be found, started, reached or stopped."""


@dataclass(frozen=True)
class PostgresServer:
    """A running cluster and the database/user `start_postgres` created in it."""

    base_dir: Path
    port: int
    database: str
    user: str
    password: str
    bin_dir: Path

    @property
    def host(self) -> str:
        return HOST

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def run_dir(self) -> Path:
        return self.base_dir / "run"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "postgres.log"

    @property
    def url(self) -> str:
        """SQLAlchemy/psycopg2 URL of the database created at start."""
        return make_url(self.user, self.password, self.port, self.database)

    def create_database(self, name: str, user: str | None = None, password: str | None = None) -> str:
        """Create (idempotently) a login role and a database it owns; return its URL.

        An existing role gets `password` (a fresh random one when None) so the URL always works.
        """
        user = user or name
        password = password or new_password()
        _create_role_and_database(self, name, user, password)
        return make_url(user, password, self.port, name)

    def is_running(self) -> bool:
        return is_running(self.base_dir, self.bin_dir)


def new_password() -> str:
    return secrets.token_urlsafe(18)


def make_url(user: str, password: str, port: int, database: str, host: str = HOST) -> str:
    return (
        f"postgresql+psycopg2://{quote(user, safe='')}:{quote(password, safe='')}"
        f"@{host}:{port}/{quote(database, safe='')}"
    )


def free_port(host: str = HOST) -> int:
    """A port free on loopback right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_postgres(
    base_dir: str | Path,
    *,
    database: str = "recpipe",
    user: str = "recpipe",
    password: str | None = None,
    port: int | None = None,
    bin_dir: str | Path | None = None,
    timeout_s: float = 60.0,
    durable: bool = False,
) -> PostgresServer:
    """Initialise (first time) and start a cluster in `base_dir`, wait until it accepts
    connections, create `user` and `database`, and return the running server.

    `durable=False` (the default, for throwaway clusters) turns fsync off: fast, but a machine
    crash can corrupt the cluster. Long-lived local services pass `durable=True`.
    """
    bins = find_binaries(bin_dir)
    base = Path(base_dir).resolve()
    _prepare_dirs(base)
    if not (base / "data" / "PG_VERSION").exists():
        _initdb(base, bins)
    if is_running(base, bins):
        raise PostgresError(
            f"a PostgreSQL server already runs on {base / 'data'}; "
            f"stop it first (stop_postgres('{base}') or `make services-down`)"
        )
    chosen = _start_on_free_port(base, bins, port, timeout_s, durable)
    server = PostgresServer(base, chosen, database, user, password or new_password(), bins)
    try:
        _create_role_and_database(server, database, user, server.password)
    except Exception:
        stop_postgres(server)
        raise
    return server


def stop_postgres(
    server_or_dir: PostgresServer | str | Path, *, bin_dir: str | Path | None = None, timeout_s: float = 60.0
) -> None:
    """Stop the cluster (fast shutdown: open sessions are rolled back). No-op when not running."""
    if isinstance(server_or_dir, PostgresServer):
        base, bins = server_or_dir.base_dir, server_or_dir.bin_dir
    else:
        base, bins = Path(server_or_dir).resolve(), find_binaries(bin_dir)
    if not is_running(base, bins):
        return
    result = _as_server_user(
        [str(bins / "pg_ctl"), "stop", "-D", str(base / "data"), "-m", "fast", "-w", "-t", str(int(timeout_s))],
        cwd=base,
        timeout=timeout_s + 10,
    )
    if result.returncode != 0 and is_running(base, bins):
        raise PostgresError(
            f"could not stop PostgreSQL in {base / 'data'}: {result.stderr.strip()}\n"
            f"Log: {base / 'run' / 'postgres.log'}"
        )


@contextmanager
def postgres_server(base_dir: str | Path, **kwargs) -> Iterator[PostgresServer]:
    """`start_postgres(base_dir, **kwargs)`, stopped on exit (the files stay in `base_dir`)."""
    server = start_postgres(base_dir, **kwargs)
    try:
        yield server
    finally:
        stop_postgres(server)


def is_running(base_dir: str | Path, bin_dir: str | Path | None = None) -> bool:
    base = Path(base_dir).resolve()
    if not (base / "data" / "PG_VERSION").exists():
        return False
    bins = find_binaries(bin_dir)
    result = _as_server_user([str(bins / "pg_ctl"), "status", "-D", str(base / "data")], cwd=base)
    return result.returncode == 0  # 3: not running, 4: no cluster there


def find_binaries(bin_dir: str | Path | None = None) -> Path:
    """The PostgreSQL bin folder: `bin_dir`, $RECPIPE_PG_BIN, or the Debian PostgreSQL 15 path."""
    path = Path(bin_dir or os.environ.get("RECPIPE_PG_BIN") or DEFAULT_BIN_DIR)
    missing = [name for name in NEEDED_BINARIES if not (path / name).is_file()]
    if missing:
        raise PostgresError(
            f"PostgreSQL server binaries not found in {path} (missing: {', '.join(missing)}). "
            f"Install them with `apt-get install postgresql-15`, or point "
            f"RECPIPE_PG_BIN at a folder that holds initdb, pg_ctl and psql."
        )
    return path


# --- internals ----------------------------------------------------------------------------


def _server_account() -> pwd.struct_passwd | None:
    """The account to run as (None: ourselves). Root must hand over: PostgreSQL refuses root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresError(
            f"we run as root, and PostgreSQL must run as the user '{SERVER_USER}', "
            f"which does not exist. `apt-get install postgresql-15` creates it "
            f"(or `useradd --system {SERVER_USER}`)."
        ) from None


def _as_server_user(
    cmd: list[str], *, cwd: Path, input: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess:
    account = _server_account()
    full = ["runuser", "-u", account.pw_name, "--", *cmd] if account else cmd
    # HOME of the server user: psql/pg_ctl must not try to read root's dotfiles.
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    if account:
        env["HOME"] = account.pw_dir
    env.pop("PGPASSWORD", None)
    try:
        return subprocess.run(full, cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(f"`{' '.join(cmd[:2])}` did not finish in {timeout:.0f} s") from exc


def _prepare_dirs(base: Path) -> None:
    """data/ and run/ owned by the server user; every ancestor must let that user through."""
    base.mkdir(parents=True, exist_ok=True)
    account = _server_account()
    for sub, mode in (("data", 0o700), ("run", 0o755)):
        path = base / sub
        path.mkdir(exist_ok=True)
        if account:
            os.chown(path, account.pw_uid, account.pw_gid)
        path.chmod(mode)
    if account:
        check = subprocess.run(
            ["runuser", "-u", account.pw_name, "--", "test", "-w", str(base / "run")], capture_output=True
        )
        if check.returncode != 0:
            raise PostgresError(
                f"the user '{account.pw_name}' cannot reach {base} (a parent folder is "
                f"private, e.g. mode 0700). Put the cluster under a folder every user can "
                f"traverse (chmod o+x on each parent), e.g. the project's services/ folder."
            )


def _initdb(base: Path, bins: Path) -> None:
    result = _as_server_user(
        [
            str(bins / "initdb"),
            "-D",
            str(base / "data"),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        cwd=base,
        timeout=120,
    )
    if result.returncode != 0:
        raise PostgresError(f"initdb failed in {base / 'data'}: {result.stderr.strip()[-2000:]}")


def _start_on_free_port(base: Path, bins: Path, port: int | None, timeout_s: float, durable: bool) -> int:
    """Start on `port`, or on a free port; retry on a fresh port if another process took it meanwhile."""
    attempts = 1 if port else 3
    for _ in range(attempts):
        chosen = port or free_port()
        # Small memory footprint: several throwaway clusters share one small machine.
        options = f"-p {chosen} -h {HOST} -k {base / 'run'} -c shared_buffers=16MB -c max_connections=100"
        if not durable:
            options += " -c fsync=off -c full_page_writes=off"
        result = _as_server_user(
            [
                str(bins / "pg_ctl"),
                "start",
                "-D",
                str(base / "data"),
                "-w",
                "-t",
                str(int(timeout_s)),
                "-l",
                str(base / "run" / "postgres.log"),
                "-o",
                options,
            ],
            cwd=base,
            timeout=timeout_s + 10,
        )
        if result.returncode == 0 and _accepts_connections(base, bins, chosen, timeout_s):
            return chosen
        if is_running(base, bins):  # started but not answering: do not leave it behind
            stop_postgres(base, bin_dir=bins)
    raise PostgresError(
        f"PostgreSQL did not start in {base / 'data'} "
        f"(port {port or 'auto'}): {result.stderr.strip()}\n{_log_tail(base)}"
    )


def _accepts_connections(base: Path, bins: Path, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = _as_server_user([str(bins / "pg_isready"), "-h", HOST, "-p", str(port), "-q"], cwd=base)
        if ready.returncode == 0:
            return True
        time.sleep(0.3)
    return False


# Variables (:'db', :"user") are interpolated by psql itself, so any name/password is quoted safely.
_CREATE_SQL = r"""
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'user', :'pw')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
ALTER ROLE :"user" WITH LOGIN PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
GRANT ALL PRIVILEGES ON DATABASE :"db" TO :"user";
"""


def _create_role_and_database(server: PostgresServer, database: str, user: str, password: str) -> None:
    cmd = [
        str(server.bin_dir / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(server.run_dir),
        "-p",
        str(server.port),
        "-U",
        SUPERUSER,
        "-d",
        "postgres",
        "-v",
        f"db={database}",
        "-v",
        f"user={user}",
        "-v",
        f"pw={password}",
    ]
    result = _as_server_user(cmd, cwd=server.base_dir, input=_CREATE_SQL)
    if result.returncode != 0:
        raise PostgresError(f"could not create role '{user}' / database '{database}': {result.stderr.strip()}")


def _log_tail(base: Path, lines: int = 15) -> str:
    log = base / "run" / "postgres.log"
    if not log.exists():
        return f"(no log at {log})"
    return f"Last lines of {log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

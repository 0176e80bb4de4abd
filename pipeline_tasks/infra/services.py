"""Local multi-service mode: PostgreSQL, an MLflow tracking server and Airflow, on loopback.

    python -m pipeline_tasks.infra.services up [--only postgres,mlflow]   (`make services`)
    python -m pipeline_tasks.infra.services status
    python -m pipeline_tasks.infra.services down                           (`make services-down`)

Each service runs from its own package in the venv, as its own process group, like the
docker/ compose stack does with containers:
- PostgreSQL 15 (pipeline_tasks.infra.postgres) with one database per client: mlflow, mlflow_auth,
  optuna, airflow, events (`recpipe serve`'s exposures and feedback: RECPIPE_EVENT_STORE_URL).
- `mlflow server --app-name basic-auth`: PostgreSQL backend store, artifacts proxied by the
  server into services/mlflow/artifacts, login required (user admin).
- Airflow 3 api-server, scheduler and dag-processor (LocalExecutor, metadata in PostgreSQL)
  reading this project's dags/, with tasks logging to the MLflow server.
- On request (`--only ...,spark`): a Spark standalone master and one worker, from pyspark's
  own Spark distribution, for `spark.master: spark://127.0.0.1:PORT`.

Everything lives in the git-ignored state folder (default `services/`): state.json (pids,
ports), logs/, the cluster, the artifacts, and the generated secrets (secrets.json,
credentials.env, pgpass; mode 0600). Secrets are generated on the first `up` and reused.

Longer than most modules on purpose: each service's start, readiness check and stop sit beside
the others' so `up`/`down` stay symmetric; none of it is imported by the pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets as secrets_lib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import RecpipeError
from pipeline_tasks.infra import postgres

PROJECT_DIR = C.SOURCE_CHECKOUT
DEFAULT_STATE_DIR = PROJECT_DIR / "services"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
COMPONENTS = ("postgres", "mlflow", "airflow", "spark")
DEFAULT_COMPONENTS = ("postgres", "mlflow", "airflow")  # spark on request: two more JVMs
# Preferred ports (override: RECPIPE_<NAME>_PORT); a taken one falls back to a free port.
# Not 5000/8080, which `make mlflow-ui` / `make airflow` use.
PREFERRED_PORTS = {"postgres": 5433, "mlflow": 5001, "airflow": 8081, "spark": 7078, "spark_ui": 8091}
DATABASES = ("mlflow", "mlflow_auth", "optuna", "airflow", "events")
ADMIN = "admin"
AIRFLOW_PROCESSES = ("api-server", "scheduler", "dag-processor")


class ServicesError(RecpipeError):
    """A local service cannot be started, reached or stopped."""


# --- state folder --------------------------------------------------------------------------


def _paths(state_dir: Path) -> dict[str, Path]:
    return {
        name: state_dir / rel
        for name, rel in {
            "state": "state.json",
            "secrets": "secrets.json",
            "credentials": "credentials.env",
            "pgpass": "pgpass",
            "logs": "logs",
            "postgres": "postgres",
            "mlflow": "mlflow",
            "airflow": "airflow",
        }.items()
    }


def read_state(state_dir: Path) -> dict:
    path = _paths(state_dir)["state"]
    return json.loads(path.read_text()) if path.exists() else {"processes": {}, "urls": {}}


def _write_state(state_dir: Path, state: dict) -> None:
    path = _paths(state_dir)["state"]
    path.write_text(json.dumps(state, indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def load_secrets(state_dir: Path) -> dict[str, str]:
    """Generated once per state folder, then reused (the databases and users keep them)."""
    path = _paths(state_dir)["secrets"]
    stored = json.loads(path.read_text()) if path.exists() else {}
    from cryptography.fernet import Fernet  # Airflow's own dependency

    wanted = {
        **{f"pg_{db}": secrets_lib.token_urlsafe(18) for db in DATABASES},
        "mlflow_admin_password": secrets_lib.token_urlsafe(18),  # MLflow wants >= 12 chars
        "mlflow_flask_secret": secrets_lib.token_hex(32),
        "airflow_admin_password": secrets_lib.token_urlsafe(12),
        "airflow_jwt_secret": secrets_lib.token_hex(32),
        "airflow_api_secret": secrets_lib.token_hex(32),
        "airflow_fernet_key": Fernet.generate_key().decode(),
    }
    merged = {**wanted, **stored}
    if merged != stored:
        _write_private(path, json.dumps(merged, indent=2) + "\n")
    return merged


# --- processes -----------------------------------------------------------------------------


def choose_port(name: str) -> int:
    port = int(os.environ.get(f"RECPIPE_{name.upper()}_PORT") or PREFERRED_PORTS[name])
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
            return port
        except OSError:
            return postgres.free_port()


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid`: tells our process from a later one that reused its id."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def _spawn(state_dir: Path, state: dict, name: str, cmd: list[str], env: dict[str, str]) -> None:
    log = _paths(state_dir)["logs"] / f"{name}.log"
    with open(log, "ab") as out:
        # Own session = own process group, so `down` stops the workers a server forks, too.
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=state_dir, start_new_session=True
        )
    state["processes"][name] = {
        "pid": proc.pid,
        "start": _start_time(proc.pid),
        "log": str(log),
        "cmd": " ".join(cmd[:3]),
    }
    _write_state(state_dir, state)


def is_alive(info: dict) -> bool:
    return info.get("start") is not None and _start_time(info["pid"]) == info["start"]


def _reap(pid: int) -> None:
    try:  # only our own children (the `up` process still running, e.g. in a test)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _stop_process(info: dict, timeout_s: float = 30.0) -> None:
    if not is_alive(info):
        return
    pgid = info["pid"]
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pgid)
        if _group_gone(pgid):
            return
        time.sleep(0.3)
    os.killpg(pgid, signal.SIGKILL)
    _reap(pgid)


def _log_tail(info: dict, lines: int = 20) -> str:
    path = Path(info["log"])
    text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
    return f"Last lines of {path}:\n" + "\n".join(text)


def _wait_http(
    name: str, info: dict, url: str, timeout_s: float, ok=lambda body: True, headers: dict | None = None
) -> bytes:
    """Poll `url` until it answers 200 and `ok(body)`; fail early when the process died."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not is_alive(info):
            raise ServicesError(f"{name} exited while starting. {_log_tail(info)}")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=5) as resp:  # nosec B310 # our own http://127.0.0.1 URL
                body = resp.read()
                if ok(body):
                    return body
                last = body[:300].decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(1.0)
    raise ServicesError(f"{name} did not become ready at {url} within {timeout_s:.0f} s ({last}). {_log_tail(info)}")


def _base_env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **C.OFFLINE_ENVIRONMENT}
    for key in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "RECPIPE_PARENT_RUN_ID",
        "AIRFLOW_HOME",
    ):
        env.pop(key, None)  # the caller's settings must not leak into the services
    return env


# --- the services --------------------------------------------------------------------------


def start_postgres_service(state_dir: Path, state: dict, secrets: dict) -> dict[str, str]:
    """The cluster and one database + owner per client; returns database -> URL."""
    paths = _paths(state_dir)
    server = postgres.start_postgres(
        paths["postgres"],
        database="mlflow",
        user="mlflow",
        password=secrets["pg_mlflow"],
        port=choose_port("postgres"),
        durable=True,
        timeout_s=120,
    )
    state["postgres"] = {"base_dir": str(server.base_dir), "port": server.port}
    _write_state(state_dir, state)
    urls = {db: server.create_database(db, user=db, password=secrets[f"pg_{db}"]) for db in DATABASES}
    # libpq reads passwords from PGPASSFILE: tune.storage can then be a URL without one.
    _write_private(
        paths["pgpass"], "".join(f"{HOST}:{server.port}:{db}:{db}:{secrets[f'pg_{db}']}\n" for db in DATABASES)
    )
    state["urls"]["postgres"] = f"{HOST}:{server.port}"
    _write_state(state_dir, state)
    return urls


def _auth_header(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{user}:{password}".encode()).decode()}


def start_mlflow(state_dir: Path, state: dict, secrets: dict, db_urls: dict[str, str], timeout_s: float) -> str:
    mlflow_dir = _paths(state_dir)["mlflow"]
    (mlflow_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    config = mlflow_dir / "basic_auth.ini"
    # No password in the file: MLFLOW_AUTH_ADMIN_PASSWORD creates the admin on the first start.
    _write_private(
        config,
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {db_urls['mlflow_auth']}\nadmin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )
    port = choose_port("mlflow")
    env = {
        **_base_env(),
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets["mlflow_admin_password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets["mlflow_flask_secret"],
        # The job runner (GenAI scorers) forks ~8 huey consumers; the pipeline uses none of it.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        db_urls["mlflow"],
        "--serve-artifacts",
        "--artifacts-destination",
        (mlflow_dir / "artifacts").resolve().as_uri(),
    ]
    _spawn(state_dir, state, "mlflow", cmd, env)
    url = f"http://{HOST}:{port}"
    info = state["processes"]["mlflow"]
    _wait_http("MLflow", info, f"{url}/health", timeout_s)
    _wait_http(
        "MLflow (with login)",
        info,
        f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
        timeout_s,
        headers=_auth_header(ADMIN, secrets["mlflow_admin_password"]),
    )
    state["urls"]["mlflow"] = url
    _write_state(state_dir, state)
    return url


def airflow_env(
    state_dir: Path, secrets: dict, db_urls: dict[str, str], api_port: int, mlflow_url: str | None
) -> dict[str, str]:
    home = _paths(state_dir)["airflow"]
    base = f"http://{HOST}:{api_port}"
    env = {
        **_base_env(),
        "AIRFLOW_HOME": str(home),
        "RECPIPE_PROJECT_DIR": str(PROJECT_DIR),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_DIR / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",  # each worker is ~130 MB; 2 shared cores here
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_urls["airflow"],
        "AIRFLOW__CORE__FERNET_KEY": secrets["airflow_fernet_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets["airflow_jwt_secret"],
        "AIRFLOW__API__SECRET_KEY": secrets["airflow_api_secret"],
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "PGPASSFILE": str(_paths(state_dir)["pgpass"]),
    }
    if mlflow_url:  # DAG runs log to the tracking server
        env.update(
            {
                "MLFLOW_TRACKING_URI": mlflow_url,
                "MLFLOW_TRACKING_USERNAME": ADMIN,
                "MLFLOW_TRACKING_PASSWORD": secrets["mlflow_admin_password"],
            }
        )
    return env


def start_airflow(
    state_dir: Path, state: dict, secrets: dict, db_urls: dict[str, str], mlflow_url: str | None, timeout_s: float
) -> str:
    home = _paths(state_dir)["airflow"]
    home.mkdir(parents=True, exist_ok=True)
    _write_private(home / "passwords.json", json.dumps({ADMIN: secrets["airflow_admin_password"]}) + "\n")
    port = choose_port("airflow")
    env = airflow_env(state_dir, secrets, db_urls, port, mlflow_url)
    migrate = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=env, cwd=state_dir, capture_output=True, text=True, timeout=900
    )
    if migrate.returncode != 0:
        raise ServicesError(f"`airflow db migrate` failed: {migrate.stderr.strip()[-2000:]}")
    commands = {
        "api-server": ["api-server", "--host", HOST, "--port", str(port), "--workers", "1"],
        "scheduler": ["scheduler"],
        "dag-processor": ["dag-processor"],
    }
    for name in AIRFLOW_PROCESSES:
        _spawn(state_dir, state, f"airflow-{name}", [str(BIN / "airflow"), *commands[name]], env)
    url = f"http://{HOST}:{port}"

    def healthy(body: bytes) -> bool:
        health = json.loads(body)
        return all(
            health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler", "dag_processor")
        )

    _wait_http(
        "Airflow", state["processes"]["airflow-api-server"], f"{url}/api/v2/monitor/health", timeout_s, ok=healthy
    )
    state["urls"]["airflow"] = url
    _write_state(state_dir, state)
    return url


def start_spark(state_dir: Path, state: dict, timeout_s: float) -> str:
    """A standalone master and one worker from pyspark's own Spark: `spark.master` = the URL."""
    port, ui_port = choose_port("spark"), choose_port("spark_ui")
    env = {
        **_base_env(),
        "SPARK_LOCAL_IP": HOST,
        "SPARK_NO_DAEMONIZE": "1",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOG_DIR": str(_paths(state_dir)["logs"]),
        # Executor scratch and logs; the default ($SPARK_HOME/work) is inside the venv.
        "SPARK_WORKER_DIR": str(state_dir / "spark-work"),
    }
    master = f"spark://{HOST}:{port}"
    _spawn(
        state_dir,
        state,
        "spark-master",
        [
            str(BIN / "spark-class"),
            "org.apache.spark.deploy.master.Master",
            "--host",
            HOST,
            "--port",
            str(port),
            "--webui-port",
            str(ui_port),
        ],
        env,
    )
    _spawn(
        state_dir,
        state,
        "spark-worker",
        [
            str(BIN / "spark-class"),
            "org.apache.spark.deploy.worker.Worker",
            master,
            "--host",
            HOST,
            "--cores",
            os.environ.get("RECPIPE_SPARK_WORKER_CORES", "2"),
            "--memory",
            os.environ.get("RECPIPE_SPARK_WORKER_MEMORY", "2g"),
            "--webui-port",
            str(postgres.free_port()),
        ],
        env,
    )

    def worker_alive(body: bytes) -> bool:
        return any(w.get("state") == "ALIVE" for w in json.loads(body).get("workers", []))

    _wait_http(
        "Spark master", state["processes"]["spark-master"], f"http://{HOST}:{ui_port}/json/", timeout_s, ok=worker_alive
    )
    state["urls"].update({"spark": master, "spark_ui": f"http://{HOST}:{ui_port}"})
    _write_state(state_dir, state)
    return master


def _write_credentials(state_dir: Path, state: dict, secrets: dict) -> Path:
    urls, path = state["urls"], _paths(state_dir)["credentials"]
    lines = [
        "# Written by `make services` (pipeline_tasks/infra/services.py). Private: never commit.",
        "# Use: set -a; source services/credentials.env; set +a",
    ]
    if "postgres" in state:
        port = state["postgres"]["port"]
        lines += [
            f"PGPASSFILE={_paths(state_dir)['pgpass']}",
            f"RECPIPE_OPTUNA_STORAGE=postgresql+psycopg2://optuna@{HOST}:{port}/optuna",
            # `recpipe serve` / `recpipe ab-report` read it (serving/event_store.py); password from PGPASSFILE.
            f"RECPIPE_EVENT_STORE_URL=postgresql+psycopg2://events@{HOST}:{port}/events",
        ]
    if "mlflow" in urls:
        lines += [
            f"MLFLOW_TRACKING_URI={urls['mlflow']}",
            f"MLFLOW_TRACKING_USERNAME={ADMIN}",
            f"MLFLOW_TRACKING_PASSWORD={secrets['mlflow_admin_password']}",
        ]
    if "airflow" in urls:
        lines += [
            f"AIRFLOW_URL={urls['airflow']}",
            f"AIRFLOW_USERNAME={ADMIN}",
            f"AIRFLOW_PASSWORD={secrets['airflow_admin_password']}",
        ]
    _write_private(path, "\n".join(lines) + "\n")
    return path


# --- commands ------------------------------------------------------------------------------


def up(
    state_dir: Path = DEFAULT_STATE_DIR, components: tuple[str, ...] = DEFAULT_COMPONENTS, timeout_s: float = 300.0
) -> dict:
    """Start the services (PostgreSQL always: the others need it); return the state."""
    state_dir = Path(state_dir).resolve()
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ServicesError(f"unknown service(s) {sorted(unknown)}; choose from {', '.join(COMPONENTS)}")
    state = read_state(state_dir)
    running = [name for name, info in state.get("processes", {}).items() if is_alive(info)]
    if running or postgres.is_running(_paths(state_dir)["postgres"]):
        raise ServicesError(
            f"services already run from {state_dir} ({', '.join(running) or 'postgres'}); "
            f"see `python -m pipeline_tasks.infra.services status`, or `make services-down` first"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o755)  # the `postgres` user must reach the cluster inside it
    _paths(state_dir)["logs"].mkdir(exist_ok=True)
    state = {"processes": {}, "urls": {}}
    secrets = load_secrets(state_dir)
    try:
        db_urls = start_postgres_service(state_dir, state, secrets)
        mlflow_url = start_mlflow(state_dir, state, secrets, db_urls, timeout_s) if "mlflow" in components else None
        if "airflow" in components:
            start_airflow(state_dir, state, secrets, db_urls, mlflow_url, timeout_s)
        if "spark" in components:
            start_spark(state_dir, state, timeout_s)
    except BaseException:
        down(state_dir)  # nothing half-started is left behind
        raise
    _write_credentials(state_dir, state, secrets)
    return state


def down(state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Stop every recorded process (newest first) and the cluster; return what was stopped."""
    state_dir = Path(state_dir).resolve()
    state = read_state(state_dir)
    stopped = []
    for name, info in reversed(list(state.get("processes", {}).items())):
        if is_alive(info):
            _stop_process(info)
            stopped.append(name)
    pg_dir = _paths(state_dir)["postgres"]
    if postgres.is_running(pg_dir):
        postgres.stop_postgres(pg_dir)
        stopped.append("postgres")
    if state_dir.exists():
        _write_state(state_dir, {"processes": {}, "urls": {}})
    return stopped


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, bool]:
    state_dir = Path(state_dir).resolve()
    state = read_state(state_dir)
    alive = {name: is_alive(info) for name, info in state.get("processes", {}).items()}
    try:
        alive = {"postgres": postgres.is_running(_paths(state_dir)["postgres"]), **alive}
    except postgres.PostgresError:
        alive = {"postgres": False, **alive}
    return alive


def describe(state_dir: Path, state: dict) -> str:
    rel = os.path.relpath(state_dir) if state_dir.is_relative_to(Path.cwd()) else str(state_dir)
    urls = state["urls"]
    lines = [f"recpipe services are up (state, logs and data in {rel}/):"]
    if "postgres" in urls:
        lines.append(f"  PostgreSQL  {urls['postgres']}  databases: {', '.join(DATABASES)}")
    if "mlflow" in urls:
        lines.append(f"  MLflow      {urls['mlflow']}  (basic auth, user {ADMIN})")
    if "airflow" in urls:
        lines.append(f"  Airflow     {urls['airflow']}  (user {ADMIN}; this project's dags/)")
    if "spark" in urls:
        lines.append(
            f"  Spark       {urls['spark']}  (UI {urls['spark_ui']}; use it with --set spark.master={urls['spark']})"
        )
    lines += [
        f"Passwords and URLs: {rel}/credentials.env (mode 600). To point the pipeline at them:",
        f"  set -a; source {rel}/credentials.env; set +a",
        "  and set tune.storage in params.yaml to $RECPIPE_OPTUNA_STORAGE (no password in it: libpq reads PGPASSFILE)",
        "Stop everything with `make services-down`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline_tasks.infra.services",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_COMPONENTS),
        help="comma-separated subset of postgres,mlflow,airflow,spark (default: postgres,mlflow,airflow)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each service")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            state = up(args.state_dir, tuple(filter(None, args.only.split(","))), args.timeout)
            print(describe(args.state_dir.resolve(), state))
        elif args.command == "down":
            stopped = down(args.state_dir)
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        else:
            for name, alive in status(args.state_dir).items():
                print(f"{name:24s} {'running' if alive else 'stopped'}")
    except RecpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

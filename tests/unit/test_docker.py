"""docker/: the compose stack and the images, checked without a Docker engine (none here).

Static: the compose file parses and is consistent (build contexts, COPY sources, dependencies
that wait for health, healthchecks, ports, volumes, variables, no committed secret), and the
Dockerfiles are multi-stage, pinned and non-root. Real where it can be: the PostgreSQL init
script runs against a real PostgreSQL 15, the healthcheck script against a real HTTP server.
"""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if p.suffix != ".dockerignore")
VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|API_KEY", re.I)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # safe_load resolves the `<<:` merge keys


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_example() -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(text: str) -> str:
    """What compose makes of `text` with .env.example's values (defaults where a key is unset)."""
    values = env_example()

    def one(match: re.Match) -> str:
        name, op, default = match.groups()
        return values.get(name) or (default if op in (":-", "-") else "")

    return VAR.sub(one, text).replace("$$", "$")


def strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in strings(key) + strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return []


def depends(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    return {name: {"condition": "service_started"} for name in deps} if isinstance(deps, list) else deps


def one_shots(services: dict) -> set[str]:
    """Services that run to completion and exit (migrations, bucket creation), labelled as such."""
    return {name for name, svc in services.items() if (svc.get("labels") or {}).get("recpipe.one-shot") == "true"}


# --- compose ----------------------------------------------------------------------------------


def test_compose_has_the_whole_stack(services):
    expected = {
        "postgres",
        "mlflow",
        "airflow-init",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "spark-master",
        "spark-worker",
        "serving",
        "redis",
        "airflow-worker",
        "minio",
        "minio-init",
        "pipeline",
        "secrets-check",
    }
    assert expected <= set(services)
    # Options are profiles, the default `up` is LocalExecutor + volume artifacts.
    assert services["redis"]["profiles"] == ["celery"] and services["airflow-worker"]["profiles"] == ["celery"]
    assert services["minio"]["profiles"] == ["minio"]
    assert "LocalExecutor" in interpolate(services["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"])
    serve = ["recpipe", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "${SERVING_WORKERS:-2}"]
    assert services["serving"]["command"] == serve
    assert "/healthz" in services["serving"]["environment"]["RECPIPE_HEALTH_URL"]


def test_serving_workers_share_the_events_database_of_postgres(services):
    """The workers' exposures and feedback go to PostgreSQL's `events` database, created on its first start."""
    url = interpolate(services["serving"]["environment"]["RECPIPE_EVENT_STORE_URL"])
    assert url.startswith("postgresql+psycopg2://events:") and url.endswith("@postgres:5432/events")
    assert "EVENTS_DB_PASSWORD" in services["postgres"]["environment"]
    init = (DOCKER / "postgres" / "init-databases.sh").read_text()
    assert 'create events      events  "${EVENTS_DB_PASSWORD:?}"' in init


def test_build_contexts_and_dockerfiles_exist(services):
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert {"mlflow", "serving", "spark-master", "spark-worker", "airflow-scheduler"} <= set(built)
    for name, build in built.items():
        context = (DOCKER / build["context"]).resolve()
        assert context == ROOT, f"{name}: build context {context} is not the repository root"
        assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"


def test_bind_mount_sources_exist(services):
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = interpolate(volume.split(":")[0])
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind mount source {source} does not exist"


def test_dependencies_wait_for_health_and_exist(services):
    shots = one_shots(services)
    for name, svc in services.items():
        for dep, spec in depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec.get("condition")
            wanted = "service_completed_successfully" if dep in shots else "service_healthy"
            assert condition == wanted, f"{name} -> {dep}: condition {condition!r}, want {wanted!r}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health but it has no healthcheck"
            # A dependency hidden behind a profile the dependent does not share breaks `up`.
            assert set(services[dep].get("profiles", [])) <= set(svc.get("profiles", [])), f"{name} -> {dep}"


def test_services_that_need_a_dependency_declare_it(services):
    # Anything with a database URL waits for PostgreSQL; the named clients wait for their server.
    for name, svc in services.items():
        if any("@postgres:5432" in s for s in strings(svc.get("environment", {}))):
            assert "postgres" in depends(svc), f"{name} uses PostgreSQL but does not wait for it"
    needs = {
        "mlflow": {"postgres"},
        "serving": {"mlflow", "postgres"},
        "spark-worker": {"spark-master"},
        "airflow-scheduler": {"postgres", "mlflow", "airflow-init"},
        "airflow-worker": {"redis", "mlflow"},
        "airflow-api-server": {"airflow-init"},
        "airflow-dag-processor": {"airflow-init"},
        "airflow-triggerer": {"airflow-init"},
        "pipeline": {"postgres", "mlflow"},
        "minio-init": {"minio"},
    }
    for name, wanted in needs.items():
        assert wanted <= set(depends(services[name])), f"{name} must depend on {wanted - set(depends(services[name]))}"


def test_every_service_has_a_healthcheck(services):
    shots = one_shots(services)
    for name, svc in services.items():
        if name in shots:
            assert svc.get("restart") == "no", f"one-shot {name} must not be restarted"
            assert "healthcheck" not in svc, f"one-shot {name}: others wait for its exit, not its health"
            continue
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


def test_healthcheck_scripts_are_in_the_images(services):
    copied = {
        path
        for dockerfile in DOCKERFILES
        for path in re.findall(r"^COPY .* (/usr/local/bin/\S+)$", dockerfile.read_text(), re.M)
    }
    for name, svc in services.items():
        for text in strings(svc.get("healthcheck", {}).get("test", [])) + strings(svc.get("command", [])):
            for path in re.findall(r"/usr/local/bin/\S+", text):
                assert path in copied, f"{name} runs {path}, which no Dockerfile copies"
    assert services["mlflow"]["command"] == ["start-mlflow"] and "/usr/local/bin/start-mlflow" in copied


def published_ports(services) -> list[tuple[str, str, str]]:
    out = []
    for name, svc in services.items():
        for port in svc.get("ports", []):
            parts = interpolate(str(port)).split(":")
            assert len(parts) == 3, f"{name}: publish as HOST_IP:HOST_PORT:CONTAINER_PORT, got {port}"
            out.append((name, parts[0], parts[1]))
    return out


def test_ports_do_not_clash_and_bind_loopback(services):
    ports = published_ports(services)
    assert len(ports) >= 8
    host_ports = [port for _, _, port in ports]
    assert len(host_ports) == len(set(host_ports)), f"host port published twice: {sorted(host_ports)}"
    assert {ip for _, ip, _ in ports} == {"127.0.0.1"}


def test_named_volumes_are_declared_and_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in declared, f"{name}: volume {source} is not declared under volumes:"
                used.add(source)
    assert declared == used, f"declared but unused: {declared - used}"


def test_variables_match_env_example():
    referenced = {m.group(1) for s in strings(yaml.safe_load(COMPOSE_FILE.read_text())) for m in VAR.finditer(s)}
    example = set(env_example())
    assert referenced - example == set(), f"used in compose, missing from .env.example: {referenced - example}"
    assert example - referenced == set(), f"in .env.example but unused: {example - referenced}"


def test_no_secret_is_committed(services):
    for key, value in env_example().items():
        if SECRET_NAME.search(key):
            assert value.startswith("change-me"), f".env.example {key} must be a change-me placeholder"
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            value = str(value)
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert "${" in value, f"{name}.{key} is a literal: secrets come from .env"
            for var, op, _ in VAR.findall(value):  # a secret has no default to fall back on
                if SECRET_NAME.search(var):
                    assert op == ":?", f"{name}.{key}: ${{{var}}} must be required (${{{var}:?...}})"
    for env_file in (".env", "docker/.env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", env_file], cwd=ROOT)
        assert ignored.returncode == 0, f"{env_file} must be git-ignored"


def secret_variables(node) -> set[str]:
    """The .env secrets that `node` (a service, the whole file) interpolates."""
    return {m.group(1) for s in strings(node) for m in VAR.finditer(s) if SECRET_NAME.search(m.group(1))}


def test_every_secret_is_checked_before_its_service_starts(compose, services):
    checker = services["secrets-check"]
    assert checker["entrypoint"] == ["/bin/bash", "/opt/check-secrets.sh"]
    assert "./check-secrets.sh:/opt/check-secrets.sh:ro" in checker["volumes"]
    assert checker.get("profiles") is None, "the check must run under every profile"
    every_secret = secret_variables(compose)
    assert len(every_secret) >= 10
    assert set(checker["command"]) == every_secret, f"secrets-check misses {every_secret - set(checker['command'])}"
    for name in every_secret:  # checked under the same name the operator sets in .env
        assert checker["environment"][name] == f"${{{name}:?set {name} in .env}}"
    for name, svc in services.items():
        if name != "secrets-check" and secret_variables(svc):
            condition = depends(svc).get("secrets-check", {}).get("condition")
            wait = "service_completed_successfully"
            assert condition == wait, f"{name} takes a secret but does not wait for secrets-check"


def run_secrets_check(env: dict[str, str], names: list[str]) -> subprocess.CompletedProcess:
    script = DOCKER / "check-secrets.sh"
    clean = {"PATH": os.environ["PATH"], **env}  # only the secrets under test, nothing inherited
    return subprocess.run(["bash", str(script), *names], env=clean, capture_output=True, text=True)


def good_secrets(names) -> dict[str, str]:
    from cryptography.fernet import Fernet

    return {n: Fernet.generate_key().decode() if "FERNET" in n else secrets.token_urlsafe(24) for n in names}


def test_secrets_check_refuses_the_copied_env_example_naming_each_variable(services):
    names = services["secrets-check"]["command"]
    result = run_secrets_check(env_example(), names)
    assert result.returncode == 1
    for name in names:
        assert f"refusing to start: {name} " in result.stderr and f"Set {name} in .env" in result.stderr
    assert run_secrets_check(good_secrets(names), names).returncode == 0


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("POSTGRES_PASSWORD", "", "is empty"),
        ("POSTGRES_PASSWORD", None, "is empty"),  # unset
        ("MLFLOW_ADMIN_PASSWORD", "change-me-please", "is a placeholder"),
        ("MINIO_ROOT_PASSWORD", "Change_Me_2026-long", "is a placeholder"),
        ("AIRFLOW_JWT_SECRET", "placeholder-secret-value", "is a placeholder"),
        ("AIRFLOW_API_SECRET_KEY", "a" * 11, "has 11 characters, fewer than 12"),
        ("AIRFLOW_DB_PASSWORD", "p@ss/word:12345", "has characters that break a database URL"),
        ("AIRFLOW_FERNET_KEY", "not-a-fernet-key-but-long-enough", "is not a Fernet key"),
    ],
)
def test_secrets_check_refuses_a_bad_secret(name, value, reason):
    others = good_secrets({"POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "OPTUNA_DB_PASSWORD"} - {name})
    env = {**others, name: value} if value is not None else others
    result = run_secrets_check(env, [name, *others])
    assert result.returncode == 1
    assert f"{name} {reason}" in result.stderr
    assert len(result.stderr.splitlines()) == 1, f"only {name} is bad: {result.stderr}"
    if value:
        assert value not in result.stderr, "the refused value itself must not reach the logs"


def test_secrets_check_accepts_twelve_characters_and_needs_a_name():
    assert run_secrets_check({"MINIO_ROOT_PASSWORD": "x7!Kq#2mZ9$w"}, ["MINIO_ROOT_PASSWORD"]).returncode == 0
    assert run_secrets_check({}, []).returncode == 2


def test_third_party_images_are_pinned(services):
    for name, svc in services.items():
        if "build" in svc:
            continue
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image} is not pinned"


# --- Dockerfiles ------------------------------------------------------------------------------


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_multistage_pinned_and_non_root(dockerfile):
    text = dockerfile.read_text()
    args = dockerfile_args(text)
    froms = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.M)
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    stages = {stage for _, stage in froms}
    for image, _ in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        if image in stages:
            continue
        tag = image.rpartition(":")[2]
        assert re.fullmatch(r"\d+\.\d+\.\d+[-\w.]*", tag), f"base image {image} is not pinned to a version"
    final_stage = text[text.rindex("\nFROM ") :]
    users = re.findall(r"^USER (\S+)$", final_stage, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage must switch to a non-root USER"
    assert re.search(r"^HEALTHCHECK .*CMD", final_stage, re.M | re.S), "HEALTHCHECK missing"
    assert "torch==2.13.0" in text and "requirements.lock" in text
    assert re.search(r"pip install -r /tmp/requirements-no-torch.txt", text)


def ignore_allows(ignore_file: Path, path: str) -> bool:
    """.dockerignore semantics, enough for our files: the last matching pattern decides."""
    allowed = True
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        if pattern == "*" or fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or path == pattern:
            allowed = negate
    return allowed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_not_ignored(dockerfile):
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore_file.is_file(), f"{ignore_file.name} missing: the whole repo (.venv, data, .env) would be sent"
    copies = re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), re.M)
    assert copies
    for line in copies:
        words = [w for w in shlex.split(line) if not w.startswith("--")]
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY source {source} does not exist"
            assert ignore_allows(ignore_file, source.rstrip("/")), f"{dockerfile.name}: {source} is dockerignored"
    for secret in (".env", "docker/.env", ".venv", "services", "mlflow"):
        assert not ignore_allows(ignore_file, secret), f"{ignore_file.name} lets {secret} into the context"


def test_extra_requirements_are_pinned():
    for name in ("requirements-s3.txt", "requirements-airflow.txt"):
        lines = [line for line in (DOCKER / name).read_text().splitlines() if line and not line.startswith("#")]
        assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", line) for line in lines), name


def test_shell_scripts_parse():
    scripts = ("mlflow/start-mlflow.sh", "postgres/init-databases.sh", "check-secrets.sh")
    for script in (DOCKER / name for name in scripts):
        shell = "bash" if "bash" in script.read_text().splitlines()[0] else "sh"
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


# --- the scripts, for real ------------------------------------------------------------------------


def test_init_databases_script_creates_the_databases_on_real_postgres(postgres_parent_dir):
    from pipeline_tasks.infra import postgres

    parent = postgres_parent_dir
    with postgres.postgres_server(parent / "pg") as server:
        script = parent / "init-databases.sh"  # a copy the `postgres` user can read
        shutil.copy(DOCKER / "postgres" / "init-databases.sh", script)
        script.chmod(0o755)
        passwords = {
            "AIRFLOW_DB_PASSWORD": "a-pass-123",
            "MLFLOW_DB_PASSWORD": "m-pass-123",
            "OPTUNA_DB_PASSWORD": "o-pass-123",
            "EVENTS_DB_PASSWORD": "e-pass-123",
        }
        env = {
            **os.environ,
            **passwords,
            "POSTGRES_USER": "postgres",
            "PGHOST": str(server.run_dir),
            "PGPORT": str(server.port),
            "PATH": f"{server.bin_dir}:{os.environ['PATH']}",
        }
        runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        for _ in range(2):  # idempotent: a second run changes nothing and does not fail
            result = subprocess.run([*runner, "bash", str(script)], env=env, cwd=parent, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
        for db, user, pw in (
            ("airflow", "airflow", "a-pass-123"),
            ("mlflow", "mlflow", "m-pass-123"),
            ("mlflow_auth", "mlflow", "m-pass-123"),
            ("optuna", "optuna", "o-pass-123"),
            ("events", "events", "e-pass-123"),
        ):
            engine = sa.create_engine(postgres.make_url(user, pw, server.port, db))
            with engine.connect() as conn:
                assert conn.execute(sa.text("select current_database()")).scalar() == db
            engine.dispose()


def test_healthcheck_script_against_a_real_http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:

        def check(url: str) -> int:
            env = {**os.environ, "RECPIPE_HEALTH_URL": url}
            return subprocess.run(
                [sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True
            ).returncode

        assert check(f"{base}/healthz") == 0
        assert check(f"{base}/broken") == 1
    finally:
        server.shutdown()
    assert check("http://127.0.0.1:9/healthz") == 1  # nothing listening

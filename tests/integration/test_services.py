"""The local multi-service mode for real: PostgreSQL + the MLflow tracking server (basic auth on)
started by pipeline_tasks.infra.services, then `recpipe run` of a tiny project logging over HTTP with
its Optuna study in PostgreSQL; the registered version is looked up on that server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from pipeline_tasks.core import constants as C
from pipeline_tasks.infra import services
from tests.conftest import make_project

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


@pytest.fixture
def services_dir(postgres_parent_dir):
    yield postgres_parent_dir / "services"
    services.down(postgres_parent_dir / "services")


def test_pipeline_logs_to_mlflow_server_with_optuna_in_postgres(services_dir, tmp_path, tiny_encoder_dir, monkeypatch):
    state = services.up(services_dir, components=("postgres", "mlflow"))
    assert services.status(services_dir) == {"postgres": True, "mlflow": True}
    creds = read_env_file(services_dir / "credentials.env")
    assert (services_dir / "credentials.env").stat().st_mode & 0o077 == 0  # private
    url = creds["MLFLOW_TRACKING_URI"]
    assert url == state["urls"]["mlflow"] and url.startswith("http://127.0.0.1:")
    # Basic auth is really on: no credentials, no access.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/registered-models/search", timeout=30)
    assert refused.value.code == 401
    storage = creds["RECPIPE_OPTUNA_STORAGE"]
    assert ":" not in storage.split("@")[0].removeprefix("postgresql+psycopg2://")  # no password in params
    # The serving event store's database: reachable with the URL `recpipe serve` gets (password from PGPASSFILE).
    from pipeline_tasks.serving.event_store import EventStore

    monkeypatch.setenv("PGPASSFILE", creds["PGPASSFILE"])
    events = EventStore(creds["RECPIPE_EVENT_STORE_URL"])
    events.upgrade()
    assert events.counts() == {"exposures": 0, "feedback": 0} and "events@" in events.where
    events.dispose()

    # Pop alone and fp32 only: the services' wiring is under test, not the models (which cost minutes here).
    cheap = ["baselines.models=[Pop]", "compress.variants=[fp32]"]
    project = make_project(tmp_path / "project", tiny_encoder_dir, [f"tune.storage={storage}", *cheap])
    client_env = {
        key: creds[key]
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSFILE")
    }
    env = {k: v for k, v in os.environ.items() if k != C.PARENT_RUN_ENV}
    env.update(client_env, PATH=f"{BIN}{os.pathsep}{env['PATH']}")
    run = subprocess.run(
        [str(BIN / "recpipe"), "run"], cwd=project, env=env, capture_output=True, text=True, timeout=3600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]

    for key, value in client_env.items():
        monkeypatch.setenv(key, value)
    from mlflow import MlflowClient

    register = json.loads((project / C.METRICS_DIR / "register.json").read_text())
    client = MlflowClient(tracking_uri=url)
    version = client.get_model_version(register["model_name"], register["version"])
    assert version.status == "READY"
    assert client.get_registered_model(register["model_name"]).aliases[C.ALIAS_CHALLENGER] == version.version
    # Everything went to the server: no local store, artifacts in the server's artifact folder.
    assert not (project / "mlflow" / "mlflow.db").exists()
    assert list((services_dir / "mlflow" / "artifacts").rglob("MLmodel"))

    import optuna

    tune = json.loads((project / C.METRICS_DIR / "tune.json").read_text())
    assert tune["study"].startswith("recpipe.")  # the study of this data version (model/tuning.py)
    study = optuna.load_study(study_name=tune["study"], storage=storage)
    assert len(study.trials) == tune["n_trials"] == 2
    assert not (project / C.OPTUNA_DIR / "study.db").exists()

    # The registered model loads through the server (artifact proxy, with login) in a fresh process.
    user = pd.read_parquet(project / C.DATA_SPLIT / "test")[C.USER_ID].iloc[0]
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlflow, pandas as pd, sys; mlflow.set_tracking_uri(sys.argv[1]);"
            f"m = mlflow.pyfunc.load_model('models:/{register['model_name']}@challenger');"
            "print(len(m.predict(pd.DataFrame({'user_id': [sys.argv[2]], 'k': [5]})).loc[0, 'item_ids']))",
            url,
            user,
        ],
        cwd="/",
        env={**os.environ, **client_env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip().splitlines()[-1] == "5"

    pids = [info["pid"] for info in services.read_state(services_dir)["processes"].values()]
    assert set(services.down(services_dir)) == {"mlflow", "postgres"}
    assert not any(services.status(services_dir).values())
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "a server process outlived `down`"


def test_clean_stage_runs_on_a_spark_standalone_cluster(services_dir, tmp_path):
    """`spark.master: spark://...` with no other change: the real clean stage on a standalone
    master + worker (pyspark's own Spark, started by `services up --only spark`)."""
    from tests.conftest import PROJECT_ROOT, TINY_OVERRIDES

    state = services.up(services_dir, components=("spark",))
    master = state["urls"]["spark"]
    assert master.startswith("spark://127.0.0.1:")
    tiny = [f"--set={o}" for o in TINY_OVERRIDES if o.startswith(("ingest.", "spark.shuffle"))]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for stage, extra in (("ingest", []), ("clean", [f"--set=spark.master={master}"])):
        result = subprocess.run(
            [sys.executable, "-m", f"pipeline_tasks.{stage}", "--root", str(tmp_path), "--no-mlflow", *tiny, *extra],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert result.returncode == 0, result.stderr[-3000:]

    counts = json.loads((tmp_path / C.METRICS_DIR / "clean.json").read_text())["interactions"]
    assert counts["rows_in"] == counts["rows_kept"] + counts["rows_quarantined"] and counts["rows_quarantined"] > 0
    # The work really ran on the cluster: the master lists the finished app, the worker ran its executors.
    import time

    for _ in range(60):  # the master marks the app finished a moment after the driver exits
        with urllib.request.urlopen(f"{state['urls']['spark_ui']}/json/", timeout=30) as resp:
            cluster = json.load(resp)
        if cluster["completedapps"]:
            break
        time.sleep(1)
    assert [(a["name"], a["state"]) for a in cluster["completedapps"]] == [("recpipe", "FINISHED")]
    assert list((services_dir / "spark-work").glob("app-*/*/stderr")), "no executor ran on the worker"

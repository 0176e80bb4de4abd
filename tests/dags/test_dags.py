"""The Airflow DAGs: they import cleanly, are wired in stage order, and really run (dag.test())."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_tasks import constants as C

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def airflow_env(home: Path, project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (C.TRACKING_URI_ENV, C.PARENT_RUN_ENV)}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
        "AIRFLOW__CORE__PARALLELISM": "2",
        "RECPIPE_PROJECT_DIR": str(project),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    })
    return env


def test_dagbag_imports_without_errors_and_without_work():
    started = time.perf_counter()
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(PROJECT_ROOT / 'dags')!r});"
        "print('ERRORS', bag.import_errors);"
        "d = bag.dags['recpipe_nightly'];"
        "print('TASKS', ','.join(t.task_id for t in d.topological_sort()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=airflow_env(Path("/tmp/recpipe-dagbag-home"), PROJECT_ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERRORS {}" in out.stdout
    tasks = out.stdout.split("TASKS ")[1].strip().split(",")
    assert tasks == ["start_pipeline_run", *C.STAGES, "finish_pipeline_run"]
    # Parsing must stay cheap: no Spark, torch or MLflow work at import time.
    assert time.perf_counter() - started < 60


@pytest.mark.slow
def test_nightly_dag_runs_end_to_end(tiny_project: Path, tmp_path: Path):
    env = airflow_env(tmp_path / "airflow", tiny_project)
    migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(tiny_project / 'dags')!r});"
        "dr = bag.dags['recpipe_nightly'].test();"
        "print('DAGRUN_STATE', dr.state)"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tiny_project, env=env, capture_output=True, text=True)
    log = run.stdout[-4000:] + run.stderr[-6000:]
    assert "DAGRUN_STATE success" in run.stdout, log
    assert (tiny_project / C.METRICS_DIR / "register.json").exists(), log

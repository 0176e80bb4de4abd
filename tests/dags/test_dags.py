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


def parse_dags(snippet: str) -> str:
    """Parse dags/ in a fresh interpreter (as Airflow's processor does) and run `snippet` on `bag`."""
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(PROJECT_ROOT / 'dags')!r});"
        "print('ERRORS', bag.import_errors);" + snippet
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=airflow_env(Path("/tmp/recpipe-dagbag-home"), PROJECT_ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERRORS {}" in out.stdout
    return out.stdout


def test_dags_import_without_errors_and_are_wired_in_stage_order():
    started = time.perf_counter()
    out = parse_dags("[print('TASKS', d.dag_id, ','.join(t.task_id for t in d.topological_sort())) "
                     "for d in bag.dags.values()]")
    tasks = {line.split()[1]: line.split()[2].split(",") for line in out.splitlines() if line.startswith("TASKS")}
    flow = ["anything_to_do", "start_pipeline_run", *C.STAGES, "finish_pipeline_run"]
    assert tasks["recpipe_nightly"] == flow
    assert tasks["recpipe_manual"] == ["apply_form", *flow]
    # Parsing must stay cheap: no Spark, torch or MLflow work at import time.
    assert time.perf_counter() - started < 60


def test_manual_form_comes_from_params_yaml_and_refuses_invalid_values():
    out = parse_dags(
        "import json;"
        "p = bag.dags['recpipe_manual'].params;"
        "print('FORM', json.dumps({k: {**p.get_param(k).schema, 'default': p.get_param(k).value} for k in p}));"
        "bad = [('train__epochs', 0), ('train__device', 'gpu'), ('register__auto_promote', 'yes')]\n"
        "for key, value in bad:\n"
        "    try:\n        p.get_param(key).resolve(value); print('ACCEPTED', key)\n"
        "    except Exception as err:\n        print('REFUSED', key, type(err).__name__)"
    )
    import json

    from pipeline_tasks import params as P

    form = json.loads(out.split("FORM ", 1)[1].splitlines()[0])
    defaults = P.load(PROJECT_ROOT / "params.yaml")
    assert form["train__epochs"]["type"] == "integer" and form["train__epochs"]["minimum"] == 1
    assert form["ingest__source"]["enum"] == ["synthetic", "movielens"]
    assert form["train__finetune"]["enum"] == ["lora", "full", "top_layers", "frozen"]
    assert form["register__auto_promote"]["type"] == "boolean"
    assert "ACCEPTED" not in out and out.count("REFUSED") == 3
    assert form["train__epochs"]["default"] == defaults["train"]["epochs"]


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

    # Nothing changed since: the next run short-circuits (every stage skipped) and succeeds.
    again = subprocess.run([sys.executable, "-c", code.replace(".test()", ".test(logical_date=__import__('datetime').datetime.now(__import__('datetime').timezone.utc))")],
                           cwd=tiny_project, env=env, capture_output=True, text=True)
    assert "DAGRUN_STATE success" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    assert "nothing to do" in again.stdout + again.stderr

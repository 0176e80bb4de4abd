"""
# recpipe_nightly

Nightly retraining: one task per pipeline stage, in order
`ingest → validate_raw → clean → validate_clean → split → baselines → tune → train → compress → evaluate → register`.

Each task runs its **DVC stage** (`dvc repro --single-item <stage>`) in the project
directory, so DVC caches and records it: a stage whose inputs did not change is a no-op,
and a failed run that is cleared continues from the failed stage. All stages of one DAG
run are nested under one MLflow parent run.

* Validation failures (bad data) are **not retried**: they will not fix themselves. Look
  at the task log and the Data Docs under `reports/gx/`.
* Other failures are retried with exponential backoff.
* Param `project_dir`: the recpipe checkout to run in (default: the one holding this DAG).
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag, task

from pipeline_tasks.constants import STAGES

DEFAULT_PROJECT_DIR = os.environ.get("RECPIPE_PROJECT_DIR", str(Path(__file__).resolve().parents[1]))
VALIDATION_STAGES = {"validate_raw", "validate_clean"}


@task
def start_pipeline_run(**context) -> str:
    """Open the MLflow parent run that every stage of this DAG run nests under."""
    from pipeline_tasks.pipeline import load_project_params, start_parent_run

    root = Path(context["params"]["project_dir"])
    ti = context["ti"]
    return start_parent_run(load_project_params(root), root, run_name=f"airflow {ti.run_id}",
                            tags={"airflow.dag_id": ti.dag_id, "airflow.run_id": ti.run_id})


@task
def run_stage(stage: str, parent_run_id: str, **context) -> str:
    """`dvc repro --single-item <stage>`: a no-op when its inputs did not change."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline_tasks.pipeline import load_project_params, repro

    root = Path(context["params"]["project_dir"])
    code = repro(root, load_project_params(root), stage=stage, parent_run_id=parent_run_id)
    if code == 0:
        return stage
    message = f"stage {stage} failed (dvc repro exit code {code}); its message is in this task's log"
    if stage in VALIDATION_STAGES:
        raise AirflowFailException(f"{message}. Bad data: not retried. Data Docs: {root}/reports/gx/")
    raise RuntimeError(message)


@task(trigger_rule="all_done")
def finish_pipeline_run(parent_run_id: str, **context) -> str:
    """Close the parent run (FAILED if a stage failed), print the summary, fail the DAG run if needed."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline_tasks.pipeline import end_parent_run, load_project_params, summary

    root = Path(context["params"]["project_dir"])
    params = load_project_params(root)
    finished = set(context["ti"].xcom_pull(task_ids=list(STAGES)) or [])
    not_done = [stage for stage in STAGES if stage not in finished]
    end_parent_run(params, root, parent_run_id, ok=not not_done)
    if not_done:
        raise AirflowFailException(f"pipeline stopped at {not_done[0]}; not run: {', '.join(not_done[1:]) or '-'}. "
                                   "Nothing was registered by this run.")
    report = summary(params, root)
    print(report)
    return report


@dag(
    dag_id="recpipe_nightly",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["recpipe"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": True},
    params={"project_dir": Param(DEFAULT_PROJECT_DIR, type="string", title="Project directory",
                                 description="The recpipe checkout (holding dvc.yaml and params.yaml) to run in.")},
)
def recpipe_nightly():
    parent = start_pipeline_run()
    previous = parent
    for stage in STAGES:
        current = run_stage.override(task_id=stage)(stage, parent)
        previous >> current
        previous = current
    previous >> finish_pipeline_run(parent)


recpipe_nightly()

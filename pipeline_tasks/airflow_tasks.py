"""Shared wiring of the recpipe DAGs (dags/): the stage tasks and their order.

Imported only by the DAG files (it needs Airflow). Only wiring lives here: every task body imports `pipeline_tasks` and calls the same
functions `recpipe run` uses, so a run from the scheduler and one from a shell are the same.
"""
from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import task

from pipeline_tasks.constants import STAGES

# The checkout whose dags/ folder Airflow reads, unless RECPIPE_PROJECT_DIR says otherwise.
DEFAULT_PROJECT_DIR = os.environ.get("RECPIPE_PROJECT_DIR", str(Path(__file__).resolve().parents[1]))
VALIDATION_STAGES = {"validate_raw", "validate_clean"}


def project_dir(context) -> Path:
    return Path(context["params"]["project_dir"])


def alert_on_failure(context) -> None:
    """DAG-level on_failure_callback: one alert naming the failed task and where to look."""
    from pipeline_tasks import alerts

    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    root = Path((context.get("params") or {}).get("project_dir", DEFAULT_PROJECT_DIR))
    alerts.record("run_failed", f"recpipe DAG run {getattr(dag_run, 'run_id', '?')} failed"
                                f"{f' at {ti.task_id}' if ti else ''}: see that task's log "
                                f"(validation failures: Data Docs in {root}/reports/gx/)", root,
                  dag_id=getattr(dag_run, "dag_id", None), run_id=getattr(dag_run, "run_id", None))


@task.short_circuit
def anything_to_do(**context) -> bool:
    """Skip the whole run in seconds when DVC sees no new data and no param change."""
    from pipeline_tasks.pipeline import stale_stages

    stale = stale_stages(project_dir(context))
    print(f"stages with changed inputs: {stale or 'none — nothing to do'}")
    return bool(stale)


@task
def start_pipeline_run(**context) -> str:
    """Open the MLflow parent run that every stage of this DAG run nests under."""
    from pipeline_tasks.pipeline import load_project_params, start_parent_run

    root = project_dir(context)
    ti = context["ti"]
    return start_parent_run(load_project_params(root), root, run_name=f"airflow {ti.run_id}",
                            tags={"airflow.dag_id": ti.dag_id, "airflow.run_id": ti.run_id})


@task
def run_stage(stage: str, parent_run_id: str, **context) -> str:
    """`dvc repro --single-item <stage>`: a no-op when its inputs did not change."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline_tasks.pipeline import load_project_params, repro

    root = project_dir(context)
    skip = context["params"].get("skip_search") and stage == "tune"
    if skip and (root / "metrics/tune/best_params.json").exists():
        print("search skipped: train reuses the last metrics/tune/best_params.json")
        return stage
    code = repro(root, load_project_params(root), stage=stage, parent_run_id=parent_run_id)
    if code == 0:
        return stage
    message = f"stage {stage} failed (dvc repro exit code {code}); its message is in this task's log"
    if stage in VALIDATION_STAGES:
        raise AirflowFailException(f"{message}. Bad data: not retried. Data Docs: {root}/reports/gx/")
    raise RuntimeError(message)


@task(trigger_rule="all_done")
def finish_pipeline_run(parent_run_id: str, **context) -> str:
    """Close the parent run (FAILED if a stage failed), alert when not promoted, fail the DAG run if needed."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline_tasks import alerts
    from pipeline_tasks.pipeline import end_parent_run, load_project_params, summary

    root = project_dir(context)
    params = load_project_params(root)
    finished = set(context["ti"].xcom_pull(task_ids=list(STAGES)) or [])
    not_done = [stage for stage in STAGES if stage not in finished]
    end_parent_run(params, root, parent_run_id, ok=not not_done)
    if not_done:
        raise AirflowFailException(f"pipeline stopped at {not_done[0]}; not run: {', '.join(not_done[1:]) or '-'}. "
                                   "No registry alias moved in this run.")
    reason = alerts.not_promoted_reason(root)
    if reason:
        alerts.record("not_promoted", f"trained but not promoted: {reason}", root, run_id=context["ti"].run_id)
    report = summary(params, root)
    print(report)
    return report


def pipeline(first=None) -> None:
    """check → start → ingest → ... → register → finish, after `first` if given."""
    check = anything_to_do()
    if first is not None:
        first >> check
    parent = start_pipeline_run()
    check >> parent
    previous = parent
    for stage in STAGES:
        current = run_stage.override(task_id=stage)(stage, parent)
        previous >> current
        previous = current
    previous >> finish_pipeline_run(parent)

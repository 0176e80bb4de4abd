"""
# recpipe_manual

The nightly flow, triggered by a person from the web UI with a **form generated from
params.yaml**: data source and path, epochs, fine-tune mode, device, Optuna trials,
auto-promote. Each field is typed, with bounds and enums; the form refuses invalid values.

Submitted values apply to this run only: they are written, with params.yaml, into the run's
`params.run.yaml` (params.yaml, the nightly configuration, is never rewritten) and recorded in
`reports/params_used.json` and the MLflow runs, so DVC re-runs exactly the stages they affect.

Operator actions:
* **Skip the search** reuses the last `metrics/tune/best_params.json`.
* **Data version**: retrain on the data recorded in the `dvc.lock` at a git revision (every
  successful run commits its lock on the `recpipe-runs` branch); ingest is skipped.
* **Backfill**: ingest the increments of a date range in order, then run the rest once.
* **A/B share**: the challenger's share of users once the run succeeded.

The project folder is not a field: it is the deployment's (RECPIPE_PROJECT_DIR), and a run conf
that still sends `project_dir` is refused.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import Param, dag, task

from pipeline_tasks.core.params import load as load_params
from pipeline_tasks.ops.airflow_tasks import (
    PROJECT_DIR,
    RETRIES,
    alert_on_failure,
    pipeline,
    prepare_data,
    project_dir,
)
from pipeline_tasks.ops.form import OPERATOR_FIELDS, form_schema


def form() -> dict[str, Param]:
    """The trigger form. No project folder field: the deployment fixes it (RECPIPE_PROJECT_DIR)."""
    path = Path(PROJECT_DIR) / "params.yaml"
    fields = {**form_schema(load_params(path if path.exists() else None)), **OPERATOR_FIELDS}
    return {name: Param(**spec) for name, spec in fields.items()}


@task
def apply_form(**context) -> list[str]:
    """This run's params: params.yaml + the form's changed values (validated first), recorded."""
    from pipeline_tasks.ops.form import overrides_from_form
    from pipeline_tasks.ops.pipeline import load_project_params
    from pipeline_tasks.ops.run_params import write_run_params

    root = project_dir(context)  # first task: refuses a conf that still sends project_dir
    overrides = overrides_from_form(dict(context["params"]), load_project_params(root))
    write_run_params(root, overrides)
    print(f"overrides for this run: {overrides or 'none'}")
    return overrides


@dag(
    dag_id="recpipe_manual",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["recpipe"],
    on_failure_callback=alert_on_failure,
    default_args=RETRIES,
    params=form(),
)
def recpipe_manual():
    pipeline(first=apply_form() >> prepare_data())


recpipe_manual()

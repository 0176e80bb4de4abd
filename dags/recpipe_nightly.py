"""
# recpipe_nightly

Nightly retraining, on the schedule in params.yaml (`airflow.schedule`, default 02:00 UTC):
`ingest → validate_raw → clean → validate_clean → split → baselines → tune → train → compress → evaluate → register`.

* **Its night**: the logical date names the increment ingest reads (synthetic: that day after the
  generated history; files: `<ingest.path>/<YYYY-MM-DD>/`, else the whole folder, fingerprinted),
  written with params.yaml into the run's `params.run.yaml` (params.yaml itself is never rewritten).
* **Short-circuit**: when DVC sees no new data and no param change, the run ends in seconds
  (every stage task is skipped).
* Each task runs its **DVC stage** (`dvc repro --single-item <stage>`), so DVC caches and
  records it; a failed run that is cleared continues from the failed stage.
* All stages of one DAG run nest under one MLflow parent run.
* **Validation failures** (bad data) are not retried: look at the task log and the Data Docs
  under `reports/gx/`. Other failures are retried with exponential backoff.
* **Alerts** (reports/alerts.jsonl, plus the webhook of the Airflow connection
  `recpipe_alerts` if it exists): on failure, and when a model is trained but not promoted.
* **No params**: the project folder is the deployment's (RECPIPE_PROJECT_DIR); a run conf that
  sends `project_dir` is refused.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from airflow.sdk import dag

from pipeline_tasks.core.params import load as load_params
from pipeline_tasks.ops.airflow_tasks import PROJECT_DIR, RETRIES, alert_on_failure, nightly_params, pipeline


def schedule() -> str:
    """The cron schedule from params.yaml (a small YAML read: no work beyond that at import)."""
    path = Path(PROJECT_DIR) / "params.yaml"
    return load_params(path if path.exists() else None)["airflow"]["schedule"]


@dag(
    dag_id="recpipe_nightly",
    schedule=schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["recpipe"],
    on_failure_callback=alert_on_failure,
    default_args=RETRIES,
)
def recpipe_nightly():
    pipeline(first=nightly_params())


recpipe_nightly()

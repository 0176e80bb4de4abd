"""
# recpipe_promote

One audited move in the MLflow model registry, from a form:

* **Promote a version** to `champion` (the old champion becomes `previous_champion`).
  A version that did not pass the gate against the current champion is promoted only with
  a written **reason**, and the move is recorded as forced.
* **Roll back**: `champion` back to `previous_champion`, after that version loads and answers.
* **Set the A/B share**: the challenger's share of users, stored in the registry.

Every action is recorded in the registry's history (`recpipe history`) with this DAG run
(`airflow:recpipe_promote/<run_id>`) as the actor. A refused action fails the run with the
reason (no retry). It acts on the MLflow store of the deployment's project (RECPIPE_PROJECT_DIR),
never one a trigger names: a run conf that sends `project_dir` is refused.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag

from pipeline_tasks.ops.airflow_tasks import registry_action
from pipeline_tasks.ops.form import PROMOTE_FIELDS


@dag(
    dag_id="recpipe_promote",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["recpipe"],
    params={name: Param(**spec) for name, spec in PROMOTE_FIELDS.items()},
)
def recpipe_promote():
    registry_action()


recpipe_promote()

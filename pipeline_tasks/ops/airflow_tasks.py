"""Shared wiring of the recpipe DAGs (dags/): the stage tasks, their order, the registry actions.

Imported only by the DAG files (it needs Airflow). Only wiring lives here: every task body imports
`pipeline_tasks` and calls the same functions `recpipe run` uses, so a run from the scheduler and one
from a shell are the same.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from airflow.sdk import task

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.constants import STAGES

# The one project folder every task acts on: set by the deployment (RECPIPE_PROJECT_DIR on the scheduler,
# DAG processor and workers; default: the checkout whose dags/ folder Airflow reads). Never taken from a
# trigger: whoever may trigger a DAG must not choose where `dvc repro` runs its `cmd:` lines, or which MLflow
# store a registry action changes.
PROJECT_DIR_ENV = "RECPIPE_PROJECT_DIR"
PROJECT_DIR = os.environ.get(PROJECT_DIR_ENV, str(C.SOURCE_CHECKOUT))
# Run conf keys the deployment owns: a run that still sends one (an old bookmark, an API script) is refused.
DEPLOYMENT_KEYS = ("project_dir",)
VALIDATION_STAGES = {"validate_raw", "validate_clean"}
REGISTRY_ACTIONS = ("promote", "rollback", "set_ab_share")
# Transient failures (a busy machine, a remote that blinks) get retried; run_stage fails bad data and bad
# params without retry (AirflowFailException).
RETRIES = {"retries": 2, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": True}


def project_dir(context) -> Path:
    """The deployment's project folder, after refusing a run whose conf tries to choose another.

    Checked in every task, not only the first: a cleared task re-runs with the same conf. The run conf is
    read directly because Airflow merges unknown conf keys into `params` without complaint.
    """
    refuse_deployment_keys(getattr(context.get("dag_run"), "conf", None) or {})
    return Path(PROJECT_DIR)


def refuse_deployment_keys(conf: dict) -> None:
    found = [key for key in DEPLOYMENT_KEYS if key in conf]
    if found:
        given = ", ".join(f"{key}={conf[key]!r}" for key in found)
        raise fail_without_retry(
            ValueError(
                f"this run's conf sets {given}, which a trigger may no longer choose: the project folder is "
                f"fixed by the deployment ({PROJECT_DIR_ENV}, here {PROJECT_DIR}). Nothing was run. Trigger "
                f"again without {', '.join(found)} (an old bookmark or API call still sends it)."
            )
        )


def who(context) -> str:
    """The actor recorded in the registry's audit: this DAG run."""
    ti = context["ti"]
    return f"airflow:{ti.dag_id}/{ti.run_id}"


def dag_run_env(context) -> dict[str, str]:
    """RECPIPE_DAG_ID / RECPIPE_DAG_RUN_ID for every stage process (register tags the version with them)."""
    ti = context["ti"]
    return {C.DAG_ID_ENV: ti.dag_id, C.DAG_RUN_ID_ENV: ti.run_id}


def fail_without_retry(err: Exception):
    """An error a person must fix (bad input, refused registry move): retrying cannot help."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(err))


def alert_on_failure(context) -> None:
    """DAG-level on_failure_callback: one alert naming the failed task and where to look.

    A stage failure was already alerted by finish_pipeline_run (which knows the stage): no second alert.
    """
    from pipeline_tasks.ops import alerts

    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    root = Path(PROJECT_DIR)  # not project_dir(context): a refused conf must still be alerted
    if alerts.recorded(root, "run_failed", getattr(dag_run, "run_id", None)):
        return
    alerts.record(
        "run_failed",
        f"recpipe DAG run {getattr(dag_run, 'run_id', '?')} failed"
        f"{f' at {ti.task_id}' if ti else ''}: see that task's log "
        f"(validation failures: Data Docs in {root}/reports/gx/)",
        root,
        dag_id=getattr(dag_run, "dag_id", None),
        run_id=getattr(dag_run, "run_id", None),
    )


@task
def nightly_params(**context) -> list[str]:
    """This night's run params: params.yaml + the night the logical date names (ops/run_params.py)."""
    from pipeline_tasks.ops.run_params import nightly_overrides, write_run_params

    root = project_dir(context)
    # A run triggered by hand in Airflow 3 may have no logical date: its night is when it runs.
    night = (context.get("logical_date") or context["dag_run"].run_after).date()
    overrides = nightly_overrides(root, night)
    write_run_params(root, overrides)
    print(f"night {night}: run params = params.yaml + {overrides}")
    return overrides


@task
def prepare_data(**context) -> dict:
    """recpipe_manual's data actions, before anything else: a data version to retrain on, or a backfill."""
    from pipeline_tasks.core.errors import RecpipeError
    from pipeline_tasks.ops.pipeline import backfill
    from pipeline_tasks.ops.run_versions import restore_data_version

    root, form = project_dir(context), context["params"]
    rev = (form.get("data_rev") or "").strip()
    start, end = form.get("backfill_start"), form.get("backfill_end")
    try:
        if rev and (start or end):
            raise fail_without_retry(ValueError("choose either a data version or a backfill range, not both"))
        if rev:
            versions = restore_data_version(root, rev)
            print(f"data version of {rev} restored: {versions}; ingest is skipped in this run")
            return {"data_rev": rev, "versions": versions}
        if start or end:
            overrides = context["ti"].xcom_pull(task_ids="apply_form") or []
            done = backfill(root, start, end, extra_env=dag_run_env(context), overrides=overrides)
            print(f"backfilled increments, in order: {', '.join(done)}")
            return {"backfill": done}
    except RecpipeError as err:
        raise fail_without_retry(err) from err
    return {}


@task.short_circuit
def anything_to_do(**context) -> bool:
    """Skip the whole run in seconds when DVC sees no new data and no param change."""
    from pipeline_tasks.ops.pipeline import stale_stages

    stale = stale_stages(project_dir(context))
    print(f"stages with changed inputs: {stale or 'none — nothing to do'}")
    return bool(stale)


@task
def start_pipeline_run(**context) -> str:
    """Open the MLflow parent run that every stage of this DAG run nests under."""
    from pipeline_tasks.ops.pipeline import start_parent_run
    from pipeline_tasks.ops.run_params import load_run_params

    root = project_dir(context)
    ti = context["ti"]
    return start_parent_run(
        load_run_params(root),
        root,
        run_name=f"airflow {ti.run_id}",
        tags={"airflow.dag_id": ti.dag_id, "airflow.run_id": ti.run_id},
    )


def skipped_stage(stage: str, root: Path, form: dict) -> str | None:
    """Why an operator action skips this stage in this run (None: run it)."""
    if stage == "tune" and form.get("skip_search"):
        if (root / "metrics/tune/best_params.json").exists():
            return "search skipped: train reuses the last metrics/tune/best_params.json"
        print("skip_search: no metrics/tune/best_params.json from an earlier run, so the search runs")
    if stage == "ingest" and (form.get("data_rev") or "").strip():
        return f"ingest skipped: this run trains on the data version of {form['data_rev'].strip()}"
    return None


@task
def run_stage(stage: str, parent_run_id: str, **context) -> str:
    """`dvc repro --single-item <stage>`: a no-op when its inputs did not change."""
    from pipeline_tasks.core.errors import DataValidationError, RecpipeError, TransientError
    from pipeline_tasks.ops.pipeline import repro_stage

    root = project_dir(context)
    why_skipped = skipped_stage(stage, root, context["params"])
    if why_skipped:
        print(why_skipped)
        return stage
    code, stage_code = repro_stage(root, stage, parent_run_id=parent_run_id, extra_env=dag_run_env(context))
    if code == 0:
        return stage
    message = f"stage {stage} failed (exit code {stage_code if stage_code is not None else code}); its message is above"
    if stage in VALIDATION_STAGES or stage_code == DataValidationError.exit_code:
        raise fail_without_retry(RuntimeError(f"{message}. Bad data: not retried. Data Docs: {root}/reports/gx/"))
    if stage_code == RecpipeError.exit_code:
        raise fail_without_retry(RuntimeError(f"{message}. Bad input or params: not retried; fix and clear the task"))
    if stage_code == TransientError.exit_code:
        raise RuntimeError(f"{message}. A service it needs (MLflow, a database) did not answer: retried with backoff")
    raise RuntimeError(f"{message}; retried with backoff")


@task(retries=3, retry_exponential_backoff=True)
def publish_run(parent_run_id: str, **context) -> dict:
    """Version the finished run: `dvc push`, and its dvc.lock on the runs branch and in MLflow."""
    from mlflow import MlflowClient

    from pipeline_tasks.core import io, tracking
    from pipeline_tasks.ops.run_params import load_run_params
    from pipeline_tasks.ops.run_versions import data_versions, dvc_push, keep_lock_on_branch

    root = project_dir(context)
    params = load_run_params(root)
    cfg = params["airflow"]
    result: dict = {"pushed": dvc_push(root) if cfg["dvc_push"] else "off (airflow.dvc_push: false)"}
    register = io.read_json(root / "metrics/register.json") if (root / "metrics/register.json").exists() else {}
    ti = context["ti"]
    message = (
        f"recpipe run {ti.dag_id}/{ti.run_id}: {register.get('model_name', '?')} "
        f"v{register.get('version', '?')} aliases {register.get('aliases', [])}\n\n"
        + "\n".join(f"{path}: {md5}" for path, md5 in sorted(data_versions(root).items()))
    )
    result["runs_commit"] = keep_lock_on_branch(root, cfg["runs_branch"], message) if cfg["runs_branch"] else None
    tracking.setup(params, root)
    client = MlflowClient()
    client.log_artifact(parent_run_id, str(root / "dvc.lock"), artifact_path="dvc")
    client.set_tag(parent_run_id, "recpipe.runs_commit", result["runs_commit"] or "")
    client.set_tag(parent_run_id, "recpipe.dvc_push", result["pushed"][:250])
    print(f"run versioned: {result}")
    return result


def wrote_this_run(path: Path, context) -> bool:
    """Did a stage of this DAG run (re)write `path`? A DVC no-op leaves an older file in place."""
    started = getattr(context.get("dag_run"), "start_date", None)
    return path.exists() and (started is None or path.stat().st_mtime >= started.timestamp() - 1)


@task(trigger_rule="all_done")
def finish_pipeline_run(parent_run_id: str, **context) -> str:
    """Close the parent run (FAILED if a stage failed), alert when not promoted, fail the DAG run if needed."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline_tasks.ops import alerts
    from pipeline_tasks.ops.pipeline import end_parent_run, summary
    from pipeline_tasks.ops.run_params import load_run_params

    root = project_dir(context)
    params = load_run_params(root)
    finished = set(context["ti"].xcom_pull(task_ids=list(STAGES)) or [])
    not_done = [stage for stage in STAGES if stage not in finished]
    published = bool(context["ti"].xcom_pull(task_ids="publish_run"))
    end_parent_run(params, root, parent_run_id, ok=not not_done and published)
    if not_done:
        stage, ti = not_done[0], context["ti"]
        message = (
            f"pipeline stopped at {stage}; not run: {', '.join(not_done[1:]) or '-'}. No registry alias "
            f"moved in this run. See the {stage} task's log"
            + (f"; Data Docs in {root}/reports/gx/" if stage in VALIDATION_STAGES else "")
            + ". Fix the cause and clear that task: the stages before it will not recompute."
        )
        alerts.record(
            "run_failed",
            f"recpipe DAG run {ti.run_id} failed: {message}",
            root,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            stage=stage,
        )
        raise AirflowFailException(message)
    if not published:
        raise AirflowFailException(
            "the model was registered but versioning the run (dvc push, runs branch) failed: "
            "see the publish_run log, fix the cause and clear that task"
        )
    found = alerts.not_promoted(root)
    if found and wrote_this_run(root / "metrics/register.json", context):
        alerts.record(
            "not_promoted",
            f"trained but not promoted: {found['reason']}",
            root,
            dag_id=context["ti"].dag_id,
            run_id=context["ti"].run_id,
            **found,
        )
    share = context["params"].get("ab_share")
    if share is not None:
        print(f"A/B config: {apply_registry_action(root, 'set_ab_share', share=share, who=who(context))}")
    report = summary(params, root)
    print(report)
    return report


def pipeline(first=None) -> None:
    """check → start → ingest → ... → register → publish → finish, after `first` if given."""
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
    publish = publish_run(parent)
    previous >> publish >> finish_pipeline_run(parent)


# --- recpipe_promote -------------------------------------------------------------------------


def apply_registry_action(
    root: Path,
    action: str,
    version: str | int | None = None,
    reason: str | None = None,
    share: float | None = None,
    who: str | None = None,
) -> dict:
    """One audited registry move (pipeline_tasks.serving.registry does the move and the audit)."""
    from pipeline_tasks.ops.pipeline import load_project_params
    from pipeline_tasks.serving import registry

    params = load_project_params(root)
    client, name = registry.client_for(params, root), params["register"]["model_name"]
    reason = (reason or "").strip() or None
    if action == "promote":
        if version in (None, ""):
            raise registry.RegistryError(
                "promote needs a version: fill in 'Model version' (see `recpipe history` or the MLflow UI)"
            )
        return registry.promote(client, name, str(version), reason=reason, who=who)
    if action == "rollback":
        return registry.rollback(client, name, reason=reason, who=who)
    if action == "set_ab_share":
        if share is None:
            raise registry.RegistryError("set_ab_share needs 'A/B share' (the challenger's share of users, 0..1)")
        from pipeline_tasks.serving import ab_report

        stored = registry.ab_config(client, name).get("guardrails")
        return registry.set_ab_config(  # planned from params, as `recpipe ab` without --planned-exposures
            client,
            name,
            float(share),
            who=who,
            reason=reason,
            guardrails=None if stored else params["register"]["ab_guardrails"],
            planned_exposures=ab_report.planned_exposures(params["register"]),
            plan_basis=ab_report.plan_basis(params["register"]),
        )
    raise registry.RegistryError(f"unknown action {action!r}; choose one of {', '.join(REGISTRY_ACTIONS)}")


@task
def registry_action(**context) -> dict:
    """recpipe_promote's one task: promote a version, roll back, or set the A/B share."""
    from pipeline_tasks.core.errors import RecpipeError
    from pipeline_tasks.ops.pipeline import load_project_params
    from pipeline_tasks.serving import registry

    form, root = context["params"], project_dir(context)
    try:
        event = apply_registry_action(
            root,
            form["action"],
            version=form.get("version"),
            reason=form.get("reason"),
            share=form.get("share"),
            who=who(context),
        )
    except RecpipeError as err:  # refused (e.g. a forced promotion without a reason): a person must act
        raise fail_without_retry(err) from err
    params = load_project_params(root)
    client, name = registry.client_for(params, root), params["register"]["model_name"]
    print(f"{form['action']}: {event}")
    print(registry.format_history(registry.history(client, name), registry.aliases(client, name)))
    return event

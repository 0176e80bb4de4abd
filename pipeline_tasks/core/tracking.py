"""MLflow glue: one parent run per pipeline run, one nested run per stage.

`recpipe run` (and the Airflow DAG) open the parent run and export its id in
RECPIPE_PARENT_RUN_ID; each stage process nests its own run under it. A stage run
by hand gets a top-level run of its own. Logging helpers are no-ops when no run is
active, so tests can call a stage's `run()` without MLflow.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.params import flatten

# mlflow.set_tracking_uri() also writes MLFLOW_TRACKING_URI into os.environ (MLflow 3). Remember
# what we set, so a second store in the same process (tests, a server switching projects) is not
# mistaken for the user's override.
_uri_we_set: str | None = None


def user_tracking_uri() -> str | None:
    """MLFLOW_TRACKING_URI as the user set it (None when it only echoes our own set_tracking_uri)."""
    value = os.environ.get(C.TRACKING_URI_ENV) or None
    return None if value is not None and value == _uri_we_set else value


def tracking_uri(params: dict, root: str | Path = ".") -> str:
    """MLFLOW_TRACKING_URI wins over params; a relative SQLite path is made absolute."""
    uri = user_tracking_uri() or params["mlflow"]["tracking_uri"]
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        db = (Path(root) / uri[len(prefix) :]).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = prefix + str(db)
    return uri


def setup(params: dict, root: str | Path = ".") -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id.

    The experiment's artifact location is fixed as an absolute path when it is created,
    so loading a model later does not depend on the current directory.
    """
    import mlflow

    global _uri_we_set
    from_user = user_tracking_uri()
    uri = tracking_uri(params, root)
    mlflow.set_tracking_uri(uri)
    if from_user is None:
        _uri_we_set = uri  # our own choice now sits in the environment too
    name = params["mlflow"]["experiment"]
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifacts = (Path(root) / params["mlflow"]["artifact_root"]).resolve()
        uri = tracking_uri(params, root)
        location = artifacts.as_uri() if uri.startswith("sqlite:") else None
        experiment_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@contextlib.contextmanager
def stage_run(stage: str, params: dict, root: str | Path = ".") -> Iterator[Any]:
    """An MLflow run for one stage, nested under the pipeline's parent run if there is one."""
    import mlflow

    setup(params, root)
    parent = os.environ.get(C.PARENT_RUN_ENV) or None
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags={"recpipe.stage": stage}) as run:
        log_params(params)
        yield run


@contextlib.contextmanager
def child_run(name: str, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """A nested run under the active run (e.g. one Optuna trial); nothing if none is active."""
    import mlflow

    if mlflow.active_run() is None:
        yield None
        return
    with mlflow.start_run(run_name=name, nested=True, tags=tags or {}) as run:
        yield run


def active() -> bool:
    import mlflow

    return mlflow.active_run() is not None


def metric_key(name: str) -> str:
    """MLflow metric names allow only [A-Za-z0-9_-./ :]: 'ndcg@10' becomes 'ndcg_at_10'."""
    return re.sub(r"[^A-Za-z0-9_\-./ :]", "_", name.replace("@", "_at_"))


def log_params(params: dict) -> None:
    import mlflow

    if not active():
        return
    flat = {k: str(v)[:500] for k, v in flatten(params).items()}
    mlflow.log_params(flat)


def log_metrics(metrics: dict, step: int | None = None, prefix: str = "") -> None:
    """Log every finite number in a (nested) metrics dict."""
    import mlflow

    if not active():
        return
    numbers = {
        metric_key(prefix + k): float(v)
        for k, v in flatten(metrics).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
    }
    if numbers:
        mlflow.log_metrics(numbers, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    if active() and Path(path).exists():
        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

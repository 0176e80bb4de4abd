"""Hyperparameter search with Optuna: the study over `tune.search_space` (model/search_space.py), its
storage, pruner and sampler, the objective (one `fit` per trial, pruned on validation NDCG@10
after each epoch) and the study's summary and plots. The tune stage runs it.

A study is scoped to what makes its trials comparable: the data they are scored on (the split's
train and valid interactions and its catalogue) and the search itself (space, epochs per trial,
the train params it does not search, the seed). Its name is `tune.study_name` + that scope's
hash, so a re-run on the same data adds trials to the same study (several workers share it),
while a new night's data or a new space opens a new study: its best is its own, never a trial
scored on older data. A new study starts with the previous study's best params as its first
trial (a warm start) and the run's configured values as another, each when it fits the space.

Searching is not needed every night: `tune.every_n_nights` (1 = every run) lets the nights in
between reuse the last search's best params (search_schedule.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import socket
import time
import warnings
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import params as P
from pipeline_tasks.core import tracking
from pipeline_tasks.core.db_lock import exclusive
from pipeline_tasks.core.errors import ParamsError, PipelineError
from pipeline_tasks.data import dataset
from pipeline_tasks.model.fitting import fit
from pipeline_tasks.model.search_space import configured_values, fits, suggest_params
from pipeline_tasks.model.trainer import NOT_TRAINING_KEYS

log = logging.getLogger(__name__)

OBJECTIVE = "valid_ndcg@10"  # what fit returns and on_epoch receives; maximised


def trial_params(params: dict, suggested: dict[str, Any], number: int) -> dict:
    """The params one trial trains with: the suggestions, the short epoch budget, its own seed."""
    trial = copy.deepcopy(params)
    for name, value in suggested.items():
        P.set_dotted(trial, name, value)  # type-checked against DEFAULTS like a --set override
    trial["train"]["epochs"] = params["tune"]["epochs"]
    trial["train"]["use_best_params"] = False  # a trial trains the suggestion, not the last best
    # Deterministic but distinct per trial, so a re-run of the study reproduces each trial.
    trial["seed"] = int(params["seed"]) + number
    return trial


# --- the study ----------------------------------------------------------------------------


def storage_url(params: dict, root: Path) -> str:
    """tune.storage, or SQLite under optuna/; refuses to share the MLflow database."""
    url = params["tune"]["storage"] or f"sqlite:///{(root / C.OPTUNA_DIR / 'study.db').resolve()}"
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    if url == tracking.tracking_uri(params, root):
        raise ParamsError(
            f"tune.storage {url} is the MLflow tracking database: both keep an alembic_version "
            "table and break each other; set tune.storage to another URL or leave it empty"
        )
    return url


def make_pruner(params: dict) -> optuna.pruners.BasePruner:
    tune = params["tune"]
    kind = tune["pruner"]
    if kind == "median":
        # Epochs are reported 1-based: warm-up epochs 1..w are never pruned.
        return optuna.pruners.MedianPruner(
            n_startup_trials=tune["pruner_startup_trials"], n_warmup_steps=tune["pruner_warmup_epochs"] + 1
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tune["epochs"])
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ParamsError(f"tune.pruner is {kind!r}; use median, hyperband or none")


def study_scope(params: dict, root: Path) -> str:
    """12 hex digits naming what the study's trials have in common (see the module docstring)."""
    split = dataset.load_split(root)
    digest = hashlib.sha256()
    for part in (split.train, split.valid):
        for array in (part.users, part.items, part.timestamps):
            digest.update(np.ascontiguousarray(array).tobytes())
    space = params["tune"]["search_space"]
    fixed = {k: v for k, v in params["train"].items() if f"train.{k}" not in space and k not in NOT_TRAINING_KEYS}
    search = [split.item_ids, split.user_ids, space, params["tune"]["epochs"], fixed, params["seed"]]
    digest.update(json.dumps(search, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:12]


def study_name(params: dict, root: Path) -> str:
    return f"{params['tune']['study_name']}.{study_scope(params, root)}"


def open_study(params: dict, root: Path) -> optuna.Study:
    """This data's and search's study: created (warm-started) or loaded, so a re-run continues it."""
    url = storage_url(params, root)
    storage = open_storage(url)
    name = study_name(params, root)
    # Workers opening a new study together: one queues its first trials, the others then see them.
    with exclusive(url, f"tune-first-trials-{name}"):
        existing = existing_trials(storage, name)
        sampler = optuna.samplers.TPESampler(seed=sampler_seed(params, url, existing))
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction="maximize",
            sampler=sampler,
            pruner=make_pruner(params),
            load_if_exists=True,
        )
        if not existing:
            space = params["tune"]["search_space"]
            warm_start(study, previous_study(storage, params, exclude=name), space)
            enqueue_configured(study, space, params)
    return study


def previous_study(storage: optuna.storages.BaseStorage, params: dict, exclude: str = "") -> optuna.Study | None:
    """The latest other study of this pipeline (same tune.study_name) with a complete trial."""
    prefix = f"{params['tune']['study_name']}."
    summaries = [
        s
        for s in optuna.get_all_study_summaries(storage, include_best_trial=True)
        if s.study_name.startswith(prefix) and s.study_name != exclude and s.best_trial is not None
    ]
    if not summaries:
        return None
    latest = max(summaries, key=lambda s: s.datetime_start or datetime.min)  # set: each has a trial
    return optuna.load_study(study_name=latest.study_name, storage=storage)


def warm_start(study: optuna.Study, previous: optuna.Study | None, space: dict[str, dict]) -> None:
    """Queue the previous study's best params as this study's first trial, if they fit the space."""
    if previous is None:
        return
    best = previous.best_params
    if set(best) != set(space) or not all(fits(space[key], value) for key, value in best.items()):
        log.info("tune: %s's best params do not fit the current search space: no warm start", previous.study_name)
        return
    study.enqueue_trial(best, user_attrs={"warm_start_from": previous.study_name})
    log.info("tune: warm start from %s's best %s", previous.study_name, best)


def enqueue_configured(study: optuna.Study, space: dict[str, dict], params: dict) -> None:
    """Queue the run's own values of the searched keys (params.yaml + overrides) as a trial.

    A search then picks other values only when they beat the configured ones on the same budget:
    on Amazon Office a first-night search of 3 random trials chose temperature 0.27 and cut the
    trained model's test NDCG@10 from 0.084 (the configured values) to 0.051."""
    values = configured_values(space, params)
    queued = [t.params for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))]
    if values is None or values in queued:
        return
    study.enqueue_trial(values, user_attrs={"configured": True})
    log.info("tune: the configured values %s are a trial of this search", values)


def open_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at url, its tables created on first use.

    Workers that start together race to create those tables (on PostgreSQL the loser gets a
    duplicate-key error on Optuna's enum type); retrying finds them created.
    """
    import sqlalchemy.exc

    for attempt in range(1, attempts + 1):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.DBAPIError as err:
            if attempt == attempts:
                raise PipelineError(
                    f"cannot open the Optuna storage {redact(url)} ({type(err.orig).__name__}: "
                    f"{str(err.orig).strip()[:200]}); check tune.storage and that the database "
                    "server is running"
                ) from err
            log.info("tune: storage not ready (%s), retry %d/%d", type(err.orig).__name__, attempt, attempts - 1)
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def sampler_seed(params: dict, url: str, existing: int) -> int:
    """tune.sampler_seed + the study's trial count, + a hash of host:pid on a shared (non-SQLite) storage.

    The trial count keeps a continued study reproducible without replaying the first run's
    random start-up suggestions. Workers that open a shared study at the same moment see the
    same count, so with the same seed they would draw identical start-up trials: the worker's
    name separates them (host too: containers often share pids; a parallel study is not
    reproducible trial by trial anyway).
    """
    seed = int(params["tune"]["sampler_seed"]) + existing
    return seed if url.startswith("sqlite") else (seed + zlib.crc32(worker_name().encode())) % 2**32


def worker_name() -> str:
    """host:pid, stored on every trial so a shared study shows who ran what."""
    return f"{socket.gethostname()}:{os.getpid()}"


def existing_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    try:
        return len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:  # no such study yet
        return 0


def epoch_reporter(trial: optuna.Trial) -> Callable[[int, float], None]:
    """fit's on_epoch: report to Optuna, stop the trial if the pruner says so.

    (fit itself logs the per-epoch curve into the active MLflow run: the trial's child run.)
    """

    def on_epoch(epoch: int, value: float) -> None:
        trial.report(value, step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"trial {trial.number} pruned after epoch {epoch} ({OBJECTIVE}={value:.4f})")

    return on_epoch


def make_objective(params: dict, root: Path, space: dict[str, dict]) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        suggested = suggest_params(trial, space, params)
        trial.set_user_attr("worker", worker_name())
        with tracking.child_run(f"trial-{trial.number}", tags={"optuna.trial": str(trial.number)}):
            tracking.log_params(suggested)
            try:
                result = fit(trial_params(params, suggested, trial.number), root, on_epoch=epoch_reporter(trial))
            except optuna.TrialPruned:
                set_tag("optuna.state", "PRUNED")
                pruned = True
            else:
                pruned = False
                value = float(result[OBJECTIVE])
                tracking.log_metrics({"value": value})
                set_tag("optuna.state", "COMPLETE")
        if pruned:  # raised outside the MLflow run, so it ends FINISHED (tagged), not FAILED
            raise optuna.TrialPruned()
        return value

    return objective


def set_tag(key: str, value: str) -> None:
    if tracking.active():
        import mlflow

        mlflow.set_tag(key, value)


# --- results ---------------------------------------------------------------------------------


def summarise(study: optuna.Study) -> dict[str, Any]:
    states = [t.state for t in study.trials]
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    if not complete:
        raise PipelineError(
            f"study '{study.study_name}' has no complete trial ({len(states)} trials, "
            f"{states.count(optuna.trial.TrialState.PRUNED)} pruned): raise tune.n_trials or "
            "tune.timeout_s, or use tune.pruner=none"
        )
    return {
        "study": study.study_name,
        "n_trials": len(states),
        "n_complete": complete,
        "n_pruned": states.count(optuna.trial.TrialState.PRUNED),
        "best_value": study.best_value,
        "best_params": dict(study.best_params),
    }


def save_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optuna's matplotlib plots as PNG, and the trial table as HTML (plotly is not installed)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on a scheduler worker
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out_dir.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "optimization_history": ovm.plot_optimization_history,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
    }
    if len(complete) >= 2:  # importances need a spread of finished trials
        plots["param_importances"] = ovm.plot_param_importances
    written = []
    with warnings.catch_warnings():
        # These plots are marked experimental; the warning says nothing an operator can act on.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in plots.items():
            ax = plot(study)
            figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            path = out_dir / f"{name}.png"
            figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(path)
    table = out_dir / "trials.html"
    table.write_text(study.trials_dataframe().to_html(index=False), encoding="utf-8")
    written.append(table)
    return written

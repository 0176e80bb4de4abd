"""Stage `tune`: an Optuna study over `tune.search_space`, one MLflow child run per trial.

    python -m pipeline_tasks.tune --root DIR

Each trial copies params, overrides the searched keys (dotted names, e.g. `train.lr`) and
`train.epochs` (= `tune.epochs`), and calls `fit`, which reports the validation
NDCG@10 after every epoch; the pruner (median | hyperband | none) may stop a trial there.
The study lives in its own RDB storage (default SQLite `optuna/study.db`, never the MLflow
database) and is scoped to the data version and the search: a re-run on the same data adds
trials to the same study, and several workers can share a PostgreSQL one. With
`tune.every_n_nights` > 1 the nights between searches reuse the last search's best. Writes
`metrics/tune/best_params.json` (dotted keys -> values, read by `train` when
`train.use_best_params`) and Optuna plots under `reports/tune/`. The search itself is
pipeline_tasks/model/tuning.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io, tracking
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.core.stage_cli import stage_main
from pipeline_tasks.model.search_schedule import record_night, schedule_path, search_due
from pipeline_tasks.model.search_space import check_space
from pipeline_tasks.model.tuning import (
    OBJECTIVE,
    make_objective,
    open_storage,
    open_study,
    redact,
    save_plots,
    storage_url,
    summarise,
)

log = logging.getLogger(__name__)

REPORTS = Path(C.REPORTS_DIR) / "tune"


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    space = check_space(params)
    due, why = search_due(params, root)
    if due:
        study = open_study(params, root)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(
            make_objective(params, root, space),
            n_trials=params["tune"]["n_trials"],
            timeout=params["tune"]["timeout_s"] or None,
            gc_after_trial=True,
            show_progress_bar=True,
        )
    else:
        study = last_search(params, root)
    result = {**summarise(study), "searched": due, "why": why}
    record_night(root, study.study_name if due else None)
    io.write_json(result["best_params"], root / C.BEST_PARAMS_FILE)
    for path in save_plots(study, root / REPORTS) if due else []:
        tracking.log_artifact(path, artifact_path="tune")
    tracking.log_artifact(root / C.BEST_PARAMS_FILE, artifact_path="tune")
    log.info(
        "tune (%s): study %s, %d trials (%d pruned), best %s=%.4f with %s",
        why,
        result["study"],
        result["n_trials"],
        result["n_pruned"],
        OBJECTIVE,
        result["best_value"],
        result["best_params"],
    )
    return result


def last_search(params: dict, root: Path) -> optuna.Study:
    """The study of the last search (for the nights between searches)."""
    state = io.read_json(schedule_path(root))
    storage = open_storage(storage_url(params, root))
    try:
        return optuna.load_study(study_name=state["last_study"], storage=storage)
    except KeyError as err:
        raise PipelineError(
            f"the last search's study {state['last_study']!r} is not in {redact(storage_url(params, root))}: "
            f"delete {schedule_path(root)} to search again tonight"
        ) from err


def main(argv: list[str] | None = None) -> int:
    return stage_main("tune", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""When to search: `tune.every_n_nights` (1 = every run) lets the nights between searches reuse the
last search's best params. The count lives beside the default study database (optuna/schedule.json),
outside DVC's outputs, which DVC deletes before a stage re-runs."""

from __future__ import annotations

from pathlib import Path

import optuna

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.model.tuning import open_storage, redact, storage_url


def schedule_path(root: Path) -> Path:
    """Beside the default study database, outside DVC's outputs (DVC deletes those before a re-run)."""
    return root / C.OPTUNA_DIR / "schedule.json"


def search_due(params: dict, root: Path) -> tuple[bool, str]:
    """(search tonight?, why). The first run, and every `tune.every_n_nights`-th after the last search."""
    every = params["tune"]["every_n_nights"]
    path = schedule_path(root)
    state = io.read_json(path) if path.exists() else {}
    if not state.get("last_study"):
        return True, "no earlier search"
    nights = int(state.get("nights_since_search", 0)) + 1
    if nights >= every:
        return True, f"night {nights} since the last search (tune.every_n_nights={every})"
    return False, f"night {nights} of {every} since the last search ({state['last_study']}): its best params reused"


def record_night(root: Path, searched_study: str | None) -> None:
    """Count this night; a search resets the count and becomes the study later nights reuse."""
    path = schedule_path(root)
    state = io.read_json(path) if path.exists() else {}
    if searched_study:
        state = {"last_study": searched_study, "nights_since_search": 0}
    else:
        state["nights_since_search"] = int(state.get("nights_since_search", 0)) + 1
    io.write_json(state, path)


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

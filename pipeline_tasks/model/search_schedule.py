"""When to search: `tune.every_n_nights` (1 = every run) lets the nights between searches reuse the
last search's best params, and (compress.between_searches: chosen) the compression variant the last
search night chose. The state lives beside the default study database (optuna/schedule.json),
outside DVC's outputs, which DVC deletes before a stage re-runs."""

from __future__ import annotations

from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io


def schedule_path(root: Path) -> Path:
    """Beside the default study database, outside DVC's outputs (DVC deletes those before a re-run)."""
    return root / C.OPTUNA_DIR / "schedule.json"


def load_state(root: Path) -> dict:
    """{last_study, nights_since_search, variant}; empty before the first night."""
    path = schedule_path(root)
    return io.read_json(path) if path.exists() else {}


def search_due(params: dict, root: Path) -> tuple[bool, str]:
    """(search tonight?, why). The first run, and every `tune.every_n_nights`-th after the last search."""
    every = params["tune"]["every_n_nights"]
    state = load_state(root)
    if not state.get("last_study"):
        return True, "no earlier search"
    nights = int(state.get("nights_since_search", 0)) + 1
    if nights >= every:
        return True, f"night {nights} since the last search (tune.every_n_nights={every})"
    return False, f"night {nights} of {every} since the last search ({state['last_study']}): its best params reused"


def record_night(root: Path, searched_study: str | None) -> None:
    """Count this night; a search resets the count and becomes the study later nights reuse."""
    state = load_state(root)
    if searched_study:
        state = {"last_study": searched_study, "nights_since_search": 0, "variant": state.get("variant")}
    else:
        state["nights_since_search"] = int(state.get("nights_since_search", 0)) + 1
    io.write_json(state, schedule_path(root))


def searched_tonight(root: Path) -> bool:
    """Did this night's tune stage search (or has no night been recorded yet)?"""
    return int(load_state(root).get("nights_since_search", 0)) == 0


def variant_between_searches(root: Path) -> str | None:
    """The compression variant the last search night chose (None: no night chose one yet)."""
    return load_state(root).get("variant")


def record_variant(root: Path, variant: str) -> None:
    """A search night's compression choice, measured again on the nights until the next search."""
    io.write_json({**load_state(root), "variant": variant}, schedule_path(root))

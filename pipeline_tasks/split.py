"""Stage `split`: leave-one-out by time, the evaluation protocol every model shares.

Each user's interactions are ordered by timestamp; events stamped with the same second keep
their order in the source (`source_row`, from ingest), then item id, so ties resolve the same
way on every run. The last one goes to test, the one before to valid, the rest to train.
Users with fewer than `split.min_user_interactions` interactions have too little history
to be judged: all their rows go to train (they still help the models learn).

Reads data/clean/{interactions,items,users}; writes data/split/{train,valid,test,items,users}.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline_tasks import constants as C
from pipeline_tasks import io
from pipeline_tasks.cli import stage_main
from pipeline_tasks.errors import ParamsError, PipelineError

log = logging.getLogger(__name__)


def time_order(interactions: pd.DataFrame) -> list[str]:
    """Sort key of a user's history: time, then source position (when ingest recorded it), then item."""
    position = [C.SOURCE_ROW] if C.SOURCE_ROW in interactions else []
    return [C.USER_ID, C.TIMESTAMP, *position, C.ITEM_ID]


def assign_splits(interactions: pd.DataFrame, min_user_interactions: int) -> pd.Series:
    """Per row: 'train', 'valid' or 'test' (index aligned with `interactions`)."""
    ordered = interactions.sort_values(time_order(interactions), kind="stable")
    grouped = ordered.groupby(C.USER_ID, sort=False)
    from_end = grouped.cumcount(ascending=False)  # 0 = the user's last interaction
    long_enough = grouped[C.ITEM_ID].transform("size") >= min_user_interactions
    split = pd.Series("train", index=ordered.index)
    split[long_enough & (from_end == 0)] = "test"
    split[long_enough & (from_end == 1)] = "valid"
    return split.reindex(interactions.index)


def check_inputs(interactions: pd.DataFrame, items: pd.DataFrame) -> None:
    missing = [c for c in (C.USER_ID, C.ITEM_ID, C.TIMESTAMP) if c not in interactions]
    if missing:
        raise PipelineError(f"data/clean/interactions lacks columns {missing}: re-run the clean stage")
    if interactions[[C.USER_ID, C.ITEM_ID, C.TIMESTAMP]].isna().any().any():
        raise PipelineError("data/clean/interactions holds null ids or timestamps: re-run the clean stage "
                            "(its rules quarantine such rows)")
    orphans = ~interactions[C.ITEM_ID].isin(items[C.ITEM_ID])
    if orphans.any():
        raise PipelineError(f"{int(orphans.sum())} clean interactions name items missing from data/clean/items: "
                            "re-run the clean stage (clean.orphan_policy drops or adds them)")


def split_metrics(parts: dict[str, pd.DataFrame], items: pd.DataFrame) -> dict:
    train_items = set(parts["train"][C.ITEM_ID])
    cold = parts["test"].loc[~parts["test"][C.ITEM_ID].isin(train_items), C.ITEM_ID]
    return {
        "users": int(pd.concat([p[C.USER_ID] for p in parts.values()]).nunique()),
        "items": int(len(items)),
        "train_rows": int(len(parts["train"])),
        "valid_rows": int(len(parts["valid"])),
        "test_rows": int(len(parts["test"])),
        # Test targets that no training interaction names: only a content-aware model can rank them.
        "cold_start_test_items": int(cold.nunique()),
        "cold_start_test_rows": int(len(cold)),
    }


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    min_rows = params["split"]["min_user_interactions"]
    if min_rows < 1:
        raise ParamsError(f"split.min_user_interactions must be >= 1, got {min_rows}")
    clean = root / C.DATA_CLEAN
    interactions = io.read_table(clean / "interactions")
    items = io.read_table(clean / "items").drop_duplicates(C.ITEM_ID)
    users = io.read_table(clean / "users")
    check_inputs(interactions, items)

    which = assign_splits(interactions, min_rows)
    parts = {}
    for name in C.SPLITS:
        part = interactions[which == name]
        parts[name] = part.sort_values(time_order(part), kind="stable").reset_index(drop=True)

    out = root / C.DATA_SPLIT
    for name, part in parts.items():
        io.write_table(part, out / name)
    io.write_table(items.sort_values(C.ITEM_ID, kind="stable").reset_index(drop=True), out / "items")
    io.write_table(users, out / "users")
    metrics = split_metrics(parts, items)
    log.info("split: %s", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main("split", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

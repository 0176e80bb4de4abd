"""Leave-one-out by time and the cold-start protocol (the split stage's docstring says how)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import ParamsError, PipelineError

log = logging.getLogger(__name__)

# Interactions of the cold-start items: kept out of every split so no model learns those items.
WITHHELD = "withheld"


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


def choose_cold_items(test: pd.DataFrame, share: float, seed: int) -> list[str]:
    """Test-target items, in a seeded random order, until their test rows reach `share` of the test rows.

    The last item drawn may overshoot the share (a popular target brings all its test rows).
    """
    if share <= 0 or test.empty:
        return []
    rows_per_item = test[C.ITEM_ID].astype(str).value_counts().sort_index()  # sorted: the seed alone decides
    order = np.random.default_rng(seed).permutation(len(rows_per_item))
    wanted, chosen, covered = share * len(test), [], 0
    for position in order:
        if covered >= wanted:
            break
        chosen.append(rows_per_item.index[position])
        covered += int(rows_per_item.iloc[position])
    return chosen


def withhold_cold_items(
    interactions: pd.DataFrame, which: pd.Series, share: float, seed: int
) -> tuple[pd.Series, list[str]]:
    """Mark every train/valid row of the chosen cold items 'withheld'; their test rows stay test."""
    chosen = choose_cold_items(interactions[which == "test"], share, seed)
    of_chosen = interactions[C.ITEM_ID].astype(str).isin(chosen)
    return which.mask(of_chosen & (which != "test"), WITHHELD), chosen


def check_params(cfg: dict) -> None:
    if cfg["min_user_interactions"] < 1:
        raise ParamsError(f"split.min_user_interactions must be >= 1, got {cfg['min_user_interactions']}")
    share = cfg["cold_start_share"]
    if not 0.0 <= share < 1.0:
        raise ParamsError(
            f"split.cold_start_share must be in [0, 1) (the share of test rows given a cold-start "
            f"target; 0 = none), got {share}"
        )


def check_inputs(interactions: pd.DataFrame, items: pd.DataFrame) -> None:
    missing = [c for c in (C.USER_ID, C.ITEM_ID, C.TIMESTAMP) if c not in interactions]
    if missing:
        raise PipelineError(f"data/clean/interactions lacks columns {missing}: re-run the clean stage")
    if interactions[[C.USER_ID, C.ITEM_ID, C.TIMESTAMP]].isna().any().any():
        raise PipelineError(
            "data/clean/interactions holds null ids or timestamps: re-run the clean stage "
            "(its rules quarantine such rows)"
        )
    orphans = ~interactions[C.ITEM_ID].isin(items[C.ITEM_ID])
    if orphans.any():
        raise PipelineError(
            f"{int(orphans.sum())} clean interactions name items missing from data/clean/items: "
            "re-run the clean stage (clean.orphan_policy drops or adds them)"
        )


def split_metrics(
    parts: dict[str, pd.DataFrame],
    items: pd.DataFrame,
    withheld: pd.DataFrame | None = None,
    cold_items: list[str] | None = None,
) -> dict:
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
        # The cold-start protocol's share: items made cold on purpose and their withheld interactions.
        "cold_start_items": len(cold_items or []),
        "withheld_rows": int(len(withheld)) if withheld is not None else 0,
    }

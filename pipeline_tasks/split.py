"""Stage `split`: leave-one-out by time, the evaluation protocol every model shares.

Each user's interactions are ordered by timestamp; events stamped with the same second keep
their order in the source (`source_row`, from ingest), then item id, so ties resolve the same
way on every run. The last one goes to test, the one before to valid, the rest to train.
Users with fewer than `split.min_user_interactions` interactions have too little history
to be judged: all their rows go to train (they still help the models learn).

Cold-start protocol (`split.cold_start_share` > 0): neither MovieLens nor most logs have test
targets that nobody interacted with before, so some are made. Test-target items are drawn in a
seeded random order until their test rows reach that share of the test rows; every train and
valid interaction of a drawn item is withheld (data/split/withheld, not read by any model), so
its test rows are targets no model has seen. The items stay in the catalogue: every model must
rank them, and only one that reads item text can. train + valid + test + withheld = the clean
interactions, row for row.

Reads data/clean/{interactions,items,users};
writes data/split/{train,valid,test,withheld,items,users}. The rules are pipeline_tasks/data/splitting.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core.stage_cli import stage_main
from pipeline_tasks.data.splitting import (
    WITHHELD,
    assign_splits,
    check_inputs,
    check_params,
    split_metrics,
    time_order,
    withhold_cold_items,
)

log = logging.getLogger(__name__)


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    cfg = params["split"]
    check_params(cfg)
    clean = root / C.DATA_CLEAN
    interactions = io.read_table(clean / "interactions")
    items = io.read_table(clean / "items").drop_duplicates(C.ITEM_ID)
    users = io.read_table(clean / "users")
    check_inputs(interactions, items)

    which = assign_splits(interactions, cfg["min_user_interactions"])
    which, cold_items = withhold_cold_items(interactions, which, cfg["cold_start_share"], params["seed"])
    parts = {}
    for name in (*C.SPLITS, WITHHELD):
        part = interactions[which == name]
        parts[name] = part.sort_values(time_order(part), kind="stable").reset_index(drop=True)
    withheld = parts.pop(WITHHELD)

    out = root / C.DATA_SPLIT
    for name, part in parts.items():
        io.write_table(part, out / name)
    io.write_table(withheld, out / WITHHELD)  # always written (empty by default): one layout for every run
    io.write_table(items.sort_values(C.ITEM_ID, kind="stable").reset_index(drop=True), out / "items")
    io.write_table(users, out / "users")
    metrics = split_metrics(parts, items, withheld, cold_items)
    log.info("split: %s", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main("split", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Stage `ingest`: read a source into data/raw/{interactions,items,users} (dirt and all).

Sources (`ingest.source`, no code change to switch):
  synthetic  the built-in generator (pipeline_tasks.data.synthetic); also writes
             data/ground_truth/injected, the dirty rows it injected on purpose.
  movielens  a MovieLens folder at `ingest.path`; the layout is detected from the files:
             100K (u.data, u.item, u.user), 1M / 10M (ratings.dat, movies.dat[, users.dat]),
             latest / 20M / 25M / 32M (ratings.csv, movies.csv[, tags.csv]).
  amazon     Amazon reviews JSON Lines (+ meta_*), 2018 or 2023 layout, plain or .gz (sources.py).
  generic    CSV / Parquet tables with a column map in `ingest.generic` (sources.py).

Ids become strings, timestamps UTC `datetime64[us]`, item text = title + genres/categories
(+ tags, descriptions). Malformed lines are kept (data/raw/malformed: file, line, text, error)
for the clean stage to quarantine, up to `ingest.max_bad_line_share`; beyond it, and for every
file a person must fix (readers.py), a DataSourceError names the file, the line and the fix.

Nightly increments: each load is a batch under data/batches/<batch>/. `ingest.batch: ''` is a
full load (it replaces every batch); `ingest.batch: 2026-07-01` adds (or replaces) that batch:
synthetic day of that date, or for a file source `<ingest.path>/2026-07-01/` when that folder
exists (the increments layout), else the files at `ingest.path`. An increment with no full load
before it loads the full history first (a scheduled pipeline can start on any night).
data/raw is then assembled from the base batch and every increment up to `ingest.cutoff`
(default: the batch just ingested), by hard links, so the rest of the pipeline reads one table.
Cleaning is not done here: that is the clean stage's job (and its quarantine's).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.core.stage_cli import stage_main
from pipeline_tasks.data.batches import (
    BASE_BATCH,
    BATCHES,
    MALFORMED,
    assemble_raw,
    batch_plan,
    table_rows,
    write_batch,
)
from pipeline_tasks.data.readers import RawTables
from pipeline_tasks.data.sources import read_source, standard_interactions

log = logging.getLogger(__name__)


def run(params: dict[str, Any], root: Path) -> dict[str, Any]:
    root = Path(root)
    cfg = params["ingest"]
    batch, day = batch_plan(cfg)
    cutoff = cfg["cutoff"] or batch
    if batch != BASE_BATCH and cutoff < batch:
        raise ParamsError(
            f"ingest.cutoff {cutoff!r} is before ingest.batch {batch!r}: the batch being ingested would "
            f"be left out of data/raw; set the cutoff to the batch or later (or leave it empty)"
        )
    if batch != BASE_BATCH and not (root / BATCHES / BASE_BATCH).exists():
        # A first night that is already an increment (a scheduled run on any date): the history first.
        log.info("ingest: %s is an increment and there is no full load yet: loading the full history first", batch)
        load_batch(params, root, BASE_BATCH, day=0)
    tables, injected = load_batch(params, root, batch, day)
    included = assemble_raw(root, cutoff)
    metrics: dict[str, Any] = {
        "source": cfg["source"],
        "layout": tables.layout,
        "batch": batch,
        "batches": included,
        "rows": {t: table_rows(root / C.DATA_RAW / t) for t in C.TABLES},
        "batch_rows": {
            "interactions": len(tables.interactions),
            "items": len(tables.items),
            "users": len(tables.users),
        },
        "bad_lines_skipped": len(tables.malformed) or tables.bad_lines,
        "malformed_lines": table_rows(root / C.DATA_RAW / MALFORMED),
    }
    if cfg["source"] == "synthetic":
        metrics["injected"] = {str(k): int(v) for k, v in injected["kind"].value_counts().sort_index().items()}
    log.info("ingest %s (%s), batch %s of %s: %s", cfg["source"], tables.layout, batch, included, metrics["rows"])
    return metrics


def load_batch(params: dict[str, Any], root: Path, batch: str, day: int) -> tuple[RawTables, Any]:
    """Read one batch of the source (every source error is raised before anything is written), store it."""
    tables, injected = read_source(params, root, day, batch)
    tables = RawTables(
        standard_interactions(tables.interactions),
        tables.items.reset_index(drop=True),
        tables.users.reset_index(drop=True),
        tables.layout,
        tables.bad_lines,
        tables.malformed,
    )
    write_batch(root, batch, tables, injected)
    return tables, injected


def main(argv: list[str] | None = None) -> int:
    return stage_main("ingest", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

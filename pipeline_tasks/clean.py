"""Stage `clean` (PySpark): data/raw -> data/clean + data/quarantine, with exact accounting.

Every raw row either survives or lands in data/quarantine/<table> with `reason` = the first
rule that removed it. Rules run in this order (each configurable in params `clean`):

  interactions  bad_type (value cannot be coerced) · invalid_id · missing_timestamp ·
                rating_out_of_range (null rating = implicit, kept) · future_timestamp ·
                timestamp_before_floor · duplicate (exact) · duplicate_key (same user, item,
                timestamp) · bot_minute · bot_hour · bot_day (more of the user's events in one
                UTC minute / hour / day than its cap) · bot_outlier (robust z-score of the user's
                log event count) · orphan_item (item not in the catalogue;
                orphan_policy=placeholder keeps it and adds a catalogue row) · item_removed (its
                item was quarantined) · below_implicit_threshold · kcore
  items         invalid_id · empty_text (nothing left after HTML/whitespace normalisation) ·
                duplicate_item
  users         invalid_id · duplicate_user · bot_minute · bot_hour · bot_day · bot_outlier

A bot user loses all its rows still alive (and its users row) with the first bot rule it broke.

Lines the ingest stage could not parse at all (data/raw/malformed) count as rows of their
table too: they are quarantined in data/quarantine/malformed_lines with the rule
`malformed_line`, so the accounting covers every line of the source files.

Rows are never filtered away along the way: one `reason` column is filled in rule by rule,
so rows_in == rows_kept + rows_quarantined holds by construction and is returned per table.
Interactions are counted in the files written, and a run whose files do not add up to the raw
row count fails before it replaces the previous outputs. Each step logs its duration
(`clean phase <step>: <s> s`, INFO), which is how bench/bench_clean.py shows where time goes.
Both output folders are written atomically: a failed run leaves the previous ones intact.
The rules are pipeline_tasks/data/cleaning.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.core.stage_cli import stage_main
from pipeline_tasks.data.cleaning import (
    INTERACTION_RULES,
    ITEM_RULES,
    ROWS_PER_FILE,
    USER_RULES,
    account,
    account_written,
    check_config,
    clean_interactions,
    clean_items,
    clean_users,
    malformed_counts,
    malformed_lines,
    phase,
    placeholder_items,
    raw_paths,
    write_outputs,
)
from pipeline_tasks.data.spark import get_spark

log = logging.getLogger(__name__)


def run(params: dict[str, Any], root: Path) -> dict[str, Any]:
    root = Path(root)
    cfg = params["clean"]
    check_config(cfg)
    paths = raw_paths(root)  # checked before Spark's ~20 s start
    with phase("spark session"):
        spark = get_spark(params)
    raw = {name: spark.read.parquet(str(path)) for name, path in paths.items()}
    malformed = malformed_lines(spark, root)
    unparsed = malformed_counts(malformed)

    with phase("items"):
        items = clean_items(raw["items"], cfg)
    interactions, bots, kcore = clean_interactions(raw["interactions"], items, cfg)
    with phase("users"):
        users = clean_users(raw["users"], bots)
        placeholders = placeholder_items(interactions, items, cfg)

    with phase("accounting (items, users)"):
        metrics = {
            "items": account(items, ITEM_RULES, unparsed.get("items", 0)),
            "users": account(users, USER_RULES, unparsed.get("users", 0)),
            "kcore": kcore,
        }
        metrics["items"]["rows_added"] = placeholders.count() if placeholders is not None else 0
    rows_in = raw["interactions"].count() + unparsed.get("interactions", 0)  # from the Parquet footers

    def count_written_interactions(clean_dir: Path, quarantine_dir: Path) -> None:
        # Interactions are counted in what was written (no extra pass over the big frame), and the
        # new folders replace the old ones only if no row went missing on the way.
        written = account_written(
            spark,
            clean_dir / "interactions",
            quarantine_dir / "interactions",
            INTERACTION_RULES,
            unparsed.get("interactions", 0),
        )
        if written["rows_in"] != rows_in:
            raise PipelineError(
                f"clean wrote {written['rows_in']} interactions for {rows_in} raw ones: "
                f"rows were lost or duplicated; this is a bug in pipeline_tasks/data/cleaning.py"
            )
        metrics["interactions"] = written

    write_outputs(
        root,
        interactions,
        items,
        users,
        placeholders,
        max(1, rows_in // ROWS_PER_FILE),
        malformed,
        before_swap=count_written_interactions,
    )
    metrics = {"interactions": metrics.pop("interactions"), **metrics}
    for table in C.TABLES:
        log.info("clean %s: %s", table, metrics[table])
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main("clean", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

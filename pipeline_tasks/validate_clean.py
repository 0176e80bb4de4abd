"""Stage validate_clean: the Great Expectations gate between clean and split.

Clean data must hold every promise the cleaner makes (thresholds from params `clean`):
unique (user, item, timestamp); ratings within [rating_min, rating_max] or null;
timestamps within [timestamp_floor, now + future_slack_hours]; every interaction's item
in the catalogue; k-core (each user >= kcore_users, each item >= kcore_items
interactions); item text non-empty and at most text_max_chars long. It also bounds the
share of raw interactions the cleaner quarantined (`validate_clean.max_quarantine_share`):
a cleaner that throws most rows away hides a broken source.

Cross-table and per-group promises are checked on derived columns added in Spark
(item_in_catalogue, user/item interaction counts), so each is one ordinary expectation.

Then the drift gate (pipeline_tasks/data/drift.py) compares the clean interactions with the
previous version that passed this gate (row count, new/lost users and items, rating mean,
item-popularity PSI), judged by GX as one more table ("drift") of the same gate, and writes
reports/drift.md. Every check, table or drift, is reported before the gate decides; only
a version that passes is saved as the next run's baseline.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.stage_cli import stage_main
from pipeline_tasks.data import drift
from pipeline_tasks.data.clean_suite import GATE, clean_batches
from pipeline_tasks.data.spark import get_spark
from pipeline_tasks.data.validate import conclude, read_spark_table, run_suites, severities_of


def run(params: dict, root: Path, now: dt.datetime | None = None) -> dict:
    """Validate data/clean/* (+ the quarantine share, + drift); raise DataValidationError on a `fail`.

    On success the version's statistics become the baseline of the next run's drift gate.
    """
    root = Path(root)
    severities = {**severities_of(params[GATE], GATE), **drift.severities(params)}  # params errors first
    spark = get_spark(params)
    batches = clean_batches(params, root, now)
    interactions = read_spark_table(spark, root / C.DATA_CLEAN / "interactions", stage_hint="clean")
    if not drift.comparable(interactions):  # interactions_columns_present fails and says which are missing
        metrics = conclude(GATE, run_suites(GATE, batches, severities, root), root)
        return {**metrics, "drift": {"status": "not compared: data/clean/interactions lacks a key column"}}
    drifted = drift.check_drift(params, root, interactions, now)
    drift_batch = drift.gx_batch(drifted, spark)
    found = run_suites(GATE, batches + ([drift_batch] if drift_batch else []), severities, root)
    found.results = drift.described(found.results, drifted)
    metrics = conclude(GATE, found, root, hints=drift.hints(drifted, found.results, params))
    # Only now, with every `fail` check passed, does this version become the next run's baseline.
    metrics["drift"] = drift.metrics(drifted, found.results, root, saved_as=drift.accept(drifted, params, root))
    return metrics


def main(argv: list[str] | None = None) -> int:
    return stage_main(GATE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

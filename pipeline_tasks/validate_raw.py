"""Stage validate_raw: the Great Expectations gate between ingest and clean.

Raw data may hold a little dirt (the cleaner quarantines it), so this gate only asks
whether the source is usable at all: the contract's columns are there, ids are null in
no more than `validate_raw.max_null_id_share` of rows, timestamps parse, and there are
at least `validate_raw.min_rows` interactions. A large share of bad rows means the
source broke, and cleaning it would silently drop most of the data. After an increment
(`ingest.batch`), its interactions are checked on their own as well: one broken night is a small
share of months of history.
"""

from __future__ import annotations

from pathlib import Path

from pipeline_tasks.core.stage_cli import stage_main
from pipeline_tasks.data.raw_suite import GATE, raw_batches
from pipeline_tasks.data.validate import run_gate


def run(params: dict, root: Path) -> dict:
    """Validate data/raw/*; raise DataValidationError on a `fail` check; return the gate's metrics."""
    root = Path(root)
    return run_gate(GATE, raw_batches(params, root), params, root)


def main(argv: list[str] | None = None) -> int:
    return stage_main(GATE, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

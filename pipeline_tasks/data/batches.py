"""Ingest batches (nightly increments): each load is a batch under data/batches/<batch>/, and
data/raw is assembled from the base batch and every increment up to a cutoff, by hard links.

`ingest.batch: ''` is a full load (it replaces every batch); `ingest.batch: 2026-07-01` adds (or
replaces) that batch. A synthetic increment's id is the date of its day.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core.errors import DataSourceError, ParamsError
from pipeline_tasks.data.readers import RawTables
from pipeline_tasks.data.synthetic import history_end

log = logging.getLogger(__name__)

BATCHES = "data/batches"  # one folder per ingested batch; data/raw is assembled from them
BASE_BATCH = "base"  # the full load every increment builds on
MALFORMED = "malformed"  # data/raw/malformed: lines that could not be parsed, for the quarantine
BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MALFORMED_SCHEMA = pa.schema(
    [("table", pa.string()), ("file", pa.string()), ("line", pa.int64()), ("text", pa.string()), ("error", pa.string())]
)


def batch_plan(cfg: dict[str, Any]) -> tuple[str, int]:
    """(batch id, synthetic day). A synthetic increment's id is the date of its day."""
    batch, day = cfg["batch"], cfg["synthetic"]["day"]
    if batch and not BATCH_ID.match(batch):
        raise ParamsError(
            f"ingest.batch {batch!r} is not a usable batch id: use letters, digits, '.', '_' or '-' "
            f"(a date such as 2026-07-01 sorts in time order)"
        )
    if batch == BASE_BATCH:
        raise ParamsError(f"ingest.batch {BASE_BATCH!r} is reserved for the full load: leave ingest.batch empty")
    if cfg["source"] != "synthetic":
        if day:
            raise ParamsError("ingest.synthetic.day is set but ingest.source is not synthetic: set it back to 0")
        return batch or BASE_BATCH, 0
    if day < 0:
        raise ParamsError(f"ingest.synthetic.day must be >= 0, got {day}")
    end = history_end(cfg["synthetic"])
    if batch:
        try:
            date = pd.Timestamp(batch, tz="UTC")
        except ValueError as err:
            raise ParamsError(
                f"ingest.batch {batch!r}: a synthetic increment is named by its date (YYYY-MM-DD)"
            ) from err
        derived = (date.normalize() - end).days + 1
        if derived < 1 or (day and day != derived):
            raise ParamsError(
                f"ingest.batch {batch} is synthetic day {derived} (history ends {end.date()}), "
                f"but ingest.synthetic.day is {day}: set one of the two (days start at 1)"
            )
        return batch, derived
    if day:
        return str((end + pd.Timedelta(days=day - 1)).date()), day
    return BASE_BATCH, 0


def write_batch(root: Path, batch: str, tables: RawTables, injected: pd.DataFrame) -> None:
    """data/batches/<batch>/ (atomically). A full load replaces every batch; an increment only its own."""
    frames = {
        "interactions": tables.interactions,
        "items": tables.items,
        "users": tables.users,
        MALFORMED: tables.malformed.frame(),
        "injected": injected,
    }
    target = root / BATCHES / batch if batch != BASE_BATCH else root / BATCHES
    with io.atomic_dir(target) as tmp:
        folder = tmp / BASE_BATCH if batch == BASE_BATCH else tmp
        base = None if batch == BASE_BATCH else root / BATCHES / BASE_BATCH
        for name, frame in frames.items():
            schema = MALFORMED_SCHEMA if name == MALFORMED else batch_schema(base, name)
            if batch != BASE_BATCH and frame.empty:
                continue  # an increment without new users (say) adds no file
            (folder / name).mkdir(parents=True)
            pq.write_table(as_arrow(frame, schema, name, batch), folder / name / "part-0.parquet")


def batch_schema(base: Path | None, name: str) -> pa.Schema | None:
    """An increment is written in its base's schema, so every part file of a table reads as one."""
    if base is None or not (base / name / "part-0.parquet").exists():
        return None
    return pq.read_schema(base / name / "part-0.parquet").remove_metadata()


def as_arrow(frame: pd.DataFrame, schema: pa.Schema | None, name: str, batch: str) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if schema is None:
        return table
    missing = [f.name for f in schema if f.name not in table.column_names]
    extra = [c for c in table.column_names if c not in schema.names]
    if extra:
        log.warning("batch %s: %s columns %s are not in the base batch and are left out", batch, name, extra)
    columns = [table[f.name] if f.name in table.column_names else pa.nulls(len(table), f.type) for f in schema]
    try:
        return pa.Table.from_arrays([col.cast(f.type) for col, f in zip(columns, schema)], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise DataSourceError(
            f"batch {batch}: the {name} table's columns do not match the base batch's "
            f"({err}; missing: {missing}): an increment must come from the same source as the "
            f"full load; re-run a full load (ingest.batch='') to change the source"
        ) from err


def assemble_raw(root: Path, cutoff: str) -> list[str]:
    """data/raw/<table> = the part files of the base and of every increment <= cutoff (hard links)."""
    batches = root / BATCHES
    included = [BASE_BATCH] + sorted(
        b.name
        for b in batches.iterdir()
        if b.is_dir() and b.name != BASE_BATCH and not b.name.startswith(".") and b.name <= cutoff
    )
    with io.atomic_dir(root / C.DATA_RAW) as raw, io.atomic_dir(root / C.GROUND_TRUTH) as truth:
        for name in (*C.TABLES, MALFORMED, "injected"):
            folder = (truth if name == "injected" else raw) / name
            folder.mkdir()
            for batch in included:
                part = batches / batch / name / "part-0.parquet"
                if part.exists():
                    link_or_copy(part, folder / f"part-{batch}.parquet")
    return included


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # no copy: batches are never modified in place, only replaced
    except OSError:
        shutil.copyfile(src, dst)


def table_rows(path: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(path.glob("*.parquet")))

"""Every source behind one call, `read_source`, and the readers of the non-MovieLens sources: Amazon
reviews (JSON Lines) and generic CSV / Parquet tables (MovieLens: movielens.py; synthetic: synthetic.py).

Each returns the three raw tables in the contract's columns (readers.RawTables) plus the
malformed lines it set aside. Layouts are recognised from the data, not from file names alone:

  amazon   reviews + meta_* files, plain or .gz, in either layout:
           2018  reviewerID, asin, overall, unixReviewTime (s); meta: asin, title, description, category
           2023  user_id, parent_asin, rating, timestamp (ms); meta: parent_asin, title, features,
                 description, categories
  generic  interactions / items / users files (CSV, TSV or Parquet, or folders of parts), with
           the columns mapped onto the canonical ones by `ingest.generic.columns`.

Longer than most modules on purpose: two source formats (Amazon, generic) and the dispatch over
all of them; each reader is short and shares the column and time-unit helpers below it.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import DataSourceError, ParamsError
from pipeline_tasks.data.batches import BASE_BATCH
from pipeline_tasks.data.movielens import DOWNLOAD_HINT, read_movielens
from pipeline_tasks.data.readers import (
    DELIMITERS,
    Malformed,
    RawTables,
    check_columns,
    check_utf8,
    data_files,
    first_json_keys,
    json_lines,
    read_bytes,
    read_delimited,
)
from pipeline_tasks.data.synthetic import empty_injected, generate, generate_day

log = logging.getLogger(__name__)

JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
AMAZON_HINT = (
    "put the reviews file(s) and the matching meta_* file(s) (JSON Lines, plain or .gz, from "
    "https://amazon-reviews-2023.github.io or the 2018 release) in the folder at ingest.path"
)
AMAZON_LAYOUTS: dict[str, dict[str, Any]] = {
    "amazon-2018": {
        "user": "reviewerID",
        "item": "asin",
        "rating": "overall",
        "time": "unixReviewTime",
        "unit": "s",
        "meta_item": "asin",
        "categories": "category",
        "text": ["description", "feature"],
    },
    "amazon-2023": {
        "user": "user_id",
        "item": "parent_asin",
        "rating": "rating",
        "time": "timestamp",
        "unit": "ms",
        "meta_item": "parent_asin",
        "categories": "categories",
        "text": ["features", "description"],
    },
}
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".parquet", ".pq")
TIME_UNITS = ("s", "ms", "us", "iso")


# ---------------------------------------------------------------- any source


def read_source(
    params: dict[str, Any], root: Path, day: int, batch: str = BASE_BATCH
) -> tuple[RawTables, pd.DataFrame]:
    """The chosen source's raw tables and the dirt injected on purpose (none for real data).

    A file source's increment `batch` is read from `<ingest.path>/<batch>/` when that folder exists.
    """
    cfg = params["ingest"]
    source = cfg["source"]
    if source == "synthetic":
        data = (
            generate_day(cfg["synthetic"], params["seed"], day) if day else generate(cfg["synthetic"], params["seed"])
        )
        return RawTables(data.interactions, data.items, data.users, layout="synthetic"), data.injected
    if source not in C.INGEST_SOURCES:
        raise ParamsError(f"ingest.source must be one of {', '.join(C.INGEST_SOURCES)}, got {source!r}")
    folder = source_folder(cfg["path"], root, source)
    if batch != BASE_BATCH and (folder / batch).is_dir():
        folder = folder / batch  # the increments layout: one folder per night
    if source == "movielens":
        return read_movielens(folder, cfg), empty_injected()
    malformed = Malformed()
    reader = read_amazon if source == "amazon" else read_generic
    interactions, items, users, layout = reader(folder, cfg, malformed)
    return RawTables(interactions, items, users, layout, len(malformed), malformed), empty_injected()


def source_folder(path: str, root: Path, source: str = "movielens") -> Path:
    hint = DOWNLOAD_HINT if source == "movielens" else f"see the README's 'Data sources and cleaning' ({source})"
    if not path:
        raise DataSourceError(
            f"ingest.source is {source!r} but ingest.path is empty: set ingest.path to the "
            f"folder holding the source files (e.g. --set ingest.path=/data/ml-100k); {hint}"
        )
    folder = Path(path) if Path(path).is_absolute() else root / path
    if not folder.is_dir():
        raise DataSourceError(
            f"ingest.path {folder} does not exist or is not a folder: point ingest.path at the "
            f"unpacked source folder; {hint}"
        )
    if not any(p.is_file() or p.is_dir() for p in folder.iterdir()):
        raise DataSourceError(f"ingest.path {folder} is an empty folder: no data files to read; {hint}")
    return folder


def standard_interactions(df: pd.DataFrame) -> pd.DataFrame:
    """The contract's column order and types: string ids, float rating, UTC microsecond timestamps,
    plus each row's position in the source (the tie-break of equal timestamps, see constants)."""
    out = df[C.INTERACTION_COLUMNS].copy()
    out[C.SOURCE_ROW] = np.arange(len(out), dtype=np.int64)
    for col in (C.USER_ID, C.ITEM_ID, C.EVENT):
        out[col] = out[col].astype(object).where(out[col].notna(), None)
    out[C.RATING] = out[C.RATING].astype(float)
    out[C.TIMESTAMP] = pd.to_datetime(out[C.TIMESTAMP], utc=True).astype("datetime64[us, UTC]")
    return out.reset_index(drop=True)


# ---------------------------------------------------------------- Amazon reviews


def read_amazon(
    folder: Path, cfg: dict[str, Any], malformed: Malformed
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """(interactions, items, users, layout) of an Amazon reviews folder."""
    files = data_files(folder, "Amazon reviews JSON Lines files", JSON_SUFFIXES, AMAZON_HINT)
    meta = [p for p in files if p.name.lower().startswith("meta")]
    reviews = [p for p in files if p not in meta]
    if not reviews:
        raise DataSourceError(
            f"{folder} holds only meta files ({', '.join(p.name for p in meta)}) and no reviews: {AMAZON_HINT}"
        )
    if not meta:
        raise DataSourceError(
            f"{folder} holds reviews ({', '.join(p.name for p in reviews)}) but no meta_* file: the "
            f"item text (title, description, categories) comes from it; {AMAZON_HINT}"
        )
    layout = amazon_layout(reviews[0])
    spec = AMAZON_LAYOUTS[layout]
    share = cfg["max_bad_line_share"]
    interactions = pd.concat([amazon_reviews(p, spec, share, malformed) for p in reviews], ignore_index=True)
    items = pd.concat([amazon_meta(p, spec, share, malformed) for p in meta], ignore_index=True)
    users = pd.DataFrame({C.USER_ID: pd.unique(interactions[C.USER_ID].dropna())})
    return interactions, items, users, layout


def amazon_layout(path: Path) -> str:
    keys = first_json_keys(path)
    for layout, spec in AMAZON_LAYOUTS.items():
        if {spec["user"], spec["item"], spec["rating"], spec["time"]} <= set(keys):
            return layout
    # Neither: name the closest layout's missing field (a renamed field reads as such).
    best = max(AMAZON_LAYOUTS, key=lambda name: len(set(keys) & set(field_names(AMAZON_LAYOUTS[name]))))
    spec = AMAZON_LAYOUTS[best]
    check_columns(path, keys, field_names(spec), setting=f"the {best} layout's field")
    raise AssertionError("check_columns raises when a field is missing")


def field_names(spec: dict[str, Any]) -> dict[str, str]:
    return {C.USER_ID: spec["user"], C.ITEM_ID: spec["item"], C.RATING: spec["rating"], C.TIMESTAMP: spec["time"]}


def amazon_reviews(path: Path, spec: dict[str, Any], share: float, malformed: Malformed) -> pd.DataFrame:
    users, items, ratings, times = [], [], [], []
    for number, record in json_lines(path, "interactions", malformed, share):
        try:
            rating = None if record.get(spec["rating"]) is None else float(record[spec["rating"]])
            stamp = None if record.get(spec["time"]) is None else int(record[spec["time"]])
        except (TypeError, ValueError) as err:
            malformed.add("interactions", path, number, str(record), f"unparseable rating or time: {err}")
            continue
        users.append(record.get(spec["user"]))
        items.append(record.get(spec["item"]))
        ratings.append(rating)
        times.append(stamp)
    stamps = pd.to_datetime(pd.Series(times, dtype="float64"), unit=spec["unit"], utc=True)
    return pd.DataFrame(
        {
            C.USER_ID: as_ids(users),
            C.ITEM_ID: as_ids(items),
            C.RATING: pd.Series(ratings, dtype="float64"),
            C.TIMESTAMP: stamps,
            C.EVENT: "review",
        }
    )


def amazon_meta(path: Path, spec: dict[str, Any], share: float, malformed: Malformed) -> pd.DataFrame:
    ids, titles, texts, categories = [], [], [], []
    for _, record in json_lines(path, "items", malformed, share):
        title = as_text(record.get("title"))
        cats = [c for c in as_list(record.get(spec["categories"])) if c]
        body = " ".join(as_text(record.get(key)) for key in spec["text"]).strip()
        parts = [title + "." if title else "", f"Categories: {', '.join(cats)}." if cats else "", body]
        ids.append(record.get(spec["meta_item"]))
        titles.append(title)
        texts.append(" ".join(p for p in parts if p))
        categories.append("|".join(cats))
    return pd.DataFrame({C.ITEM_ID: as_ids(ids), C.TITLE: titles, C.TEXT: texts, "genres": categories})


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [as_text(v) for v in value]
    return [as_text(value)]


def as_text(value: Any) -> str:
    """Meta fields are strings or lists of strings (2018 `description` is a list of paragraphs)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(as_text(v) for v in value).strip()
    return str(value).strip()


def as_ids(values: list[Any]) -> pd.Series:
    return pd.Series([None if v is None else str(v) for v in values], dtype=object)


# ---------------------------------------------------------------- generic tables


def check_generic(cfg: dict[str, Any]) -> None:
    gen = cfg["generic"]
    if gen["format"] not in ("auto", "csv", "parquet"):
        raise ParamsError(f"ingest.generic.format must be auto, csv or parquet, got {gen['format']!r}")
    if gen["timestamp_unit"] not in TIME_UNITS:
        raise ParamsError(
            f"ingest.generic.timestamp_unit must be one of {', '.join(TIME_UNITS)}, got {gen['timestamp_unit']!r}"
        )
    for key in (C.USER_ID, C.ITEM_ID, C.TIMESTAMP):
        if not gen["columns"][key]:
            raise ParamsError(
                f"ingest.generic.columns.{key} is empty: name the column of your interactions file that holds the {key}"
            )


def read_generic(
    folder: Path, cfg: dict[str, Any], malformed: Malformed
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, str]:
    """(interactions, items, users, layout) of a folder of column-mapped CSV / Parquet files."""
    check_generic(cfg)
    gen, cols = cfg["generic"], cfg["generic"]["columns"]
    where = table_files(folder, gen["interactions"], gen["format"], required=True)
    required = {C.USER_ID: cols[C.USER_ID], C.ITEM_ID: cols[C.ITEM_ID], C.TIMESTAMP: cols[C.TIMESTAMP]}
    optional = {k: cols[k] for k in (C.RATING, C.EVENT) if cols[k]}
    numeric = [cols[C.RATING]] if cols[C.RATING] else []
    if gen["timestamp_unit"] != "iso":
        numeric.append(cols[C.TIMESTAMP])
    raw = read_table_files(where, required, optional, numeric, cfg, "interactions", malformed)
    interactions = generic_interactions(raw, cols, gen["timestamp_unit"])

    item_files = table_files(folder, gen["items"], gen["format"], required=True)
    item_cols = {C.ITEM_ID: cols[C.ITEM_ID]} | ({C.TITLE: cols[C.TITLE]} if cols[C.TITLE] else {})
    text_cols = {f"text:{c}": c for c in gen["text_columns"]}
    items = generic_items(
        read_table_files(item_files, item_cols | text_cols, {}, [], cfg, "items", malformed), cols, gen["text_columns"]
    )

    user_files = table_files(folder, gen["users"], gen["format"], required=False)
    if user_files:
        raw_users = read_table_files(user_files, {C.USER_ID: cols[C.USER_ID]}, {}, [], cfg, "users", malformed)
        users = raw_users.rename(columns={cols[C.USER_ID]: C.USER_ID})
        users[C.USER_ID] = clean_id_strings(users[C.USER_ID])
    else:
        users = pd.DataFrame({C.USER_ID: pd.unique(interactions[C.USER_ID].dropna())})
    return interactions, items, users, f"generic-{'parquet' if where[0].suffix in ('.parquet', '.pq') else 'csv'}"


def table_files(folder: Path, name: str, fmt: str, required: bool) -> list[Path]:
    """`name` as a file (with or without its extension) or a folder of part files."""
    if not folder.is_dir():
        raise DataSourceError(
            f"ingest.path {folder} does not exist or is not a folder: point it at the folder "
            f"holding {name}.csv / {name}.parquet"
        )
    suffixes = {"auto": TABLE_SUFFIXES, "csv": TABLE_SUFFIXES[:5], "parquet": TABLE_SUFFIXES[5:]}[fmt]
    target = folder / name
    if target.is_dir():
        return data_files(
            target,
            f"'{name}' data files",
            suffixes,
            f"put the {name} table's CSV or Parquet part files there (or fix ingest.generic.{name})",
        )
    candidates = [target] if target.is_file() else [folder / f"{name}{s}" for s in suffixes]
    found = [p for p in candidates if p.is_file()]
    if found:
        return found[:1]
    if not required:
        return []
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
    raise DataSourceError(
        f"{folder} holds no '{name}' table ({name}.csv, {name}.parquet or a folder {name}/ of "
        f"parts; found: {present}): add it, or name the file with ingest.generic.{name}"
    )


def read_table_files(
    files: list[Path],
    required: dict[str, str],
    optional: dict[str, str],
    numeric: list[str],
    cfg: dict[str, Any],
    table: str,
    malformed: Malformed,
) -> pd.DataFrame:
    frames = [read_one_table(p, required, optional, numeric, cfg, table, malformed) for p in files]
    return pd.concat(frames, ignore_index=True)


def read_one_table(
    path: Path,
    required: dict[str, str],
    optional: dict[str, str],
    numeric: list[str],
    cfg: dict[str, Any],
    table: str,
    malformed: Malformed,
) -> pd.DataFrame:
    setting = "ingest.generic.columns"
    if path.suffix in (".parquet", ".pq"):
        try:
            schema = pq.read_schema(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise DataSourceError(f"{path} is not a readable Parquet file ({err}): re-export it") from err
        check_columns(path, list(schema.names), required | optional, setting)
        frame = pq.read_table(path).to_pandas()
        if frame.empty:
            raise DataSourceError(f"{path} holds no rows: re-export the {table} table")
        return frame
    gen = cfg["generic"]
    sep = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) and gen["delimiter"] == "," else gen["delimiter"]
    data = read_bytes(path, hint=f"re-export the {table} table")
    header = data.split(b"\n", 1)[0].decode(gen["encoding"], "replace").rstrip("\r")
    names = header.split(sep) if sep != "," else next(csv.reader([header]))
    if len(names) == 1 and len(required) > 1:
        seen = max((d for d in DELIMITERS if d != sep), key=header.count)
        looks = f"it looks {DELIMITERS[seen]}-separated" if header.count(seen) else "it has one column"
        raise DataSourceError(
            f"{path}: line 1 (the header) reads {header[:80]!r}: no {DELIMITERS.get(sep, sep)} "
            f"between the column names ({looks}): set ingest.generic.delimiter to the file's "
            f"delimiter, or re-save the file {DELIMITERS.get(sep, sep)}-separated"
        )
    check_columns(path, [n.strip() for n in names], required | optional, setting)
    if gen["encoding"].lower().replace("_", "-") in ("utf-8", "utf8"):
        check_utf8(path, data)
    names = [n.strip() for n in names]
    frame, _ = read_delimited(
        path,
        sep,
        names,
        cfg["max_bad_line_share"],
        numeric,
        encoding=gen["encoding"],
        header=True,
        table=table,
        malformed=malformed,
        allow_empty=numeric,
    )
    return frame


def generic_interactions(raw: pd.DataFrame, cols: dict[str, str], unit: str) -> pd.DataFrame:
    stamp = raw[cols[C.TIMESTAMP]]
    if unit == "iso":  # an unparseable date becomes null: clean quarantines it as missing_timestamp
        stamps = pd.to_datetime(stamp.replace("", None), utc=True, errors="coerce", format="mixed")
    else:
        stamps = pd.to_datetime(pd.to_numeric(stamp, errors="coerce"), unit=unit, utc=True)
    rating = (
        pd.to_numeric(raw[cols[C.RATING]], errors="coerce") if cols[C.RATING] else pd.Series(np.nan, index=raw.index)
    )
    event = raw[cols[C.EVENT]].astype(str) if cols[C.EVENT] else "interaction"
    return pd.DataFrame(
        {
            C.USER_ID: clean_id_strings(raw[cols[C.USER_ID]]),
            C.ITEM_ID: clean_id_strings(raw[cols[C.ITEM_ID]]),
            C.RATING: rating.astype(float),
            C.TIMESTAMP: stamps,
            C.EVENT: event,
        }
    )


def generic_items(raw: pd.DataFrame, cols: dict[str, str], text_columns: list[str]) -> pd.DataFrame:
    """item text = title + the configured text columns (what the text tower reads)."""
    title = raw[cols[C.TITLE]].fillna("").astype(str).str.strip() if cols[C.TITLE] else pd.Series("", index=raw.index)
    parts = [title.where(title == "", title + ".")]
    parts += [raw[c].fillna("").astype(str).str.strip() for c in text_columns]
    text = pd.concat(parts, axis=1).apply(lambda row: " ".join(p for p in row if p), axis=1) if len(raw) else title
    return pd.DataFrame(
        {C.ITEM_ID: clean_id_strings(raw[cols[C.ITEM_ID]]), C.TITLE: title.to_numpy(), C.TEXT: text.to_numpy()}
    )


def clean_id_strings(values: pd.Series) -> pd.Series:
    """Ids as strings; whole floats lose '.0' (a CSV id column with a gap reads as float)."""

    def one(v: Any) -> Any:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return str(int(v))
        return str(v)

    return pd.Series([one(v) for v in values], dtype=object, index=values.index)

"""Stage `ingest`: read a source into data/raw/{interactions,items,users} (dirt and all).

Sources (`ingest.source`, no code change to switch):
  synthetic  the built-in generator (pipeline_tasks.synthetic); also writes
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
full load (it replaces every batch); `ingest.batch: 2026-07-01` adds (or replaces) that batch.
data/raw is then assembled from the base batch and every increment up to `ingest.cutoff`
(default: the batch just ingested), by hard links, so the rest of the pipeline reads one table.
Cleaning is not done here: that is the clean stage's job (and its quarantine's).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_tasks import constants as C
from pipeline_tasks import io
from pipeline_tasks.cli import stage_main
from pipeline_tasks.errors import DataSourceError, ParamsError, PipelineError
from pipeline_tasks.readers import (DELIMITERS, MALFORMED_COLUMNS, Malformed, check_delimiter,  # noqa: F401
                                    read_bytes, read_delimited)
from pipeline_tasks.sources import read_amazon, read_generic
from pipeline_tasks.synthetic import empty_injected, generate, generate_day, history_end

log = logging.getLogger(__name__)

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]
# MovieLens 1M codes ages as the lower bound of a group; 100K ages are bucketed the same way.
ML_AGE_GROUPS = {1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
ML1M_OCCUPATIONS = ["other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
                    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer"]
DOWNLOAD_HINT = "download and unpack a MovieLens archive from https://grouplens.org/datasets/movielens/"
SOURCES = C.INGEST_SOURCES
BATCHES = "data/batches"  # one folder per ingested batch; data/raw is assembled from them
BASE_BATCH = "base"  # the full load every increment builds on
MALFORMED = "malformed"  # data/raw/malformed: lines that could not be parsed, for the quarantine
BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MALFORMED_SCHEMA = pa.schema([("table", pa.string()), ("file", pa.string()), ("line", pa.int64()),
                              ("text", pa.string()), ("error", pa.string())])


@dataclass
class RawTables:
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    layout: str
    bad_lines: int = 0
    malformed: Malformed = field(default_factory=Malformed)


def run(params: dict[str, Any], root: Path) -> dict[str, Any]:
    root = Path(root)
    cfg = params["ingest"]
    batch, day = batch_plan(cfg)
    cutoff = cfg["cutoff"] or batch
    if batch != BASE_BATCH and cutoff < batch:
        raise ParamsError(f"ingest.cutoff {cutoff!r} is before ingest.batch {batch!r}: the batch being ingested would "
                          f"be left out of data/raw; set the cutoff to the batch or later (or leave it empty)")
    if batch != BASE_BATCH and not (root / BATCHES / BASE_BATCH).exists():
        raise PipelineError(f"ingest.batch={batch!r} is an increment, but there is no full load to add it to "
                            f"({root / BATCHES / BASE_BATCH} is missing): run ingest once with ingest.batch='' first")
    tables, injected = read_source(params, root, day)  # every source error is raised before anything is written
    tables = RawTables(standard_interactions(tables.interactions), tables.items.reset_index(drop=True),
                       tables.users.reset_index(drop=True), tables.layout, tables.bad_lines, tables.malformed)
    write_batch(root, batch, tables, injected)
    included = assemble_raw(root, cutoff)
    metrics: dict[str, Any] = {
        "source": cfg["source"],
        "layout": tables.layout,
        "batch": batch,
        "batches": included,
        "rows": {t: table_rows(root / C.DATA_RAW / t) for t in C.TABLES},
        "batch_rows": {"interactions": len(tables.interactions), "items": len(tables.items),
                       "users": len(tables.users)},
        "bad_lines_skipped": len(tables.malformed) or tables.bad_lines,
        "malformed_lines": table_rows(root / C.DATA_RAW / MALFORMED),
    }
    if cfg["source"] == "synthetic":
        metrics["injected"] = {str(k): int(v) for k, v in injected["kind"].value_counts().sort_index().items()}
    log.info("ingest %s (%s), batch %s of %s: %s", cfg["source"], tables.layout, batch, included, metrics["rows"])
    return metrics


def read_source(params: dict[str, Any], root: Path, day: int) -> tuple[RawTables, pd.DataFrame]:
    """The chosen source's raw tables and the dirt injected on purpose (none for real data)."""
    cfg = params["ingest"]
    source = cfg["source"]
    if source == "synthetic":
        data = generate_day(cfg["synthetic"], params["seed"], day) if day else generate(cfg["synthetic"],
                                                                                         params["seed"])
        return RawTables(data.interactions, data.items, data.users, layout="synthetic"), data.injected
    if source not in SOURCES:
        raise ParamsError(f"ingest.source must be one of {', '.join(SOURCES)}, got {source!r}")
    folder = source_folder(cfg["path"], root, source)
    if source == "movielens":
        return read_movielens(folder, cfg), empty_injected()
    malformed = Malformed()
    reader = read_amazon if source == "amazon" else read_generic
    interactions, items, users, layout = reader(folder, cfg, malformed)
    return RawTables(interactions, items, users, layout, len(malformed), malformed), empty_injected()


# ---------------------------------------------------------------- batches (nightly increments)

def batch_plan(cfg: dict[str, Any]) -> tuple[str, int]:
    """(batch id, synthetic day). A synthetic increment's id is the date of its day."""
    batch, day = cfg["batch"], cfg["synthetic"]["day"]
    if batch and not BATCH_ID.match(batch):
        raise ParamsError(f"ingest.batch {batch!r} is not a usable batch id: use letters, digits, '.', '_' or '-' "
                          f"(a date such as 2026-07-01 sorts in time order)")
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
            raise ParamsError(f"ingest.batch {batch!r}: a synthetic increment is named by its date "
                              f"(YYYY-MM-DD)") from err
        derived = (date.normalize() - end).days + 1
        if derived < 1 or (day and day != derived):
            raise ParamsError(f"ingest.batch {batch} is synthetic day {derived} (history ends {end.date()}), "
                              f"but ingest.synthetic.day is {day}: set one of the two (days start at 1)")
        return batch, derived
    if day:
        return str((end + pd.Timedelta(days=day - 1)).date()), day
    return BASE_BATCH, 0


def write_batch(root: Path, batch: str, tables: RawTables, injected: pd.DataFrame) -> None:
    """data/batches/<batch>/ (atomically). A full load replaces every batch; an increment only its own."""
    frames = {"interactions": tables.interactions, "items": tables.items, "users": tables.users,
              MALFORMED: tables.malformed.frame(), "injected": injected}
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
        raise DataSourceError(f"batch {batch}: the {name} table's columns do not match the base batch's "
                              f"({err}; missing: {missing}): an increment must come from the same source as the "
                              f"full load; re-run a full load (ingest.batch='') to change the source") from err


def assemble_raw(root: Path, cutoff: str) -> list[str]:
    """data/raw/<table> = the part files of the base and of every increment <= cutoff (hard links)."""
    batches = root / BATCHES
    included = [BASE_BATCH] + sorted(b.name for b in batches.iterdir()
                                     if b.is_dir() and b.name != BASE_BATCH and not b.name.startswith(".")
                                     and b.name <= cutoff)
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


def source_folder(path: str, root: Path, source: str = "movielens") -> Path:
    hint = DOWNLOAD_HINT if source == "movielens" else f"see the README's 'Data sources and cleaning' ({source})"
    if not path:
        raise DataSourceError(f"ingest.source is {source!r} but ingest.path is empty: set ingest.path to the "
                              f"folder holding the source files (e.g. --set ingest.path=/data/ml-100k); {hint}")
    folder = Path(path) if Path(path).is_absolute() else root / path
    if not folder.is_dir():
        raise DataSourceError(f"ingest.path {folder} does not exist or is not a folder: point ingest.path at the "
                              f"unpacked source folder; {hint}")
    if not any(p.is_file() or p.is_dir() for p in folder.iterdir()):
        raise DataSourceError(f"ingest.path {folder} is an empty folder: no data files to read; {hint}")
    return folder


# ---------------------------------------------------------------- MovieLens

def detect_layout(folder: Path) -> str:
    """Which MovieLens release the folder holds, from the files present."""
    if (folder / "u.data").exists():
        return "ml-100k"
    if (folder / "ratings.dat").exists():
        return "ml-1m" if (folder / "users.dat").exists() else "ml-10m"
    if (folder / "ratings.csv").exists():
        return "ml-csv"
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
    raise DataSourceError(
        f"{folder} holds no MovieLens ratings file (found: {present}). Expected u.data (100K), ratings.dat "
        f"(1M/10M) or ratings.csv (latest/20M/25M/32M): point ingest.path at the unpacked folder; {DOWNLOAD_HINT}")


def read_movielens(folder: Path, cfg: dict[str, Any]) -> RawTables:
    layout = detect_layout(folder)
    readers = {"ml-100k": read_ml100k, "ml-1m": read_ml_dat, "ml-10m": read_ml_dat, "ml-csv": read_ml_csv}
    malformed = Malformed()
    tables = readers[layout](folder, cfg, malformed)
    tables.layout = layout
    tables.malformed = malformed
    return tables


def read_ml100k(folder: Path, cfg: dict[str, Any], malformed: Malformed | None = None) -> RawTables:
    share = cfg["max_bad_line_share"]
    ratings, bad_r = read_delimited(folder / "u.data", "\t", ["user", "item", "rating", "ts"], share,
                                    numeric=["user", "item", "rating", "ts"], table="interactions", malformed=malformed)
    item_cols = ["item", "title", "release_date", "video_release_date", "imdb_url"] + ML100K_GENRES
    movies, bad_m = read_delimited(folder / "u.item", "|", item_cols, share, numeric=["item"], encoding="latin-1",
                                   table="items", malformed=malformed)
    users, bad_u = read_delimited(folder / "u.user", "|", ["user", "age", "gender", "occupation", "zip_code"],
                                  share, numeric=["user", "age"], table="users", malformed=malformed)
    flags = movies[ML100K_GENRES].apply(pd.to_numeric, errors="coerce").fillna(0).astype(int).to_numpy()
    genres = ["|".join(g for g, on in zip(ML100K_GENRES, row) if on) for row in flags]
    items = movie_items(movies["item"], movies["title"], pd.Series(genres))
    items["release_date"] = movies["release_date"].fillna("").to_numpy()
    age = users["age"].astype(int)
    user_table = pd.DataFrame({
        C.USER_ID: id_strings(users["user"]), "gender": users["gender"], "age": age,
        "age_group": age.map(age_group), "occupation": users["occupation"], "zip_code": users["zip_code"],
    })
    return RawTables(rating_interactions(ratings), items, user_table, "ml-100k", bad_r + bad_m + bad_u)


def read_ml_dat(folder: Path, cfg: dict[str, Any], malformed: Malformed | None = None) -> RawTables:
    """MovieLens 1M and 10M: '::'-separated .dat files (10M has no users.dat)."""
    share = cfg["max_bad_line_share"]
    ratings, bad_r = read_delimited(folder / "ratings.dat", "::", ["user", "item", "rating", "ts"], share,
                                    numeric=["user", "item", "rating", "ts"], table="interactions", malformed=malformed)
    movies, bad_m = read_delimited(folder / "movies.dat", "::", ["item", "title", "genres"], share,
                                   numeric=["item"], encoding="latin-1", table="items", malformed=malformed)
    items = movie_items(movies["item"], movies["title"], movies["genres"])
    bad = bad_r + bad_m
    if (folder / "users.dat").exists():
        users, bad_u = read_delimited(folder / "users.dat", "::", ["user", "gender", "age", "occupation", "zip_code"],
                                      share, numeric=["user", "age", "occupation"], table="users",
                                      malformed=malformed)
        bad += bad_u
        occupation = users["occupation"].astype(int)
        user_table = pd.DataFrame({
            C.USER_ID: id_strings(users["user"]), "gender": users["gender"],
            "age_group": users["age"].astype(int).map(ML_AGE_GROUPS).fillna("unknown"),
            "occupation": occupation.map(dict(enumerate(ML1M_OCCUPATIONS))).fillna("other"),
            "zip_code": users["zip_code"],
        })
    else:
        user_table = pd.DataFrame({C.USER_ID: sorted(id_strings(ratings["user"]).unique(), key=int)})
    return RawTables(rating_interactions(ratings), items, user_table, "", bad)


def read_ml_csv(folder: Path, cfg: dict[str, Any], malformed: Malformed | None = None) -> RawTables:
    """MovieLens latest / 20M / 25M / 32M: ratings.csv, movies.csv and optional tags.csv, with headers."""
    share = cfg["max_bad_line_share"]
    ratings, bad_r = read_delimited(folder / "ratings.csv", ",", ["userId", "movieId", "rating", "timestamp"], share,
                                    numeric=["userId", "movieId", "rating", "timestamp"], header=True,
                                    table="interactions", malformed=malformed)
    ratings.columns = ["user", "item", "rating", "ts"]
    movies, bad_m = read_delimited(folder / "movies.csv", ",", ["movieId", "title", "genres"], share,
                                   numeric=["movieId"], header=True, table="items", malformed=malformed)
    genres = movies["genres"].replace("(no genres listed)", "")
    items = movie_items(movies["movieId"], movies["title"], genres)
    bad = bad_r + bad_m
    if (folder / "tags.csv").exists():
        tags, bad_t = read_delimited(folder / "tags.csv", ",", ["userId", "movieId", "tag", "timestamp"], share,
                                     numeric=["movieId"], header=True, table="items", malformed=malformed)
        bad += bad_t
        items = add_tags(items, tags, cfg["max_tags_per_item"])
    users = pd.DataFrame({C.USER_ID: sorted(id_strings(ratings["user"]).unique(), key=int)})
    return RawTables(rating_interactions(ratings), items, users, "ml-csv", bad)


def rating_interactions(ratings: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        C.USER_ID: id_strings(ratings["user"]),
        C.ITEM_ID: id_strings(ratings["item"]),
        C.RATING: pd.to_numeric(ratings["rating"]).astype(float),
        C.TIMESTAMP: pd.to_datetime(pd.to_numeric(ratings["ts"]).astype("int64"), unit="s", utc=True),
        C.EVENT: "rating",
    })


def movie_items(ids: pd.Series, titles: pd.Series, genres: pd.Series) -> pd.DataFrame:
    """item text = title + genres: what the text tower reads about a movie."""
    titles = titles.fillna("").astype(str).str.strip()
    genres = genres.fillna("").astype(str)
    readable = genres.str.replace("|", ", ", regex=False)
    text = titles + ("." + (" Genres: " + readable + ".").where(readable != "", ""))
    return pd.DataFrame({C.ITEM_ID: id_strings(ids).to_numpy(), C.TITLE: titles.to_numpy(), C.TEXT: text.to_numpy(),
                         "genres": genres.to_numpy()})


def add_tags(items: pd.DataFrame, tags: pd.DataFrame, max_tags: int) -> pd.DataFrame:
    """Append each movie's most frequent user tags to its text (users describe movies well)."""
    if max_tags <= 0 or tags.empty:
        return items
    tag = tags["tag"].fillna("").astype(str).str.strip().str.lower()
    counts = (pd.DataFrame({C.ITEM_ID: id_strings(tags["movieId"]), "tag": tag})
              .query("tag != ''").value_counts().reset_index(name="n")
              .sort_values([C.ITEM_ID, "n", "tag"], ascending=[True, False, True]))
    top = counts.groupby(C.ITEM_ID).head(max_tags).groupby(C.ITEM_ID)["tag"].agg(", ".join)
    items = items.copy()
    found = items[C.ITEM_ID].map(top)
    items[C.TEXT] = items[C.TEXT] + (" Tags: " + found + ".").fillna("")
    return items


def id_strings(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values).astype("int64").astype(str)


def age_group(age: int) -> str:
    lower = max(bound for bound in ML_AGE_GROUPS if bound <= max(age, 1))
    return ML_AGE_GROUPS[lower]


def main(argv: list[str] | None = None) -> int:
    return stage_main("ingest", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

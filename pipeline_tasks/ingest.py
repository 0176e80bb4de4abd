"""Stage `ingest`: read a source into data/raw/{interactions,items,users} (dirt and all).

Sources (`ingest.source`):
  synthetic  the built-in generator (pipeline_tasks.synthetic); also writes
             data/ground_truth/injected, the dirty rows it injected on purpose.
  movielens  a MovieLens folder at `ingest.path`; the layout is detected from the files:
             100K (u.data, u.item, u.user), 1M / 10M (ratings.dat, movies.dat[, users.dat]),
             latest / 20M / 25M / 32M (ratings.csv, movies.csv[, tags.csv]).

Ids become strings, timestamps UTC `datetime64[us]`, item text = title + genres (+ tags).
Lines that cannot be parsed are skipped up to `ingest.max_bad_line_share`; beyond it,
or for a missing/empty file or a wrong delimiter, a DataSourceError names the file and the fix.
Cleaning is not done here: that is the clean stage's job (and its quarantine's).
"""
from __future__ import annotations

import io as stdio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline_tasks import constants as C
from pipeline_tasks import io
from pipeline_tasks.cli import stage_main
from pipeline_tasks.errors import DataSourceError, ParamsError
from pipeline_tasks.synthetic import empty_injected, generate

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
DELIMITERS = {"\t": "tab", "|": "pipe '|'", "::": "'::'", ",": "comma", ";": "semicolon"}


@dataclass
class RawTables:
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    layout: str
    bad_lines: int = 0


def run(params: dict[str, Any], root: Path) -> dict[str, Any]:
    root = Path(root)
    cfg = params["ingest"]
    source = cfg["source"]
    injected = empty_injected()  # real sources hold no dirt injected on purpose (DVC still wants the output)
    if source == "synthetic":
        data = generate(cfg["synthetic"], params["seed"])
        tables = RawTables(data.interactions, data.items, data.users, layout="synthetic")
        injected = data.injected
    elif source == "movielens":
        tables = read_movielens(source_folder(cfg["path"], root), cfg)
    else:
        raise ParamsError(f"ingest.source must be 'synthetic' or 'movielens', got {source!r}")

    tables = RawTables(standard_interactions(tables.interactions), tables.items.reset_index(drop=True),
                       tables.users.reset_index(drop=True), tables.layout, tables.bad_lines)
    raw = root / C.DATA_RAW
    io.write_table(tables.interactions, raw / "interactions")
    io.write_table(tables.items, raw / "items")
    io.write_table(tables.users, raw / "users")
    metrics: dict[str, Any] = {
        "source": source,
        "layout": tables.layout,
        "rows": {"interactions": len(tables.interactions), "items": len(tables.items), "users": len(tables.users)},
        "bad_lines_skipped": tables.bad_lines,
    }
    io.write_table(injected, root / C.GROUND_TRUTH / "injected")
    if source == "synthetic":
        metrics["injected"] = {str(k): int(v) for k, v in injected["kind"].value_counts().sort_index().items()}
    log.info("ingest %s (%s): %s", source, tables.layout, metrics["rows"])
    return metrics


def standard_interactions(df: pd.DataFrame) -> pd.DataFrame:
    """The contract's column order and types: string ids, float rating, UTC microsecond timestamps."""
    out = df[C.INTERACTION_COLUMNS].copy()
    for col in (C.USER_ID, C.ITEM_ID, C.EVENT):
        out[col] = out[col].astype(object).where(out[col].notna(), None)
    out[C.RATING] = out[C.RATING].astype(float)
    out[C.TIMESTAMP] = pd.to_datetime(out[C.TIMESTAMP], utc=True).astype("datetime64[us, UTC]")
    return out.reset_index(drop=True)


def source_folder(path: str, root: Path) -> Path:
    if not path:
        raise DataSourceError(f"ingest.source is 'movielens' but ingest.path is empty: set ingest.path to the "
                              f"folder holding the MovieLens files (e.g. --set ingest.path=/data/ml-100k); "
                              f"{DOWNLOAD_HINT}")
    folder = Path(path) if Path(path).is_absolute() else root / path
    if not folder.is_dir():
        raise DataSourceError(f"ingest.path {folder} does not exist or is not a folder: point ingest.path at the "
                              f"unpacked MovieLens folder; {DOWNLOAD_HINT}")
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
    tables = readers[layout](folder, cfg)
    tables.layout = layout
    return tables


def read_ml100k(folder: Path, cfg: dict[str, Any]) -> RawTables:
    share = cfg["max_bad_line_share"]
    ratings, bad_r = read_delimited(folder / "u.data", "\t", ["user", "item", "rating", "ts"], share,
                                    numeric=["user", "item", "rating", "ts"])
    item_cols = ["item", "title", "release_date", "video_release_date", "imdb_url"] + ML100K_GENRES
    movies, bad_m = read_delimited(folder / "u.item", "|", item_cols, share, numeric=["item"], encoding="latin-1")
    users, bad_u = read_delimited(folder / "u.user", "|", ["user", "age", "gender", "occupation", "zip_code"],
                                  share, numeric=["user", "age"])
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


def read_ml_dat(folder: Path, cfg: dict[str, Any]) -> RawTables:
    """MovieLens 1M and 10M: '::'-separated .dat files (10M has no users.dat)."""
    share = cfg["max_bad_line_share"]
    ratings, bad_r = read_delimited(folder / "ratings.dat", "::", ["user", "item", "rating", "ts"], share,
                                    numeric=["user", "item", "rating", "ts"])
    movies, bad_m = read_delimited(folder / "movies.dat", "::", ["item", "title", "genres"], share,
                                   numeric=["item"], encoding="latin-1")
    items = movie_items(movies["item"], movies["title"], movies["genres"])
    bad = bad_r + bad_m
    if (folder / "users.dat").exists():
        users, bad_u = read_delimited(folder / "users.dat", "::", ["user", "gender", "age", "occupation", "zip_code"],
                                      share, numeric=["user", "age", "occupation"])
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


def read_ml_csv(folder: Path, cfg: dict[str, Any]) -> RawTables:
    """MovieLens latest / 20M / 25M / 32M: ratings.csv, movies.csv and optional tags.csv, with headers."""
    share = cfg["max_bad_line_share"]
    ratings, bad_r = read_delimited(folder / "ratings.csv", ",", ["userId", "movieId", "rating", "timestamp"], share,
                                    numeric=["userId", "movieId", "rating", "timestamp"], header=True)
    ratings.columns = ["user", "item", "rating", "ts"]
    movies, bad_m = read_delimited(folder / "movies.csv", ",", ["movieId", "title", "genres"], share,
                                   numeric=["movieId"], header=True)
    genres = movies["genres"].replace("(no genres listed)", "")
    items = movie_items(movies["movieId"], movies["title"], genres)
    bad = bad_r + bad_m
    if (folder / "tags.csv").exists():
        tags, bad_t = read_delimited(folder / "tags.csv", ",", ["userId", "movieId", "tag", "timestamp"], share,
                                     numeric=["movieId"], header=True)
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


# ---------------------------------------------------------------- delimited files

def read_delimited(path: Path, sep: str, names: list[str], max_bad_share: float, numeric: list[str],
                   encoding: str = "utf-8", header: bool = False) -> tuple[pd.DataFrame, int]:
    """Read a delimited file as strings, dropping unparseable lines up to `max_bad_share`.

    Returns the frame (bad lines removed) and how many lines were skipped.
    """
    data = read_bytes(path)
    first = data.split(b"\n", 2)[1 if header and data.count(b"\n") > 1 else 0].decode(encoding, "replace")
    check_delimiter(path, first, sep, len(names))
    if len(sep) > 1:  # pandas' C parser takes one-character separators only; '::' never occurs inside fields
        data, sep = data.replace(sep.encode(), b"\x1f"), "\x1f"
    # Counted on bytes (cheap on 25M lines); blank lines are not data, pandas skips them too.
    lines = data.count(b"\n") + (not data.endswith(b"\n")) - data.count(b"\n\n") - (1 if header else 0)
    options = dict(sep=sep, header=0 if header else None, names=names, encoding=encoding, on_bad_lines="skip",
                   keep_default_na=False, quoting=0 if sep == "," else 3, engine="c")
    try:  # all-numeric files (ratings: up to 32M lines) parse as numbers, far leaner than strings
        if set(numeric) != set(names):
            raise ValueError("has text columns")
        frame = pd.read_csv(stdio.BytesIO(data), dtype="float64", **options)
    except ValueError:  # text columns, or a value that is not a number: parse as strings, check below
        frame = pd.read_csv(stdio.BytesIO(data), dtype=str, **options)
    valid = pd.Series(True, index=frame.index)
    for col in numeric:
        valid &= pd.to_numeric(frame[col], errors="coerce").notna()
    frame = frame[valid].reset_index(drop=True)
    bad = max(lines - len(frame), 0)
    if lines == 0 or bad > max_bad_share * lines:
        raise DataSourceError(
            f"{path}: {bad} of {lines} lines cannot be parsed as {len(names)} {DELIMITERS.get(sep, repr(sep))}"
            f"-separated fields ({', '.join(names)}), more than ingest.max_bad_line_share={max_bad_share}: "
            f"repair or re-download the file (or raise ingest.max_bad_line_share to skip them)")
    if bad:
        log.warning("%s: skipped %d unparseable lines of %d", path, bad, lines)
    return frame, bad


def read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataSourceError(f"missing file {path}: the MovieLens folder is incomplete; {DOWNLOAD_HINT} "
                              f"and unpack it whole")
    data = path.read_bytes()
    if not data.strip():
        raise DataSourceError(f"{path} is empty: re-download the MovieLens archive ({DOWNLOAD_HINT})")
    return data


def check_delimiter(path: Path, first_line: str, sep: str, n_fields: int) -> None:
    """Fail early, and say what the file looks like, when its delimiter is not the expected one."""
    if first_line.count(sep) >= n_fields - 1:
        return
    counts = {d: first_line.count(d) for d in DELIMITERS if d != sep}
    seen = max(counts, key=counts.get)
    looks = f"it looks {DELIMITERS[seen]}-separated" if counts[seen] else "it has no delimiter at all"
    raise DataSourceError(
        f"{path}: expected {n_fields} {DELIMITERS.get(sep, repr(sep))}-separated fields per line but the first "
        f"line reads {first_line[:80]!r} ({looks}): restore the original file from the MovieLens archive "
        f"(a spreadsheet or editor may have re-saved it with another delimiter)")


def main(argv: list[str] | None = None) -> int:
    return stage_main("ingest", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

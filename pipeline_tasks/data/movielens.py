"""MovieLens readers: 100K (u.data, u.item, u.user), 1M / 10M (ratings.dat, movies.dat[, users.dat]),
latest / 20M / 25M / 32M (ratings.csv, movies.csv[, tags.csv]); the layout is detected from the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import DataSourceError
from pipeline_tasks.data.readers import Malformed, RawTables, read_delimited

ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
# MovieLens 1M codes ages as the lower bound of a group; 100K ages are bucketed the same way.
ML_AGE_GROUPS = {1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
ML1M_OCCUPATIONS = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
]
DOWNLOAD_HINT = "download and unpack a MovieLens archive from https://grouplens.org/datasets/movielens/"


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
        f"(1M/10M) or ratings.csv (latest/20M/25M/32M): point ingest.path at the unpacked folder; {DOWNLOAD_HINT}"
    )


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
    ratings, bad_r = read_delimited(
        folder / "u.data",
        "\t",
        ["user", "item", "rating", "ts"],
        share,
        numeric=["user", "item", "rating", "ts"],
        table="interactions",
        malformed=malformed,
    )
    item_cols = ["item", "title", "release_date", "video_release_date", "imdb_url"] + ML100K_GENRES
    movies, bad_m = read_delimited(
        folder / "u.item",
        "|",
        item_cols,
        share,
        numeric=["item"],
        encoding="latin-1",
        table="items",
        malformed=malformed,
    )
    users, bad_u = read_delimited(
        folder / "u.user",
        "|",
        ["user", "age", "gender", "occupation", "zip_code"],
        share,
        numeric=["user", "age"],
        table="users",
        malformed=malformed,
    )
    flags = movies[ML100K_GENRES].apply(pd.to_numeric, errors="coerce").fillna(0).astype(int).to_numpy()
    genres = ["|".join(g for g, on in zip(ML100K_GENRES, row) if on) for row in flags]
    items = movie_items(movies["item"], movies["title"], pd.Series(genres))
    items["release_date"] = movies["release_date"].fillna("").to_numpy()
    age = users["age"].astype(int)
    user_table = pd.DataFrame(
        {
            C.USER_ID: id_strings(users["user"]),
            "gender": users["gender"],
            "age": age,
            "age_group": age.map(age_group),
            "occupation": users["occupation"],
            "zip_code": users["zip_code"],
        }
    )
    return RawTables(rating_interactions(ratings), items, user_table, "ml-100k", bad_r + bad_m + bad_u)


def read_ml_dat(folder: Path, cfg: dict[str, Any], malformed: Malformed | None = None) -> RawTables:
    """MovieLens 1M and 10M: '::'-separated .dat files (10M has no users.dat)."""
    share = cfg["max_bad_line_share"]
    ratings, bad_r = read_delimited(
        folder / "ratings.dat",
        "::",
        ["user", "item", "rating", "ts"],
        share,
        numeric=["user", "item", "rating", "ts"],
        table="interactions",
        malformed=malformed,
    )
    movies, bad_m = read_delimited(
        folder / "movies.dat",
        "::",
        ["item", "title", "genres"],
        share,
        numeric=["item"],
        encoding="latin-1",
        table="items",
        malformed=malformed,
    )
    items = movie_items(movies["item"], movies["title"], movies["genres"])
    bad = bad_r + bad_m
    if (folder / "users.dat").exists():
        users, bad_u = read_delimited(
            folder / "users.dat",
            "::",
            ["user", "gender", "age", "occupation", "zip_code"],
            share,
            numeric=["user", "age", "occupation"],
            table="users",
            malformed=malformed,
        )
        bad += bad_u
        occupation = users["occupation"].astype(int)
        user_table = pd.DataFrame(
            {
                C.USER_ID: id_strings(users["user"]),
                "gender": users["gender"],
                "age_group": users["age"].astype(int).map(ML_AGE_GROUPS).fillna("unknown"),
                "occupation": occupation.map(dict(enumerate(ML1M_OCCUPATIONS))).fillna("other"),
                "zip_code": users["zip_code"],
            }
        )
    else:
        user_table = pd.DataFrame({C.USER_ID: sorted(id_strings(ratings["user"]).unique(), key=int)})
    return RawTables(rating_interactions(ratings), items, user_table, "", bad)


def read_ml_csv(folder: Path, cfg: dict[str, Any], malformed: Malformed | None = None) -> RawTables:
    """MovieLens latest / 20M / 25M / 32M: ratings.csv, movies.csv and optional tags.csv, with headers."""
    share = cfg["max_bad_line_share"]
    ratings, bad_r = read_delimited(
        folder / "ratings.csv",
        ",",
        ["userId", "movieId", "rating", "timestamp"],
        share,
        numeric=["userId", "movieId", "rating", "timestamp"],
        header=True,
        table="interactions",
        malformed=malformed,
    )
    ratings.columns = ["user", "item", "rating", "ts"]
    movies, bad_m = read_delimited(
        folder / "movies.csv",
        ",",
        ["movieId", "title", "genres"],
        share,
        numeric=["movieId"],
        header=True,
        table="items",
        malformed=malformed,
    )
    genres = movies["genres"].replace("(no genres listed)", "")
    items = movie_items(movies["movieId"], movies["title"], genres)
    bad = bad_r + bad_m
    if (folder / "tags.csv").exists():
        tags, bad_t = read_delimited(
            folder / "tags.csv",
            ",",
            ["userId", "movieId", "tag", "timestamp"],
            share,
            numeric=["movieId"],
            header=True,
            table="items",
            malformed=malformed,
        )
        bad += bad_t
        items = add_tags(items, tags, cfg["max_tags_per_item"])
    users = pd.DataFrame({C.USER_ID: sorted(id_strings(ratings["user"]).unique(), key=int)})
    return RawTables(rating_interactions(ratings), items, users, "ml-csv", bad)


def rating_interactions(ratings: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            C.USER_ID: id_strings(ratings["user"]),
            C.ITEM_ID: id_strings(ratings["item"]),
            C.RATING: pd.to_numeric(ratings["rating"]).astype(float),
            C.TIMESTAMP: pd.to_datetime(pd.to_numeric(ratings["ts"]).astype("int64"), unit="s", utc=True),
            C.EVENT: "rating",
        }
    )


def movie_items(ids: pd.Series, titles: pd.Series, genres: pd.Series) -> pd.DataFrame:
    """item text = title + genres: what the text tower reads about a movie."""
    titles = titles.fillna("").astype(str).str.strip()
    genres = genres.fillna("").astype(str)
    readable = genres.str.replace("|", ", ", regex=False)
    text = titles + ("." + (" Genres: " + readable + ".").where(readable != "", ""))
    return pd.DataFrame(
        {
            C.ITEM_ID: id_strings(ids).to_numpy(),
            C.TITLE: titles.to_numpy(),
            C.TEXT: text.to_numpy(),
            "genres": genres.to_numpy(),
        }
    )


def add_tags(items: pd.DataFrame, tags: pd.DataFrame, max_tags: int) -> pd.DataFrame:
    """Append each movie's most frequent user tags to its text (users describe movies well)."""
    if max_tags <= 0 or tags.empty:
        return items
    tag = tags["tag"].fillna("").astype(str).str.strip().str.lower()
    counts = (
        pd.DataFrame({C.ITEM_ID: id_strings(tags["movieId"]), "tag": tag})
        .query("tag != ''")
        .value_counts()
        .reset_index(name="n")
        .sort_values([C.ITEM_ID, "n", "tag"], ascending=[True, False, True])
    )
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

"""Stage ingest: synthetic and MovieLens sources to data/raw, clear errors for broken inputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline_tasks import ingest
from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import DataSourceError, ParamsError

GENRE_FLAGS = "|".join(["0"] * 19)


def movielens_params(params: dict, path: Path | str) -> dict:
    params["ingest"]["source"] = "movielens"
    params["ingest"]["path"] = str(path)
    return params


def read_raw(root: Path) -> dict[str, pd.DataFrame]:
    return {t: pd.read_parquet(root / C.DATA_RAW / t) for t in C.TABLES}


def write_ml100k(folder: Path, ratings: str) -> Path:
    """A tiny folder in the MovieLens-100K layout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(ratings)
    flags = ["0"] * 19
    flags[1] = flags[15] = "1"  # Action, Sci-Fi
    (folder / "u.item").write_bytes(
        (
            "1|Caf\xe9 Society (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n"
            "2|Heat (1995)|01-Jan-1995||http://y|" + GENRE_FLAGS + "\n"
        ).encode("latin-1")
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return folder


def test_synthetic_source_writes_raw_tables_and_ground_truth(tmp_path, params):
    metrics = ingest.run(params, tmp_path)
    raw = read_raw(tmp_path)
    assert metrics["source"] == "synthetic"
    assert metrics["rows"] == {t: len(raw[t]) for t in C.TABLES}
    inter = raw["interactions"]
    assert list(inter.columns) == [*C.INTERACTION_COLUMNS, C.SOURCE_ROW]
    assert inter[C.SOURCE_ROW].tolist() == list(range(len(inter)))  # one part file: the source order
    assert str(inter[C.TIMESTAMP].dtype) == "datetime64[us, UTC]"
    assert inter[C.USER_ID].dropna().map(type).eq(str).all()
    injected = pd.read_parquet(tmp_path / C.GROUND_TRUTH / "injected")
    assert metrics["injected"] == injected["kind"].value_counts().to_dict()
    assert inter[C.USER_ID].isna().sum() + inter[C.ITEM_ID].isna().sum() == metrics["injected"]["null_id"]


def test_movielens_100k(tmp_path, params, ml100k_path):
    metrics = ingest.run(movielens_params(params, ml100k_path), tmp_path)
    assert metrics["layout"] == "ml-100k"
    assert metrics["rows"] == {"interactions": 100_000, "items": 1682, "users": 943}
    raw = read_raw(tmp_path)
    inter, items, users = raw["interactions"], raw["items"], raw["users"]
    assert str(inter[C.TIMESTAMP].dtype) == "datetime64[us, UTC]"
    assert inter[C.TIMESTAMP].min().year == 1997 and inter[C.TIMESTAMP].max().year == 1998
    assert set(inter[C.RATING].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    first = inter.loc[inter[C.SOURCE_ROW] == 0].iloc[0]  # u.data's first line: 196 242 3 881250949
    assert (first[C.USER_ID], first[C.ITEM_ID], first[C.RATING]) == ("196", "242", 3.0)
    assert inter[C.USER_ID].nunique() == 943 and items[C.ITEM_ID].is_unique
    toy_story = items.set_index(C.ITEM_ID).loc["1"]
    assert toy_story[C.TEXT] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert set(users["gender"]) == {"M", "F"} and users["occupation"].notna().all()
    assert pd.read_parquet(tmp_path / C.GROUND_TRUTH / "injected").empty, "real data has no injected dirt"


def test_latin1_titles_and_genre_flags(tmp_path, params):
    folder = write_ml100k(tmp_path / "ml", "1\t1\t4\t881250949\n2\t2\t5\t881250950\n")
    ingest.run(movielens_params(params, folder), tmp_path)
    items = read_raw(tmp_path)["items"].set_index(C.ITEM_ID)
    assert items.loc["1", C.TITLE] == "Café Society (1995)"
    assert items.loc["1", C.TEXT] == "Café Society (1995). Genres: Action, Sci-Fi."
    assert items.loc["2", C.TEXT] == "Heat (1995)."


def test_a_few_bad_lines_are_skipped_too_many_fail(tmp_path, params):
    good = "".join(f"1\t{i % 2 + 1}\t4\t{881250949 + i}\n" for i in range(200))
    folder = write_ml100k(tmp_path / "ml", good + "1\tx\t4\t881250949\n")
    metrics = ingest.run(movielens_params(params, folder), tmp_path)
    assert metrics["bad_lines_skipped"] == 1 and metrics["rows"]["interactions"] == 200
    write_ml100k(folder, good + "garbage\n" * 10)
    with pytest.raises(DataSourceError, match=r"u\.data: 10 of 210 lines.*max_bad_line_share"):
        ingest.run(movielens_params(params, folder), tmp_path)


def test_wrong_delimiter_is_named(tmp_path, params):
    folder = write_ml100k(tmp_path / "ml", "1,1,4,881250949\n2,2,5,881250950\n")
    with pytest.raises(DataSourceError, match=r"u\.data.*tab-separated.*looks comma-separated"):
        ingest.run(movielens_params(params, folder), tmp_path)


@pytest.mark.parametrize(
    "problem, match",
    [
        ("no_folder", r"does not exist.*ingest\.path"),
        ("empty_path", r"ingest\.path is empty"),
        ("empty_file", r"u\.data is empty"),
        ("missing_file", r"missing file .*u\.user"),
        ("no_ratings", r"holds no MovieLens ratings file"),
    ],
)
def test_broken_sources_raise_a_clear_error(tmp_path, params, problem, match):
    folder = write_ml100k(tmp_path / "ml", "1\t1\t4\t881250949\n")
    path: Path | str = folder
    if problem == "no_folder":
        path = tmp_path / "nowhere"
    elif problem == "empty_path":
        path = ""
    elif problem == "empty_file":
        (folder / "u.data").write_text("")
    elif problem == "missing_file":
        (folder / "u.user").unlink()
    elif problem == "no_ratings":
        (folder / "u.data").unlink()
    with pytest.raises(DataSourceError, match=match):
        ingest.run(movielens_params(params, path), tmp_path)
    assert not (tmp_path / C.DATA_RAW).exists(), "nothing is written when the source is broken"


def test_movielens_1m_layout(tmp_path, params):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::978300760\n2::20::3::978302109\n")
    (folder / "movies.dat").write_bytes(
        "10::GoldenEye (1995)::Action|Adventure\n20::Amélie (2001)::Comedy|Romance\n".encode("latin-1")
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    metrics = ingest.run(movielens_params(params, folder), tmp_path)
    assert metrics["layout"] == "ml-1m" and metrics["rows"] == {"interactions": 2, "items": 2, "users": 2}
    raw = read_raw(tmp_path)
    assert raw["items"].set_index(C.ITEM_ID).loc["20", C.TEXT] == "Amélie (2001). Genres: Comedy, Romance."
    users = raw["users"].set_index(C.USER_ID)
    assert users.loc["1", "age_group"] == "Under 18" and users.loc["1", "occupation"] == "K-12 student"
    assert users.loc["2", "age_group"] == "56+"


def test_movielens_csv_layout_with_tags(tmp_path, params):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,0.5,964981247\n")
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
        '2,"American President, The (1995)",(no genres listed)\n'
    )
    (folder / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,Pixar,2\n3,1,fun,3\n")
    metrics = ingest.run(movielens_params(params, folder), tmp_path)
    assert metrics["layout"] == "ml-csv"
    raw = read_raw(tmp_path)
    items = raw["items"].set_index(C.ITEM_ID)
    assert items.loc["1", C.TEXT] == "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun."
    assert items.loc["2", C.TEXT] == "American President, The (1995)."
    assert raw["interactions"][C.RATING].tolist() == [4.0, 0.5]
    assert raw["users"][C.USER_ID].tolist() == ["1"]


def test_unknown_source_is_a_params_error(tmp_path, params):
    params["ingest"]["source"] = "kaggle"
    with pytest.raises(ParamsError, match="ingest.source"):
        ingest.run(params, tmp_path)


def test_cli_prints_the_error_without_traceback(tmp_path, capsys):
    code = ingest.main(
        [
            "--root",
            str(tmp_path),
            "--no-mlflow",
            "--set",
            "ingest.source=movielens",
            "--set",
            f"ingest.path={tmp_path / 'missing'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "DataSourceError" in err and "Traceback" not in err


def test_movielens_10m_layout_has_no_users_file(tmp_path, params):
    folder = tmp_path / "ml-10m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("10::1::4.5::1217897793\n9::1::3::1217897794\n")
    (folder / "movies.dat").write_text("1::Toy Story (1995)::Adventure|Animation\n")
    metrics = ingest.run(movielens_params(params, folder), tmp_path)
    assert metrics["layout"] == "ml-10m"
    assert read_raw(tmp_path)["users"][C.USER_ID].tolist() == ["9", "10"]

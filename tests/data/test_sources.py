"""Ingest sources beyond the default: Amazon reviews (2018 / 2023), generic CSV / Parquet, increments.

Every fixture file is built here in tmp_path (nothing is downloaded). The bad-file cases check
that each error names the file, the line or column, and the fix.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline_tasks import ingest
from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import DataSourceError, ParamsError


def read_raw(root: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(root / C.DATA_RAW / table)


def write_jsonl(path: Path, records: list, gz: bool = False, tail: str = "") -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records) + tail
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def source(params: dict, name: str, path: Path) -> dict:
    params["ingest"]["source"] = name
    params["ingest"]["path"] = str(path)
    return params


# ---------------------------------------------------------------- Amazon reviews


def amazon_2018(folder: Path, extra: list | None = None) -> Path:
    reviews = [
        {
            "overall": 5.0,
            "verified": True,
            "reviewTime": "09 13, 2009",
            "reviewerID": "A1",
            "asin": "B001",
            "reviewerName": "x",
            "reviewText": "Great",
            "summary": "ok",
            "unixReviewTime": 1252800000,
        },
        {"overall": 3.0, "reviewerID": "A2", "asin": "B002", "unixReviewTime": 1252900000, "style": {"Format:": "x"}},
        {"overall": 4.0, "reviewerID": "A1", "asin": "B002", "unixReviewTime": 1253000000},
    ] + (extra or [])
    write_jsonl(folder / "Books_5.json", reviews)
    meta = [
        {
            "asin": "B001",
            "title": "The Sourdough Book",
            "description": ["<p>Bread &amp; more.</p>", "Second."],
            "category": ["Books", "Cooking"],
            "brand": "x",
            "feature": ["Hardcover"],
        },
        {"asin": "B002", "title": "Jazz Nights", "description": [], "category": ["Books", "Music"]},
        {"asin": "B003", "title": "Never Reviewed", "description": ["A cold-start item."], "category": []},
    ]
    write_jsonl(folder / "meta_Books.json.gz", meta, gz=True)
    return folder


def amazon_2023(folder: Path) -> Path:
    reviews = [
        {
            "rating": 5.0,
            "title": "Loved it",
            "text": "Nice",
            "images": [],
            "asin": "B0X1",
            "parent_asin": "P1",
            "user_id": "AE1",
            "timestamp": 1588687728923,
            "helpful_vote": 2,
            "verified_purchase": True,
        },
        {
            "rating": 2.0,
            "title": "Meh",
            "text": "",
            "images": [],
            "asin": "B0X2",
            "parent_asin": "P1",
            "user_id": "AE2",
            "timestamp": 1588687729000,
            "helpful_vote": 0,
            "verified_purchase": False,
        },
    ]
    write_jsonl(folder / "All_Beauty.jsonl.gz", reviews, gz=True)
    meta = [
        {
            "main_category": "All Beauty",
            "title": "Rose Face Cream",
            "average_rating": 4.1,
            "rating_number": 9,
            "features": ["Organic", "50 ml"],
            "description": ["Soothing cream."],
            "price": None,
            "images": [],
            "videos": [],
            "store": "S",
            "categories": ["Beauty", "Skin Care"],
            "details": {"a": 1},
            "parent_asin": "P1",
        }
    ]
    write_jsonl(folder / "meta_All_Beauty.jsonl", meta)
    return folder


def test_amazon_2018_layout_with_gzipped_meta(tmp_path, params):
    metrics = ingest.run(source(params, "amazon", amazon_2018(tmp_path / "amz")), tmp_path)
    assert metrics["layout"] == "amazon-2018"
    assert metrics["rows"] == {"interactions": 3, "items": 3, "users": 2}
    inter = read_raw(tmp_path, "interactions")
    assert inter[C.RATING].tolist() == [5.0, 3.0, 4.0] and set(inter[C.EVENT]) == {"review"}
    assert inter[C.TIMESTAMP][0] == pd.Timestamp(1252800000, unit="s", tz="UTC")
    items = read_raw(tmp_path, "items").set_index(C.ITEM_ID)
    assert items.loc["B001", C.TEXT] == (
        "The Sourdough Book. Categories: Books, Cooking. <p>Bread &amp; more.</p> Second. Hardcover"
    )
    assert items.loc["B003", C.TEXT] == "Never Reviewed. A cold-start item."  # in the catalogue, unreviewed
    assert sorted(read_raw(tmp_path, "users")[C.USER_ID]) == ["A1", "A2"]


def test_amazon_2023_layout_parent_asin_and_millisecond_times(tmp_path, params):
    metrics = ingest.run(source(params, "amazon", amazon_2023(tmp_path / "amz")), tmp_path)
    assert metrics["layout"] == "amazon-2023"
    inter = read_raw(tmp_path, "interactions")
    assert inter[C.ITEM_ID].tolist() == ["P1", "P1"], "2023 reviews are grouped by parent_asin"
    assert inter[C.TIMESTAMP][0] == pd.Timestamp("2020-05-05 14:08:48.923", tz="UTC")
    item = read_raw(tmp_path, "items").set_index(C.ITEM_ID).loc["P1"]
    assert item[C.TEXT] == "Rose Face Cream. Categories: Beauty, Skin Care. Organic 50 ml Soothing cream."


def test_amazon_broken_json_lines_are_kept_for_the_quarantine(tmp_path, params):
    good = [
        {"overall": 4.0, "reviewerID": f"U{i}", "asin": "B001", "unixReviewTime": 1252800000 + i} for i in range(200)
    ]
    folder = amazon_2018(tmp_path / "amz", extra=good + ['{"overall": 5.0, "reviewerID": "A9", "asin"'])
    metrics = ingest.run(source(params, "amazon", folder), tmp_path)
    assert metrics["malformed_lines"] == 1 and metrics["rows"]["interactions"] == 203
    bad = read_raw(tmp_path, "malformed")
    assert bad["line"].tolist() == [204] and bad["table"].tolist() == ["interactions"]
    assert bad["file"][0].endswith("Books_5.json") and "invalid JSON" in bad["error"][0]


# ---------------------------------------------------------------- generic CSV / Parquet


def generic_params(params: dict, folder: Path, **columns) -> dict:
    source(params, "generic", folder)
    params["ingest"]["generic"]["columns"].update(columns)
    return params


def test_generic_csv_with_a_column_map(tmp_path, params):
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "events.csv").write_text(
        "customer,sku,stars,when,kind\n"
        "c1,s1,5,2026-01-02T10:00:00Z,purchase\n"
        "c2,s1,,2026-01-03 11:00:00,view\n"
        "c2,s2,3.5,2026-01-04,purchase\n"
    )
    (folder / "catalogue.csv").write_text('sku,name,blurb\ns1,"Tea, green",Fresh leaves.\ns2,Mug,\n')
    (folder / "users.csv").write_text("customer,country\nc1,DE\nc2,FR\n")
    params = generic_params(
        params, folder, user_id="customer", item_id="sku", rating="stars", timestamp="when", event="kind", title="name"
    )
    params["ingest"]["generic"].update(
        interactions="events", items="catalogue.csv", timestamp_unit="iso", text_columns=["blurb"]
    )
    metrics = ingest.run(params, tmp_path)
    assert metrics["layout"] == "generic-csv"
    inter = read_raw(tmp_path, "interactions")
    assert inter[C.USER_ID].tolist() == ["c1", "c2", "c2"]
    assert inter[C.RATING].isna().tolist() == [False, True, False], "a blank rating is an implicit event"
    assert inter[C.EVENT].tolist() == ["purchase", "view", "purchase"]
    assert inter[C.TIMESTAMP].tolist()[2] == pd.Timestamp("2026-01-04", tz="UTC")
    items = read_raw(tmp_path, "items").set_index(C.ITEM_ID)
    assert items.loc["s1", C.TEXT] == "Tea, green. Fresh leaves." and items.loc["s2", C.TEXT] == "Mug."
    assert read_raw(tmp_path, "users").set_index(C.USER_ID).loc["c2", "country"] == "FR"


def test_generic_csv_description_over_several_lines_is_one_record(tmp_path, params):
    """A quoted field may hold newlines (RFC 4180; Office's product descriptions do): each such item is
    one record, not several malformed lines, and its text keeps every line."""
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,i1,1700000000\nu1,i2,1700000100\n")
    (folder / "items.csv").write_text(
        'item_id,title,description\ni1,Stapler,"Heavy duty.\nStaples 40 sheets.\r\n\nBlack."\ni2,"Pen,\nblue",Ink\n'
    )
    params = generic_params(params, folder, rating="")
    params["ingest"]["generic"]["timestamp_unit"] = "s"
    metrics = ingest.run(params, tmp_path)
    assert metrics["rows"]["items"] == 2 and metrics["malformed_lines"] == 0
    text = read_raw(tmp_path, "items").set_index(C.ITEM_ID)[C.TEXT]
    assert "Staples 40 sheets." in text["i1"] and "Black." in text["i1"] and text["i2"].startswith("Pen,")


def test_generic_parquet_folder_of_parts_and_epoch_milliseconds(tmp_path, params):
    folder = tmp_path / "lake"
    (folder / "interactions").mkdir(parents=True)
    for part in range(2):
        pd.DataFrame(
            {"uid": [10 + part, 20 + part], "iid": [1, 2], "ts": [1700000000000, 1700000001000], "rating": [1.0, 2.0]}
        ).to_parquet(folder / "interactions" / f"part-{part}.parquet")
    pd.DataFrame({"iid": [1, 2], "title": ["A", "B"], "description": ["a", "b"]}).to_parquet(folder / "items.parquet")
    params = generic_params(params, folder, user_id="uid", item_id="iid", timestamp="ts")
    params["ingest"]["generic"]["timestamp_unit"] = "ms"
    metrics = ingest.run(params, tmp_path)
    assert metrics["layout"] == "generic-parquet"
    assert metrics["rows"] == {"interactions": 4, "items": 2, "users": 4}
    inter = read_raw(tmp_path, "interactions")
    assert sorted(inter[C.USER_ID]) == ["10", "11", "20", "21"] and inter[C.ITEM_ID].map(type).eq(str).all()
    assert inter[C.TIMESTAMP].min() == pd.Timestamp(1700000000, unit="s", tz="UTC")
    assert read_raw(tmp_path, "items").set_index(C.ITEM_ID).loc["2", C.TEXT] == "B. b"


def test_generic_malformed_lines_are_numbered_and_kept(tmp_path, params):
    folder = tmp_path / "shop"
    folder.mkdir()
    rows = [f"u{i},i1,4,{1700000000 + i}\n" for i in range(300)]
    (folder / "interactions.csv").write_text(
        "user_id,item_id,rating,timestamp\n"
        + "".join(rows[:10])
        + "u9,i1,four,1700000000\nu9,i1\n"
        + "".join(rows[10:])
    )
    (folder / "items.csv").write_text("item_id,title,description\ni1,Tea,Green\n")
    metrics = ingest.run(source(params, "generic", folder), tmp_path)
    assert metrics["rows"]["interactions"] == 300 and metrics["malformed_lines"] == 2
    bad = read_raw(tmp_path, "malformed").sort_values("line")
    assert bad["line"].tolist() == [12, 13]
    assert bad["text"].tolist() == ["u9,i1,four,1700000000", "u9,i1"]
    assert "rating='four' is not a number" in bad["error"].iloc[0] and "2 fields" in bad["error"].iloc[1]


# ---------------------------------------------------------------- the bad-file catalogue


def generic_folder(tmp_path: Path, interactions: bytes) -> Path:
    folder = tmp_path / "shop"
    folder.mkdir(exist_ok=True)
    (folder / "interactions.csv").write_bytes(interactions)
    (folder / "items.csv").write_text("item_id,title,description\ni1,Tea,Green\n")
    return folder


HEADER = b"user_id,item_id,rating,timestamp\n"


@pytest.mark.parametrize(
    "problem, content, match",
    [
        (
            "wrong delimiter",
            b"user_id;item_id;rating;timestamp\nu1;i1;4;1700000000\n",
            r"interactions\.csv: line 1 \(the header\).*looks semicolon-separated.*ingest\.generic\.delimiter",
        ),
        (
            "missing column",
            b"user_id,item_id,rating\nu1,i1,4\n",
            r"interactions\.csv: required column 'timestamp' \(timestamp\) is missing"
            r".*ingest\.generic\.columns\.timestamp",
        ),
        (
            "renamed column",
            b"user_id,item_id,rating,time_stamp\nu1,i1,4,1700000000\n",
            r"interactions\.csv: column 'timestamp'.*'time_stamp': it looks renamed.*columns\.timestamp: time_stamp",
        ),
        ("empty file", b"", r"interactions\.csv is empty"),
        (
            "non-UTF-8",
            HEADER + b"u1,i1,4,1700000000\nZo\xeb,i1,4,1700000001\n",
            r"interactions\.csv: line 3, column 3 holds byte 0xeb.*not UTF-8.*re-save it as UTF-8",
        ),
        (
            "truncated last line",
            HEADER + b"u1,i1,4,1700000000\nu2,i1",
            r"interactions\.csv: line 3 \(the last\) is cut off.*truncated",
        ),
    ],
)
def test_bad_generic_files_name_the_file_the_place_and_the_fix(tmp_path, params, problem, content, match):
    folder = generic_folder(tmp_path, content)
    with pytest.raises(DataSourceError, match=match):
        ingest.run(source(params, "generic", folder), tmp_path)
    assert not (tmp_path / C.DATA_RAW).exists(), "nothing is written when the source is broken"


def test_folder_without_data_files(tmp_path, params):
    folder = tmp_path / "amz"
    folder.mkdir()
    (folder / "README.txt").write_text("reviews go here")
    with pytest.raises(DataSourceError, match=r"amz holds no Amazon reviews JSON Lines files.*found: README\.txt"):
        ingest.run(source(params, "amazon", folder), tmp_path)
    with pytest.raises(
        DataSourceError, match=r"holds no 'interactions' table.*found: README\.txt.*generic\.interactions"
    ):
        ingest.run(source(params, "generic", folder), tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataSourceError, match=r"empty folder: no data files"):
        ingest.run(source(params, "movielens", empty), tmp_path)


def test_amazon_renamed_field_truncated_gzip_and_missing_meta(tmp_path, params):
    folder = amazon_2018(tmp_path / "a")
    write_jsonl(folder / "Books_5.json", [{"overall": 5.0, "reviewer_id": "A1", "asin": "B1", "unixReviewTime": 1}])
    with pytest.raises(DataSourceError, match=r"Books_5\.json: column 'reviewerID'.*'reviewer_id': it looks renamed"):
        ingest.run(source(params, "amazon", folder), tmp_path)

    folder = amazon_2023(tmp_path / "b")
    whole = (folder / "All_Beauty.jsonl.gz").read_bytes()
    (folder / "All_Beauty.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataSourceError, match=r"All_Beauty\.jsonl\.gz .*(cut off|damaged)"):
        ingest.run(source(params, "amazon", folder), tmp_path)

    folder = amazon_2023(tmp_path / "c")
    (folder / "meta_All_Beauty.jsonl").unlink()
    with pytest.raises(DataSourceError, match=r"no meta_\* file"):
        ingest.run(source(params, "amazon", folder), tmp_path)


def test_truncated_jsonl_record_names_the_last_line(tmp_path, params):
    folder = amazon_2023(tmp_path / "amz")
    write_jsonl(
        folder / "All_Beauty.jsonl",
        [{"rating": 5.0, "parent_asin": "P1", "user_id": "U", "timestamp": 1}],
        tail='{"rating": 4.0, "parent_asin": "P1", "us',
    )
    (folder / "All_Beauty.jsonl.gz").unlink()
    with pytest.raises(DataSourceError, match=r"All_Beauty\.jsonl: line 2 \(the last\) is cut off mid-record"):
        ingest.run(source(params, "amazon", folder), tmp_path)


def test_movielens_truncated_last_line(tmp_path, params):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t4\t881250949\n2\t2")
    (folder / "u.item").write_text("1|Heat (1995)|01-Jan-1995||http://y|" + "|".join(["0"] * 19) + "\n")
    (folder / "u.user").write_text("1|24|M|technician|85711\n")
    with pytest.raises(DataSourceError, match=r"u\.data: line 2 \(the last\) is cut off: 2 of 4 fields"):
        ingest.run(source(params, "movielens", folder), tmp_path)


def test_cli_prints_a_source_error_without_traceback(tmp_path, capsys):
    folder = generic_folder(tmp_path, b"user_id;item_id;rating;timestamp\nu1;i1;4;1\n")
    code = ingest.main(
        ["--root", str(tmp_path), "--no-mlflow", "--set", "ingest.source=generic", "--set", f"ingest.path={folder}"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "DataSourceError" in err and "interactions.csv: line 1" in err and "Traceback" not in err


def test_movielens_25m_layout_ignores_extra_files_and_reads_quoted_tags(tmp_path, params):
    folder = tmp_path / "ml-25m"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n2,296,3.5,1147868817\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n296,Pulp Fiction (1994),Comedy|Crime|Drama|Thriller\n")
    (folder / "tags.csv").write_text(
        'userId,movieId,tag,timestamp\n3,296,"dark comedy, violent",1\n4,296,cult,2\n5,296,cult,3\n'
    )
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n296,0110912,680\n")
    (folder / "genome-scores.csv").write_text("movieId,tagId,relevance\n296,1,0.5\n")
    metrics = ingest.run(source(params, "movielens", folder), tmp_path)
    assert metrics["layout"] == "ml-csv"
    text = read_raw(tmp_path, "items").set_index(C.ITEM_ID).loc["296", C.TEXT]
    assert text == "Pulp Fiction (1994). Genres: Comedy, Crime, Drama, Thriller. Tags: cult, dark comedy, violent."


# ---------------------------------------------------------------- nightly increments


def test_increments_add_batches_and_the_cutoff_picks_them(tmp_path, params):
    base = ingest.run(params, tmp_path)
    day1 = ingest.run(params | {"ingest": {**params["ingest"], "batch": "2026-06-30"}}, tmp_path)
    assert day1["batches"] == ["base", "2026-06-30"]
    assert day1["rows"]["interactions"] == base["rows"]["interactions"] + day1["batch_rows"]["interactions"]
    new_items = read_raw(tmp_path, "items")
    assert new_items[C.ITEM_ID].str.startswith("d0001-").sum() == params["ingest"]["synthetic"]["new_items_per_day"]
    stamps = pd.read_parquet(tmp_path / "data/batches/2026-06-30/interactions")[C.TIMESTAMP]
    genuine = stamps[stamps.dt.year < 2090]
    assert genuine.min() >= pd.Timestamp("2026-06-30", tz="UTC")
    assert genuine.max() < pd.Timestamp("2026-07-01", tz="UTC")

    params["ingest"]["synthetic"]["day"] = 2  # day 2 = 2026-07-01, named by its date
    day2 = ingest.run(params, tmp_path)
    assert day2["batch"] == "2026-07-01" and day2["batches"] == ["base", "2026-06-30", "2026-07-01"]
    again = ingest.run(params, tmp_path)  # a retry replaces its own batch: nothing doubles
    assert again["rows"] == day2["rows"]

    params["ingest"]["synthetic"]["day"] = 1  # a backfill of day 1 sees nothing after it
    assert ingest.run(params, tmp_path)["batches"] == ["base", "2026-06-30"]
    params["ingest"]["cutoff"] = "2026-12-31"
    assert ingest.run(params, tmp_path)["batches"] == ["base", "2026-06-30", "2026-07-01"]
    truth = pd.read_parquet(tmp_path / C.GROUND_TRUTH / "injected")
    assert (truth[C.USER_ID] == "d0002-bot1").sum() == params["ingest"]["synthetic"]["dirt"]["bot_events"]

    params["ingest"].update(cutoff="", batch="")
    params["ingest"]["synthetic"]["day"] = 0
    assert ingest.run(params, tmp_path)["batches"] == ["base"], "a full load starts over"


def test_a_day_is_the_same_whatever_came_before(tmp_path, params):
    from pipeline_tasks.data.synthetic import generate_day

    cfg = params["ingest"]["synthetic"]
    first = generate_day(cfg, 42, 3)
    pd.testing.assert_frame_equal(first.interactions, generate_day(cfg, 42, 3).interactions)
    assert not first.interactions.equals(generate_day(cfg, 42, 4).interactions)


def test_an_increment_without_a_full_load_loads_the_history_first(tmp_path, params):
    """A scheduled pipeline can start on any night: its first increment brings the history with it."""
    params["ingest"]["batch"] = "2026-07-01"
    assert ingest.run(params, tmp_path)["batches"] == ["base", "2026-07-01"]
    assert len(pd.read_parquet(tmp_path / C.DATA_RAW / "interactions")) > 1000  # the history, not one day


def test_increment_params_are_checked(tmp_path, params):
    ingest.run(params | {"ingest": {**params["ingest"], "batch": ""}}, tmp_path)
    for change, match in [
        ({"batch": "2026-07-01", "cutoff": "2026-06-01"}, r"cutoff '2026-06-01' is before ingest\.batch"),
        ({"batch": "tonight"}, r"synthetic increment is named by its date"),
        ({"batch": "../x"}, r"not a usable batch id"),
        ({"batch": "2026-03-01"}, r"is synthetic day -\d+"),
    ]:
        with pytest.raises(ParamsError, match=match):
            ingest.run(params | {"ingest": {**params["ingest"], **change}}, tmp_path)


@pytest.mark.slow
def test_dvc_keeps_earlier_batches_when_an_increment_is_ingested(tmp_path):
    """Real `dvc repro ingest`: data/batches persists across runs, so increments accumulate."""
    import os
    import subprocess
    import sys

    from pipeline_tasks.ops.run_params import write_run_params
    from tests.conftest import make_project

    project = make_project(tmp_path / "project", tmp_path / "no-encoder")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def repro() -> str:
        done = subprocess.run(["dvc", "repro", "ingest"], cwd=project, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    nightly_config = (project / "params.yaml").read_bytes()
    write_run_params(project, [])
    repro()
    write_run_params(project, ["ingest.batch='2026-06-30'"])  # written quoted: DVC refuses a YAML date
    assert "Running stage 'ingest'" in repro()
    assert (project / "params.yaml").read_bytes() == nightly_config  # the run's params are its own
    assert sorted(p.name for p in (project / "data/batches").iterdir()) == ["2026-06-30", "base"]
    assert sorted(p.name for p in (project / C.DATA_RAW / "interactions").iterdir()) == [
        "part-2026-06-30.parquet",
        "part-base.parquet",
    ]
    assert "didn't change" in repro()


def test_movielens_csv_header_with_a_renamed_column(tmp_path, params):
    folder = tmp_path / "ml-latest"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,stars,timestamp\n1,1,4.0,964982703\n")
    (folder / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Animation\n")
    with pytest.raises(
        DataSourceError, match=r"ratings\.csv: column 'rating'.*'stars': it looks renamed; rename it back"
    ):
        ingest.run(source(params, "movielens", folder), tmp_path)

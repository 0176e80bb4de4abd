"""Stage clean (PySpark): every rule, exact accounting, ground truth on the synthetic data, atomic writes."""

from __future__ import annotations

import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_tasks import clean, ingest
from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.data import cleaning

pytestmark = pytest.mark.spark

T0 = pd.Timestamp("2026-03-01 12:00:00", tz="UTC")
# What each injected kind of dirt must be quarantined as.
EXPECTED_REASON = {
    "duplicate": "duplicate",
    "null_id": "invalid_id",
    "bad_rating": "rating_out_of_range",
    "future_timestamp": "future_timestamp",
    "orphan_item": "orphan_item",
    "bot": "bot_minute",  # hundreds of events within minutes
}


def read(root: Path, folder: str, table: str) -> pd.DataFrame:
    return pd.read_parquet(root / folder / table)


def keys(df: pd.DataFrame) -> list[tuple]:
    """Row identity: user, item, rating, timestamp (ns), event; nulls (and blank ids) as None."""
    stamps = pd.to_datetime(df[C.TIMESTAMP], utc=True)
    nanos = [None if pd.isna(t) else int(t.value) for t in stamps]
    ids = df[[C.USER_ID, C.ITEM_ID]].replace(r"^\s*$", None, regex=True)
    return [
        tuple(None if pd.isna(v) else v for v in row)
        for row in zip(ids[C.USER_ID], ids[C.ITEM_ID], df[C.RATING], nanos, df[C.EVENT])
    ]


def assert_accounting(metrics: dict) -> None:
    for table in C.TABLES:
        m = metrics[table]
        assert m["rows_in"] == m["rows_kept"] + m["rows_quarantined"], table
        assert m["rows_quarantined"] == sum(m["by_rule"].values()), table


# ---------------------------------------------------------------- the default synthetic data


def local_params() -> dict:
    """Default params on a 2-thread local Spark (what the module-scoped runs below share)."""
    from pipeline_tasks.core import params as P

    params = P.defaults()
    params["spark"]["master"], params["spark"]["shuffle_partitions"] = "local[2]", 2
    return params


@pytest.fixture(scope="module")
def synthetic_run(spark, tmp_path_factory):
    params = local_params()
    root = tmp_path_factory.mktemp("synthetic")
    ingest.run(params, root)
    return root, clean.run(params, root)


@pytest.fixture(scope="module")
def incremental_run(spark, tmp_path_factory):
    """The history, then two nightly increments (days 1 and 2: new items, events, a bot each)."""
    params = local_params()
    root = tmp_path_factory.mktemp("increments")
    ingest.run(params, root)
    for day in (1, 2):
        params["ingest"]["synthetic"]["day"] = day
        assert ingest.run(params, root)["batches"][-1] == str(
            (pd.Timestamp("2026-06-29") + pd.Timedelta(days=day)).date()
        )
    return root, clean.run(params, root)


@pytest.mark.parametrize("run_name", ["synthetic_run", "incremental_run"])
def test_cleaning_removes_every_injected_row_and_no_good_one(run_name, request):
    root, metrics = request.getfixturevalue(run_name)
    raw = read(root, C.DATA_RAW, "interactions")
    injected = read(root, C.GROUND_TRUTH, "injected")
    kept = read(root, C.DATA_CLEAN, "interactions")
    quarantined = read(root, C.DATA_QUARANTINE, "interactions")
    dirty = injected[injected["table"] == "interactions"]
    good = Counter(keys(raw)) - Counter(keys(dirty))

    # Every injected row is quarantined, for the reason its defect calls for.
    by_rule = quarantined[~quarantined[C.REASON].isin(["kcore", "item_removed"])]
    assert Counter(zip(keys(by_rule), by_rule[C.REASON])) == Counter(
        zip(keys(dirty), dirty["kind"].map(EXPECTED_REASON))
    )
    # Good rows are kept, except those thinned out by k-core or whose item's text was broken.
    broken_items = set(injected.loc[injected["kind"] == "broken_text", C.ITEM_ID])
    removed_with_item = quarantined[quarantined[C.REASON] == "item_removed"]
    assert set(removed_with_item[C.ITEM_ID]) == broken_items
    thinned = quarantined[quarantined[C.REASON] == "kcore"]
    assert Counter(keys(kept)) + Counter(keys(thinned)) + Counter(keys(removed_with_item)) == good
    assert not kept[C.ITEM_ID].isin(broken_items).any()
    assert metrics["interactions"]["by_rule"]["kcore"] < 0.05 * len(raw)


@pytest.mark.parametrize("run_name", ["synthetic_run", "incremental_run"])
def test_synthetic_tables_quarantine_broken_items_and_bots(run_name, request):
    root, metrics = request.getfixturevalue(run_name)
    injected = read(root, C.GROUND_TRUTH, "injected")
    bad_items = read(root, C.DATA_QUARANTINE, "items")
    assert set(bad_items[C.ITEM_ID]) == set(injected.loc[injected["kind"] == "broken_text", C.ITEM_ID])
    assert set(bad_items[C.REASON]) == {"empty_text"}
    bad_users = read(root, C.DATA_QUARANTINE, "users")
    assert set(bad_users[C.USER_ID]) == set(injected.loc[injected["kind"] == "bot", C.USER_ID])
    assert_accounting(metrics)
    assert metrics["kcore"]["converged"]


def test_clean_synthetic_data_is_still_a_real_dataset(synthetic_run):
    root, _ = synthetic_run
    inter = read(root, C.DATA_CLEAN, "interactions")
    items = read(root, C.DATA_CLEAN, "items")
    assert inter[C.USER_ID].nunique() >= 250 and items[C.ITEM_ID].nunique() >= 300
    assert inter.groupby(C.USER_ID).size().min() >= 5 and inter.groupby(C.ITEM_ID).size().min() >= 3
    assert str(inter[C.TIMESTAMP].dtype) == "datetime64[us, UTC]"
    assert inter[C.ITEM_ID].isin(items[C.ITEM_ID]).all()
    text = items[C.TEXT]
    assert not text.str.contains(r"<|&amp;|\s\s|^\s|\s$", regex=True).any()
    assert (text.map(lambda t: t == unicodedata.normalize("NFC", t))).all()


# ---------------------------------------------------------------- every rule on a hand-made frame


def row(user, item, rating=4.0, minutes=0.0, event="rating", at=None) -> dict:
    stamp = at if at is not None else T0 + pd.Timedelta(minutes=minutes)
    return {C.USER_ID: user, C.ITEM_ID: item, C.RATING: rating, C.TIMESTAMP: stamp, C.EVENT: event}


def hand_made_rows() -> list[tuple[dict, str | None]]:
    """(raw row, expected reason or None = kept)."""
    cases = [
        (row("u1", "i1"), None),
        (row("u1", "i2", rating=None, minutes=1, event="click"), None),  # implicit: no rating is fine
        (row(None, "i1", minutes=2), "invalid_id"),
        (row("u1", "  ", minutes=3), "invalid_id"),
        (row("u1", "i3", at=pd.NaT), "missing_timestamp"),
        (row("u1", "i1", rating=6.0, minutes=4), "rating_out_of_range"),
        (row("u1", "i1", rating=0.0, minutes=5), "rating_out_of_range"),
        (row("u1", "i1", at=pd.Timestamp("2095-01-01", tz="UTC")), "future_timestamp"),
        (row("u1", "i1", at=pd.Timestamp("1985-01-01", tz="UTC")), "timestamp_before_floor"),
        (row("u2", "i1", minutes=10), None),
        (row("u2", "i1", minutes=10), "duplicate"),
        (row("u2", "i2", rating=5.0, minutes=11), None),
        (row("u2", "i2", rating=3.0, minutes=11), "duplicate_key"),  # same user, item, time: the best is kept
        (row("u2", "i999", minutes=12), "orphan_item"),
        (row("u2", "i_broken", minutes=13), "item_removed"),
        (row("u2", "i3", rating=1.0, minutes=14), "below_implicit_threshold"),
    ]
    bot_start = T0 + pd.Timedelta(minutes=20)  # 70 events within 35 seconds
    cases += [
        (row("u_bot", f"i{k % 3 + 1}", at=bot_start + pd.Timedelta(seconds=k // 2)), "bot_minute") for k in range(70)
    ]
    return cases


def write_raw(root: Path, interactions: list[dict], items: pd.DataFrame, users: pd.DataFrame) -> None:
    frame = pd.DataFrame(interactions, columns=C.INTERACTION_COLUMNS)
    frame[C.TIMESTAMP] = pd.to_datetime(frame[C.TIMESTAMP], utc=True).astype("datetime64[us, UTC]")
    frame[C.RATING] = frame[C.RATING].astype(float)
    io.write_table(frame, root / C.DATA_RAW / "interactions")
    io.write_table(items, root / C.DATA_RAW / "items")
    io.write_table(users, root / C.DATA_RAW / "users")


def hand_made_items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            C.ITEM_ID: ["i1", "i2", "i3", "i_broken", "i1", None],
            C.TITLE: ["One", "Two", "Three", "Broken", "One (short)", "Nobody"],
            C.TEXT: [
                "<p>Jazz &amp; blues,\n  late   at night.</p>",
                "Cafe\u0301 culture",
                "x" * 50,
                "<div>&nbsp;</div>",
                "Jazz",
                "orphaned text",
            ],
        }
    )


def hand_made_users() -> pd.DataFrame:
    return pd.DataFrame({C.USER_ID: ["u1", "u2", "u_bot", "u1", None], "gender": ["F", "M", "M", "F", "F"]})


@pytest.fixture
def tiny_params(params) -> dict:
    params["clean"].update(kcore_users=1, kcore_items=1, implicit_min_rating=2.0, text_max_chars=20)
    return params


def test_each_rule_quarantines_its_rows_with_its_reason(spark, tmp_path, tiny_params):
    cases = hand_made_rows()
    write_raw(tmp_path, [r for r, _ in cases], hand_made_items(), hand_made_users())
    metrics = clean.run(tiny_params, tmp_path)

    expected = Counter(reason for _, reason in cases if reason)
    got = metrics["interactions"]["by_rule"]
    assert {k: v for k, v in got.items() if v} == dict(expected)
    quarantined = read(tmp_path, C.DATA_QUARANTINE, "interactions")
    assert Counter(zip(keys(quarantined), quarantined[C.REASON])) == Counter(
        zip(keys(pd.DataFrame([r for r, why in cases if why])), [why for _, why in cases if why])
    )
    kept = read(tmp_path, C.DATA_CLEAN, "interactions")
    assert sorted(keys(kept), key=str) == sorted(keys(pd.DataFrame([r for r, why in cases if not why])), key=str)
    assert_accounting(metrics)

    items = read(tmp_path, C.DATA_CLEAN, "items").set_index(C.ITEM_ID)
    assert items.loc["i1", C.TEXT] == "Jazz & blues, late a"  # tags, entities, spaces; capped at 20
    assert items.loc["i2", C.TEXT] == "Caf\u00e9 culture"  # NFC
    assert items.loc["i1", C.TITLE] == "One"  # the richer duplicate wins
    bad_items = read(tmp_path, C.DATA_QUARANTINE, "items")
    assert Counter(bad_items[C.REASON]) == {"empty_text": 1, "duplicate_item": 1, "invalid_id": 1}
    bad_users = read(tmp_path, C.DATA_QUARANTINE, "users")
    assert Counter(bad_users[C.REASON]) == {"bot_minute": 1, "duplicate_user": 1, "invalid_id": 1}
    assert metrics["items"]["rows_in"] == 6 and metrics["users"]["rows_kept"] == 2


def test_source_position_is_kept_and_is_not_part_of_a_duplicate(spark, tmp_path, tiny_params):
    """Rows identical but for their source position are exact duplicates; the first in the source stays."""
    rows = [row("u1", "i1"), row("u1", "i2", minutes=1), row("u1", "i1"), row("u1", "i3", minutes=2)]
    write_raw(tmp_path, rows, hand_made_items(), hand_made_users())
    raw = io.read_table(tmp_path / C.DATA_RAW / "interactions")
    raw[C.SOURCE_ROW] = [7, 8, 5, 9]  # the repeated (u1, i1) came first in the source as row 5
    io.write_table(raw, tmp_path / C.DATA_RAW / "interactions")
    metrics = clean.run(tiny_params, tmp_path)
    assert metrics["interactions"]["by_rule"]["duplicate"] == 1
    assert metrics["interactions"]["by_rule"]["duplicate_key"] == 0
    kept = read(tmp_path, C.DATA_CLEAN, "interactions")
    assert sorted(kept[C.SOURCE_ROW]) == [5, 8, 9]
    assert read(tmp_path, C.DATA_QUARANTINE, "interactions")[C.SOURCE_ROW].tolist() == [7]


def test_repeats_skip_quarantined_rows_and_bursts_count_only_live_rows(spark, tmp_path, tiny_params, caplog):
    """One sort per user flags repeats and counts each user's events per minute: a quarantined row
    with a kept row's key is no repeat of it, and a duplicate is no event of a burst."""
    minute = T0 + pd.Timedelta(minutes=30)
    rows = [
        row("u1", "i1", rating=4.0),
        row("u1", "i1", rating=9.0),
        row("u1", "i1", rating=4.0),
        row("u1", "i1", rating=3.0),
    ]  # kept, out of range, duplicate, duplicate_key: all one key
    burst = [row("u3", f"i{k % 3 + 1}", at=minute + pd.Timedelta(seconds=k / 2)) for k in range(60)]
    rows += burst + burst[:1]  # 61 rows in one minute, one of them a duplicate: 60 events, not a bot
    rows += [row("u4", f"i{k % 3 + 1}", at=minute + pd.Timedelta(seconds=k / 2)) for k in range(61)]  # a bot
    write_raw(tmp_path, rows, hand_made_items(), hand_made_users())
    with caplog.at_level("INFO", logger="pipeline_tasks.clean"):
        metrics = clean.run(tiny_params, tmp_path)
    by_rule = {rule: n for rule, n in metrics["interactions"]["by_rule"].items() if n}
    assert by_rule == {"rating_out_of_range": 1, "duplicate": 2, "duplicate_key": 1, "bot_minute": 61}
    kept = read(tmp_path, C.DATA_CLEAN, "interactions")
    assert kept.groupby(C.USER_ID).size().to_dict() == {"u1": 1, "u3": 60}
    assert kept.loc[kept[C.USER_ID] == "u1", C.RATING].tolist() == [4.0]
    # Each materialised step logs its duration (what bench_clean.py records as phases_s).
    phases = [r.args[0] for r in caplog.records if r.msg.startswith("clean phase")]
    assert {"interactions: coerce, range rules, duplicates", "interactions: bot users", "write interactions"} <= set(
        phases
    )


def test_rows_lost_on_the_way_to_disk_stop_the_run(spark, tmp_path, tiny_params, monkeypatch):
    """Interactions are counted in the written files: a write that loses rows fails the run and
    leaves the previous clean data in place."""
    write_raw(tmp_path, [row("u1", "i1"), row("u2", "i2", minutes=1)], hand_made_items(), hand_made_users())
    clean.run(tiny_params, tmp_path)
    before = read(tmp_path, C.DATA_CLEAN, "interactions")
    real_write = cleaning.write_parquet

    def lose_a_row(df, path, files):  # fault injection: a writer that drops data silently
        real_write(df.limit(1) if path.name == "interactions" and "quarantine" not in str(path) else df, path, files)

    monkeypatch.setattr(cleaning, "write_parquet", lose_a_row)
    with pytest.raises(PipelineError, match="wrote 1 interactions for 2 raw ones"):
        clean.run(tiny_params, tmp_path)
    pd.testing.assert_frame_equal(read(tmp_path, C.DATA_CLEAN, "interactions"), before)


def test_placeholder_policy_keeps_orphans_and_adds_catalogue_rows(spark, tmp_path, tiny_params):
    tiny_params["clean"]["orphan_policy"] = "placeholder"
    write_raw(
        tmp_path,
        [row("u1", "i1"), row("u1", "i999", minutes=1), row("u1", "i998", minutes=2)],
        hand_made_items(),
        hand_made_users(),
    )
    metrics = clean.run(tiny_params, tmp_path)
    assert metrics["interactions"]["rows_kept"] == 3
    assert metrics["items"]["rows_added"] == 2
    items = read(tmp_path, C.DATA_CLEAN, "items").set_index(C.ITEM_ID)
    assert items.loc["i999", C.TEXT] == "Unknown item"
    assert len(items) == metrics["items"]["rows_kept"] + metrics["items"]["rows_added"]
    assert_accounting(metrics)


def frame(spark, rows: list[dict]):
    """A flagged interactions frame (no reason yet), as the rules downstream of coercion see it."""
    from pyspark.sql import functions as F

    pdf = pd.DataFrame(rows, columns=C.INTERACTION_COLUMNS).astype({C.RATING: float})
    pdf[C.TIMESTAMP] = pd.to_datetime(pdf[C.TIMESTAMP], utc=True)
    return spark.createDataFrame(pdf).withColumn(C.REASON, F.lit(None).cast("string"))


def test_kcore_iterates_until_stable(spark, params):
    # A cascade: u3 (1 rating) goes, then i3 (now 1 rating), then u2 (now 1 rating): three passes.
    rows = [
        row("u1", "i1"),
        row("u1", "i2", minutes=1),
        row("u2", "i1", minutes=2),
        row("u2", "i3", minutes=3),
        row("u3", "i3", minutes=4),
        row("u4", "i1", minutes=5),
        row("u4", "i2", minutes=6),
    ]
    params["clean"].update(kcore_users=2, kcore_items=2)
    flagged, stats = cleaning.flag_kcore(frame(spark, rows), params["clean"])
    survivors = {(r[C.USER_ID], r[C.ITEM_ID]) for r in flagged.filter("reason is null").collect()}
    assert survivors == {("u1", "i1"), ("u1", "i2"), ("u4", "i1"), ("u4", "i2")}
    assert stats == {"iterations": 3, "converged": True}
    params["clean"]["kcore_max_iterations"] = 1
    assert cleaning.flag_kcore(frame(spark, rows), params["clean"])[1] == {"iterations": 1, "converged": False}


def bot_rules(interactions, params: dict) -> dict[str, str]:
    """{user: the bot rule that caught them} for one frame (cleaning.bot_users, collected: it is small)."""
    return {r[C.USER_ID]: r[C.REASON] for r in cleaning.bot_users(interactions, params["clean"]).collect()}


def test_bots_by_burst_and_by_zscore(spark, params):
    people = [row(f"u{u}", f"i{k}", minutes=u * 600 + k * 30) for u in range(30) for k in range(5)]
    burst = [row("burst", f"i{k}", minutes=k / 100) for k in range(61)]  # 61 in one minute
    steady = [row("steady", f"i{k}", minutes=k * 5) for k in range(300)]  # many, but slowly
    spark_frame = frame(spark, people + burst + steady)
    # 32 users, "steady" with 300 events: below the default floors, so lowered for this small world.
    params["clean"].update(bot_outlier_min_users=30, bot_outlier_min_events=300)
    params["clean"]["bot_max_events_zscore"] = 0.0
    assert bot_rules(spark_frame, params) == {"burst": "bot_minute"}
    params["clean"]["bot_max_events_zscore"] = 4.0
    # Over half the users share one count (MAD 0): the mean absolute deviation is the spread.
    assert bot_rules(spark_frame, params) == {"burst": "bot_minute", "steady": "bot_outlier"}


MINUTE, HOUR, DAY = 60, 3600, 86400  # seconds


def paced(user: str, per_window: int, seconds: int, windows: int, start: pd.Timestamp = T0) -> list[dict]:
    """A script pacing itself: `per_window` events evenly spread over each of `windows` consecutive
    windows of `seconds` (items i1..i3)."""
    gap = pd.Timedelta(seconds=seconds / per_window)
    return [
        row(user, f"i{k % 3 + 1}", at=start + pd.Timedelta(seconds=w * seconds) + k * gap)
        for w in range(windows)
        for k in range(per_window)
    ]


def paced_bots(cfg: dict) -> dict[str, tuple[list[dict], str]]:
    """{user: (rows, rule expected to catch them)}: scripts at and just under the minute cap for an
    hour, and at and just under the hour cap for a day (T0 is noon: the day spans two UTC days)."""
    minute_cap, hour_cap = cfg["bot_max_events_per_minute"], cfg["bot_max_events_per_hour"]
    return {
        "at_minute_cap": (paced("at_minute_cap", minute_cap, MINUTE, 60), "bot_hour"),
        "under_minute_cap": (paced("under_minute_cap", minute_cap - 1, MINUTE, 60), "bot_hour"),
        "at_hour_cap": (paced("at_hour_cap", hour_cap, HOUR, 24), "bot_day"),
        "under_hour_cap": (paced("under_hour_cap", hour_cap - 1, HOUR, 24), "bot_day"),
    }


def under_every_cap(cfg: dict) -> list[dict]:
    """A heavy real user's day: exactly each cap in one minute, its hour and its day, never above."""
    minute_cap, hour_cap, day_cap = (cfg[f"bot_max_events_per_{w}"] for w in ("minute", "hour", "day"))
    burst = paced("heavy", minute_cap, MINUTE, 1)
    rest_of_hour = paced("heavy", hour_cap - minute_cap, HOUR - MINUTE, 1, T0 + pd.Timedelta(minutes=1))
    rest_of_day = paced("heavy", day_cap - hour_cap, (day_cap - hour_cap) * MINUTE, 1, T0 + pd.Timedelta(hours=2))
    return burst + rest_of_hour + rest_of_day


def test_paced_bots_are_caught_by_the_next_window_and_a_heavy_person_is_kept(spark, tmp_path, tiny_params):
    """Issue 17: a script pacing at (or just under) one cap for long enough breaks the next window's;
    a person at every cap but over none stays. The stage quarantines each bot's rows and user row
    with the rule that caught it and counts them per rule."""
    cfg = tiny_params["clean"]
    bots = paced_bots(cfg)
    people = [row("u1", "i1"), row("u2", "i2", minutes=1)]
    heavy = under_every_cap(cfg)
    interactions = people + heavy + [r for rows, _ in bots.values() for r in rows]
    users = pd.DataFrame({C.USER_ID: ["u1", "u2", "heavy", *bots], "gender": "F"})
    write_raw(tmp_path, interactions, hand_made_items(), users)
    metrics = clean.run(tiny_params, tmp_path)

    expected = Counter()
    for rows, rule in bots.values():
        expected[rule] += len(rows)
    assert {rule: n for rule, n in metrics["interactions"]["by_rule"].items() if n} == dict(expected)
    quarantined = read(tmp_path, C.DATA_QUARANTINE, "interactions")
    assert quarantined.groupby(C.USER_ID)[C.REASON].unique().map(list).to_dict() == {
        user: [rule] for user, (_, rule) in bots.items()
    }
    bad_users = read(tmp_path, C.DATA_QUARANTINE, "users")
    assert dict(zip(bad_users[C.USER_ID], bad_users[C.REASON], strict=True)) == {
        user: rule for user, (_, rule) in bots.items()
    }
    kept = read(tmp_path, C.DATA_CLEAN, "interactions")
    assert kept.groupby(C.USER_ID).size().to_dict() == {"u1": 1, "u2": 1, "heavy": len(heavy)}
    assert metrics["interactions"]["rows_in"] == len(interactions)
    assert_accounting(metrics)
    assert set(cleaning.BOT_RULES) <= set(metrics["interactions"]["by_rule"]) & set(metrics["users"]["by_rule"])


def population(n_users: int) -> list[dict]:
    """`n_users` people with 5 to 44 events each, ten minutes apart (no cap comes near)."""
    return [row(f"u{u}", f"i{k}", minutes=u * 1000 + k * 10) for u in range(n_users) for k in range(5 + u % 40)]


def test_robust_zscore_flags_an_extreme_account_above_its_floors(spark, params):
    """A script pacing under every cap for days (1000 events a day) is caught only by its total, far
    out of a population of 120; an account as far out but with fewer than bot_outlier_min_events, or
    a population under bot_outlier_min_users, is not flagged."""
    cfg = params["clean"]
    slow_script = paced("slow_script", 1000, DAY, 3)
    busy = paced("busy", cfg["bot_outlier_min_events"] - 100, DAY, 1)
    assert cfg["bot_outlier_min_users"] == 100 and len(slow_script) > cfg["bot_outlier_min_events"] > len(busy)
    world = frame(spark, population(120) + slow_script + busy)

    assert bot_rules(world, params) == {"slow_script": "bot_outlier"}
    assert bot_rules(frame(spark, population(97) + slow_script + busy), params) == {}  # 99 users
    params["clean"]["bot_outlier_min_events"] = 0  # what keeps "busy" is the floor, not its z-score
    assert bot_rules(world, params) == {"slow_script": "bot_outlier", "busy": "bot_outlier"}
    params["clean"]["bot_max_events_zscore"] = 0.0
    assert bot_rules(world, params) == {}


@pytest.mark.slow
def test_movielens_100k_loses_no_real_user_and_a_paced_script_is_caught(spark, tmp_path, params, ml100k_path):
    """Issue 17 on real data: MovieLens-100K plus a script rating at the minute cap for an hour (which
    the minute cap alone kept): the script is quarantined (bot_hour), no MovieLens user is. The
    synthetic data's check is test_synthetic_tables_quarantine_broken_items_and_bots; the numbers
    per window are bench/bot_windows.py's."""
    params["ingest"].update(source="movielens", path=str(ml100k_path))
    ingest.run(params, tmp_path)
    raw = io.read_table(tmp_path / C.DATA_RAW / "interactions")
    start = raw[C.TIMESTAMP].min().ceil("h")  # within MovieLens' months, on the hour: 60 in every minute
    script = pd.DataFrame(paced("script", params["clean"]["bot_max_events_per_minute"], MINUTE, 60, start))
    script[C.ITEM_ID] = raw[C.ITEM_ID].iloc[: len(script)].to_numpy()  # real items: only a bot rule applies
    script[C.SOURCE_ROW] = raw[C.SOURCE_ROW].max() + 1 + pd.RangeIndex(len(script))
    script = script.astype(raw.dtypes.to_dict())
    io.write_table(pd.concat([raw, script], ignore_index=True), tmp_path / C.DATA_RAW / "interactions")
    users = io.read_table(tmp_path / C.DATA_RAW / "users")
    io.write_table(pd.concat([users, pd.DataFrame({C.USER_ID: ["script"]})]), tmp_path / C.DATA_RAW / "users")

    metrics = clean.run(params, tmp_path)
    bad_users = read(tmp_path, C.DATA_QUARANTINE, "users")
    bots = bad_users[bad_users[C.REASON].isin(cleaning.BOT_RULES)]
    assert dict(zip(bots[C.USER_ID], bots[C.REASON], strict=True)) == {"script": "bot_hour"}
    bot_rows = {rule: metrics["interactions"]["by_rule"][rule] for rule in cleaning.BOT_RULES}
    assert bot_rows == {"bot_minute": 0, "bot_hour": len(script), "bot_day": 0, "bot_outlier": 0}
    quarantined = read(tmp_path, C.DATA_QUARANTINE, "interactions")
    assert set(quarantined.loc[quarantined[C.REASON].isin(cleaning.BOT_RULES), C.USER_ID]) == {"script"}
    assert metrics["interactions"]["rows_in"] == len(raw) + len(script)
    assert_accounting(metrics)


def test_types_are_coerced_and_unparseable_values_quarantined(spark):
    pdf = pd.DataFrame(
        {
            C.USER_ID: [1.0, 2.0, 3.0, 4.0, np.nan],
            C.ITEM_ID: [10, 20, 30, 40, 50],
            C.RATING: ["4", " 3.5 ", "", "five", "2"],
            C.TIMESTAMP: ["2026-01-02 03:04:05", "881250949", "2026-01-02", "2026-01-02", "not a date"],
        }
    )
    flagged = cleaning.coerce_interactions(spark.createDataFrame(pdf)).toPandas()
    assert flagged[C.USER_ID].tolist()[:4] == ["1", "2", "3", "4"] and pd.isna(flagged[C.USER_ID][4])
    assert flagged[C.ITEM_ID].tolist() == ["10", "20", "30", "40", "50"]
    assert flagged[C.RATING].tolist()[:2] == [4.0, 3.5] and pd.isna(flagged[C.RATING][2])
    assert flagged[cleaning.BAD].tolist() == [False, False, False, True, True]
    assert flagged[C.TIMESTAMP][1] == pd.Timestamp(881250949, unit="s")
    assert '"rating":"five"' in flagged[cleaning.RAW][3] and pd.isna(flagged[cleaning.RAW][0])
    assert (flagged[C.EVENT] == "interaction").all()


def test_malformed_source_lines_are_quarantined_and_counted(spark, tmp_path, params):
    folder = tmp_path / "shop"
    folder.mkdir()
    rows = [f"u{i % 20},i{i % 7},4,{1700000000 + i}\n" for i in range(300)]
    (folder / "interactions.csv").write_text(
        "user_id,item_id,rating,timestamp\n"
        + "".join(rows[:10])
        + "u9,i1,four,1700000000\nu9,i1\n"
        + "".join(rows[10:])
    )
    (folder / "items.csv").write_text(
        "item_id,title,description\n" + "".join(f"i{k},T{k},D\n" for k in range(7)) + "i7,broken\n"
    )
    params["ingest"].update(source="generic", path=str(folder), max_bad_line_share=0.2)
    ingest.run(params, tmp_path)
    metrics = clean.run(params, tmp_path)
    assert metrics["interactions"]["by_rule"]["malformed_line"] == 2
    assert metrics["interactions"]["rows_in"] == 302 and metrics["items"]["by_rule"]["malformed_line"] == 1
    assert_accounting(metrics)
    lines = read(tmp_path, C.DATA_QUARANTINE, cleaning.MALFORMED_TABLE).sort_values(["table", "line"])
    assert lines[["table", "line"]].values.tolist() == [["interactions", 12], ["interactions", 13], ["items", 9]]
    assert set(lines[C.REASON]) == {"malformed_line"} and lines["file"].str.endswith(".csv").all()


# ---------------------------------------------------------------- atomic output


def test_a_failed_run_leaves_the_previous_clean_data_intact(spark, tmp_path, tiny_params, monkeypatch):
    write_raw(tmp_path, [row("u1", "i1"), row("u2", "i2", minutes=1)], hand_made_items(), hand_made_users())
    clean.run(tiny_params, tmp_path)
    before = {t: read(tmp_path, C.DATA_CLEAN, t) for t in C.TABLES}

    write_raw(tmp_path, [row("u3", "i3")], hand_made_items(), hand_made_users())
    real_write = cleaning.write_parquet
    calls = []

    def crash_on_third_table(df, path, files):  # fault injection: the disk fills up mid-way
        calls.append(path)
        if len(calls) == 3:
            raise OSError("No space left on device")
        real_write(df, path, files)

    monkeypatch.setattr(cleaning, "write_parquet", crash_on_third_table)
    with pytest.raises(OSError):
        clean.run(tiny_params, tmp_path)
    for table in C.TABLES:
        pd.testing.assert_frame_equal(read(tmp_path, C.DATA_CLEAN, table), before[table])
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["clean", "quarantine", "raw"]


def test_missing_inputs_and_bad_params_fail_clearly(tmp_path, params):
    from pipeline_tasks.core.errors import ParamsError, PipelineError

    with pytest.raises(PipelineError, match="run the ingest stage first"):
        clean.run(params, tmp_path)
    params["clean"]["orphan_policy"] = "ignore"
    with pytest.raises(ParamsError, match="orphan_policy"):
        clean.run(params, tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("bot_max_events_per_minute", 0, r"clean.bot_max_events_per_minute must be >= 1 \(a cap"),
        ("bot_max_events_zscore", -1.0, r"clean.bot_max_events_zscore must be >= 0 \(0 turns the outlier rule off\)"),
        ("bot_outlier_min_events", -5, r"clean.bot_outlier_min_events must be >= 0"),
        ("bot_outlier_min_users", 0, r"clean.bot_outlier_min_users must be >= 1"),
        (
            "bot_max_events_per_day",
            100,
            r"clean.bot_max_events_per_day \(100\) is below clean.bot_max_events_per_hour \(1200\).*"
            r"raise clean.bot_max_events_per_day or lower clean.bot_max_events_per_hour",
        ),
    ],
)
def test_bad_bot_params_name_the_key_and_the_fix(params, key, value, message):
    from pipeline_tasks.core.errors import ParamsError

    params["clean"][key] = value
    with pytest.raises(ParamsError, match=message):
        cleaning.check_config(params["clean"])


def test_spark_settings_come_from_params_and_suit_a_cluster(params):
    from pipeline_tasks.data.spark import spark_conf

    params["spark"].update(master="spark://head:7077", driver_memory="6g", shuffle_partitions=64)
    conf = spark_conf(params["spark"])
    assert (conf["spark.master"], conf["spark.driver.memory"], conf["spark.sql.shuffle.partitions"]) == (
        "spark://head:7077",
        "6g",
        "64",
    )
    assert "spark.driver.host" not in conf, "a cluster's executors must be able to reach the driver"
    assert spark_conf({**params["spark"], "master": "local[*]"})["spark.driver.host"] == "127.0.0.1"

"""The catalogue of bad inputs: what each one does to a nightly run.

Each case mutates the raw tables that `ingest` wrote from small synthetic data (no dirt of
its own), then runs the real stages in order: validate_raw -> clean -> validate_clean (with
the drift gate against the unmutated data's validated version, as on the night after a
good run). The expected outcome is either "passes", with the rows the cleaner quarantined
(rule -> how many more than on the unmutated data), or the gate that stops the run and
exactly which `fail` checks it names. README "Data validation" shows the same table.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_tasks import clean, ingest, validate_clean, validate_raw
from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core import params as P
from pipeline_tasks.core.errors import DataValidationError

pytestmark = [pytest.mark.spark, pytest.mark.slow]

Tables = dict[str, pd.DataFrame]
SEED = 7


@dataclass(frozen=True)
class Case:
    name: str
    mutate: Callable[[Tables], Tables]
    stopped_by: str | None  # the gate that stops the run; None: the run passes
    failed: frozenset[str] = frozenset()  # the blocking checks that gate names
    # Passing runs: rule -> how many more interactions it quarantines than on the unmutated data,
    # computed from (unmutated, mutated) raw tables.
    quarantined: dict[str, Callable[[Tables, Tables], int]] = field(default_factory=dict)


@dataclass
class Outcome:
    stopped_by: str | None
    failed: set[str]
    message: str = ""
    clean_metrics: dict | None = None
    gate_metrics: dict | None = None


# --- mutations (each returns new tables; `rng` seeded per case) -----------------------


def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def with_interactions(tables: Tables, frame: pd.DataFrame) -> Tables:
    return {**tables, "interactions": frame.reset_index(drop=True)}


def rows_share(frame: pd.DataFrame, share: float) -> np.ndarray:
    return rng().choice(len(frame), size=round(share * len(frame)), replace=False)


def renamed_column(t: Tables) -> Tables:
    return with_interactions(t, t["interactions"].rename(columns={C.ITEM_ID: "movie_id"}))


def catalogue_without_text(t: Tables) -> Tables:
    return {**t, "items": t["items"].rename(columns={C.TEXT: "description"})}


def empty_file(t: Tables) -> Tables:
    return with_interactions(t, t["interactions"].head(0))


def null_user_ids(share: float) -> Callable[[Tables], Tables]:
    def mutate(t: Tables) -> Tables:
        frame = t["interactions"].copy()
        frame.loc[rows_share(frame, share), C.USER_ID] = None
        return with_interactions(t, frame)

    return mutate


def unparseable_timestamps(t: Tables) -> Tables:
    """A text export: stamps as strings, 5% of them garbage."""
    frame = t["interactions"].copy()
    stamps = frame[C.TIMESTAMP].dt.strftime("%Y-%m-%d %H:%M:%S").astype(object)
    stamps.iloc[rows_share(frame, 0.05)] = "last tuesday"
    return with_interactions(t, frame.assign(**{C.TIMESTAMP: stamps}))


def ratings_times_ten(t: Tables) -> Tables:
    frame = t["interactions"]
    return with_interactions(t, frame.assign(**{C.RATING: frame[C.RATING] * 10}))


def ratings_plus_one(t: Tables) -> Tables:
    """A changed rating widget: every rating one star higher (still within range)."""
    frame = t["interactions"]
    return with_interactions(t, frame.assign(**{C.RATING: (frame[C.RATING] + 1).clip(upper=5.0)}))


def timestamps_1970(t: Tables) -> Tables:
    """Milliseconds read as seconds: every event lands in January 1970."""
    frame = t["interactions"]
    seconds = frame[C.TIMESTAMP].astype("int64") // 10**6
    stamps = pd.to_datetime(seconds // 1000, unit="s", utc=True).astype("datetime64[us, UTC]")
    return with_interactions(t, frame.assign(**{C.TIMESTAMP: stamps}))


def future_timestamps(t: Tables) -> Tables:
    frame = t["interactions"].copy()
    rows = rows_share(frame, 0.02)
    frame.loc[rows, C.TIMESTAMP] = frame.loc[rows, C.TIMESTAMP] + pd.Timedelta(days=3 * 365)
    return with_interactions(t, frame)


def half_users_missing(t: Tables) -> Tables:
    users = sorted(t["interactions"][C.USER_ID].unique())
    gone = set(users[::2])
    return with_interactions(t, t["interactions"][~t["interactions"][C.USER_ID].isin(gone)])


def one_day_duplicated(t: Tables) -> Tables:
    frame = t["interactions"]
    days = frame[C.TIMESTAMP].dt.floor("D")
    busiest = days.value_counts().idxmax()
    return with_interactions(t, pd.concat([frame, frame[days == busiest]]))


def replayed_export(t: Tables) -> Tables:
    """Half the rows sent twice: every copy is quarantined, and the share tops the ceiling."""
    frame = t["interactions"]
    return with_interactions(t, pd.concat([frame, frame.iloc[rows_share(frame, 0.5)]]))


BOT_EVENTS = 300


def bot_flood(t: Tables) -> Tables:
    """One client replaying 300 events in 100 seconds (the cleaner's limit: 60 a minute)."""
    frame, items = t["interactions"], t["items"][C.ITEM_ID].to_numpy()
    start = frame[C.TIMESTAMP].max() - pd.Timedelta(days=1)
    bot = pd.DataFrame(
        {
            C.USER_ID: "bot_7",
            C.ITEM_ID: rng().choice(items, BOT_EVENTS),
            C.RATING: 5.0,
            C.TIMESTAMP: start + pd.to_timedelta(np.arange(BOT_EVENTS) * 333, unit="ms"),
            C.EVENT: "rating",
        }
    )
    bot[C.TIMESTAMP] = bot[C.TIMESTAMP].astype("datetime64[us, UTC]")
    users = pd.concat([t["users"], pd.DataFrame({C.USER_ID: ["bot_7"]})], ignore_index=True)
    return {**with_interactions(t, pd.concat([frame, bot])), "users": users}


def orphan_items(t: Tables) -> Tables:
    """30% of interactions point at item ids the catalogue does not have."""
    frame = t["interactions"].copy()
    rows = rows_share(frame, 0.3)
    frame.loc[rows, C.ITEM_ID] = [f"x{n:05d}" for n in range(len(rows))]
    return with_interactions(t, frame)


def texts_empty(share: float) -> Callable[[Tables], Tables]:
    """`share` of the catalogue (drawn at random) loses its text: only markup is left."""

    def mutate(t: Tables) -> Tables:
        items = t["items"].copy()
        items.loc[rows_share(items, share), C.TEXT] = "  <p> </p> "
        return {**t, "items": items}

    return mutate


def ids_change_type(t: Tables) -> Tables:
    """The source switched user ids from 'u0042' strings to integers 42."""
    as_int = lambda ids: ids.str.lstrip("u").astype("int64")  # noqa: E731
    frame = t["interactions"].assign(**{C.USER_ID: lambda f: as_int(f[C.USER_ID])})
    return {**with_interactions(t, frame), "users": t["users"].assign(**{C.USER_ID: lambda f: as_int(f[C.USER_ID])})}


def popularity_flip(t: Tables) -> Tables:
    """Item ids swapped so the most interacted item becomes the least (same counts per item)."""
    frame = t["interactions"]
    ranked = frame[C.ITEM_ID].value_counts().sort_index().sort_values(ascending=False, kind="stable").index
    mapping = dict(zip(ranked, ranked[::-1]))
    return with_interactions(t, frame.assign(**{C.ITEM_ID: frame[C.ITEM_ID].map(mapping)}))


def unchanged(t: Tables) -> Tables:
    return t


def more_rows(before: Tables, after: Tables) -> int:
    return len(after["interactions"]) - len(before["interactions"])


def added_rows(share: float) -> Callable[[Tables, Tables], int]:
    return lambda before, _: round(share * len(before["interactions"]))


def on_textless_items(_: Tables, after: Tables) -> int:
    items = after["items"]
    textless = items.loc[items[C.TEXT].str.replace(r"<[^>]*>", "", regex=True).str.strip() == "", C.ITEM_ID]
    return int(after["interactions"][C.ITEM_ID].isin(textless).sum())


# Every row quarantined: the clean gate and the drift gate both see an empty version.
EMPTIED = frozenset(
    {
        "quarantine_share",
        "interactions_user_kcore",
        "interactions_item_kcore",
        "row_count_change",
        "lost_user_share",
        "rating_mean_shift",
        "popularity_psi",
    }
)
CASES = [
    Case("unchanged", unchanged, None),
    Case(
        "renamed column (item_id -> movie_id)",
        renamed_column,
        "validate_raw",
        frozenset({"interactions_columns_present"}),
    ),
    Case(
        "catalogue without its text column",
        catalogue_without_text,
        "validate_raw",
        frozenset({"items_columns_present"}),
    ),
    Case("empty interactions file", empty_file, "validate_raw", frozenset({"interactions_min_rows"})),
    Case("10% null user ids", null_user_ids(0.10), "validate_raw", frozenset({"interactions_user_id_not_null"})),
    Case(
        "5% unparseable timestamps",
        unparseable_timestamps,
        "validate_raw",
        frozenset({"interactions_timestamp_parseable"}),
    ),
    Case(
        "2% null user ids",
        null_user_ids(0.02),
        None,
        quarantined={"invalid_id": lambda _, m: int(m["interactions"][C.USER_ID].isna().sum())},
    ),
    Case("2% future timestamps", future_timestamps, None, quarantined={"future_timestamp": added_rows(0.02)}),
    Case("one day duplicated", one_day_duplicated, None, quarantined={"duplicate": more_rows}),
    Case("bot flood (300 events in 100 s)", bot_flood, None, quarantined={"bot_minute": more_rows}),
    Case("5% of item texts empty", texts_empty(0.05), None, quarantined={"item_removed": on_textless_items}),
    Case("every rating x10", ratings_times_ten, "validate_clean", EMPTIED),
    Case("every timestamp in 1970", timestamps_1970, "validate_clean", EMPTIED),
    Case("every item text empty", texts_empty(1.0), "validate_clean", EMPTIED),
    Case("30% orphan items", orphan_items, "validate_clean", frozenset({"quarantine_share", "row_count_change"})),
    Case("half the rows sent twice", replayed_export, "validate_clean", frozenset({"quarantine_share"})),
    Case(
        "half the users missing",
        half_users_missing,
        "validate_clean",
        frozenset({"row_count_change", "lost_user_share"}),
    ),
    Case(
        "user ids change type (str -> int)",
        ids_change_type,
        "validate_clean",
        frozenset({"new_user_share", "lost_user_share"}),
    ),
    Case("item popularity flipped", popularity_flip, "validate_clean", frozenset({"popularity_psi"})),
    Case("every rating one star higher", ratings_plus_one, "validate_clean", frozenset({"rating_mean_shift"})),
]


# --- running the stages ---------------------------------------------------------------


def catalogue_params() -> dict:
    params = P.defaults()
    params["spark"].update(master="local[2]", shuffle_partitions=2)
    synthetic = params["ingest"]["synthetic"]
    synthetic.update(n_users=60, n_items=50, mean_interactions_per_user=15)
    synthetic["dirt"] = {key: 0 for key in synthetic["dirt"]}  # each case brings its own dirt
    return params


def blocking(message: str) -> set[str]:
    import re

    return set(re.findall(r"^  - (\w+) \[", message.split("warnings (not blocking):")[0], flags=re.MULTILINE))


def run_stages(params: dict, root: Path) -> Outcome:
    """validate_raw -> clean -> validate_clean, stopping where a gate stops the run."""
    try:
        validate_raw.run(params, root)
    except DataValidationError as err:
        return Outcome("validate_raw", blocking(str(err)), str(err))
    cleaned = clean.run(params, root)
    try:
        gate = validate_clean.run(params, root)
    except DataValidationError as err:
        return Outcome("validate_clean", blocking(str(err)), str(err), cleaned)
    return Outcome(None, set(), "", cleaned, gate)


@pytest.fixture(scope="module")
def good_night(spark, tmp_path_factory):
    """Ingest's output for small synthetic data, run once through every gate: the baseline."""
    params = catalogue_params()
    root = tmp_path_factory.mktemp("good-night")
    ingest.run(params, root)
    outcome = run_stages(params, root)
    assert outcome.stopped_by is None, outcome.message
    raw = {table: io.read_table(root / C.DATA_RAW / table) for table in C.TABLES}
    return params, root, raw, outcome.clean_metrics


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, good_night, tmp_path):
    params, good_root, raw, good_clean = good_night
    mutated = case.mutate({table: frame.copy() for table, frame in raw.items()})
    for table, frame in mutated.items():
        io.write_table(frame, tmp_path / C.DATA_RAW / table)
    shutil.copytree(good_root / "validated", tmp_path / "validated")  # last night's validated version

    outcome = run_stages(params, tmp_path)

    assert (outcome.stopped_by, outcome.failed) == (case.stopped_by, set(case.failed)), outcome.message
    if case.stopped_by is None:
        before, after = good_clean["interactions"]["by_rule"], outcome.clean_metrics["interactions"]["by_rule"]
        extra = {rule: after[rule] - before[rule] for rule in after if after[rule] != before[rule]}
        expected = {rule: count(raw, mutated) for rule, count in case.quarantined.items()}
        assert {rule: extra.get(rule, 0) for rule in expected} == expected, extra
        assert all(expected.values()), "a case that quarantines nothing tests nothing"
        if not expected:  # the unmutated data: exactly what last night's run quarantined
            assert extra == {}
        assert outcome.gate_metrics["drift"]["status"] == "compared"
    else:
        assert "Data Docs: " in outcome.message and "threshold: " in outcome.message
        saved = lambda root: sorted(p.name for p in (root / "validated").iterdir())  # noqa: E731
        assert saved(tmp_path) == saved(good_root)  # a stopped version never becomes the baseline

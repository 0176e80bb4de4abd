"""The synthetic generator: deterministic, realistic in the ways the pipeline relies on, dirt recorded."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import params as P
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.data.synthetic import TOPICS, generate

INJECTED_INTERACTION_KINDS = {"duplicate", "null_id", "bad_rating", "future_timestamp", "orphan_item", "bot"}


@pytest.fixture(scope="module")
def cfg() -> dict:
    return P.defaults()["ingest"]["synthetic"]


@pytest.fixture(scope="module")
def data(cfg):
    return generate(cfg, seed=7)


def good_rows(data) -> pd.DataFrame:
    """Raw interactions minus every injected one (a multiset difference)."""
    keys = [C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]
    raw = data.interactions.copy()
    bad = data.injected[data.injected["table"] == "interactions"][keys].copy()
    raw["_n"] = raw.groupby(keys, dropna=False).cumcount()
    bad["_n"] = bad.groupby(keys, dropna=False).cumcount()
    merged = raw.merge(bad.assign(_bad=True), on=keys + ["_n"], how="left")
    return merged[merged["_bad"].isna()].drop(columns=["_n", "_bad"])


def test_same_seed_same_data_other_seed_other_data(cfg, data):
    again = generate(cfg, seed=7)
    for name in ("interactions", "items", "users", "injected"):
        pd.testing.assert_frame_equal(getattr(data, name), getattr(again, name))
    other = generate(cfg, seed=8)
    assert not other.interactions.equals(data.interactions)
    assert not other.items[C.TEXT].equals(data.items[C.TEXT])


def test_default_size_is_about_ten_thousand_rows(cfg):
    # Its speed is measured by bench/, not here (team rule: no timed unit tests).
    out = generate(cfg, seed=1)
    assert 9_000 <= len(out.interactions) <= 10_500
    assert len(out.items) == cfg["n_items"]
    assert len(out.users) == cfg["n_users"] + cfg["dirt"]["bot_users"]


def test_schema_follows_the_contract(data):
    assert list(data.interactions.columns) == C.INTERACTION_COLUMNS
    assert str(data.interactions[C.TIMESTAMP].dtype) == "datetime64[us, UTC]"
    assert data.items[C.ITEM_ID].is_unique and data.users[C.USER_ID].is_unique
    assert set(data.users.columns) >= {"gender", "age_group", "country"}
    assert data.interactions[C.USER_ID].dropna().map(type).eq(str).all()


def test_popularity_has_a_long_tail(data):
    counts = good_rows(data)[C.ITEM_ID].value_counts()
    top_tenth = counts.head(len(counts) // 10).sum() / counts.sum()
    assert top_tenth > 0.3, "the 10% most popular items should hold far more than 10% of interactions"
    assert counts.median() < counts.mean() * 0.75, "most items should sit below the mean (a long tail)"


def test_text_says_which_topic_an_item_is_about(data):
    """A bag-of-words vote over the topic vocabularies recovers the item's topic from its text."""
    items = data.items[data.items[C.TEXT].str.len() > 40]
    hits = 0
    for text, topic in zip(items[C.TEXT].str.lower(), items["genres"]):
        votes = {
            name: sum(text.count(w.lower()) for w in vocab["nouns"] + vocab["adjectives"])
            for name, vocab in TOPICS.items()
        }
        hits += max(votes, key=votes.get) == topic
    assert hits / len(items) > 0.95
    assert items[C.TITLE].nunique() == len(items), "titles are unique"


def test_cold_items_appear_only_at_the_end(cfg, data):
    start = pd.Timestamp(cfg["start_date"], tz="UTC")
    late = start + pd.Timedelta(days=0.9 * cfg["days"])
    cold = data.items[data.items["first_seen"] >= late]
    assert len(cold) == round(cfg["cold_item_share"] * cfg["n_items"])
    good = good_rows(data).merge(data.items[[C.ITEM_ID, "first_seen"]], on=C.ITEM_ID)
    assert (good[C.TIMESTAMP] >= good["first_seen"]).all(), "nobody rates an item before it exists"
    cold_rows = good[good[C.ITEM_ID].isin(cold[C.ITEM_ID])]
    assert len(cold_rows) > 0 and (cold_rows[C.TIMESTAMP] >= late).all()


def test_ratings_follow_topic_taste(data):
    good = good_rows(data).merge(data.items[[C.ITEM_ID, "genres"]], on=C.ITEM_ID)
    favourite = good.groupby(C.USER_ID)["genres"].agg(lambda g: g.value_counts().index[0])
    on_taste = good["genres"].to_numpy() == favourite.loc[good[C.USER_ID]].to_numpy()
    assert good[C.RATING].between(1, 5).all()
    assert good.loc[on_taste, C.RATING].mean() > good.loc[~on_taste, C.RATING].mean() + 0.5


def topic_shift(cfg: dict, drift: float) -> float:
    """Mean total-variation distance between each user's early and late topic mix."""
    cfg = copy.deepcopy(cfg)
    cfg["drift"] = drift
    out = generate(cfg, seed=3)
    good = good_rows(out).merge(out.items[[C.ITEM_ID, "genres"]], on=C.ITEM_ID).sort_values(C.TIMESTAMP)
    distances = []
    for _, rows in good.groupby(C.USER_ID):
        if len(rows) < 30:
            continue
        third = len(rows) // 3
        early = rows["genres"].iloc[:third].value_counts(normalize=True)
        late = rows["genres"].iloc[-third:].value_counts(normalize=True)
        distances.append(0.5 * early.subtract(late, fill_value=0).abs().sum())
    return float(np.mean(distances))


def test_tastes_drift_when_asked(cfg):
    assert topic_shift(cfg, drift=1.0) > topic_shift(cfg, drift=0.0) + 0.05


def test_every_kind_of_dirt_is_injected_and_recorded(cfg, data):
    kinds = data.injected["kind"].value_counts()
    assert set(kinds.index) == INJECTED_INTERACTION_KINDS | {"broken_text"}
    n_good = len(good_rows(data))
    assert kinds["duplicate"] == round(cfg["dirt"]["duplicate_rate"] * n_good)
    assert kinds["bot"] == cfg["dirt"]["bot_users"] * cfg["dirt"]["bot_events"]
    # Each recorded interaction is really in the raw log.
    keys = [C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]
    recorded = data.injected[data.injected["table"] == "interactions"]
    assert len(recorded.merge(data.interactions[keys].drop_duplicates(), on=keys)) == len(recorded)
    # And each has its defect.
    by_kind = {k: recorded[recorded["kind"] == k] for k in INJECTED_INTERACTION_KINDS}
    assert (by_kind["null_id"][[C.USER_ID, C.ITEM_ID]].isna().sum(axis=1) == 1).all()
    assert (~by_kind["bad_rating"][C.RATING].between(1, 5)).all()
    assert (by_kind["future_timestamp"][C.TIMESTAMP].dt.year >= 2090).all()
    assert not by_kind["orphan_item"][C.ITEM_ID].isin(data.items[C.ITEM_ID]).any()
    bot_minutes = by_kind["bot"].groupby([C.USER_ID, by_kind["bot"][C.TIMESTAMP].dt.floor("min")]).size()
    assert bot_minutes.max() > 60, "a bot fires far more than a person can in a minute"
    broken = data.items.set_index(C.ITEM_ID).loc[data.injected.query("kind == 'broken_text'")[C.ITEM_ID], C.TEXT]
    assert broken.str.replace(r"<[^>]*>|&nbsp;|\s", "", regex=True).eq("").all()


def test_bad_config_is_refused_with_the_key(cfg):
    wrong = copy.deepcopy(cfg)
    wrong["n_topics"] = len(TOPICS) + 1
    with pytest.raises(ParamsError, match="n_topics"):
        generate(wrong, seed=0)

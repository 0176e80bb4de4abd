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


# --- sequential structure (calibrated against MovieLens-100K by bench/bench_world.py) -----------


def ordered_codes(frame: pd.DataFrame) -> pd.DataFrame:
    df = frame.sort_values([C.USER_ID, C.TIMESTAMP], kind="stable")
    return pd.DataFrame({"user": pd.factorize(df[C.USER_ID])[0], "item": df[C.ITEM_ID].to_numpy()})


def successor_hit(learn: pd.DataFrame, test: pd.DataFrame, k: int = 10) -> float:
    """Share of test pairs whose next item is among the k most frequent successors of the last item in `learn`."""

    def pairs(df: pd.DataFrame) -> pd.DataFrame:
        same = df["user"].to_numpy()[1:] == df["user"].to_numpy()[:-1]
        return pd.DataFrame({"last": df["item"].to_numpy()[:-1][same], "next": df["item"].to_numpy()[1:][same]})

    counts = pairs(learn).value_counts().rename("n").reset_index().sort_values(["last", "n"], ascending=[True, False])
    top = counts.groupby("last").head(k).groupby("last")["next"].agg(set)
    test_pairs = pairs(test)
    return float(np.mean([n in top.get(last, ()) for last, n in zip(test_pairs["last"], test_pairs["next"])]))


def order_lift(frame: pd.DataFrame) -> float:
    """Successor hit rate (learned on the other half of the users) over the same with each history shuffled."""
    df = ordered_codes(frame)
    rng = np.random.default_rng(0)
    mixed = df.assign(_k=rng.random(len(df))).sort_values(["user", "_k"]).drop(columns="_k")

    def two_fold(d: pd.DataFrame) -> float:
        odd = d["user"] % 2 == 1
        return (successor_hit(d[odd], d[~odd]) + successor_hit(d[~odd], d[odd])) / 2

    return two_fold(df) / two_fold(mixed)


def test_the_last_item_predicts_the_next_as_in_movielens(cfg, data):
    """MovieLens-100K's order lift is 2.5 (bench/bench_world.py); the old generator's was 1.0."""
    lift = order_lift(good_rows(data))
    assert 1.8 <= lift <= 4.0, lift
    flat = copy.deepcopy(cfg)
    flat.update(follow_series=0.0, follow_neighbourhood=0.0, momentum=0.0, session_length=1.0)
    assert order_lift(good_rows(generate(flat, seed=7))) < lift - 0.7, "the order comes from the behaviour knobs"


def series_parts(items: pd.DataFrame) -> pd.DataFrame:
    """(item_id, series title, part) of every item titled '<series>, <Part|Book|Season|...> <n>'."""
    found = items[C.TITLE].str.extract(r"^(?P<series>.+), (?:Part|Book|Season|Module|Issue) (?P<part>\d+)$")
    return found.assign(**{C.ITEM_ID: items[C.ITEM_ID], "part": pd.to_numeric(found["part"])}).dropna()


def test_series_come_out_and_are_followed_in_order(cfg, data):
    parts = series_parts(data.items)
    share = len(parts) / len(data.items)
    assert abs(share - cfg["series_share"]) < 0.1, share
    released = parts.merge(data.items[[C.ITEM_ID, "first_seen"]], on=C.ITEM_ID).sort_values(["series", "part"])
    assert (released.groupby("series")["first_seen"].diff().dropna() >= pd.Timedelta(0)).all()
    assert (released.groupby("series")["part"].min() == 1).all(), "every series starts with part 1"
    # Of users who consumed parts k and k+1, nearly all met part k first; and a part's next part
    # follows it directly far more often than chance.
    good = good_rows(data).merge(parts, on=C.ITEM_ID).sort_values(C.TIMESTAMP)
    first = good.groupby([C.USER_ID, "series", "part"])[C.TIMESTAMP].min().reset_index()
    both = first.merge(first.assign(part=first["part"] - 1), on=[C.USER_ID, "series", "part"], suffixes=("", "_next"))
    assert (both[C.TIMESTAMP] < both[f"{C.TIMESTAMP}_next"]).mean() > 0.85
    log = ordered_codes(good_rows(data)).merge(parts.rename(columns={C.ITEM_ID: "item"}), on="item", how="left")
    nxt = log.shift(-1)
    direct = (log["user"] == nxt["user"]) & (log["series"] == nxt["series"]) & (nxt["part"] == log["part"] + 1)
    assert direct.sum() / log["part"].notna().sum() > 0.15


def test_consecutive_items_read_alike_but_text_never_names_another_item(data):
    """Text carries topic, neighbourhood and series (what real catalogues print), not ids."""
    words = data.items.set_index(C.ITEM_ID)[C.TEXT].str.lower().str.findall(r"[a-z]{4,}").map(set)
    log = ordered_codes(good_rows(data))
    same = log["user"].to_numpy()[1:] == log["user"].to_numpy()[:-1]
    a, b = log["item"].to_numpy()[:-1][same], log["item"].to_numpy()[1:][same]
    rng = np.random.default_rng(0)

    def overlap(x, y) -> float:
        return float(np.mean([len(words[i] & words[j]) / max(1, len(words[i] | words[j])) for i, j in zip(x, y)]))

    assert overlap(a, b) > 1.25 * overlap(a, rng.permutation(b))
    ids = set(data.items[C.ITEM_ID])
    assert not data.items[C.TEXT].str.findall(r"\b[id]\d{4,5}\b").map(lambda f: bool(set(f) & ids)).any()


def test_new_releases_are_hyped_then_fade(cfg, data):
    """Popularity drifts: an item released during the history takes a larger share of all events
    in its first weeks than later on."""
    good = good_rows(data).merge(data.items[[C.ITEM_ID, "first_seen"]], on=C.ITEM_ID)
    start = pd.Timestamp(cfg["start_date"], tz="UTC")
    day = (good[C.TIMESTAMP] - start).dt.days
    per_day = day.value_counts().reindex(range(cfg["days"] + 1), fill_value=0).to_numpy()
    hype = int(cfg["hype_days"])
    released = data.items[(data.items["first_seen"] > start)].set_index(C.ITEM_ID)["first_seen"]
    early, later = [], []
    for item, first in released[released < start + pd.Timedelta(days=cfg["days"] - 4 * hype)].items():
        d0 = (first - start).days
        days_of = day[good[C.ITEM_ID] == item]
        early.append(days_of.between(d0, d0 + hype - 1).sum() / per_day[d0 : d0 + hype].sum())
        later.append(
            days_of.between(d0 + 2 * hype, d0 + 4 * hype - 1).sum() / per_day[d0 + 2 * hype : d0 + 4 * hype].sum()
        )
    assert len(early) > 20
    assert np.mean(early) > 1.4 * np.mean(later), (np.mean(early), np.mean(later))  # about 1.0 with release_hype=0


def test_increments_continue_the_histories(cfg, data):
    from pipeline_tasks.data.synthetic import generate_day

    history = good_rows(data)
    days = [generate_day(cfg, 7, d) for d in (1, 2)]
    events = [good_rows(d) for d in days]
    assert all(len(e) > 10 for e in events)
    assert set(events[0][C.USER_ID]) <= set(history[C.USER_ID]), "the day's users are returning users"
    seen = pd.concat([history, events[0]])[[C.USER_ID, C.ITEM_ID]]
    for earlier, later in [(history, events[0]), (seen, events[1])]:
        again = later.merge(earlier[[C.USER_ID, C.ITEM_ID]], on=[C.USER_ID, C.ITEM_ID])
        assert again.empty, "nobody consumes an item again on a later day: each history goes on"
    # Some of a day's first events continue the series of the user's last item of the history.
    parts = series_parts(pd.concat([data.items, days[0].items, days[1].items]))
    last = history.sort_values(C.TIMESTAMP).groupby(C.USER_ID).tail(1).merge(parts, on=C.ITEM_ID)
    first = pd.concat(events).sort_values(C.TIMESTAMP).groupby(C.USER_ID).head(1).merge(parts, on=C.ITEM_ID)
    continued = last.merge(first, on=[C.USER_ID, "series"], suffixes=("", "_day"))
    assert (continued["part_day"] == continued["part"] + 1).any()
    # New items join the catalogue's topics, and some are the next part of an existing series.
    new = pd.concat([d.items for d in days])
    assert new["genres"].isin(set(data.items["genres"])).all()
    assert series_parts(new)["series"].isin(set(series_parts(data.items)["series"])).any() or len(new) < 6
    pd.testing.assert_frame_equal(days[1].interactions, generate_day(cfg, 7, 2).interactions)


@pytest.mark.parametrize("key, value", [("follow_series", 1.5), ("neighbourhoods_per_topic", 8), ("session_length", 0)])
def test_bad_structure_knobs_are_refused_with_the_key(cfg, key, value):
    wrong = copy.deepcopy(cfg)
    wrong[key] = value
    with pytest.raises(ParamsError, match=key):
        generate(wrong, seed=0)

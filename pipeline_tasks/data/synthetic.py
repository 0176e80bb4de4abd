"""A seeded generator of realistic recommender logs, with known dirt injected on purpose.

The world (params `ingest.synthetic`, calibrated against MovieLens-100K by bench/bench_world.py):
- a catalogue (synthetic_catalogue.py) of topics, each split into neighbourhoods (items about the
  same two things, which their texts name) and, within those, series (parts 1, 2, ... released in
  order, titled by the series and part: what real catalogues print);
- power-law popularity, with new releases hyped for a few weeks (popularity drifts);
- users with a long-term topic taste that drifts slowly, who come back in sessions: a session
  keeps to one topic, chosen from the taste and the topics of the last items seen (momentum);
  within it a user sometimes continues the series of the last item with its next part, or stays
  in the last item's neighbourhood, else picks a popular item of the session's topic or, now and
  then, of the whole catalogue's charts; landing on a later part of a series, most people start
  at its first part they have not seen;
- ratings that follow how well an item's topic matches the user's taste, user attributes.

So the order of a history carries signal (the last item predicts the next, as in real logs),
and so do co-occurrence (neighbourhoods, series), popularity and text (topic, neighbourhood,
series) — each method family has what it uses, none is handed the answer.

Then dirt is injected and recorded (synthetic_dirt.py). `generate_day(cfg, seed, N)` emits
day N after the history: the items released that day (some are the next part of an existing
series), sessions of the users still active that continue their histories, a bot and the day's
dirt. Pure numpy/pandas; the default size takes about a second.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.data.synthetic_catalogue import (
    SEQUEL_DECAY,
    Catalogue,
    catalogue_frame,
    make_catalogue,
    next_parts,
    unique_text,
    with_new_items,
)
from pipeline_tasks.data.synthetic_dirt import INJECTED_COLUMNS, SyntheticData, empty_injected, inject_dirt
from pipeline_tasks.data.synthetic_vocab import TOPICS, make_users, messy

__all__ = ["INJECTED_COLUMNS", "TOPICS", "SyntheticData", "empty_injected", "generate", "generate_day", "history_end"]

MINUTE = 1.0 / 1440.0  # in days
SESSION_BREAK = 60 * MINUTE  # sessions of one user are at least an hour apart
EVENT_GAP = 6 * MINUTE  # mean time between two events of a session
MOMENTUM_WINDOW = 5  # the last items whose topics pull the next session's topic
IN_ORDER = 0.8  # share of people who, landing on part k of a series, start at its first part they have not seen
SEQUEL_SHARE = 0.3  # share of a day's new items that are the next part of an existing series


@dataclass
class World:
    """What every day of the synthetic site shares: topics, neighbourhoods, catalogue, users and tastes."""

    rng: np.random.Generator  # positioned after the world was drawn (the history's events come next)
    topics: list[str]
    focus: list[list[list[str]]]  # [topic][neighbourhood]: its two focus nouns
    start: pd.Timestamp
    catalogue: Catalogue
    preferences: np.ndarray
    users: pd.DataFrame


def generate(cfg: dict[str, Any], seed: int) -> SyntheticData:
    """Build the clean world from `cfg` (params `ingest.synthetic`), then inject dirt."""
    world = build_world(cfg, seed)
    interactions, _ = make_history(cfg, world)
    return inject_dirt(cfg, interactions, world.catalogue.items, world.users, world.start, world.rng)


def build_world(cfg: dict[str, Any], seed: int) -> World:
    check_config(cfg)
    rng = np.random.default_rng(seed)
    topics = sorted(rng.choice(list(TOPICS), size=cfg["n_topics"], replace=False).tolist())
    hoods = cfg["neighbourhoods_per_topic"]
    focus = [[list(p) for p in rng.permutation(TOPICS[t]["nouns"])[: 2 * hoods].reshape(hoods, 2)] for t in topics]
    start = pd.Timestamp(cfg["start_date"], tz="UTC")
    catalogue = make_catalogue(cfg, topics, focus, rng)
    preferences = user_preferences(cfg["n_users"], len(topics), rng)
    users = make_users(cfg["n_users"], rng)
    return World(rng, topics, focus, start, catalogue, preferences, users)


def history_end(cfg: dict[str, Any]) -> pd.Timestamp:
    """The first instant after the generated history: day 1 of the increments starts here."""
    return pd.Timestamp(cfg["start_date"], tz="UTC") + pd.Timedelta(days=cfg["days"])


def check_config(cfg: dict[str, Any]) -> None:
    if not 1 <= cfg["n_topics"] <= len(TOPICS):
        raise ParamsError(f"ingest.synthetic.n_topics must be in 1..{len(TOPICS)}, got {cfg['n_topics']}")
    if not 1 <= cfg["neighbourhoods_per_topic"] <= 7:
        raise ParamsError(
            f"ingest.synthetic.neighbourhoods_per_topic must be in 1..7 (two focus nouns each), "
            f"got {cfg['neighbourhoods_per_topic']}"
        )
    for key in ("n_users", "n_items", "days", "mean_interactions_per_user", "session_length", "hype_days"):
        if cfg[key] < 1:
            raise ParamsError(f"ingest.synthetic.{key} must be >= 1, got {cfg[key]}")
    for key in (
        "cold_item_share",
        "topic_affinity",
        "drift",
        "series_share",
        "follow_series",
        "follow_neighbourhood",
        "trending_share",
    ):
        if not 0.0 <= cfg[key] <= 1.0:
            raise ParamsError(f"ingest.synthetic.{key} must be in [0, 1], got {cfg[key]}")
    for key in ("momentum", "release_hype"):
        if cfg[key] < 0 or (key == "momentum" and cfg[key] > 1):
            raise ParamsError(f"ingest.synthetic.{key} must be in {'[0, 1]' if key == 'momentum' else '>= 0'}")


# ---------------------------------------------------------------- users and their sessions


def user_preferences(n_users: int, n_topics: int, rng: np.random.Generator) -> np.ndarray:
    """[n_users, 2, n_topics]: taste at the start and the taste it drifts towards."""
    return rng.dirichlet(np.full(n_topics, 0.3), size=(n_users, 2))


def activity_counts(n_users: int, mean: float, rng: np.random.Generator) -> np.ndarray:
    """Events per user: log-normal (a few heavy users), capped so no person looks like a bot."""
    sigma = 0.7
    counts = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, size=n_users)
    return np.clip(np.round(counts), 3, 3.5 * mean).astype(int)


def drifted(pref: np.ndarray, progress: float, drift: float) -> np.ndarray:
    """Taste at `progress` (0..1 of the period): a share `drift` moves to the second taste by the end."""
    mix = drift * min(progress, 1.0)
    taste = (1 - mix) * pref[0] + mix * pref[1]
    return taste / taste.sum()


class Site:
    """The behaviour model: users' sessions over a catalogue, each user's history carried along."""

    def __init__(self, cfg: dict[str, Any], cat: Catalogue, prefs: np.ndarray) -> None:
        self.cfg, self.cat, self.prefs = cfg, cat, prefs
        n_users, n_topics = prefs.shape[0], prefs.shape[2]
        self.next_part = next_parts(cat)
        self.first_part = {int(s): i for i, (s, p) in enumerate(zip(cat.series_of, cat.part_of)) if p == 1}
        self.by_topic = [np.flatnonzero(cat.topic_of == k) for k in range(n_topics)]
        self.by_hood = [np.flatnonzero(cat.hood_of == h) for h in range(n_topics * cfg["neighbourhoods_per_topic"])]
        self.everything = np.arange(len(cat.topic_of))
        self.seen = np.zeros((n_users, len(cat.topic_of)), dtype=bool)
        self.last = np.full(n_users, -1)
        self.last_time = np.full(n_users, -np.inf)
        self.recent: list[deque] = [deque(maxlen=MOMENTUM_WINDOW) for _ in range(n_users)]
        self.rows: list[tuple[int, int, float, float]] = []
        self.activity = np.zeros(n_users)  # events of the users still active when the history ends (0: left)

    def carry(self, earlier: Site) -> None:
        """Continue the histories of `earlier` (a site over a smaller catalogue)."""
        n = earlier.seen.shape[1]
        self.seen[:, :n] = earlier.seen
        self.last, self.last_time, self.recent = earlier.last.copy(), earlier.last_time.copy(), earlier.recent
        self.activity = earlier.activity

    def session(self, user: int, start: float, n_events: int, end: float, rng: np.random.Generator) -> None:
        """Up to `n_events` events of `user` from `start` (at least a break after the last one), before `end`."""
        cfg, days = self.cfg, float(self.cfg["days"])
        t = max(start, self.last_time[user] + SESSION_BREAK)
        taste = drifted(self.prefs[user], t / days, cfg["drift"])
        topic = self.session_topic(user, taste, rng)
        for event in range(n_events):
            if t >= end:
                return
            item = self.next_item(user, topic, t, event > 0, rng)
            if item < 0:
                return
            self.seen[user, item] = True
            self.last[user], self.last_time[user] = item, t
            self.recent[user].append(self.cat.topic_of[item])
            match = taste[self.cat.topic_of[item]] / taste.max()
            rating = np.clip(np.round(1.5 + 3.0 * match + self.cat.quality[item] + rng.normal(0, 0.8)), 1, 5)
            self.rows.append((user, item, float(rating), t))
            t += max(MINUTE / 3, rng.exponential(EVENT_GAP))

    def session_topic(self, user: int, taste: np.ndarray, rng: np.random.Generator) -> int:
        """From the long-term taste pulled towards the topics of the last items seen; sometimes any topic."""
        if rng.random() >= self.cfg["topic_affinity"]:
            return int(rng.integers(len(taste)))
        recent = np.bincount(np.asarray(self.recent[user], dtype=int), minlength=len(taste)).astype(float)
        pull = recent / recent.sum() if recent.sum() else taste
        mix = (1 - self.cfg["momentum"]) * taste + self.cfg["momentum"] * pull
        return int(rng.choice(len(taste), p=mix / mix.sum()))

    def next_item(self, user: int, topic: int, t: float, in_session: bool, rng: np.random.Generator) -> int:
        """The next part of the last item's series, else (in a session) its neighbourhood, else a popular
        item of the session's topic or (a share `trending_share`) of the whole catalogue."""
        last = self.last[user]
        if last >= 0:
            sequel = self.next_part[last]
            if rng.random() < self.cfg["follow_series"] and sequel >= 0:
                if self.cat.first_seen_days[sequel] <= t and not self.seen[user, sequel]:
                    return int(sequel)
            if in_session and rng.random() < self.cfg["follow_neighbourhood"]:
                item = self.pick(self.by_hood[self.cat.hood_of[last]], user, t, rng)
                if item >= 0:
                    return item
        item = self.pick(self.by_topic[topic], user, t, rng) if rng.random() >= self.cfg["trending_share"] else -1
        item = item if item >= 0 else self.pick(self.everything, user, t, rng)
        return self.from_the_start(user, item, t, rng)

    def from_the_start(self, user: int, item: int, t: float, rng: np.random.Generator) -> int:
        """Most people start a series at its first part they have not seen (-1 stays -1)."""
        if item < 0 or self.cat.part_of[item] <= 1 or rng.random() >= IN_ORDER:
            return item
        first = self.first_part[self.cat.series_of[item]]
        while first != item and self.seen[user, first]:
            first = self.next_part[first]
        return int(first) if self.cat.first_seen_days[first] <= t else item

    def pick(self, candidates: np.ndarray, user: int, t: float, rng: np.random.Generator) -> int:
        """A popularity-weighted candidate already released at t and new to the user (-1: none)."""
        released = self.cat.first_seen_days[candidates]
        age = np.maximum(t - released, 0.0)
        hype = 1.0 + self.cfg["release_hype"] * (released > 0) * np.exp(-age / self.cfg["hype_days"])
        weight = self.cat.weight[candidates] * hype * (released <= t) * ~self.seen[user, candidates]
        cumulative = np.cumsum(weight)
        if cumulative[-1] <= 0:
            return -1
        return int(candidates[np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")])

    def frame(self, start: pd.Timestamp, rows: list | None = None) -> pd.DataFrame:
        rows = self.rows if rows is None else rows
        user_idx, item_idx, ratings, times = (np.array(c) for c in zip(*rows)) if rows else ([], [], [], [])
        seconds = np.round(np.asarray(times, dtype=float) * 86400.0)  # logs carry whole seconds
        return pd.DataFrame(
            {
                C.USER_ID: [f"u{u + 1:04d}" for u in user_idx],
                C.ITEM_ID: self.cat.items[C.ITEM_ID].to_numpy()[np.asarray(item_idx, dtype=int)],
                C.RATING: np.asarray(ratings, dtype=float),
                C.TIMESTAMP: (start + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us, UTC]"),
                C.EVENT: "rating",
            }
        )


def session_sizes(n_events: int, mean: float, rng: np.random.Generator) -> list[int]:
    """Split `n_events` into sessions of geometric length (mean `mean`)."""
    sizes: list[int] = []
    while sum(sizes) < n_events:
        sizes.append(min(int(rng.geometric(1.0 / mean)), n_events - sum(sizes)))
    return sizes


def make_history(cfg: dict[str, Any], world: World) -> tuple[pd.DataFrame, Site]:
    """Every user's sessions over the history; the site keeps where each history stopped."""
    rng, days = world.rng, float(cfg["days"])
    site = Site(cfg, world.catalogue, world.preferences)
    counts = activity_counts(cfg["n_users"], cfg["mean_interactions_per_user"], rng)
    for user, n_events in enumerate(counts):
        joined = rng.uniform(0, 0.7 * days)
        stays = rng.random() < 0.6
        left = days if stays else rng.uniform(joined + 0.2 * days, days)
        sizes = session_sizes(int(n_events), cfg["session_length"], rng)
        for start, size in zip(np.sort(rng.uniform(joined, left, size=len(sizes))), sizes):
            site.session(user, float(start), size, days, rng)
        site.activity[user] = n_events if stays else 0.0
    return site.frame(world.start), site


# ---------------------------------------------------------------- nightly increments ("day N")


def generate_day(cfg: dict[str, Any], seed: int, day: int) -> SyntheticData:
    """Day `day` (1, 2, ...) after the history: that day's new items, sessions and dirt.

    The world and history are the ones `generate` draws from `seed`; days 1 .. day-1 are replayed
    (each from its own seed) so that users continue where they stopped, and any day can be
    generated alone, in any order, with the same result.
    """
    world = build_world(cfg, seed)
    _, site = make_history(cfg, world)
    catalogue = world.catalogue
    for d in range(1, day + 1):
        released = new_items(cfg, world, catalogue, seed, d)
        catalogue = with_new_items(catalogue, released)
        rng = np.random.default_rng([seed, d, 1])
        site = day_sessions(cfg, catalogue, site, d, rng)
    day_start = history_end(cfg) + pd.Timedelta(days=day - 1)
    users = world.users.iloc[:0]
    day_cfg = {**cfg, "days": 1}  # bots strike within this day
    good = site.frame(world.start)
    return inject_dirt(
        day_cfg, good, released.items, users, day_start, rng, tag=f"d{day:04d}", catalogue=catalogue.items
    )


def new_items(cfg: dict[str, Any], world: World, cat: Catalogue, seed: int, day: int) -> Catalogue:
    """`new_items_per_day` items released on `day`: some the next part of a series, the rest new."""
    rng = np.random.default_rng([seed, day, 0])
    n, hoods, now = cfg["new_items_per_day"], cfg["neighbourhoods_per_topic"], cfg["days"] + day - 1
    last_parts = np.flatnonzero((cat.series_of >= 0) & (next_parts(cat) < 0) & (cat.first_seen_days < now))
    topic_of, hood_of = rng.integers(0, len(world.topics), size=n), np.zeros(n, dtype=int)
    series_idx, part = np.full(n, -1), np.zeros(n, dtype=int)
    weight = (rng.integers(1, cfg["n_items"] + 1, size=n) + 0.0) ** -cfg["popularity_exponent"]
    hood_of[:] = topic_of * hoods + rng.integers(0, hoods, size=n)
    taken = set(cat.items[C.TITLE])
    titles, texts = [], []
    for j in range(n):
        if len(last_parts) and rng.random() < SEQUEL_SHARE:
            prev = int(rng.choice(last_parts))
            last_parts = last_parts[last_parts != prev]
            topic_of[j], hood_of[j], series_idx[j] = cat.topic_of[prev], cat.hood_of[prev], cat.series_of[prev]
            part[j], weight[j] = cat.part_of[prev] + 1, cat.weight[prev] / SEQUEL_DECAY  # a sequel draws its fans
        h = hood_of[j]
        one = cat.series[series_idx[j]] if series_idx[j] >= 0 else None
        vocab, nouns = TOPICS[world.topics[h // hoods]], world.focus[h // hoods][h % hoods]
        title, description = unique_text(vocab, nouns, one, int(part[j]), taken, rng)
        titles.append(title)
        texts.append(messy(f"{title}. {description}", rng, cfg["messy_text_share"]))
    first_seen = now + rng.uniform(0.0, 0.3, size=n)
    ids = [f"d{day:04d}-i{j + 1:03d}" for j in range(n)]
    items = catalogue_frame(cfg, ids, titles, texts, [world.topics[t] for t in topic_of], first_seen)
    quality = rng.normal(0.0, 0.4, size=n)
    return Catalogue(items, topic_of, hood_of, series_idx, part, first_seen, weight, quality, cat.series)


def day_sessions(cfg: dict[str, Any], cat: Catalogue, earlier: Site, day: int, rng: np.random.Generator) -> Site:
    """One day of sessions at the history's average rate, by the users still active, continuing their histories."""
    site = Site(cfg, cat, earlier.prefs)
    site.carry(earlier)
    rate = cfg["n_users"] * cfg["mean_interactions_per_user"] / cfg["days"]
    n_sessions = int(rng.poisson(rate / cfg["session_length"]))
    begin = cfg["days"] + day - 1.0
    weight = site.activity if site.activity.sum() > 0 else np.ones(len(site.activity))  # nobody stayed: anyone
    who = rng.choice(len(weight), size=n_sessions, p=weight / weight.sum())
    for user, start in zip(who, np.sort(begin + rng.uniform(0.0, 0.95, size=n_sessions))):
        n_events = int(rng.geometric(1.0 / cfg["session_length"]))
        site.session(int(user), float(start), n_events, begin + 1.0, rng)
    return site

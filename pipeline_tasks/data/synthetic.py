"""A seeded generator of realistic recommender logs, with known dirt injected on purpose.

`generate(cfg, seed)` returns a catalogue whose titles and descriptions are built from
per-topic vocabularies (so the text carries the topic), users whose topic preferences
drift slowly, power-law item popularity, late-arriving ("cold") items, ratings that
follow how well an item's topic matches the user's taste, and user attributes.

Then it injects dirt at the configured rates (duplicates, null ids, out-of-range ratings,
future timestamps, orphan item ids, broken item text, bot users) and records every
injected row in `injected`, so tests and the clean stage can be checked against the truth.
`generate_day(cfg, seed, N)` emits day N after that history (a nightly increment): the day's
events, the items released that day, a bot and the day's dirt, recorded the same way.
Pure numpy/pandas; the default size (params `ingest.synthetic`) takes about a second.

Longer than most modules on purpose: a third of it is the word lists the catalogue is written
from; the generator itself (world, interactions, increments, dirt) reads top to bottom.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import ParamsError

# Per-topic vocabulary: nouns and adjectives that say which topic an item is about.
TOPICS: dict[str, dict[str, list[str]]] = {
    "space": {
        "nouns": [
            "orbit",
            "rocket",
            "nebula",
            "galaxy",
            "comet",
            "astronaut",
            "telescope",
            "black hole",
            "moon landing",
            "space station",
            "supernova",
            "satellite",
            "launch pad",
            "exoplanet",
            "asteroid",
        ],
        "adjectives": ["interstellar", "lunar", "cosmic", "orbital", "solar", "celestial", "galactic", "stellar"],
    },
    "cooking": {
        "nouns": [
            "sourdough",
            "risotto",
            "cast iron pan",
            "spice rack",
            "pastry",
            "broth",
            "kitchen",
            "recipe",
            "dumpling",
            "marinade",
            "chef",
            "bread oven",
            "curry",
            "knife skills",
            "dessert",
        ],
        "adjectives": ["slow-cooked", "crispy", "homemade", "savory", "seasonal", "rustic", "spicy", "buttery"],
    },
    "football": {
        "nouns": [
            "goalkeeper",
            "striker",
            "penalty",
            "derby",
            "league",
            "stadium",
            "midfield",
            "transfer window",
            "world cup",
            "free kick",
            "offside rule",
            "manager",
            "cup final",
            "hat-trick",
            "dugout",
        ],
        "adjectives": [
            "legendary",
            "relegated",
            "unbeaten",
            "tactical",
            "last-minute",
            "title-winning",
            "underdog",
            "attacking",
        ],
    },
    "jazz": {
        "nouns": [
            "saxophone",
            "trumpet",
            "bebop",
            "improvisation",
            "big band",
            "double bass",
            "jam session",
            "swing",
            "piano trio",
            "blue note",
            "club",
            "standard",
            "drummer",
            "solo",
            "chord changes",
        ],
        "adjectives": ["smoky", "cool", "modal", "swinging", "late-night", "bluesy", "improvised", "soulful"],
    },
    "gardening": {
        "nouns": [
            "compost",
            "tomato",
            "greenhouse",
            "seedling",
            "rose",
            "soil",
            "allotment",
            "herb garden",
            "pruning",
            "raised bed",
            "orchard",
            "perennial",
            "watering can",
            "hedge",
            "vegetable patch",
        ],
        "adjectives": ["organic", "blooming", "shady", "evergreen", "fertile", "wild", "potted", "hardy"],
    },
    "crime": {
        "nouns": [
            "detective",
            "murder",
            "alibi",
            "suspect",
            "heist",
            "inspector",
            "witness",
            "crime scene",
            "forensics",
            "smuggler",
            "cold case",
            "interrogation",
            "informant",
            "gangster",
            "verdict",
        ],
        "adjectives": ["gritty", "deadly", "unsolved", "noir", "ruthless", "hidden", "silent", "corrupt"],
    },
    "finance": {
        "nouns": [
            "stock market",
            "dividend",
            "portfolio",
            "inflation",
            "interest rate",
            "hedge fund",
            "budget",
            "pension",
            "startup",
            "bond",
            "index fund",
            "bank",
            "crash",
            "mortgage",
            "tax return",
        ],
        "adjectives": ["bullish", "volatile", "frugal", "profitable", "risky", "long-term", "passive", "global"],
    },
    "travel": {
        "nouns": [
            "backpack",
            "road trip",
            "island",
            "hostel",
            "passport",
            "mountain pass",
            "train journey",
            "beach",
            "old town",
            "ferry",
            "itinerary",
            "desert",
            "street market",
            "harbour",
            "camino",
        ],
        "adjectives": ["remote", "coastal", "sunlit", "budget", "scenic", "hidden", "tropical", "alpine"],
    },
    "wildlife": {
        "nouns": [
            "wolf",
            "elephant",
            "coral reef",
            "savanna",
            "eagle",
            "rainforest",
            "migration",
            "predator",
            "whale",
            "jaguar",
            "penguin colony",
            "wetland",
            "bear",
            "ecosystem",
            "hummingbird",
        ],
        "adjectives": ["endangered", "wild", "nocturnal", "untamed", "migratory", "arctic", "native", "rare"],
    },
    "programming": {
        "nouns": [
            "compiler",
            "algorithm",
            "database",
            "python",
            "debugger",
            "open source",
            "cloud",
            "API",
            "refactoring",
            "unit test",
            "kernel",
            "framework",
            "data structure",
            "git",
            "microservice",
        ],
        "adjectives": ["functional", "scalable", "concurrent", "clean", "legacy", "distributed", "typed", "fast"],
    },
    "history": {
        "nouns": [
            "empire",
            "revolution",
            "castle",
            "pharaoh",
            "medieval village",
            "dynasty",
            "battle",
            "archive",
            "cathedral",
            "monarch",
            "treaty",
            "silk road",
            "legion",
            "manuscript",
            "ruins",
        ],
        "adjectives": ["ancient", "forgotten", "imperial", "victorian", "bronze age", "royal", "feudal", "lost"],
    },
    "fitness": {
        "nouns": [
            "marathon",
            "kettlebell",
            "yoga",
            "workout",
            "sprint",
            "stretching",
            "gym",
            "deadlift",
            "cycling",
            "core strength",
            "interval training",
            "recovery",
            "treadmill",
            "triathlon",
            "squat",
        ],
        "adjectives": [
            "high-intensity",
            "daily",
            "beginner",
            "explosive",
            "endurance",
            "lean",
            "athletic",
            "full-body",
        ],
    },
}

# Names, some with accents: a few items spell them in decomposed (NFD) form, which clean normalises.
NAMES = [
    "Ada Brennan",
    "Renée Laurent",
    "José Ortega",
    "Zoë Hart",
    "Björn Lind",
    "Mara Okafor",
    "Jonas Weber",
    "Priya Nair",
    "Tomás Silva",
    "Hana Sato",
    "Leo Marsh",
    "Amélie Roux",
    "Kofi Mensah",
    "Ines Moreau",
]
FORMATS = ["book", "documentary", "podcast series", "online course", "field guide", "film", "audiobook", "magazine"]

TITLE_TEMPLATES = [
    "The {Adj} {Noun}",
    "{Noun} and {Noun2}",
    "A Field Guide to {Noun}",
    "{Adj} {Noun}: {Noun2} Stories",
    "Notes on {Noun}",
    "{Noun} of the {Adj} {Noun2}",
    "Inside the {Noun}",
    "Everything About {Noun}",
    "{Name}'s {Noun}",
    "The {Noun} Handbook",
    "Beyond the {Noun}",
    "{Adj} Nights: {Noun}",
]
DESCRIPTION_TEMPLATES = [
    "{A_adj} look at {noun} and {noun2}, from {noun3} to the {adj2} {noun4}.",
    "{Name} explores the {noun} in this {format} about {noun2} and {noun3}.",
    "Covers {noun}, {noun2} and the {adj} {noun3}, with plenty of practical examples.",
    "In this {adj} {format}, {Name} follows {a_noun} through a world of {noun2}.",
    "Everything you wanted to know about {noun}: {noun2}, {noun3} and the {adj} {noun4}.",
    "{A_format} for anyone curious about {noun} and {adj2} {noun2}.",
]
FILLER = [
    "A must-have for your collection.",
    "Now in a new edition.",
    "Loved by readers and critics alike.",
    "Short, sharp and surprisingly funny.",
    "Includes a foreword by the author.",
    "",
]

GENDERS = (["F", "M"], [0.49, 0.51])
AGE_GROUPS = (["18-24", "25-34", "35-44", "45-54", "55+"], [0.2, 0.32, 0.22, 0.15, 0.11])
COUNTRIES = (
    ["US", "GB", "DE", "FR", "IN", "BR", "JP", "ES", "CA", "PL"],
    [0.3, 0.12, 0.1, 0.08, 0.12, 0.08, 0.06, 0.05, 0.05, 0.04],
)

BROKEN_TEXTS = ["", "   \n\t  ", "<p><br/></p>", "<div>&nbsp;</div>", "<span>  </span>\n"]
BAD_RATINGS = [0.0, -1.0, 6.0, 7.0, 10.0, 99.0]
FUTURE_START = pd.Timestamp("2090-01-01", tz="UTC")  # broken device clocks: far beyond any run's "now"
BOT_EVENTS_PER_SECOND = 2.0  # a scraper/booster fires far faster than a person can click

INJECTED_COLUMNS = ["kind", "table", C.USER_ID, C.ITEM_ID, C.TIMESTAMP, C.RATING, C.EVENT, "detail"]


@dataclass
class SyntheticData:
    interactions: pd.DataFrame  # user_id, item_id, rating, timestamp, event (dirty)
    items: pd.DataFrame  # item_id, title, text, genres, first_seen
    users: pd.DataFrame  # user_id, gender, age_group, country
    injected: pd.DataFrame  # kind, table, user_id, item_id, timestamp, rating, event, detail


@dataclass
class Catalogue:
    items: pd.DataFrame
    topic_of: np.ndarray  # topic index per item
    first_seen_days: np.ndarray  # days after start the item appears
    weight: np.ndarray  # popularity weight per item


def generate(cfg: dict[str, Any], seed: int) -> SyntheticData:
    """Build the clean world from `cfg` (params `ingest.synthetic`), then inject dirt."""
    world = build_world(cfg, seed)
    interactions = make_interactions(cfg, world.catalogue, world.preferences, world.start, world.rng)
    return inject_dirt(cfg, interactions, world.catalogue.items, world.users, world.start, world.rng)


@dataclass
class World:
    """What every day of the synthetic site shares: topics, catalogue, users and their tastes."""

    rng: np.random.Generator  # positioned after the world was drawn (the history's events come next)
    topics: list[str]
    start: pd.Timestamp
    catalogue: Catalogue
    preferences: np.ndarray
    users: pd.DataFrame


def build_world(cfg: dict[str, Any], seed: int) -> World:
    check_config(cfg)
    rng = np.random.default_rng(seed)
    topics = sorted(rng.choice(list(TOPICS), size=cfg["n_topics"], replace=False).tolist())
    start = pd.Timestamp(cfg["start_date"], tz="UTC")
    catalogue = make_catalogue(cfg, topics, rng)
    preferences = user_preferences(cfg["n_users"], len(topics), rng)
    users = make_users(cfg["n_users"], rng)
    return World(rng, topics, start, catalogue, preferences, users)


def history_end(cfg: dict[str, Any]) -> pd.Timestamp:
    """The first instant after the generated history: day 1 of the increments starts here."""
    return pd.Timestamp(cfg["start_date"], tz="UTC") + pd.Timedelta(days=cfg["days"])


def check_config(cfg: dict[str, Any]) -> None:
    if not 1 <= cfg["n_topics"] <= len(TOPICS):
        raise ParamsError(f"ingest.synthetic.n_topics must be in 1..{len(TOPICS)}, got {cfg['n_topics']}")
    for key in ("n_users", "n_items", "days", "mean_interactions_per_user"):
        if cfg[key] < 1:
            raise ParamsError(f"ingest.synthetic.{key} must be >= 1, got {cfg[key]}")
    for key in ("cold_item_share", "topic_affinity", "drift"):
        if not 0.0 <= cfg[key] <= 1.0:
            raise ParamsError(f"ingest.synthetic.{key} must be in [0, 1], got {cfg[key]}")


# ---------------------------------------------------------------- catalogue


def make_catalogue(cfg: dict[str, Any], topics: list[str], rng: np.random.Generator) -> Catalogue:
    n = cfg["n_items"]
    topic_of = rng.integers(0, len(topics), size=n)
    rank = rng.permutation(n)  # popularity rank, independent of topic
    weight = (rank + 1.0) ** -cfg["popularity_exponent"]
    days = cfg["days"]
    n_cold = int(round(cfg["cold_item_share"] * n))
    cold = np.zeros(n, dtype=bool)
    cold[rng.choice(n, size=n_cold, replace=False)] = True
    # Most of the catalogue exists at launch, some arrives during the first half, cold items in the last 10%.
    first_seen = np.where(rng.random(n) < 0.8, 0.0, rng.uniform(0, 0.5 * days, size=n))
    first_seen[cold] = rng.uniform(0.9 * days, 0.98 * days, size=n_cold)
    weight[cold] *= 5.0  # new releases get attention while they are new

    titles, texts = [], []
    seen_titles: dict[str, int] = {}
    for i in range(n):
        title, description = item_text(TOPICS[topics[topic_of[i]]], rng)
        seen_titles[title] = seen_titles.get(title, 0) + 1
        if seen_titles[title] > 1:
            title = f"{title}, Vol. {seen_titles[title]}"
        text = messy(f"{title}. {description}", rng, cfg["messy_text_share"])
        titles.append(title)
        texts.append(text)
    ids = [f"i{i + 1:05d}" for i in range(n)]
    items = catalogue_frame(cfg, ids, titles, texts, [topics[t] for t in topic_of], first_seen)
    return Catalogue(items=items, topic_of=topic_of, first_seen_days=first_seen, weight=weight)


def catalogue_frame(
    cfg: dict, ids: list[str], titles: list[str], texts: list[str], genres: list[str], first_seen_days: np.ndarray
) -> pd.DataFrame:
    """The items table; first_seen is counted in days from ingest.synthetic.start_date."""
    start = pd.Timestamp(cfg["start_date"], tz="UTC")
    return pd.DataFrame(
        {
            C.ITEM_ID: ids,
            C.TITLE: titles,
            C.TEXT: texts,
            "genres": genres,
            "first_seen": (start + pd.to_timedelta(first_seen_days, unit="D")).astype("datetime64[us, UTC]"),
        }
    )


def item_text(vocab: dict[str, list[str]], rng: np.random.Generator) -> tuple[str, str]:
    """A title and a 1-3 sentence description drawn from one topic's vocabulary."""
    nouns = rng.choice(vocab["nouns"], size=4, replace=False).tolist()
    adjectives = rng.choice(vocab["adjectives"], size=2, replace=False).tolist()
    slots = {
        "noun": nouns[0],
        "noun2": nouns[1],
        "noun3": nouns[2],
        "noun4": nouns[3],
        "adj": adjectives[0],
        "adj2": adjectives[1],
        "Noun": title_case(nouns[0]),
        "Noun2": title_case(nouns[1]),
        "Adj": title_case(adjectives[0]),
        "Name": str(rng.choice(NAMES)),
        "format": str(rng.choice(FORMATS)),
    }
    slots.update(
        A_adj=with_article(slots["adj"]).capitalize(),
        a_noun=with_article(slots["noun"]),
        A_format=with_article(slots["format"]).capitalize(),
    )
    title = str(rng.choice(TITLE_TEMPLATES)).format(**slots)
    n_sentences = int(rng.integers(1, 3))
    templates = rng.choice(DESCRIPTION_TEMPLATES, size=n_sentences, replace=False)
    sentences = [str(t).format(**slots) for t in templates] + [str(rng.choice(FILLER))]
    description = " ".join(s[0].upper() + s[1:] for s in sentences if s)
    return title, description


def with_article(word: str) -> str:
    return f"{'an' if word[0].lower() in 'aeiou' else 'a'} {word}"


def title_case(words: str) -> str:
    return " ".join(w if w.isupper() else w[0].upper() + w[1:] for w in words.split(" "))


def messy(text: str, rng: np.random.Generator, share: float) -> str:
    """Harmless mess real catalogues hold (markup, entities, odd spacing, NFD accents): clean fixes it."""
    if rng.random() >= share:
        return text
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return f"<p>{text.replace('. ', '.</p><p>', 1)}</p>"
    if kind == 1:
        return text.replace(" and ", " &amp; ", 1).replace(". ", ".  \n ", 1)
    if kind == 2:
        return unicodedata.normalize("NFD", text) + " <b>New!</b>"
    return "  " + text.replace(" ", "\t", 2) + "  "


# ---------------------------------------------------------------- users and interactions


def user_preferences(n_users: int, n_topics: int, rng: np.random.Generator) -> np.ndarray:
    """[n_users, 2, n_topics]: taste at the start and the taste it drifts towards."""
    return rng.dirichlet(np.full(n_topics, 0.3), size=(n_users, 2))


def make_users(n_users: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            C.USER_ID: [f"u{u + 1:04d}" for u in range(n_users)],
            "gender": rng.choice(GENDERS[0], size=n_users, p=GENDERS[1]),
            "age_group": rng.choice(AGE_GROUPS[0], size=n_users, p=AGE_GROUPS[1]),
            "country": rng.choice(COUNTRIES[0], size=n_users, p=COUNTRIES[1]),
        }
    )


def activity_counts(n_users: int, mean: float, rng: np.random.Generator) -> np.ndarray:
    """Events per user: log-normal (a few heavy users), capped so no person looks like a bot."""
    sigma = 0.7
    counts = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, size=n_users)
    return np.clip(np.round(counts), 3, 3.5 * mean).astype(int)


def make_interactions(
    cfg: dict[str, Any], cat: Catalogue, prefs: np.ndarray, start: pd.Timestamp, rng: np.random.Generator
) -> pd.DataFrame:
    days, n_topics = float(cfg["days"]), prefs.shape[2]
    by_topic = [np.flatnonzero(cat.topic_of == k) for k in range(n_topics)]
    quality = rng.normal(0.0, 0.4, size=len(cat.topic_of))
    counts = activity_counts(cfg["n_users"], cfg["mean_interactions_per_user"], rng)
    rows: list[tuple[int, int, float, float]] = []
    for user, n_events in enumerate(counts):
        joined = rng.uniform(0, 0.7 * days)
        left = days if rng.random() < 0.6 else rng.uniform(joined + 0.2 * days, days)
        times = np.sort(rng.uniform(joined, left, size=n_events))
        seen: set[int] = set()
        for t in times:
            taste = drifted(prefs[user], t / days, cfg["drift"])
            topic = (
                int(rng.choice(n_topics, p=taste))
                if rng.random() < cfg["topic_affinity"]
                else int(rng.integers(n_topics))
            )
            item = pick_item(by_topic, topic, t, cat, seen, rng)
            if item < 0:
                continue
            seen.add(item)
            match = taste[cat.topic_of[item]] / taste.max()
            rating = np.clip(np.round(1.5 + 3.0 * match + quality[item] + rng.normal(0, 0.8)), 1, 5)
            rows.append((user, item, float(rating), t))
    user_idx, item_idx, ratings, times = map(np.array, zip(*rows))
    seconds = np.round(times * 86400.0)  # logs carry whole seconds
    return pd.DataFrame(
        {
            C.USER_ID: [f"u{u + 1:04d}" for u in user_idx],
            C.ITEM_ID: cat.items[C.ITEM_ID].to_numpy()[item_idx],
            C.RATING: ratings.astype(float),
            C.TIMESTAMP: (start + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us, UTC]"),
            C.EVENT: "rating",
        }
    )


def drifted(pref: np.ndarray, progress: float, drift: float) -> np.ndarray:
    """Taste at `progress` (0..1 of the period): a share `drift` moves to the second taste by the end."""
    mix = drift * progress
    taste = (1 - mix) * pref[0] + mix * pref[1]
    return taste / taste.sum()


def pick_item(
    by_topic: list[np.ndarray], topic: int, t: float, cat: Catalogue, seen: set[int], rng: np.random.Generator
) -> int:
    """A popularity-weighted item of `topic` already released at day t and new to the user (-1: none)."""
    for candidates in (by_topic[topic], np.arange(len(cat.topic_of))):
        weight = cat.weight[candidates] * (cat.first_seen_days[candidates] <= t)
        if seen:
            weight = weight * ~np.isin(candidates, list(seen))
        total = weight.sum()
        if total > 0:
            return int(candidates[rng.choice(len(candidates), p=weight / total)])
    return -1


# ---------------------------------------------------------------- nightly increments ("day N")


def generate_day(cfg: dict[str, Any], seed: int, day: int) -> SyntheticData:
    """Day `day` (1, 2, ...) after the history: that day's events, the items released that day, and dirt.

    The world (catalogue, users, tastes) is the one `generate` draws from `seed`; each day draws
    from its own seed, so any day can be generated alone, in any order, with the same result.
    """
    world = build_world(cfg, seed)
    day_start = history_end(cfg) + pd.Timedelta(days=day - 1)
    released = [new_items(cfg, world.topics, seed, d) for d in range(1, day + 1)]
    catalogue = with_new_items(world.catalogue, released)
    rng = np.random.default_rng([seed, day, 1])
    good = day_interactions(cfg, catalogue, world.preferences, world.start, day, seed, rng)
    users = world.users.iloc[:0]
    day_cfg = {**cfg, "days": 1}  # bots strike within this day
    return inject_dirt(
        day_cfg, good, released[-1].items, users, day_start, rng, tag=f"d{day:04d}", catalogue=catalogue.items
    )


def new_items(cfg: dict[str, Any], topics: list[str], seed: int, day: int) -> Catalogue:
    """`new_items_per_day` items released on `day`, new to everyone (cold start every night)."""
    rng = np.random.default_rng([seed, day, 0])
    n = cfg["new_items_per_day"]
    topic_of = rng.integers(0, len(topics), size=n)
    first_seen = cfg["days"] + day - 1 + rng.uniform(0.0, 0.3, size=n)
    weight = 5.0 * (rng.integers(1, cfg["n_items"] + 1, size=n) + 0.0) ** -cfg["popularity_exponent"]
    titles, texts = [], []
    for topic in topic_of:
        title, description = item_text(TOPICS[topics[topic]], rng)
        titles.append(title)
        texts.append(messy(f"{title}. {description}", rng, cfg["messy_text_share"]))
    ids = [f"d{day:04d}-i{j + 1:03d}" for j in range(n)]
    items = catalogue_frame(cfg, ids, titles, texts, [topics[t] for t in topic_of], first_seen)
    return Catalogue(items=items, topic_of=topic_of, first_seen_days=first_seen, weight=weight)


def with_new_items(base: Catalogue, released: list[Catalogue]) -> Catalogue:
    parts = [base, *released]
    return Catalogue(
        items=pd.concat([p.items for p in parts], ignore_index=True),
        topic_of=np.concatenate([p.topic_of for p in parts]),
        first_seen_days=np.concatenate([p.first_seen_days for p in parts]),
        weight=np.concatenate([p.weight for p in parts]),
    )


def day_interactions(
    cfg: dict[str, Any],
    cat: Catalogue,
    prefs: np.ndarray,
    start: pd.Timestamp,
    day: int,
    seed: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """One day of events at the history's average rate, by the same taste model (at its drifted end)."""
    n_users, n_topics = prefs.shape[0], prefs.shape[2]
    stable = np.random.default_rng([seed, 0, 2])  # who is active and what is good does not change by day
    activity = stable.lognormal(0.0, 0.7, size=n_users)
    quality = np.concatenate(
        [stable.normal(0.0, 0.4, size=cfg["n_items"]), rng.normal(0.0, 0.4, size=len(cat.topic_of) - cfg["n_items"])]
    )
    n_events = int(rng.poisson(n_users * cfg["mean_interactions_per_user"] / cfg["days"]))
    by_topic = [np.flatnonzero(cat.topic_of == k) for k in range(n_topics)]
    who = rng.choice(n_users, size=n_events, p=activity / activity.sum())
    when = np.sort(cfg["days"] + day - 1 + rng.uniform(0.0, 1.0, size=n_events))
    rows: list[tuple[int, int, float, float]] = []
    for user, t in zip(who, when):
        taste = drifted(prefs[user], 1.0, cfg["drift"])
        topic = (
            int(rng.choice(n_topics, p=taste)) if rng.random() < cfg["topic_affinity"] else int(rng.integers(n_topics))
        )
        item = pick_item(by_topic, topic, t, cat, set(), rng)
        match = taste[cat.topic_of[item]] / taste.max()
        rating = np.clip(np.round(1.5 + 3.0 * match + quality[item] + rng.normal(0, 0.8)), 1, 5)
        rows.append((int(user), item, float(rating), float(t)))
    frame = pd.DataFrame(rows, columns=["u", "i", "r", "t"])
    seconds = np.round(frame["t"].to_numpy(dtype=float) * 86400.0)
    return pd.DataFrame(
        {
            C.USER_ID: [f"u{u + 1:04d}" for u in frame["u"]],
            C.ITEM_ID: cat.items[C.ITEM_ID].to_numpy()[frame["i"].to_numpy(dtype=int)],
            C.RATING: frame["r"].astype(float),
            C.TIMESTAMP: (start + pd.to_timedelta(seconds, unit="s")).astype("datetime64[us, UTC]"),
            C.EVENT: "rating",
        }
    )


# ---------------------------------------------------------------- dirt


def inject_dirt(
    cfg: dict[str, Any],
    good: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    start: pd.Timestamp,
    rng: np.random.Generator,
    tag: str = "",
    catalogue: pd.DataFrame | None = None,
) -> SyntheticData:
    """Append dirty rows (and break some item texts), recording each one in `injected`.

    `tag` names a day's orphan and bot ids so they never meet another day's; bots pick their
    items from `catalogue` (default: `items`, whose texts are the ones that may get broken).
    """
    dirt = cfg["dirt"]
    n = len(good)
    catalogue = items if catalogue is None else catalogue
    parts: list[tuple[str, pd.DataFrame]] = [
        ("duplicate", good.iloc[sample(n, dirt["duplicate_rate"], rng)].copy()),
        ("null_id", null_ids(good, sample(n, dirt["null_id_rate"], rng), rng)),
        (
            "bad_rating",
            shifted(good, sample(n, dirt["bad_rating_rate"], rng), rng).assign(
                **{C.RATING: lambda d: rng.choice(BAD_RATINGS, size=len(d))}
            ),
        ),
        ("future_timestamp", future(good, sample(n, dirt["future_timestamp_rate"], rng), rng)),
        ("orphan_item", orphans(good, sample(n, dirt["orphan_item_rate"], rng), len(items), rng, tag)),
    ]
    bot_users, bot_rows = bots(dirt, catalogue, users, start, cfg["days"], rng, tag)
    parts.append(("bot", bot_rows))
    items, broken = break_texts(items, dirt["broken_text_rate"], rng)

    dirty = pd.concat([good] + [rows for _, rows in parts], ignore_index=True)
    dirty = dirty.iloc[rng.permutation(len(dirty))].reset_index(drop=True)  # logs arrive unordered
    dirty[C.TIMESTAMP] = dirty[C.TIMESTAMP].astype("datetime64[us, UTC]")
    injected = pd.concat([record(kind, rows) for kind, rows in parts] + [broken], ignore_index=True)
    injected[C.TIMESTAMP] = injected[C.TIMESTAMP].astype("datetime64[us, UTC]")
    return SyntheticData(
        interactions=dirty,
        items=items,
        users=pd.concat([users, bot_users], ignore_index=True),
        injected=injected[INJECTED_COLUMNS],
    )


def sample(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(n, size=min(n, int(round(rate * n))), replace=False)


def shifted(good: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Copies of real rows, moved by a few minutes so each dirty row has a defect of its own."""
    out = good.iloc[rows].copy()
    out[C.TIMESTAMP] = out[C.TIMESTAMP] + pd.to_timedelta(rng.integers(60, 3600, size=len(out)), unit="s")
    return out


def null_ids(good: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    out = shifted(good, rows, rng).astype({C.USER_ID: object, C.ITEM_ID: object})
    which = rng.random(len(out)) < 0.5
    out.loc[which, C.USER_ID] = None
    out.loc[~which, C.ITEM_ID] = None
    return out


def future(good: pd.DataFrame, rows: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    out = good.iloc[rows].copy()
    offset = pd.to_timedelta(rng.integers(0, 3650 * 86400, size=len(out)), unit="s")
    out[C.TIMESTAMP] = (FUTURE_START + offset).astype("datetime64[us, UTC]")
    return out


def orphans(
    good: pd.DataFrame, rows: np.ndarray, n_items: int, rng: np.random.Generator, tag: str = ""
) -> pd.DataFrame:
    out = shifted(good, rows, rng)
    # Never in the catalogue (a day's new items are named "<tag>-i..." and base items "i0...").
    out[C.ITEM_ID] = [f"{tag}-x{j + 1:05d}" if tag else f"i{n_items + 1000 + j:05d}" for j in range(len(out))]
    return out


def bots(
    dirt: dict[str, Any],
    items: pd.DataFrame,
    users: pd.DataFrame,
    start: pd.Timestamp,
    days: float,
    rng: np.random.Generator,
    tag: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bot accounts (they register like people) that fire `bot_events` events within a few minutes."""
    n_bots, n_events = dirt["bot_users"], dirt["bot_events"]
    ids = [f"{tag}-bot{b + 1}" if tag else f"u{len(users) + b + 1:04d}" for b in range(n_bots)]
    accounts = make_users(n_bots, rng).assign(**{C.USER_ID: ids})
    frames = []
    for bot in ids:
        begin = start + pd.Timedelta(seconds=float(rng.uniform(0.1, 0.9) * days * 86400))
        # Microsecond jitter keeps every bot event distinct: the bot rule, not dedup, must catch them.
        offsets = np.sort(rng.uniform(0, n_events / BOT_EVENTS_PER_SECOND, size=n_events))
        frames.append(
            pd.DataFrame(
                {
                    C.USER_ID: bot,
                    C.ITEM_ID: rng.choice(items[C.ITEM_ID].to_numpy(), size=n_events, replace=n_events > len(items)),
                    C.RATING: 5.0,
                    C.TIMESTAMP: (begin + pd.to_timedelta(np.round(offsets * 1e6), unit="us")).astype(
                        "datetime64[us, UTC]"
                    ),
                    C.EVENT: "rating",
                }
            )
        )
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=C.INTERACTION_COLUMNS)
    return accounts, rows


def break_texts(items: pd.DataFrame, rate: float, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Empty, whitespace-only or markup-only descriptions: nothing left to encode after cleaning."""
    broken_rows = sample(len(items), rate, rng)
    items = items.copy()
    texts = rng.choice(BROKEN_TEXTS, size=len(broken_rows))
    items.loc[items.index[broken_rows], C.TEXT] = texts
    record_frame = pd.DataFrame(
        {
            "kind": "broken_text",
            "table": "items",
            C.USER_ID: None,
            C.ITEM_ID: items[C.ITEM_ID].to_numpy()[broken_rows],
            C.TIMESTAMP: pd.NaT,
            C.RATING: np.nan,
            C.EVENT: None,
            "detail": texts,
        }
    )
    return items, record_frame


def empty_injected() -> pd.DataFrame:
    """The ground-truth table with no rows: what a real source 'injected'."""
    frame = pd.DataFrame({col: pd.Series(dtype=object) for col in INJECTED_COLUMNS})
    return frame.astype({C.TIMESTAMP: "datetime64[us, UTC]", C.RATING: float})


def record(kind: str, rows: pd.DataFrame) -> pd.DataFrame:
    out = rows[C.INTERACTION_COLUMNS].copy()
    out.insert(0, "table", "interactions")
    out.insert(0, "kind", kind)
    out["detail"] = None
    return out

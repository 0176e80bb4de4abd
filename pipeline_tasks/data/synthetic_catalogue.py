"""The synthetic catalogue: topics split into neighbourhoods, series within them, popularity, release days.

Items of one neighbourhood are about the same two things (their texts name them first); a share
of each neighbourhood's items are parts of series (2-5 parts, released in order, titled by the
series and part number). Popularity follows a power law over a random rank (a later part of a
series draws fewer people on its own than the part before it); most items exist at launch, some
arrive during the first half of the history and `cold_item_share` in its last tenth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline_tasks.core import constants as C
from pipeline_tasks.data.synthetic_vocab import TOPICS, Series, item_text, messy, series_of

SEQUEL_DECAY = 0.6  # part k+1 of a series is picked on its own this much less than part k


@dataclass
class Catalogue:
    items: pd.DataFrame
    topic_of: np.ndarray  # topic index per item
    hood_of: np.ndarray  # neighbourhood per item (topic * neighbourhoods_per_topic + j)
    series_of: np.ndarray  # series index per item (-1: standalone)
    part_of: np.ndarray  # part number within its series (0: standalone)
    first_seen_days: np.ndarray  # days after start the item appears
    weight: np.ndarray  # popularity weight per item (before a new release's hype)
    quality: np.ndarray  # how much better (or worse) than its topic match it is rated
    series: list[Series]


def make_catalogue(cfg: dict[str, Any], topics: list[str], focus: list, rng: np.random.Generator) -> Catalogue:
    n, hoods = cfg["n_items"], cfg["neighbourhoods_per_topic"]
    topic_of = rng.integers(0, len(topics), size=n)
    hood_of = topic_of * hoods + rng.integers(0, hoods, size=n)
    weight = (rng.permutation(n) + 1.0) ** -cfg["popularity_exponent"]  # popularity rank, independent of topic
    series_idx, part = np.full(n, -1), np.zeros(n, dtype=int)
    n_series = 0
    for hood in range(len(topics) * hoods):
        members = rng.permutation(np.flatnonzero(hood_of == hood))
        in_series = int(round(cfg["series_share"] * len(members)))
        pos = 0
        while in_series - pos >= 2:
            chunk = members[pos : pos + min(int(rng.integers(2, 6)), in_series - pos)]
            series_idx[chunk], part[chunk] = n_series, np.arange(1, len(chunk) + 1)
            weight[chunk] = weight[chunk[0]] * SEQUEL_DECAY ** np.arange(len(chunk))
            n_series, pos = n_series + 1, pos + len(chunk)

    days = cfg["days"]
    n_cold = int(round(cfg["cold_item_share"] * n))
    cold = np.zeros(n, dtype=bool)
    cold[rng.choice(n, size=n_cold, replace=False)] = True
    # Most of the catalogue exists at launch, some arrives during the first half, cold items in the last 10%.
    first_seen = np.where(rng.random(n) < 0.8, 0.0, rng.uniform(0, 0.5 * days, size=n))
    first_seen[cold] = rng.uniform(0.9 * days, 0.98 * days, size=n_cold)
    for s in range(n_series):  # the parts of a series come out in order
        chunk = np.flatnonzero(series_idx == s)
        chunk = chunk[np.argsort(part[chunk])]
        first_seen[chunk] = np.sort(first_seen[chunk])

    taken: set[str] = set()
    series = []
    for s in range(n_series):
        first = np.flatnonzero((series_idx == s) & (part == 1))[0]
        h = hood_of[first]
        series.append(unique_series(TOPICS[topics[h // hoods]], focus[h // hoods][h % hoods], taken, rng))
    titles, texts = [], []
    for i in range(n):
        h = hood_of[i]
        vocab, nouns = TOPICS[topics[h // hoods]], focus[h // hoods][h % hoods]
        one = series[series_idx[i]] if series_idx[i] >= 0 else None
        title, description = unique_text(vocab, nouns, one, int(part[i]), taken, rng)
        titles.append(title)
        texts.append(messy(f"{title}. {description}", rng, cfg["messy_text_share"]))
    ids = [f"i{i + 1:05d}" for i in range(n)]
    items = catalogue_frame(cfg, ids, titles, texts, [topics[t] for t in topic_of], first_seen)
    quality = rng.normal(0.0, 0.4, size=n)
    return Catalogue(items, topic_of, hood_of, series_idx, part, first_seen, weight, quality, series)


def unique_series(vocab: dict, nouns: list[str], taken: set[str], rng: np.random.Generator) -> Series:
    for _ in range(50):
        one = series_of(vocab, nouns, rng)
        if one.title not in taken:
            break
    taken.add(one.title)
    return one


def unique_text(
    vocab: dict, nouns: list[str], series: Series | None, part: int, taken: set[str], rng: np.random.Generator
) -> tuple[str, str]:
    """An item's title and description; a title already taken is drawn again (or numbered)."""
    for _ in range(50):
        title, description = item_text(vocab, nouns, rng, series, part)
        if title not in taken:
            break
    n = 2
    while title in taken:
        title, n = f"{title.rsplit(' (', 1)[0]} ({n})", n + 1
    taken.add(title)
    return title, description


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


def next_parts(cat: Catalogue) -> np.ndarray:
    """Per item, the item that is the next part of its series (-1: none)."""
    out = np.full(len(cat.topic_of), -1)
    key = {(s, p): i for i, (s, p) in enumerate(zip(cat.series_of, cat.part_of)) if s >= 0}
    for i, (s, p) in enumerate(zip(cat.series_of, cat.part_of)):
        if s >= 0:
            out[i] = key.get((s, p + 1), -1)
    return out


def with_new_items(base: Catalogue, released: Catalogue) -> Catalogue:
    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(base, name), getattr(released, name)])

    return Catalogue(
        items=pd.concat([base.items, released.items], ignore_index=True),
        **{name: joined(name) for name in ("topic_of", "hood_of", "series_of", "part_of", "first_seen_days")},
        **{name: joined(name) for name in ("weight", "quality")},
        series=base.series,
    )

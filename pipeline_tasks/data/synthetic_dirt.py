"""Dirt injected into the synthetic logs on purpose, each row recorded in `injected` (the ground truth).

Duplicates, null ids, out-of-range ratings, future timestamps, orphan item ids, broken item
text and bot users, at the rates of params `ingest.synthetic.dirt`. The clean stage's tests
check that exactly these rows are quarantined, each for the reason its defect calls for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline_tasks.core import constants as C
from pipeline_tasks.data.synthetic_vocab import make_users

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

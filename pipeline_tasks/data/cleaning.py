"""The cleaning rules (PySpark), in the order the clean stage applies them; see its docstring.

Longer than most modules on purpose: the rules are one ordered pass over the same frames (a
`reason` column filled in rule by rule), and they share the helpers here (`alive`, `flag`,
`phase`); spreading them over files would hide the order that the accounting depends on.
"""

from __future__ import annotations

import contextlib
import functools
import html
import itertools
import logging
import math
import time
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core.errors import ParamsError, PipelineError

log = logging.getLogger(__name__)

MALFORMED_RULE = "malformed_line"  # a source line ingest could not parse (data/raw/malformed)


class BotWindow(NamedTuple):
    """A bot cap: more than `cfg[cap_key]` alive events of one user in one UTC bucket of `micros`."""

    rule: str
    cap_key: str
    column: str  # each row's count of its user's alive events in its bucket
    micros: int


BOT_WINDOWS = (
    BotWindow("bot_minute", "bot_max_events_per_minute", "_user_events_in_minute", 60_000_000),
    BotWindow("bot_hour", "bot_max_events_per_hour", "_user_events_in_hour", 3_600_000_000),
    BotWindow("bot_day", "bot_max_events_per_day", "_user_events_in_day", 86_400_000_000),
)
OUTLIER_RULE = "bot_outlier"  # a total count far above the population's (robust z-score of log counts)
# A user breaking several bot rules gets the first, in this order: the shortest window that caught it.
BOT_RULES = (*(w.rule for w in BOT_WINDOWS), OUTLIER_RULE)
INTERACTION_RULES = (
    MALFORMED_RULE,
    "bad_type",
    "invalid_id",
    "missing_timestamp",
    "rating_out_of_range",
    "future_timestamp",
    "timestamp_before_floor",
    "duplicate",
    "duplicate_key",
    *BOT_RULES,
    "orphan_item",
    "item_removed",
    "below_implicit_threshold",
    "kcore",
)
ITEM_RULES = (MALFORMED_RULE, "invalid_id", "empty_text", "duplicate_item")
USER_RULES = (MALFORMED_RULE, "invalid_id", "duplicate_user", *BOT_RULES)
MALFORMED_TABLE = "malformed_lines"  # data/quarantine/malformed_lines: table, file, line, text, error, reason
RAW = "raw"  # quarantine: the row's original values (JSON of strings) when coercion failed
BAD = "_bad_type"
NORM_TEXT, NORM_TITLE = "_text_norm", "_title_norm"
EVENTS = "events"  # a user's alive events (the outlier rule's input)
BOT_RULE = "_bot_rule"
NULL_ID_STRINGS = ("", "nan", "none", "null")
ROWS_PER_FILE = 2_000_000  # Parquet files per output table: one at MovieLens-1M scale, more beyond
INTEGRAL = ("tinyint", "smallint", "int", "bigint")
FRACTIONAL = ("float", "double")


def check_config(cfg: dict[str, Any]) -> None:
    if cfg["orphan_policy"] not in ("drop", "placeholder"):
        raise ParamsError(f"clean.orphan_policy must be 'drop' or 'placeholder', got {cfg['orphan_policy']!r}")
    if cfg["rating_min"] > cfg["rating_max"]:
        raise ParamsError(f"clean.rating_min ({cfg['rating_min']}) is above clean.rating_max ({cfg['rating_max']})")
    for key in ("text_max_chars", "kcore_max_iterations"):
        if cfg[key] < 1:
            raise ParamsError(f"clean.{key} must be >= 1, got {cfg[key]}")
    try:
        floor_timestamp(cfg)
    except ValueError as err:
        raise ParamsError(f"clean.timestamp_floor {cfg['timestamp_floor']!r} is not a date (use YYYY-MM-DD)") from err
    check_bot_config(cfg)


def check_bot_config(cfg: dict[str, Any]) -> None:
    lowest = {
        **{w.cap_key: (1, "a cap of events per window") for w in BOT_WINDOWS},
        "bot_max_events_zscore": (0, "0 turns the outlier rule off"),
        "bot_outlier_min_events": (0, "0: any count can be an outlier"),
        "bot_outlier_min_users": (1, "users needed before the outlier rule applies"),
    }
    for key, (low, meaning) in lowest.items():
        if cfg[key] < low:
            raise ParamsError(f"clean.{key} must be >= {low} ({meaning}), got {cfg[key]}")
    for inner, outer in itertools.pairwise(BOT_WINDOWS):
        # A longer window's cap below a shorter one's would leave the shorter rule nothing to catch.
        if cfg[outer.cap_key] < cfg[inner.cap_key]:
            raise ParamsError(
                f"clean.{outer.cap_key} ({cfg[outer.cap_key]}) is below clean.{inner.cap_key} "
                f"({cfg[inner.cap_key]}): a window's cap must be at least the shorter window's; "
                f"raise clean.{outer.cap_key} or lower clean.{inner.cap_key}"
            )


def raw_paths(root: Path) -> dict[str, Path]:
    paths = {name: root / C.DATA_RAW / name for name in C.TABLES}
    missing = [str(path) for path in paths.values() if not path.exists()]
    if missing:
        raise PipelineError(
            f"missing raw tables {missing}: run the ingest stage first "
            f"(`python -m pipeline_tasks.ingest --root {root}`)"
        )
    return paths


def malformed_lines(spark, root: Path) -> DataFrame | None:
    """The source lines ingest set aside (absent for data ingested before they were kept)."""
    path = root / C.DATA_RAW / "malformed"
    if not any(path.glob("*.parquet")):
        return None
    return spark.read.parquet(str(path)).withColumn(C.REASON, F.lit(MALFORMED_RULE))


def malformed_counts(malformed: DataFrame | None) -> dict[str, int]:
    if malformed is None:
        return {}
    return {row["table"]: row["count"] for row in malformed.groupBy("table").count().collect()}


def require(df: DataFrame, columns: tuple[str, ...], table: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PipelineError(
            f"data/raw/{table} lacks columns {missing} (has {df.columns}): fix the source's "
            f"column mapping in ingest and re-run it"
        )


@contextlib.contextmanager
def phase(label: str):
    """Log how long a step took (`clean phase <label>: <s> s`); the steps that materialise a frame
    are where Spark's time goes, so this is where a slow run shows what dominates."""
    started = time.perf_counter()
    yield
    log.info("clean phase %s: %.1f s", label, time.perf_counter() - started)


# ---------------------------------------------------------------- flagging


def alive() -> Column:
    return F.col(C.REASON).isNull()


def flag(df: DataFrame, condition: Column, rule: str | Column) -> DataFrame:
    """Give still-alive rows matching `condition` the reason `rule` (a name, or a column holding
    each row's reason); a null condition does not match."""
    hit = alive() & F.coalesce(condition, F.lit(False))
    reason = F.lit(rule) if isinstance(rule, str) else rule
    return df.withColumn(C.REASON, F.when(hit, reason).otherwise(F.col(C.REASON)))


def flag_repeats(df: DataFrame, keys: list[str], order: list[Column], rule: str) -> DataFrame:
    """Among alive rows sharing `keys`, keep the first by `order` and flag the rest."""
    window = Window.partitionBy(alive(), *[F.col(k) for k in keys]).orderBy(*order)
    ranked = df.withColumn("_rank", F.row_number().over(window))
    return flag(ranked, F.col("_rank") > 1, rule).drop("_rank")


def account(flagged: DataFrame, rules: tuple[str, ...], malformed: int = 0) -> dict[str, Any]:
    """rows_in = rows_kept + rows_quarantined, by rule; `malformed` source lines never became rows."""
    counts = {row[C.REASON]: row["count"] for row in flagged.groupBy(C.REASON).count().collect()}
    return tally(counts, rules, malformed)


def account_written(spark, kept: Path, quarantined: Path, rules: tuple[str, ...], malformed: int = 0) -> dict[str, Any]:
    """account() of a table already written: kept rows from the Parquet footers (no scan), the
    quarantined ones (few) by their `reason` column."""
    table = spark.read.parquet(str(quarantined)).groupBy(C.REASON).count().collect()
    counts = {row[C.REASON]: row["count"] for row in table}
    counts[None] = spark.read.parquet(str(kept)).count()
    return tally(counts, rules, malformed)


def tally(counts: dict[str | None, int], rules: tuple[str, ...], malformed: int) -> dict[str, Any]:
    """Rows per rule (None: kept) into the metrics layout."""
    if malformed:
        counts[MALFORMED_RULE] = malformed
    kept = counts.pop(None, 0)
    unknown = set(counts) - set(rules)
    assert not unknown, f"rules missing from the accounting list: {unknown}"
    quarantined = sum(counts.values())
    return {
        "rows_in": kept + quarantined,
        "rows_kept": kept,
        "rows_quarantined": quarantined,
        "by_rule": {rule: counts.get(rule, 0) for rule in rules},
    }


# ---------------------------------------------------------------- coercion


def id_column(df: DataFrame, name: str) -> Column:
    """Ids as trimmed strings; numbers lose a spurious '.0'; blank / 'nan' / 'null' become null."""
    col, kind = F.col(name), dict(df.dtypes)[name]
    if kind in FRACTIONAL:
        text = (
            F.when(F.isnan(col), None)
            .when(col == F.floor(col), col.cast("bigint").cast("string"))
            .otherwise(col.cast("string"))
        )
    else:
        text = col.cast("string")
    text = F.trim(text)
    return F.when(F.lower(text).isin(*NULL_ID_STRINGS), None).otherwise(text)


def parsed_rating(df: DataFrame) -> Column:
    if C.RATING not in df.columns:
        return F.lit(None).cast("double")
    col, kind = F.col(C.RATING), dict(df.dtypes)[C.RATING]
    if kind == "string":
        return F.when(F.trim(col) == "", None).otherwise(F.trim(col).try_cast("double"))
    return col.try_cast("double")


def parsed_timestamp(df: DataFrame) -> Column:
    """Timestamps in UTC; numbers (and digit strings) are epoch seconds."""
    col, kind = F.col(C.TIMESTAMP), dict(df.dtypes)[C.TIMESTAMP]
    if kind in ("timestamp", "timestamp_ntz", "date"):
        return col.cast("timestamp")
    if kind in INTEGRAL + FRACTIONAL or kind.startswith("decimal"):
        return F.when(F.isnan(col.cast("double")), None).otherwise(F.timestamp_seconds(col))
    text = F.trim(col.cast("string"))
    return (
        F.when(text == "", None)
        .when(text.rlike(r"^\d+$"), F.timestamp_seconds(text.try_cast("bigint")))
        .otherwise(F.try_to_timestamp(text))
    )


def coerce_interactions(df: DataFrame) -> DataFrame:
    """Canonical types, a `_bad_type` flag where a present value could not be parsed, and `raw`."""
    require(df, (C.USER_ID, C.ITEM_ID, C.TIMESTAMP), "interactions")
    extras = [c for c in df.columns if c not in C.INTERACTION_COLUMNS]
    rating, stamp = parsed_rating(df), parsed_timestamp(df)
    bad = F.lit(False)
    if C.RATING in df.columns:
        bad = bad | (F.col(C.RATING).isNotNull() & rating.isNull())
        if dict(df.dtypes)[C.RATING] == "string":
            bad = bad & (F.trim(F.col(C.RATING)) != "")
    bad = bad | (F.col(C.TIMESTAMP).isNotNull() & stamp.isNull() & (F.trim(F.col(C.TIMESTAMP).cast("string")) != ""))
    event = F.col(C.EVENT).cast("string") if C.EVENT in df.columns else F.lit("interaction")
    original = F.to_json(F.struct(*[F.col(c).cast("string").alias(c) for c in df.columns]))
    return df.select(
        id_column(df, C.USER_ID).alias(C.USER_ID),
        id_column(df, C.ITEM_ID).alias(C.ITEM_ID),
        F.when(F.isnan(rating), None).otherwise(rating).alias(C.RATING),
        stamp.alias(C.TIMESTAMP),
        event.alias(C.EVENT),
        *extras,
        F.when(bad, original).alias(RAW),
        bad.alias(BAD),
        F.lit(None).cast("string").alias(C.REASON),
    )


def invalid(name: str) -> Column:
    return F.col(name).isNull()


# ---------------------------------------------------------------- items


def unescape_and_compose(texts: pd.Series) -> pd.Series:
    """HTML entities to characters, then Unicode NFC (what Spark's built-ins cannot do)."""
    return texts.map(lambda t: None if t is None else unicodedata.normalize("NFC", html.unescape(t)))


def normalised_text(col: Column, max_chars: int) -> Column:
    """Tags stripped, entities decoded, NFC, whitespace (incl. no-break spaces) collapsed, capped."""
    compose = F.pandas_udf(unescape_and_compose, "string")
    text = F.regexp_replace(col, r"<[^>]*>", " ")
    text = F.regexp_replace(compose(text), r"(?U)\s+", " ")
    text = F.trim(text)
    return F.when(F.length(text) > max_chars, F.rtrim(F.substring(text, 1, max_chars))).otherwise(text)


def clean_items(raw: DataFrame, cfg: dict[str, Any]) -> DataFrame:
    require(raw, (C.ITEM_ID, C.TEXT), "items")
    title = F.col(C.TITLE).cast("string") if C.TITLE in raw.columns else F.lit("")
    extras = [c for c in raw.columns if c not in C.ITEM_COLUMNS]
    items = raw.select(
        id_column(raw, C.ITEM_ID).alias(C.ITEM_ID),
        title.alias(C.TITLE),
        F.col(C.TEXT).cast("string").alias(C.TEXT),
        *extras,
        F.lit(None).cast("string").alias(C.REASON),
    )
    items = flag(items, invalid(C.ITEM_ID), "invalid_id")
    items = items.withColumn(NORM_TEXT, normalised_text(F.col(C.TEXT), cfg["text_max_chars"])).withColumn(
        NORM_TITLE, F.coalesce(normalised_text(F.col(C.TITLE), cfg["text_max_chars"]), F.lit(""))
    )
    items = flag(items, F.coalesce(F.col(NORM_TEXT), F.lit("")) == "", "empty_text")
    # A repeated id keeps its richest description.
    items = flag_repeats(
        items, [C.ITEM_ID], [F.length(NORM_TEXT).desc(), F.col(NORM_TITLE), F.col(NORM_TEXT)], "duplicate_item"
    )
    return items.localCheckpoint()


# ---------------------------------------------------------------- interactions


def floor_timestamp(cfg: dict[str, Any]) -> datetime:
    return pd.Timestamp(cfg["timestamp_floor"], tz="UTC").to_pydatetime()


def clean_interactions(raw: DataFrame, items: DataFrame, cfg: dict[str, Any]) -> tuple[DataFrame, DataFrame, dict]:
    """Flag every interaction rule in order; returns the flagged frame, the bot users and k-core stats."""
    df = coerce_interactions(raw)
    df = flag(df, F.col(BAD), "bad_type").drop(BAD)
    df = flag(df, invalid(C.USER_ID) | invalid(C.ITEM_ID), "invalid_id")
    df = flag(df, F.col(C.TIMESTAMP).isNull(), "missing_timestamp")
    rating = F.col(C.RATING)
    df = flag(
        df, rating.isNotNull() & ((rating < cfg["rating_min"]) | (rating > cfg["rating_max"])), "rating_out_of_range"
    )
    now = datetime.now(UTC) + timedelta(hours=cfg["future_slack_hours"])
    df = flag(df, F.col(C.TIMESTAMP) > F.lit(now), "future_timestamp")
    df = flag(df, F.col(C.TIMESTAMP) < F.lit(floor_timestamp(cfg)), "timestamp_before_floor")
    # Materialised once: the bot rules, the k-core edges and the final frame all read it.
    with phase("interactions: coerce, range rules, duplicates"):
        deduplicated = materialised(with_window_counts(flag_duplicates(df)))

    with phase("interactions: bot users"):
        bots = bot_users(deduplicated, cfg)
    df = flag_bots(deduplicated, bots).drop(*(w.column for w in BOT_WINDOWS))
    df = flag_catalogue(df, items, cfg["orphan_policy"])
    if cfg["implicit_min_rating"] > 0:
        df = flag(df, rating.isNotNull() & (rating < cfg["implicit_min_rating"]), "below_implicit_threshold")
    df, kcore = flag_kcore(df, cfg)
    # Not materialised: the two writes each re-read `deduplicated` through the small broadcast joins
    # above, which cost no more CPU than storing a second full copy did (5M rows, bench_clean
    # phases_s) and keeps that copy off the disk and out of the JVM.
    return df, bots, kcore


def flag_duplicates(df: DataFrame) -> DataFrame:
    """Exact duplicates, then repeated (user, item, timestamp) keeping the best row, in one sort.

    Each user's rows are sorted by (alive, item, timestamp), then within a key by rating (highest
    first), event, every other column and the row's position in the source. A key's rows are thus
    adjacent, best first: an alive row whose predecessor is alive with the same key is not its
    key's first (`duplicate_key`), and if the predecessor also has the same content it is a
    `duplicate`. The same as flagging exact duplicates first and then repeated keys, with one
    shuffle (by user, which with_window_counts reuses) instead of two. A row's position in the source
    is not part of its content: of identical rows, the first in the source is kept.
    """
    rest = [
        c
        for c in df.columns
        if c not in (C.USER_ID, C.ITEM_ID, C.TIMESTAMP, RAW, C.REASON, C.RATING, C.EVENT, C.SOURCE_ROW)
    ]
    position = [F.col(C.SOURCE_ROW).asc_nulls_last()] if C.SOURCE_ROW in df.columns else []
    window = Window.partitionBy(C.USER_ID).orderBy(
        alive(),
        F.col(C.ITEM_ID),
        F.col(C.TIMESTAMP),
        F.col(C.RATING).desc_nulls_last(),
        F.col(C.EVENT).asc_nulls_last(),
        *[F.col(c).asc_nulls_last() for c in rest],
        *position,
    )

    def as_before(col: Column) -> Column:
        return F.lag(col).over(window).eqNullSafe(col)

    same_key = as_before(alive()) & as_before(F.col(C.ITEM_ID)) & as_before(F.col(C.TIMESTAMP))
    same_row = same_key
    for col in (C.RATING, C.EVENT, *rest):
        same_row = same_row & as_before(F.col(col))
    ranked = df.withColumn("_same_key", same_key).withColumn("_same_row", same_row)
    ranked = flag(ranked, F.col("_same_row"), "duplicate")
    return flag(ranked, F.col("_same_key"), "duplicate_key").drop("_same_key", "_same_row")


def with_window_counts(df: DataFrame) -> DataFrame:
    """Each row's count of alive rows of its user in its UTC minute, hour and day (the bot caps' inputs).

    The buckets are stored columns and the rows are sorted once by (user, day, hour, minute), so the
    windows by (user, day), (user, day, hour) and (user, day, hour, minute) find them in order: one
    sort for the three counts (explain() shows three sorts when each window has its own bucket
    expression), and no shuffle after flag_duplicates' window by user, where a groupBy of the stored
    frame would shuffle every (user, bucket) pair again.
    """
    nested = BOT_WINDOWS[::-1]  # day, hour, minute: each window's keys extend the previous one's
    buckets = [f"_bucket{i}" for i in range(len(nested))]
    micros = F.unix_micros(F.col(C.TIMESTAMP))
    df = df.select("*", *[F.floor(micros / w.micros).alias(b) for w, b in zip(nested, buckets, strict=True)])
    df = df.sortWithinPartitions(C.USER_ID, *buckets)
    for depth, window in enumerate(nested, start=1):
        keys = Window.partitionBy(C.USER_ID, *buckets[:depth])
        df = df.withColumn(window.column, F.sum(alive().cast("int")).over(keys))
    return df.drop(*buckets)


def joined_flag(df: DataFrame, keys: DataFrame, key: str, name: str) -> DataFrame:
    """`df` plus a boolean column `name`: whether the row's `key` is among `keys`."""
    marked = keys.select(key).distinct().withColumn(name, F.lit(True))
    return df.join(F.broadcast(marked), on=key, how="left").withColumn(name, F.coalesce(F.col(name), F.lit(False)))


def bot_users(df: DataFrame, cfg: dict[str, Any]) -> DataFrame:
    """(user_id, reason) of every user that broke a bot rule, with the first rule of BOT_RULES it broke.

    Only rows still alive count. clean_interactions stores `df` with with_window_counts' columns
    already added (no shuffle there); any other frame gets them here.
    """
    if BOT_WINDOWS[0].column not in df.columns:
        df = with_window_counts(df)
    activity = user_activity(df)
    broken = [(w.rule, F.col(w.column) > cfg[w.cap_key]) for w in BOT_WINDOWS]
    outliers = activity_outliers(activity, cfg)
    if outliers is not None:
        broken.append((OUTLIER_RULE, outliers))
    reason = F.when(broken[0][1], broken[0][0])
    for rule, condition in broken[1:]:
        reason = reason.when(condition, rule)
    return activity.select(C.USER_ID, reason.alias(C.REASON)).filter(F.col(C.REASON).isNotNull()).localCheckpoint()


def user_activity(df: DataFrame) -> DataFrame:
    """One row per user with alive events: their count (`EVENTS`) and their busiest minute, hour and day."""
    return (
        df.groupBy(C.USER_ID)
        .agg(F.sum(alive().cast("int")).alias(EVENTS), *[F.max(w.column).alias(w.column) for w in BOT_WINDOWS])
        .filter(F.col(EVENTS) > 0)
        .localCheckpoint()
    )  # small: one row per user


def activity_outliers(activity: DataFrame, cfg: dict[str, Any]) -> Column | None:
    """Users whose log event count is over `bot_max_events_zscore` robust standard deviations above
    the median user's, with at least `bot_outlier_min_events` events; None when the rule is off or
    there are fewer than `bot_outlier_min_users` users.

    Log counts, median and MAD, because activity is heavy-tailed: a plain z-score of counts flags the
    busiest real people, and one huge account inflates the mean and SD it is judged by.
    """
    threshold = cfg["bot_max_events_zscore"]
    if threshold == 0:
        return None
    users, median, scale = log_activity_spread(activity)
    if users < cfg["bot_outlier_min_users"] or scale == 0:  # scale 0: every user has the same count
        return None
    # z > threshold is a count above exp(median + threshold x scale): one number to log and compare.
    limit = math.exp(median + threshold * scale)
    log.info("clean %s: users with more than %.0f events (robust z > %s)", OUTLIER_RULE, limit, threshold)
    return (F.col(EVENTS) >= cfg["bot_outlier_min_events"]) & (F.col(EVENTS) > limit)


def log_activity_spread(activity: DataFrame) -> tuple[int, float, float]:
    """(users, median, robust standard deviation) of log(events) over `user_activity`'s rows."""
    log_events = F.log(F.col(EVENTS))
    center = activity.agg(F.count("*").alias("users"), F.median(log_events).alias("median")).first()
    if center["users"] == 0:
        return 0, 0.0, 0.0
    deviation = F.abs(log_events - F.lit(center["median"]))
    spread = activity.agg(F.median(deviation).alias("mad"), F.avg(deviation).alias("mean_ad")).first()
    return center["users"], center["median"], robust_scale(spread["mad"], spread["mean_ad"])


def robust_scale(mad: float, mean_ad: float) -> float:
    """The standard deviation a normal population with this spread has: 1.4826 x MAD, or, where over
    half the users share one count (MAD 0), 1.2533 x the mean absolute deviation (Iglewicz-Hoaglin)."""
    return 1.4826 * mad if mad > 0 else 1.2533 * mean_ad


def flag_bots(df: DataFrame, bots: DataFrame) -> DataFrame:
    """Give each alive row of a bot user (`bot_users`) its user's bot rule."""
    rules = bots.select(C.USER_ID, F.col(C.REASON).alias(BOT_RULE))
    df = df.join(F.broadcast(rules), on=C.USER_ID, how="left")
    return flag(df, F.col(BOT_RULE).isNotNull(), F.col(BOT_RULE)).drop(BOT_RULE)


def flag_catalogue(df: DataFrame, items: DataFrame, orphan_policy: str) -> DataFrame:
    """Orphans (item id absent from the raw catalogue) and interactions of quarantined items."""
    catalogue = (
        items.filter(F.col(C.ITEM_ID).isNotNull())
        .groupBy(C.ITEM_ID)
        .agg(F.max(alive().cast("int")).alias("_item_kept"))
    )
    df = df.join(F.broadcast(catalogue), on=C.ITEM_ID, how="left")
    if orphan_policy == "drop":
        df = flag(df, F.col("_item_kept").isNull(), "orphan_item")
    return flag(df, F.col("_item_kept") == 0, "item_removed").drop("_item_kept")


def flag_kcore(df: DataFrame, cfg: dict[str, Any]) -> tuple[DataFrame, dict[str, Any]]:
    """Drop users with < kcore_users and items with < kcore_items interactions, until stable.

    The iterations run on a slim copy of the live (user, item) pairs, not on the whole frame: each
    pass rewrites only two columns. A row is `kcore` iff its user or
    its item was low in some pass (the same rows as flagging the frame pass by pass), so the frame
    is joined once, at the end, with the union of the low users and the union of the low items.
    """
    min_users, min_items, limit = cfg["kcore_users"], cfg["kcore_items"], cfg["kcore_max_iterations"]
    with phase("interactions: bot flag, catalogue, k-core edges"):
        edges = materialised(df.filter(alive()).select(C.USER_ID, C.ITEM_ID))
    low_users, low_items = [], []
    stats = {"iterations": limit, "converged": False}
    for iteration in range(1, limit + 1):
        with phase(f"interactions: k-core pass {iteration}"):
            # Checkpointed (they are small): the emptiness test, the pruning and the final flag share them.
            users = (
                edges.groupBy(C.USER_ID).count().filter(F.col("count") < min_users).select(C.USER_ID).localCheckpoint()
            )
            items = (
                edges.groupBy(C.ITEM_ID).count().filter(F.col("count") < min_items).select(C.ITEM_ID).localCheckpoint()
            )
            if users.isEmpty() and items.isEmpty():
                stats = {"iterations": iteration - 1, "converged": True}
                break
            low_users.append(users)
            low_items.append(items)
            edges = materialised(
                edges.join(F.broadcast(users), on=C.USER_ID, how="left_anti").join(
                    F.broadcast(items), on=C.ITEM_ID, how="left_anti"
                )
            )
    else:
        log.warning("k-core did not converge in %d iterations: raise clean.kcore_max_iterations", limit)
    if not low_users:
        return df, stats
    df = joined_flag(df, union_all(low_users), C.USER_ID, "_low_user")
    df = joined_flag(df, union_all(low_items), C.ITEM_ID, "_low_item")
    return flag(df, F.col("_low_user") | F.col("_low_item"), "kcore").drop("_low_user", "_low_item"), stats


def union_all(frames: list[DataFrame]) -> DataFrame:
    return functools.reduce(DataFrame.union, frames)


def materialised(df: DataFrame) -> DataFrame:
    """`df` computed now and stored on local disk with a short plan: later actions read it instead
    of re-running its lineage. Disk, not the default memory-and-disk: the rows then stay out of the
    JVM heap (leaving it to the sorts) and the run used 27% less memory for no more CPU (5M rows,
    bench_clean). Not `persist()`: its compressed columnar cache took twice as long."""
    return df.localCheckpoint(storageLevel=StorageLevel.DISK_ONLY)


# ---------------------------------------------------------------- users and placeholders


def clean_users(raw: DataFrame, bots: DataFrame) -> DataFrame:
    require(raw, (C.USER_ID,), "users")
    extras = [c for c in raw.columns if c != C.USER_ID]
    users = raw.select(id_column(raw, C.USER_ID).alias(C.USER_ID), *extras, F.lit(None).cast("string").alias(C.REASON))
    users = flag(users, invalid(C.USER_ID), "invalid_id")
    users = flag_repeats(
        users, [C.USER_ID], [F.col(c).asc_nulls_last() for c in extras] or [F.lit(1)], "duplicate_user"
    )
    users = flag_bots(users, bots)
    return users.select(C.USER_ID, *extras, C.REASON).localCheckpoint()


def placeholder_items(interactions: DataFrame, items: DataFrame, cfg: dict[str, Any]) -> DataFrame | None:
    """orphan_policy=placeholder: one catalogue row per kept interaction's unknown item."""
    if cfg["orphan_policy"] != "placeholder":
        return None
    known = items.filter(F.col(C.ITEM_ID).isNotNull()).select(C.ITEM_ID).distinct()
    orphan_ids = interactions.filter(alive()).select(C.ITEM_ID).distinct().join(known, on=C.ITEM_ID, how="left_anti")
    text = F.lit(cfg["placeholder_text"])
    return orphan_ids.select(C.ITEM_ID, text.alias(C.TITLE), text.alias(C.TEXT)).localCheckpoint()


# ---------------------------------------------------------------- writing


def kept_items(items: DataFrame, placeholders: DataFrame | None) -> DataFrame:
    extras = [c for c in items.columns if c not in (*C.ITEM_COLUMNS, NORM_TEXT, NORM_TITLE, C.REASON)]
    kept = items.filter(alive()).select(
        C.ITEM_ID, F.col(NORM_TITLE).alias(C.TITLE), F.col(NORM_TEXT).alias(C.TEXT), *extras
    )
    if placeholders is not None:
        kept = kept.unionByName(placeholders, allowMissingColumns=True)
    return kept


def write_outputs(
    root: Path,
    interactions: DataFrame,
    items: DataFrame,
    users: DataFrame,
    placeholders: DataFrame | None,
    files: int = 1,
    malformed: DataFrame | None = None,
    before_swap: Callable[[Path, Path], None] | None = None,
) -> None:
    """All six tables, or none: each output folder is swapped in only after every write succeeded
    (and `before_swap(clean_dir, quarantine_dir)`, if given, accepted what was written)."""
    interaction_columns = [c for c in interactions.columns if c not in (RAW, C.REASON)]
    item_columns = [c for c in items.columns if c not in (NORM_TEXT, NORM_TITLE)]
    outputs = {
        "interactions": (
            interactions.filter(alive()).select(*interaction_columns),
            interactions.filter(~alive()).select(*interaction_columns, C.REASON, RAW),
        ),
        "items": (kept_items(items, placeholders), items.filter(~alive()).select(*item_columns)),
        "users": (users.filter(alive()).drop(C.REASON), users.filter(~alive())),
    }
    with io.atomic_dir(root / C.DATA_CLEAN) as clean_dir, io.atomic_dir(root / C.DATA_QUARANTINE) as quarantine_dir:
        for table, (kept, quarantined) in outputs.items():
            with phase(f"write {table}"):
                write_parquet(kept, clean_dir / table, files)
                write_parquet(quarantined, quarantine_dir / table, files)
        if malformed is not None:
            write_parquet(malformed, quarantine_dir / MALFORMED_TABLE, 1)
        if before_swap is not None:
            with phase("accounting (interactions, from the written files)"):
                before_swap(clean_dir, quarantine_dir)


def write_parquet(df: DataFrame, path: Path, files: int) -> None:
    df.coalesce(files).write.parquet(str(path))

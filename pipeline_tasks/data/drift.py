"""The drift gate of validate_clean: the clean data against the previous validated version.

Each version that passes validate_clean leaves its statistics in `<root>/<drift.baseline_dir>`
(default `validated/`): row count, distinct users and items, rating mean, the interactions
per item, and the user ids (all of them, or a consistent hash sample of at most
`drift.max_ids_stored`). The next run compares its clean data with the latest of them:

  row_count_change   |rows / previous rows - 1|                       <= max_row_count_change
  new_user_share     users absent from the previous version / users   <= max_new_user_share
  lost_user_share    previous users absent now / previous users       <= max_lost_user_share
  new_item_share     items absent from the previous version / items   <= max_new_item_share
  lost_item_share    previous items absent now / previous items       <= max_lost_item_share
  rating_mean_shift  |rating mean - previous rating mean| (stars)     <= max_rating_mean_shift
  popularity_psi     PSI of the interactions over the previous version's popularity deciles
                     (previous items only: new items are new_item_share's business)
                                                                      <= max_popularity_psi

Each comparison has a severity (`drift.severity.<name>`: fail | warn | off), like a GX check,
and is judged by Great Expectations like one: the observed values form a one-row table
("drift") with one expectation per check, so drift appears in the same Data Docs, metrics
and failure message as every other check of the gate. reports/drift.md adds the detail
(both versions' statistics, the popularity bins). A version that fails is not saved, so it
never becomes "the previous version"; the first run has nothing to compare with and
passes ("no baseline yet").

Why a folder of its own and not a DVC output: DVC deletes and restores a stage's outputs
(`dvc repro`, `dvc checkout`), so the previous version's statistics would be replaced by
the current run's before the comparison. `validated/` is the project's memory across runs.

Longer than most modules on purpose: statistics, saved versions, comparisons, the GX batch and
the report all work on one `VersionStats`; together they are one gate.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io, tracking
from pipeline_tasks.core.errors import ParamsError, PipelineError
from pipeline_tasks.data.validate import SEVERITIES, Check, CheckResult, TableBatch, import_gx

TABLE = "drift"  # CheckResult.table of every drift comparison
LATEST_FILE = "latest.json"
STATS_FILE = "stats.json"
USER_IDS_FILE = "user_ids.parquet"
ITEM_COUNTS_FILE = "item_counts.parquet"
REPORT = Path(C.REPORTS_DIR) / "drift.md"
ID_HASH_MODULUS = 10_000  # user ids kept in a sample: pmod(xxhash64(id), modulus) < buckets
ID_HASH = "spark xxhash64"
PSI_FLOOR = 1e-4  # a bin's share is floored here, so an empty bin does not make the PSI infinite
COUNT = "interactions"
BUCKET = "bucket"


@dataclass
class VersionStats:
    """What the drift gate remembers of one validated version."""

    version: str
    validated_at: str
    rows: int
    users: int
    items: int
    rating_mean: float | None
    user_buckets: int  # the user id sample: ids with pmod(xxhash64(id), ID_HASH_MODULUS) < user_buckets
    user_ids: pd.DataFrame  # the sampled user ids: user_id, bucket (its hash bucket)
    item_counts: pd.DataFrame  # item_id, interactions (every item)

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "validated_at": self.validated_at,
            "rows": self.rows,
            "users": self.users,
            "items": self.items,
            "rating_mean": self.rating_mean,
            "top_decile_item_share": top_decile_share(self.item_counts),
        }


@dataclass
class DriftCheck:
    """One comparison: its observed value, its limit and how to say both in words."""

    name: str
    value: float | None  # None: nothing to compare (e.g. no ratings in either version)
    limit: float
    observed: str
    threshold: str

    @property
    def success(self) -> bool:
        return self.value is None or (math.isfinite(self.value) and self.value <= self.limit)


@dataclass
class DriftOutcome:
    current: VersionStats
    previous: VersionStats | None
    checks: list[DriftCheck]
    severity: dict[str, str]  # check name -> fail | warn (the `off` ones are not computed)
    report: Path
    bins: pd.DataFrame | None  # the popularity deciles (previous / current share), for the report


# --- settings -------------------------------------------------------------------------


def settings(params: dict) -> dict[str, Any]:
    """`validate_clean.drift`, checked: severities known, limits not negative."""
    cfg = params["validate_clean"]["drift"]
    for name, severity in cfg["severity"].items():
        if severity not in SEVERITIES:
            raise ParamsError(
                f"'validate_clean.drift.severity.{name}' is {severity!r}; use one of {', '.join(SEVERITIES)}"
            )
    for key, value in cfg.items():
        if key.startswith("max_") and value < 0:
            raise ParamsError(f"'validate_clean.drift.{key}' must be >= 0, got {value}")
    if cfg["popularity_bins"] < 2:
        raise ParamsError(f"'validate_clean.drift.popularity_bins' must be >= 2, got {cfg['popularity_bins']}")
    return cfg


def severities(params: dict) -> dict[str, str]:
    """The drift checks' severities, merged with the table checks' by the gate (names must differ)."""
    drift_names = dict(settings(params)["severity"])
    assert not set(drift_names) & set(params["validate_clean"]["severity"]), "a drift check shadows a table check"
    return drift_names


def baseline_dir(params: dict, root: Path) -> Path:
    return Path(root) / params["validate_clean"]["drift"]["baseline_dir"]


# --- statistics of the clean data -----------------------------------------------------


def comparable(interactions) -> bool:
    """Whether the clean interactions have the columns the statistics need."""
    return {C.USER_ID, C.ITEM_ID, C.RATING} <= set(interactions.columns)


def compute_stats(interactions, max_ids: int, now: dt.datetime | None = None) -> VersionStats:
    """The statistics of a clean interactions DataFrame (Spark); ids come back as pandas."""
    from pyspark.sql import functions as F

    now = now or dt.datetime.now(dt.UTC)
    totals = interactions.agg(
        F.count(F.lit(1)).alias("rows"), F.avg(C.RATING).alias("mean"), F.countDistinct(C.USER_ID).alias("users")
    ).first()
    item_counts = (
        interactions.groupBy(C.ITEM_ID)
        .agg(F.count(F.lit(1)).alias(COUNT))
        .toPandas()
        .sort_values(C.ITEM_ID, ignore_index=True)
    )
    buckets = sample_buckets(int(totals["users"]), max_ids)
    bucket = F.pmod(F.xxhash64(C.USER_ID), F.lit(ID_HASH_MODULUS)).cast("int")
    users = interactions.select(C.USER_ID, bucket.alias(BUCKET)).where(F.col(BUCKET) < buckets).distinct().toPandas()
    return VersionStats(
        version=f"{now:%Y%m%dT%H%M%S%fZ}",
        validated_at=now.isoformat(timespec="seconds"),
        rows=int(totals["rows"]),
        users=int(totals["users"]),
        items=len(item_counts),
        rating_mean=None if totals["mean"] is None else float(totals["mean"]),
        user_buckets=buckets,
        user_ids=users.sort_values(C.USER_ID, ignore_index=True),
        item_counts=item_counts,
    )


def sample_buckets(n_ids: int, max_ids: int) -> int:
    """Hash buckets to keep so that about `max_ids` of `n_ids` ids are stored (all when they fit)."""
    if n_ids <= max_ids:
        return ID_HASH_MODULUS
    return max(1, math.floor(ID_HASH_MODULUS * max_ids / n_ids))


def user_sample(stats: VersionStats, buckets: int) -> set[str]:
    """The user ids of `stats` that fall in the first `buckets` hash buckets (<= its own sample)."""
    assert buckets <= stats.user_buckets, "a sample can only be narrowed"
    ids = stats.user_ids
    return set(ids.loc[ids[BUCKET] < buckets, C.USER_ID])


# --- the saved versions ---------------------------------------------------------------


def load_previous(folder: Path) -> VersionStats | None:
    """The latest validated version in `folder`, or None on the first run."""
    latest = folder / LATEST_FILE
    if not latest.exists():
        return None
    try:
        version_dir = folder / io.read_json(latest)["version"]
        meta = io.read_json(version_dir / STATS_FILE)
        return VersionStats(
            version=meta["version"],
            validated_at=meta["validated_at"],
            rows=meta["rows"],
            users=meta["users"],
            items=meta["items"],
            rating_mean=meta["rating_mean"],
            user_buckets=meta["user_id_sample"]["buckets"],
            user_ids=pd.read_parquet(version_dir / USER_IDS_FILE),
            item_counts=pd.read_parquet(version_dir / ITEM_COUNTS_FILE),
        )
    except (OSError, KeyError, ValueError, PipelineError) as err:  # a half-deleted or hand-edited folder
        raise PipelineError(
            f"the drift baseline in {folder} is unreadable ({type(err).__name__}: {err}): point {latest} at an "
            f"intact version folder there, or delete {folder} to start again with no baseline"
        ) from err


def save_version(stats: VersionStats, folder: Path, keep: int) -> Path:
    """Store `stats` as the latest validated version; keep the `keep` most recent versions."""
    with io.atomic_dir(folder / stats.version) as tmp:
        meta = {
            **stats.summary(),
            "user_id_sample": {
                "hash": ID_HASH,
                "modulus": ID_HASH_MODULUS,
                "buckets": stats.user_buckets,
                "stored": len(stats.user_ids),
            },
        }
        io.write_json(meta, tmp / STATS_FILE)
        stats.user_ids.to_parquet(tmp / USER_IDS_FILE, index=False)
        stats.item_counts.to_parquet(tmp / ITEM_COUNTS_FILE, index=False)
    io.write_json({"version": stats.version}, folder / LATEST_FILE)  # the switch: an atomic rename
    versions = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in versions[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return folder / stats.version


# --- the comparisons ------------------------------------------------------------------


def compare(
    current: VersionStats, previous: VersionStats, cfg: dict[str, Any]
) -> tuple[list[DriftCheck], pd.DataFrame]:
    """Every drift check whose severity is not `off`, and the popularity bins behind the PSI."""
    bins = popularity_bins(previous.item_counts, current.item_counts, cfg["popularity_bins"])
    builders: dict[str, Callable[[], DriftCheck]] = {
        "row_count_change": lambda: row_count_change(current, previous, cfg["max_row_count_change"]),
        "new_user_share": lambda: id_share(
            "new_user_share", *shared_user_samples(current, previous), cfg["max_new_user_share"], "users", new=True
        ),
        "lost_user_share": lambda: id_share(
            "lost_user_share", *shared_user_samples(current, previous), cfg["max_lost_user_share"], "users", new=False
        ),
        "new_item_share": lambda: id_share(
            "new_item_share", *item_sets(current, previous), cfg["max_new_item_share"], "items", new=True
        ),
        "lost_item_share": lambda: id_share(
            "lost_item_share", *item_sets(current, previous), cfg["max_lost_item_share"], "items", new=False
        ),
        "rating_mean_shift": lambda: rating_mean_shift(current, previous, cfg["max_rating_mean_shift"]),
        "popularity_psi": lambda: popularity_psi(bins, cfg["max_popularity_psi"], cfg["popularity_bins"]),
    }
    assert set(builders) == set(cfg["severity"]), "drift.severity must name exactly the drift checks"
    checks = [build() for name, build in builders.items() if cfg["severity"][name] != "off"]
    return checks, bins


def row_count_change(current: VersionStats, previous: VersionStats, limit: float) -> DriftCheck:
    change = relative_change(current.rows, previous.rows)
    return DriftCheck(
        name="row_count_change",
        value=abs(change),
        limit=limit,
        observed=f"{change:+.1%} ({current.rows} rows, previously {previous.rows})",
        threshold=f"within ±{limit:.0%} (validate_clean.drift.max_row_count_change)",
    )


def relative_change(now: float, before: float) -> float:
    if before == 0:
        return 0.0 if now == 0 else math.inf
    return now / before - 1.0


def shared_user_samples(current: VersionStats, previous: VersionStats) -> tuple[set[str], set[str]]:
    """Both versions' user ids over the same hash buckets (the narrower of the two samples)."""
    buckets = min(current.user_buckets, previous.user_buckets)
    return user_sample(current, buckets), user_sample(previous, buckets)


def item_sets(current: VersionStats, previous: VersionStats) -> tuple[set[str], set[str]]:
    return set(current.item_counts[C.ITEM_ID]), set(previous.item_counts[C.ITEM_ID])


def id_share(name: str, now: set[str], before: set[str], limit: float, what: str, new: bool) -> DriftCheck:
    """The share of ids that are new (absent before) or lost (absent now)."""
    base, other = (now, before) if new else (before, now)
    changed = len(base - other)
    share = changed / len(base) if base else 0.0
    word = "new" if new else "lost"
    example = sorted(base - other)[:3]
    observed = f"{share:.1%} ({changed} of {len(base)} {what} {word}"
    observed += f", e.g. {', '.join(map(repr, example))})" if example else ")"
    return DriftCheck(
        name=name,
        value=share,
        limit=limit,
        observed=observed,
        threshold=f"<= {limit:.0%} (validate_clean.drift.max_{name})",
    )


def rating_mean_shift(current: VersionStats, previous: VersionStats, limit: float) -> DriftCheck:
    threshold = f"<= {limit} stars (validate_clean.drift.max_rating_mean_shift)"
    if current.rating_mean is None or previous.rating_mean is None:
        seen = (
            f"no rating now ({current.rows} rows)"
            if current.rating_mean is None
            else f"no rating previously ({previous.rows} rows)"
        )
        both_implicit = current.rating_mean is None and previous.rating_mean is None
        return DriftCheck("rating_mean_shift", None if both_implicit else math.inf, limit, seen, threshold)
    shift = current.rating_mean - previous.rating_mean
    return DriftCheck(
        "rating_mean_shift",
        abs(shift),
        limit,
        f"{shift:+.3f} ({current.rating_mean:.3f}, previously {previous.rating_mean:.3f})",
        threshold,
    )


def popularity_bins(previous: pd.DataFrame, current: pd.DataFrame, n_bins: int) -> pd.DataFrame:
    """Previous items cut into popularity bins (bin 1 = the most popular); each bin's share of
    the interactions on previous items, before and now."""
    ranked = previous.sort_values([COUNT, C.ITEM_ID], ascending=[False, True], ignore_index=True)
    ranked["bin"] = np.arange(len(ranked)) * n_bins // max(len(ranked), 1) + 1
    now = current.set_index(C.ITEM_ID)[COUNT]
    ranked["now"] = ranked[C.ITEM_ID].map(now).fillna(0)
    bins = ranked.groupby("bin").agg(items=(C.ITEM_ID, "size"), before=(COUNT, "sum"), now=("now", "sum"))
    bins["previous_share"] = bins["before"] / max(bins["before"].sum(), 1)
    bins["current_share"] = bins["now"] / bins["now"].sum() if bins["now"].sum() else 0.0
    expected = bins["previous_share"].clip(lower=PSI_FLOOR)
    actual = bins["current_share"].clip(lower=PSI_FLOOR)
    bins["psi"] = (actual - expected) * np.log(actual / expected)
    return bins.reset_index()[["bin", "items", "previous_share", "current_share", "psi"]]


def popularity_psi(bins: pd.DataFrame, limit: float, n_bins: int) -> DriftCheck:
    threshold = (
        f"<= {limit} (validate_clean.drift.max_popularity_psi; PSI over {n_bins} popularity bins of the previous items)"
    )
    if bins["current_share"].sum() == 0:
        return DriftCheck("popularity_psi", math.inf, limit, "no interaction on any previous item", threshold)
    psi = float(bins["psi"].sum())
    worst = bins.loc[bins["psi"].idxmax()]
    observed = (
        f"{psi:.3f} (largest move: popularity bin {int(worst['bin'])} of {len(bins)}, "
        f"{worst['previous_share']:.1%} -> {worst['current_share']:.1%} of interactions)"
    )
    return DriftCheck("popularity_psi", psi, limit, observed, threshold)


def top_decile_share(item_counts: pd.DataFrame) -> float | None:
    """Share of interactions on the 10% most popular items (a one-number popularity summary)."""
    if item_counts.empty:
        return None
    counts = item_counts[COUNT].sort_values(ascending=False)
    return float(counts.head(max(1, len(counts) // 10)).sum() / counts.sum())


# --- the gate -------------------------------------------------------------------------


def check_drift(params: dict, root: Path, interactions, now: dt.datetime | None = None) -> DriftOutcome:
    """Compare the clean interactions with the previous validated version; write the report."""
    cfg = settings(params)
    current = compute_stats(interactions, cfg["max_ids_stored"], now)
    previous = load_previous(baseline_dir(params, root))
    checks, bins = compare(current, previous, cfg) if previous is not None else ([], None)
    severity = {c.name: cfg["severity"][c.name] for c in checks}
    outcome = DriftOutcome(current, previous, checks, severity, Path(root) / REPORT, bins)
    write_report(outcome, cfg)
    tracking.log_artifact(outcome.report, artifact_path="drift")
    return outcome


def gx_batch(outcome: DriftOutcome, spark) -> TableBatch | None:
    """The observed drift as a one-row table, one GX expectation per check (None: no baseline).

    A value of None (nothing to compare, e.g. no ratings in either version) is a null, which
    GX's value expectations skip, i.e. pass; infinity (e.g. every previous item gone) fails.
    """
    if not outcome.checks:
        return None
    from pyspark.sql import types as T

    E = import_gx().expectations
    schema = T.StructType([T.StructField(c.name, T.DoubleType(), nullable=True) for c in outcome.checks])
    frame = spark.createDataFrame([tuple(c.value for c in outcome.checks)], schema)
    checks = [
        Check(
            name=c.name,
            threshold=c.threshold,
            columns=(c.name,),
            expectation=E.ExpectColumnValuesToBeBetween(column=c.name, min_value=None, max_value=c.limit),
        )
        for c in outcome.checks
    ]
    return TableBatch(TABLE, frame, checks)


def described(results: list[CheckResult], outcome: DriftOutcome) -> list[CheckResult]:
    """GX saw one number per drift check; say what it means (e.g. '-42.0% (580 rows, previously 1000)')."""
    by_name = {c.name: c for c in outcome.checks}
    # Where GX's verdict differs from the arithmetic (GX raised), GX's own words are kept.
    return [
        replace(r, observed=by_name[r.name].observed, expectation=f"drift vs version {outcome.previous.version}")
        if r.table == TABLE and r.name in by_name and r.success == by_name[r.name].success
        else r
        for r in results
    ]


def accept(outcome: DriftOutcome, params: dict, root: Path) -> str:
    """The version passed every gate: it becomes the previous version of the next run."""
    cfg = params["validate_clean"]["drift"]
    save_version(outcome.current, baseline_dir(params, root), cfg["keep_versions"])
    return outcome.current.version


def metrics(outcome: DriftOutcome, results: list[CheckResult], root: Path, saved_as: str | None) -> dict[str, Any]:
    """The drift section of metrics/validate_clean.json: each check's number, limit and verdict (GX's)."""
    verdict = {r.name: r.success for r in results if r.table == TABLE}
    return {
        "status": "compared" if outcome.previous else "no baseline yet",
        "previous": outcome.previous.summary() if outcome.previous else None,
        "current": outcome.current.summary(),
        "checks": {
            c.name: {
                "value": c.value,
                "limit": c.limit,
                "success": verdict[c.name],
                "severity": outcome.severity[c.name],
                "observed": c.observed,
                "threshold": c.threshold,
            }
            for c in outcome.checks
        },
        "report": str(outcome.report.relative_to(root)),
        "saved_as": saved_as,
    }


def hints(outcome: DriftOutcome, results: list[CheckResult], params: dict) -> list[str]:
    """Extra lines of the failure message when a drift check failed."""
    failed = [r.name for r in results if r.table == TABLE and not r.success and r.severity == "fail"]
    if not failed:
        return []
    folder = params["validate_clean"]["drift"]["baseline_dir"]
    return [
        f"Drift detail (both versions' statistics, popularity bins): {outcome.report}. "
        f"The previous version stays the baseline ({folder}/{LATEST_FILE}).",
        "If the change is expected (a new source, a backfill), accept this version as the new baseline: "
        "re-run once with "
        + " ".join(f"--set validate_clean.drift.severity.{n}=warn" for n in failed)
        + " (or those keys set to warn in params.yaml for that run).",
    ]


# --- the report -----------------------------------------------------------------------


def write_report(outcome: DriftOutcome, cfg: dict[str, Any]) -> None:
    """reports/drift.md: what was compared, each check, and the popularity bins."""
    current, previous = outcome.current, outcome.previous
    lines = ["# Drift: clean data vs the previous validated version", ""]
    if previous is None:
        lines += [
            "**No baseline yet**: this is the first version; if it passes validate_clean, it becomes "
            f"the baseline of the next run (`{cfg['baseline_dir']}/`).",
            "",
        ]
    lines += ["| statistic | previous | current |", "|---|---|---|"]
    before = previous.summary() if previous else {}
    for key, value in current.summary().items():
        lines.append(f"| {key} | {fmt(before.get(key, '—'))} | {fmt(value)} |")
    if outcome.checks:
        lines += ["", "## Checks", "", "| check | result | severity | observed | threshold |", "|---|---|---|---|---|"]
        for check in outcome.checks:
            severity = outcome.severity[check.name]
            verdict = "pass" if check.success else ("**FAIL**" if severity == "fail" else "warn")
            lines.append(f"| {check.name} | {verdict} | {severity} | {check.observed} | {check.threshold} |")
    if outcome.bins is not None:
        lines += [
            "",
            "## Item popularity bins (previous items; bin 1 = most popular)",
            "",
            "| bin | items | previous share | current share | PSI term |",
            "|---|---|---|---|---|",
        ]
        for row in outcome.bins.itertuples():
            lines.append(
                f"| {row.bin} | {row.items} | {row.previous_share:.2%} | {row.current_share:.2%} | {row.psi:.4f} |"
            )
    outcome.report.parent.mkdir(parents=True, exist_ok=True)
    outcome.report.write_text("\n".join(lines) + "\n", encoding="utf-8")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)

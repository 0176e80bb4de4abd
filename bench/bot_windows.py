"""What the bot rules see on real data: the busiest real user per window, and who the rules catch.

    PYTHONPATH=. .venv/bin/python bench/bot_windows.py [--data ../shared/datasets/ml-100k]
        [--amazon ../shared/datasets/amazon-office] [--set section.key=value ...]

For MovieLens-100K (through the project's movielens source), the built-in synthetic data (default
params) and, where present, Amazon Office 5-core (generic source; its timestamps are made up, one
a day, so only its counts and z-scores mean anything), runs ingest and clean on a scratch root with
params.yaml's rules and reports, for the users the bot rules looked at (rows still alive when they
ran):
- the busiest real user's minute, hour and day (UTC buckets, as the caps count them), their event
  count and robust z-score (median/MAD of log counts): the numbers the defaults were chosen from;
- the outlier rule's limit in events (what bot_max_events_zscore means on this population);
- every known bot (the synthetic world's injected ones; on MovieLens, scripted accounts added the
  way issue 17 found them: at the minute cap for an hour, just under the hour cap for a day, just
  under the day cap for two weeks) with the rule that caught it, or "kept";
- real users lost: users quarantined by a bot rule who are no known bot (should be none).

Writes bench/results/bot_windows.json. Spark on the params' master; a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyspark.sql import DataFrame  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from pipeline_tasks import clean, ingest  # noqa: E402
from pipeline_tasks.core import constants as C  # noqa: E402
from pipeline_tasks.core import io  # noqa: E402
from pipeline_tasks.core import params as P  # noqa: E402
from pipeline_tasks.data import cleaning  # noqa: E402
from pipeline_tasks.data.spark import get_spark  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "ml-100k"
DEFAULT_AMAZON = ROOT.parent / "shared" / "datasets" / "amazon-office"
DEFAULT_WORK = Path("/tmp/recpipe-bot-windows")
RESULT = ROOT / "bench" / "results" / "bot_windows.json"
SCRIPT_START = pd.Timestamp("1998-01-05", tz="UTC")  # inside MovieLens-100K's months
SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def paced(user: str, per_window: int, window: str, windows: int, items: list[str]) -> pd.DataFrame:
    """A script pacing itself: `per_window` events spread evenly over each of `windows` windows."""
    seconds = SECONDS[window]
    offsets = [w * seconds + k * seconds / per_window for w in range(windows) for k in range(per_window)]
    stamps = SCRIPT_START + pd.to_timedelta(offsets, unit="s")
    return pd.DataFrame(
        {
            C.USER_ID: user,
            C.ITEM_ID: [items[k % len(items)] for k in range(len(offsets))],
            C.RATING: 5.0,
            C.TIMESTAMP: stamps.astype("datetime64[us, UTC]"),
            C.EVENT: "rating",
        }
    )


def scripted_accounts(cfg: dict, items: list[str]) -> pd.DataFrame:
    """Issue 17's scripted accounts, each pacing at or just under one cap for long enough."""
    return pd.concat(
        [
            paced("script_at_minute_cap_1h", cfg["bot_max_events_per_minute"], "minute", 60, items),
            paced("script_under_hour_cap_1d", cfg["bot_max_events_per_hour"] - 1, "hour", 24, items),
            paced("script_under_day_cap_2w", cfg["bot_max_events_per_day"] - 1, "day", 14, items),
        ],
        ignore_index=True,
    )


def add_accounts(root: Path, accounts: pd.DataFrame) -> None:
    """Append `accounts`' events and users to data/raw (as if the source had them)."""
    raw = root / C.DATA_RAW
    interactions = io.read_table(raw / "interactions")
    accounts = accounts.astype({C.TIMESTAMP: interactions[C.TIMESTAMP].dtype})
    if C.SOURCE_ROW in interactions:  # after the source's own lines, so the column stays integral
        accounts[C.SOURCE_ROW] = interactions[C.SOURCE_ROW].max() + 1 + pd.RangeIndex(len(accounts))
    io.write_table(pd.concat([interactions, accounts], ignore_index=True), raw / "interactions")
    users = io.read_table(raw / "users")
    new_users = pd.DataFrame({C.USER_ID: accounts[C.USER_ID].unique()})
    io.write_table(pd.concat([users, new_users], ignore_index=True), raw / "users")


def rows_the_bot_rules_saw(spark, root: Path) -> DataFrame:
    """The interactions alive when the bot rules ran: kept, or quarantined by a bot rule or a later one."""
    from_bots_on = list(cleaning.INTERACTION_RULES[cleaning.INTERACTION_RULES.index(cleaning.BOT_RULES[0]) :])
    columns = [C.USER_ID, C.TIMESTAMP]
    kept = spark.read.parquet(str(root / C.DATA_CLEAN / "interactions")).select(*columns)
    quarantined = spark.read.parquet(str(root / C.DATA_QUARANTINE / "interactions"))
    later = quarantined.filter(F.col(C.REASON).isin(from_bots_on)).select(*columns)
    return kept.unionByName(later).withColumn(C.REASON, F.lit(None).cast("string"))


def measure(spark, params: dict, root: Path, known_bots: set[str]) -> dict:
    """Clean `root` and report the busiest real user per window and what the bot rules caught."""
    cfg = params["clean"]
    metrics = clean.run(params, root)
    activity = cleaning.user_activity(cleaning.with_window_counts(rows_the_bot_rules_saw(spark, root)))
    users, median, scale = cleaning.log_activity_spread(activity)
    real = activity.filter(~F.col(C.USER_ID).isin(list(known_bots)))
    busiest = real.agg(
        *[F.max(w.column).alias(w.rule.removeprefix("bot_")) for w in cleaning.BOT_WINDOWS],
        F.max(cleaning.EVENTS).alias("events"),
    ).first()
    bad_users = io.read_table(root / C.DATA_QUARANTINE / "users")
    caught = bad_users[bad_users[C.REASON].isin(cleaning.BOT_RULES)].set_index(C.USER_ID)[C.REASON].to_dict()
    threshold = cfg["bot_max_events_zscore"]
    return {
        "users_seen_by_bot_rules": users,
        "busiest_real_user": {
            **busiest.asDict(),
            "robust_z": round((math.log(busiest["events"]) - median) / scale, 2) if scale else None,
        },
        "caps": {w.rule: cfg[w.cap_key] for w in cleaning.BOT_WINDOWS},
        "outlier_limit_events": round(math.exp(median + threshold * scale)) if threshold and scale else None,
        "known_bots": {user: caught.get(user, "kept") for user in sorted(known_bots)},
        "real_users_lost": sorted(set(caught) - known_bots),
        "interactions_by_bot_rule": {rule: metrics["interactions"]["by_rule"][rule] for rule in cleaning.BOT_RULES},
        "interactions_rows_in": metrics["interactions"]["rows_in"],
        "interactions_rows_kept": metrics["interactions"]["rows_kept"],
    }


def fresh(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def movielens(spark, params: dict, data: Path, work: Path) -> dict:
    params = {**params, "ingest": {**params["ingest"], "source": "movielens", "path": str(data)}}
    root = fresh(work / "ml-100k")
    ingest.run(params, root)
    items = io.read_table(root / C.DATA_RAW / "items")[C.ITEM_ID].tolist()
    scripts = scripted_accounts(params["clean"], items)
    add_accounts(root, scripts)
    return measure(spark, params, root, set(scripts[C.USER_ID]))


def synthetic(spark, params: dict, work: Path) -> dict:
    params = {**params, "ingest": {**params["ingest"], "source": "synthetic"}}
    root = fresh(work / "synthetic")
    ingest.run(params, root)
    injected = io.read_table(root / C.GROUND_TRUTH / "injected")
    return measure(spark, params, root, set(injected.loc[injected["kind"] == "bot", C.USER_ID]))


def amazon_office(spark, params: dict, data: Path, work: Path) -> dict:
    """Its folder's README: the generic source, no rating column, text in `description`. 7% of
    items.csv's lines do not parse (unquoted commas): quarantined, they change nothing the bot
    rules see (they run before the catalogue rules)."""
    generic = {**params["ingest"]["generic"], "timestamp_unit": "s", "text_columns": ["description"]}
    generic["columns"] = {**generic["columns"], "rating": ""}
    source = {"source": "generic", "path": str(data), "generic": generic, "max_bad_line_share": 0.1}
    params = {**params, "ingest": {**params["ingest"], **source}}
    root = fresh(work / "amazon-office")
    ingest.run(params, root)
    return measure(spark, params, root, set())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens-100K folder (u.data, u.item)")
    parser.add_argument("--amazon", type=Path, default=DEFAULT_AMAZON, help="Amazon Office 5-core folder")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch project roots (deleted first)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    params = P.load(ROOT / C.PARAMS_FILE, args.overrides)
    spark = get_spark(params)
    report = {
        "command": " ".join(["bench/bot_windows.py", *(argv if argv is not None else sys.argv[1:])]),
        "clean_params": {k: v for k, v in params["clean"].items() if k.startswith("bot_")},
        "synthetic": synthetic(spark, params, args.work),
    }
    if (args.data / "u.data").exists():
        report["ml-100k"] = movielens(spark, params, args.data.resolve(), args.work)
    else:
        print(f"MovieLens-100K not found at {args.data}: not measured", file=sys.stderr)
    if (args.amazon / "interactions.csv").exists():
        report["amazon-office"] = amazon_office(spark, params, args.amazon.resolve(), args.work)
    report["load_avg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

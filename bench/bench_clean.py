"""Benchmark: the clean stage (Spark) against a pandas implementation of the same rules.

    .venv/bin/python bench/bench_clean.py --rows 2000000 [--repeats 3] [--engines spark,pandas]

Generates `--rows` synthetic interactions (vectorised; with items, users and the same kinds of
dirt as the built-in generator: duplicates, null ids, bad ratings, future timestamps, orphans,
bots, broken and messy item text) under a scratch folder, then cleans them with
`pipeline_tasks.clean.run` (Spark, params from params.py; --driver-memory and
--shuffle-partitions default to the product's params, so the bench measures what the pipeline
runs) and with `pandas_clean` below, each in its own subprocess. For each run it records wall
time, rows/s, the CPU seconds and the peak resident memory of the whole process tree (Python +
JVM + Python UDF workers; also each role's own peak), sampled every 0.2 s, and the duration of
each step of the Spark stage (`phases_s`, from clean.py's `clean phase` log lines). CPU seconds
matter on a shared machine: they do not grow with other people's load the way wall time does.
Both engines must agree on every rule's count (`counts_agree`). A pandas run that dies (e.g. out
of memory) is recorded as failed, with its size.

Writes bench/results/clean_<rows>.json (medians over --repeats).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from pipeline_tasks.core import constants as C  # noqa: E402
from pipeline_tasks.core import params as P  # noqa: E402

START = pd.Timestamp("2026-01-01", tz="UTC")
DAYS = 180
CHUNK_ROWS = 2_000_000
WORDS = (
    "orbit rocket nebula galaxy comet sourdough risotto pastry broth striker penalty derby saxophone bebop "
    "swing compost tomato greenhouse detective alibi heist dividend portfolio backpack island ferry wolf "
    "eagle whale compiler database kernel empire castle marathon yoga"
).split()
BROKEN = ["", "   \n\t  ", "<p><br/></p>", "<div>&nbsp;</div>"]


# ---------------------------------------------------------------- data


def ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    text = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")
    return pc.binary_join_element_wise(pa.scalar(prefix), text, "")


def generate(n_rows: int, root: Path, seed: int = 0) -> dict:
    """data/raw/{interactions,items,users} with `n_rows` interactions of which ~2.5% are dirt."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(100, n_rows // 50), max(500, n_rows // 200)
    n_good = int(n_rows * 0.975)
    user_w = rng.lognormal(0, 0.7, n_users)
    item_w = (rng.permutation(n_items) + 1.0) ** -1.0
    user = rng.choice(n_users, n_good, p=user_w / user_w.sum())
    item = rng.choice(n_items, n_good, p=item_w / item_w.sum())
    seconds = rng.integers(0, DAYS * 86400, n_good)
    rating = rng.integers(1, 6, n_good).astype(float)
    # 0 good, 1 duplicate, 2 null user, 3 null item, 4 bad rating, 5 future, 6 orphan, 7 bot
    kind = np.zeros(n_good, dtype=np.int8)

    def pick(rate: float) -> np.ndarray:
        return rng.choice(n_good, int(rate * n_good), replace=False)

    extra = []
    for code, rate in ((1, 0.01), (2, 0.0015), (3, 0.0015), (4, 0.003), (5, 0.003), (6, 0.003)):
        rows = pick(rate)
        part = {
            "user": user[rows].copy(),
            "item": item[rows].copy(),
            "sec": seconds[rows].copy(),
            "rating": rating[rows].copy(),
            "kind": np.full(len(rows), code, dtype=np.int8),
        }
        if code > 1:
            part["sec"] += rng.integers(60, 3600, len(rows))  # a defect of its own, not also a duplicate
        if code == 4:
            part["rating"] = rng.choice([0.0, -1.0, 6.0, 10.0], len(rows))
        if code == 5:
            far = (pd.Timestamp("2090-01-01", tz="UTC") - START).days * 86400
            part["sec"] = far + rng.integers(0, 10**8, len(rows))
        if code == 6:
            part["item"] = n_items + 1000 + np.arange(len(rows))
        extra.append(part)
    n_bots = max(1, n_rows // 1_000_000)
    bot_events = 400
    for b in range(n_bots):
        begin = int(rng.integers(0, DAYS * 86400 - 1000))
        extra.append(
            {
                "user": np.full(bot_events, n_users + b),
                "item": rng.choice(n_items, bot_events),
                "sec": begin + np.sort(rng.integers(0, bot_events // 2, bot_events)),
                "rating": np.full(bot_events, 5.0),
                "kind": np.full(bot_events, 7, dtype=np.int8),
            }
        )
    cols = {"user": user, "item": item, "sec": seconds, "rating": rating, "kind": kind}
    for key in cols:
        cols[key] = np.concatenate([cols[key]] + [e[key] for e in extra])
    order = rng.permutation(len(cols["kind"]))
    cols = {k: v[order] for k, v in cols.items()}
    # Bot events share seconds: microsecond offsets keep them distinct rows, as the generator does.
    micros = np.where(cols["kind"] == 7, rng.integers(0, 10**6, len(order)), 0)

    raw = root / C.DATA_RAW
    for table in C.TABLES:
        (raw / table).mkdir(parents=True, exist_ok=True)
    total = len(order)
    for n, lo in enumerate(range(0, total, CHUNK_ROWS)):
        sl = slice(lo, min(total, lo + CHUNK_ROWS))
        user_ids = ids("u", cols["user"][sl], 7)
        item_ids = ids("i", cols["item"][sl], 7)
        kinds = cols["kind"][sl]
        user_ids = pc.if_else(pa.array(kinds == 2), pa.scalar(None, pa.string()), user_ids)
        item_ids = pc.if_else(pa.array(kinds == 3), pa.scalar(None, pa.string()), item_ids)
        stamps = (START.value // 1000) + cols["sec"][sl].astype(np.int64) * 1_000_000 + micros[sl]
        table = pa.table(
            {
                C.USER_ID: user_ids,
                C.ITEM_ID: item_ids,
                C.RATING: pa.array(cols["rating"][sl]),
                C.TIMESTAMP: pa.array(stamps, pa.timestamp("us", tz="UTC")),
                C.EVENT: pa.array(["rating"] * (sl.stop - sl.start), pa.string()),
                C.SOURCE_ROW: pa.array(np.arange(sl.start, sl.stop, dtype=np.int64)),
            }
        )
        pq.write_table(table, raw / "interactions" / f"part-{n:04d}.parquet")

    texts = [
        f"The {rng.choice(WORDS)} {rng.choice(WORDS)} {i}. A {rng.choice(WORDS)} about {rng.choice(WORDS)} "
        f"and {rng.choice(WORDS)}."
        for i in range(n_items)
    ]
    messy = rng.random(n_items) < 0.1
    broken = rng.random(n_items) < 0.02
    texts = [
        BROKEN[i % len(BROKEN)] if broken[i] else (f"<p>{t.replace(' and ', ' &amp; ')}</p>" if messy[i] else t)
        for i, t in enumerate(texts)
    ]
    pq.write_table(
        pa.table({C.ITEM_ID: ids("i", np.arange(n_items), 7), C.TITLE: [t[:30] for t in texts], C.TEXT: texts}),
        raw / "items" / "part-0.parquet",
    )
    pq.write_table(
        pa.table(
            {
                C.USER_ID: ids("u", np.arange(n_users + n_bots), 7),
                "country": rng.choice(["DE", "FR", "US"], n_users + n_bots),
            }
        ),
        raw / "users" / "part-0.parquet",
    )
    return {
        "interactions": total,
        "items": n_items,
        "users": n_users + n_bots,
        "bots": n_bots,
        "injected": int((cols["kind"] > 0).sum()),
    }


# ---------------------------------------------------------------- the same rules in pandas

NULL_IDS = {"", "nan", "none", "null"}


def clean_ids(series: pd.Series) -> pd.Series:
    text = series.astype("string").str.strip()
    return text.mask(text.str.lower().isin(NULL_IDS))


def normalise(texts: pd.Series, max_chars: int) -> pd.Series:
    out = texts.fillna("").astype(str).str.replace(r"<[^>]*>", " ", regex=True)
    out = out.map(lambda t: unicodedata.normalize("NFC", html.unescape(t)))
    out = out.str.replace(r"\s+", " ", regex=True).str.strip()
    long = out.str.len() > max_chars
    out[long] = out[long].str.slice(0, max_chars).str.rstrip()
    return out


def flag(reason: pd.Series, condition: pd.Series, rule: str) -> None:
    hit = reason.isna() & condition.fillna(False).astype(bool)
    reason[hit] = rule


def pandas_clean(root: Path, cfg: dict) -> dict:
    """clean.py's rules, in the same order, on pandas (the reference the benchmark compares with)."""
    raw = root / C.DATA_RAW
    inter = pd.read_parquet(raw / "interactions")
    items = pd.read_parquet(raw / "items")
    users = pd.read_parquet(raw / "users")

    items[C.ITEM_ID] = clean_ids(items[C.ITEM_ID])
    item_reason = pd.Series(None, index=items.index, dtype=object)
    flag(item_reason, items[C.ITEM_ID].isna(), "invalid_id")
    items["_text"] = normalise(items[C.TEXT], cfg["text_max_chars"])
    items["_title"] = normalise(items[C.TITLE], cfg["text_max_chars"])
    flag(item_reason, items["_text"] == "", "empty_text")
    alive = items[item_reason.isna()].assign(_len=lambda d: d["_text"].str.len())
    ranked = alive.sort_values([C.ITEM_ID, "_len", "_title", "_text"], ascending=[True, False, True, True])
    item_reason[ranked.index[ranked.duplicated(C.ITEM_ID)]] = "duplicate_item"

    inter[C.USER_ID] = clean_ids(inter[C.USER_ID])
    inter[C.ITEM_ID] = clean_ids(inter[C.ITEM_ID])
    reason = pd.Series(None, index=inter.index, dtype=object)
    flag(reason, inter[C.USER_ID].isna() | inter[C.ITEM_ID].isna(), "invalid_id")
    flag(reason, inter[C.TIMESTAMP].isna(), "missing_timestamp")
    rating = inter[C.RATING]
    flag(reason, rating.notna() & ((rating < cfg["rating_min"]) | (rating > cfg["rating_max"])), "rating_out_of_range")
    now = pd.Timestamp(datetime.now(UTC) + timedelta(hours=cfg["future_slack_hours"]))
    flag(reason, inter[C.TIMESTAMP] > now, "future_timestamp")
    flag(reason, inter[C.TIMESTAMP] < pd.Timestamp(cfg["timestamp_floor"], tz="UTC"), "timestamp_before_floor")
    live = reason.isna()
    dup = inter[live].duplicated(C.INTERACTION_COLUMNS)
    reason[dup[dup].index] = "duplicate"
    live = reason.isna()
    ordered = inter[live].sort_values([C.RATING, C.EVENT], ascending=[False, True], na_position="last", kind="stable")
    dup = ordered.duplicated([C.USER_ID, C.ITEM_ID, C.TIMESTAMP])
    reason[dup[dup].index] = "duplicate_key"

    bots = bot_rules(inter[reason.isna()], cfg)
    flag_bots(reason, inter[C.USER_ID], bots)
    kept_items = items.loc[items[C.ITEM_ID].notna()].assign(_kept=item_reason.isna()).groupby(C.ITEM_ID)["_kept"].max()
    status = inter[C.ITEM_ID].map(kept_items)
    if cfg["orphan_policy"] == "drop":
        flag(reason, status.isna(), "orphan_item")
    flag(reason, status == False, "item_removed")  # noqa: E712 (a three-valued column: NaN is an orphan)
    if cfg["implicit_min_rating"] > 0:
        flag(reason, rating.notna() & (rating < cfg["implicit_min_rating"]), "below_implicit_threshold")
    iterations = kcore(inter, reason, cfg)

    users[C.USER_ID] = clean_ids(users[C.USER_ID])
    user_reason = pd.Series(None, index=users.index, dtype=object)
    flag(user_reason, users[C.USER_ID].isna(), "invalid_id")
    extras = [c for c in users.columns if c != C.USER_ID]
    ordered = users[user_reason.isna()].sort_values(extras, na_position="last", kind="stable")
    dup = ordered.duplicated(C.USER_ID)
    user_reason[dup[dup].index] = "duplicate_user"
    flag_bots(user_reason, users[C.USER_ID], bots)

    out = root / "pandas_out"  # written like the Spark stage writes: kept and quarantined rows of each table
    out.mkdir()
    kept_items = (
        items[item_reason.isna()].drop(columns=[C.TITLE, C.TEXT]).rename(columns={"_title": C.TITLE, "_text": C.TEXT})
    )
    for name, frame, why in (
        ("interactions", inter, reason),
        ("items", items, item_reason),
        ("users", users, user_reason),
    ):
        kept = kept_items if name == "items" else frame[why.isna()]
        kept.to_parquet(out / f"clean_{name}.parquet", index=False)
        frame.assign(reason=why)[why.notna()].to_parquet(out / f"quarantine_{name}.parquet", index=False)
    return {
        "interactions": counts(reason),
        "items": counts(item_reason),
        "users": counts(user_reason),
        "kcore": {"iterations": iterations},
    }


def bot_rules(live: pd.DataFrame, cfg: dict) -> pd.Series:
    """user -> the first bot rule it broke: caps per UTC minute, hour, day, then the robust z-score
    of log event counts (median/MAD; the mean absolute deviation where the MAD is 0)."""
    broken = []
    for rule, freq in (("minute", "min"), ("hour", "h"), ("day", "D")):
        busiest = live.groupby([live[C.USER_ID], live[C.TIMESTAMP].dt.floor(freq)]).size().groupby(level=0).max()
        broken.append((f"bot_{rule}", busiest > cfg[f"bot_max_events_per_{rule}"]))
    totals = live.groupby(C.USER_ID).size()
    if cfg["bot_max_events_zscore"] > 0 and len(totals) >= cfg["bot_outlier_min_users"]:
        logs = np.log(totals)
        deviation = (logs - logs.median()).abs()
        scale = 1.4826 * deviation.median() if deviation.median() > 0 else 1.2533 * deviation.mean()
        if scale > 0:
            limit = np.exp(logs.median() + cfg["bot_max_events_zscore"] * scale)
            broken.append(("bot_outlier", (totals >= cfg["bot_outlier_min_events"]) & (totals > limit)))
    first = pd.Series(None, index=totals.index, dtype=object)
    for rule, hit in broken:
        first[first.isna() & hit.reindex(first.index, fill_value=False)] = rule
    return first.dropna()


def flag_bots(reason: pd.Series, user_ids: pd.Series, bots: pd.Series) -> None:
    rule = user_ids.map(bots)
    hit = reason.isna() & rule.notna()
    reason[hit] = rule[hit]


def kcore(inter: pd.DataFrame, reason: pd.Series, cfg: dict) -> int:
    for iteration in range(1, cfg["kcore_max_iterations"] + 1):
        live = inter[reason.isna()]
        user_n = live.groupby(C.USER_ID).size()
        item_n = live.groupby(C.ITEM_ID).size()
        low_users = user_n.index[user_n < cfg["kcore_users"]]
        low_items = item_n.index[item_n < cfg["kcore_items"]]
        if len(low_users) == 0 and len(low_items) == 0:
            return iteration - 1
        flag(reason, inter[C.USER_ID].isin(low_users) | inter[C.ITEM_ID].isin(low_items), "kcore")
    return cfg["kcore_max_iterations"]


def counts(reason: pd.Series) -> dict:
    by_rule = {str(k): int(v) for k, v in reason.value_counts().items()}
    quarantined = sum(by_rule.values())
    return {
        "rows_in": len(reason),
        "rows_kept": len(reason) - quarantined,
        "rows_quarantined": quarantined,
        "by_rule": by_rule,
    }


# ---------------------------------------------------------------- workers and measurement


class PhaseLog(logging.Handler):
    """Collects clean.py's `clean phase <label>: <s> s` lines (where Spark's time goes)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("clean phase"):
            label, took = record.args
            self.seconds[label] = round(self.seconds.get(label, 0.0) + took, 1)


def worker(engine: str, root: Path, args: argparse.Namespace) -> None:
    params = P.defaults()
    params["spark"].update(
        master=args.master, driver_memory=args.driver_memory, shuffle_partitions=args.shuffle_partitions
    )
    phases = PhaseLog()
    logging.getLogger("pipeline_tasks.clean").addHandler(phases)
    logging.getLogger("pipeline_tasks.clean").setLevel(logging.INFO)
    started = time.perf_counter()
    if engine == "spark":
        from pipeline_tasks import clean

        metrics = clean.run(params, root)
    else:
        metrics = pandas_clean(root, params["clean"])
    metrics["seconds"] = time.perf_counter() - started
    metrics["phases_s"] = phases.seconds
    (root / f"result-{engine}.json").write_text(json.dumps(metrics))


def tree_usage(proc: psutil.Process, cpu_s: dict[int, float]) -> dict[str, int]:
    """Resident memory of a process and all its descendants, by role: the Python process that
    runs the stage (`driver_python`), Spark's JVM (`jvm`) and the Python UDF workers it forks.
    Also updates `cpu_s` (pid -> user+system seconds so far): CPU time is what a run costs
    regardless of how many other jobs share the cores, so it compares runs on a busy machine."""
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # it just exited
        return {}
    rss: dict[str, int] = {}
    for p in family:
        try:
            role = "driver_python" if p.pid == proc.pid else "jvm" if p.name() == "java" else "python_workers"
            memory = p.memory_info()
            rss[role] = rss.get(role, 0) + memory.rss
            # Of which file-backed (mapped jars, memory-mapped blocks): the kernel can drop those pages.
            rss["file_backed"] = rss.get("file_backed", 0) + memory.shared
            times = p.cpu_times()
            cpu_s[p.pid] = times.user + times.system
        except psutil.Error:
            pass
    return rss


def measure(engine: str, root: Path, args: argparse.Namespace) -> dict:
    """Run one engine in a subprocess; wall time and the peak RSS of its whole process tree."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--root",
        str(root),
        "--master",
        args.master,
        "--driver-memory",
        args.driver_memory,
        "--shuffle-partitions",
        str(args.shuffle_partitions),
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched, peak, done = psutil.Process(proc.pid), 0, threading.Event()
    peak_by_role: dict[str, int] = {}  # each role's own peak (they need not peak at the same moment)
    cpu_s: dict[int, float] = {}

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            rss = tree_usage(watched, cpu_s)
            peak = max(peak, sum(size for role, size in rss.items() if role != "file_backed"))
            for role, size in rss.items():
                peak_by_role[role] = max(peak_by_role.get(role, 0), size)
            done.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, err = proc.communicate()
    done.set()
    thread.join()
    wall = time.perf_counter() - started
    result_file = root / f"result-{engine}.json"
    if proc.returncode != 0 or not result_file.exists():
        return {
            "ok": False,
            "returncode": proc.returncode,
            "wall_s": wall,
            "peak_rss_gb": peak / 2**30,
            "error_tail": err[-800:],
        }
    metrics = json.loads(result_file.read_text())
    result_file.unlink()
    return {
        "ok": True,
        "wall_s": wall,
        "clean_s": metrics["seconds"],
        "peak_rss_gb": peak / 2**30,
        "peak_rss_gb_by_role": {role: round(size / 2**30, 2) for role, size in peak_by_role.items()},
        "cpu_s": round(sum(cpu_s.values()), 1),
        "by_rule": {t: {k: v for k, v in metrics[t]["by_rule"].items() if v} for t in C.TABLES},
        "rows_kept": metrics["interactions"]["rows_kept"],
        "phases_s": metrics["phases_s"],
    }


def summarise(runs: list[dict], rows: int) -> dict:
    good = [r for r in runs if r["ok"]]
    if not good:
        return {"ok": False, "runs": runs}
    wall = statistics.median(r["wall_s"] for r in good)
    return {
        "ok": True,
        "repeats": len(good),
        "wall_s_median": round(wall, 1),
        "wall_s_all": [round(r["wall_s"], 1) for r in good],
        "clean_s_median": round(statistics.median(r["clean_s"] for r in good), 1),
        "rows_per_s": round(rows / wall),
        "peak_rss_gb_max": round(max(r["peak_rss_gb"] for r in good), 2),
        "peak_rss_gb_by_role": good[0]["peak_rss_gb_by_role"],
        "cpu_s_median": round(statistics.median(r["cpu_s"] for r in good), 1),
        "by_rule": good[0]["by_rule"],
        "rows_kept": good[0]["rows_kept"],
        "phases_s_median": {
            label: round(statistics.median(r["phases_s"].get(label, 0.0) for r in good), 1)
            for label in good[0]["phases_s"]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--engines", default="spark,pandas")
    parser.add_argument("--master", default="local[*]")
    product = P.defaults()["spark"]  # by default the bench measures the product's settings
    parser.add_argument("--driver-memory", default=product["driver_memory"])
    parser.add_argument("--shuffle-partitions", type=int, default=product["shuffle_partitions"])
    parser.add_argument("--scratch", default=None, help="folder for the generated data (default: a temp dir)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.root), args)

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-clean-"))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    data = generate(args.rows, scratch)
    generated_s = time.perf_counter() - t0
    results = {}
    for engine in args.engines.split(","):
        runs = []
        for _ in range(args.repeats):
            for out in ("data/clean", "data/quarantine", "pandas_out"):
                shutil.rmtree(scratch / out, ignore_errors=True)
            runs.append(measure(engine, scratch, args))
            print(engine, json.dumps({k: v for k, v in runs[-1].items() if k != "by_rule"}), flush=True)
        results[engine] = summarise(runs, data["interactions"])
    report = {
        "rows": data["interactions"],
        "data": data,
        "generate_s": round(generated_s, 1),
        "command": "python bench/bench_clean.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_before": [round(x, 1) for x in load_before],
            "load_avg_after": [round(x, 1) for x in os.getloadavg()],
            "python": platform.python_version(),
            "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "spark_conf": {
            "master": args.master,
            "driver_memory": args.driver_memory,
            "shuffle_partitions": args.shuffle_partitions,
        },
        "engines": results,
    }
    spark, pandas_ = results.get("spark", {}), results.get("pandas", {})
    if spark.get("ok") and pandas_.get("ok"):
        report["counts_agree"] = spark["by_rule"] == pandas_["by_rule"]
        report["pandas_over_spark_wall"] = round(pandas_["wall_s_median"] / spark["wall_s_median"], 2)
    out = PROJECT / "bench" / "results" / f"clean_{args.rows}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "engines"}, indent=2))
    print("written", out)
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

"""How realistic is the synthetic world? Its sequential statistics beside MovieLens-100K, and the model ordering.

    .venv/bin/python bench/bench_world.py [--data ../shared/datasets/ml-100k] [--seed N] [--no-pipeline]
        [--work DIR] [--set section.key=value ...] [--note TEXT]

1. `world_stats(interactions, items)` on any interactions frame (user_id, item_id, timestamp;
   items with '|'-separated genres): how well the last item predicts the next (the most frequent
   successors of the last item, learned on the other half of the users, against the same lists on
   each user's history shuffled: `order_lift`), how often the next item shares a genre with the
   last, how well co-occurrence and popularity predict it, how concentrated and how drifting
   popularity is, the shape of histories and sessions. Hit rates look at the top 2.5% of the
   catalogue (10 of the default world's 400 items, 42 of MovieLens' 1682), so catalogues of
   different sizes compare; each is over every user's consecutive pairs, learned on the other
   fold of users so a pair never predicts itself. Computed for MovieLens-100K (the repo's reader)
   and for the synthetic world's good rows (the generator's output minus every injected row).
2. Unless --no-pipeline: the real stages on the default synthetic world in one process on a
   scratch root (ingest -> clean -> split -> baselines -> train -> evaluate, as bench_model.py
   does; no MLflow, no tune: the train defaults are measured), and the model ordering (test
   NDCG@10 with its bootstrap interval from metrics/evaluate.json) beside MovieLens-100K's
   reference ordering (bench/results/model.json, same protocol).

Writes bench/results/world.json with the command and the machine load. One pipeline run
(several minutes on a shared 2-core CPU): no medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_tasks.core import constants as C  # noqa: E402
from pipeline_tasks.core import params as P  # noqa: E402

log = logging.getLogger("bench_world")
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "ml-100k"
DEFAULT_WORK = Path("/tmp/recpipe-bench-world")
RESULT = ROOT / "bench" / "results" / "world.json"
MODEL_RESULT = ROOT / "bench" / "results" / "model.json"  # MovieLens-100K through the same stages
# Measured on MovieLens-100K by bench_model.py (same protocol): the ordering the world should show.
ML100K_NDCG10 = {
    "Pop": 0.0449,
    "ItemKNN": 0.0532,
    "EASE": 0.0724,
    "ALS": 0.0818,
    "SASRec-ID": 0.0843,
    "TextSeqRec": 0.0945,
}
K_SHARE = 0.025  # hit rates look at the top 2.5% of the catalogue (10 of 400 items, 42 of 1682)
SESSION_GAP_S = 3600.0  # a gap above an hour starts a new session


def ordered(interactions: pd.DataFrame) -> pd.DataFrame:
    """user, item (integer codes), seconds, in each user's time order (ties: source order)."""
    df = interactions[[C.USER_ID, C.ITEM_ID, C.TIMESTAMP]].dropna().reset_index(drop=True)
    df = df.assign(_pos=np.arange(len(df))).sort_values([C.USER_ID, C.TIMESTAMP, "_pos"], kind="stable")
    return pd.DataFrame(
        {
            "user": pd.factorize(df[C.USER_ID])[0],
            "item": pd.factorize(df[C.ITEM_ID].astype(str), sort=True)[0],
            "item_id": df[C.ITEM_ID].astype(str).to_numpy(),
            "t": df[C.TIMESTAMP].astype("datetime64[us, UTC]").astype("int64").to_numpy() / 1e6,
        }
    ).reset_index(drop=True)


def pairs_of(df: pd.DataFrame) -> pd.DataFrame:
    """Consecutive (last, next) pairs within each user, with the next event's time."""
    same = df["user"].to_numpy()[1:] == df["user"].to_numpy()[:-1]
    return pd.DataFrame(
        {
            "user": df["user"].to_numpy()[1:][same],
            "last": df["item"].to_numpy()[:-1][same],
            "next": df["item"].to_numpy()[1:][same],
            "t": df["t"].to_numpy()[1:][same],
            "gap": np.diff(df["t"].to_numpy())[same],
        }
    )


def shuffled(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Each user's items in a random order (times kept): what is left of order without order."""
    rng = np.random.default_rng(seed)
    key = rng.random(len(df))
    out = df.assign(_k=key).sort_values(["user", "_k"], kind="stable").drop(columns="_k")
    return out.assign(t=df["t"].to_numpy()).reset_index(drop=True)


def top_lists(pairs: pd.DataFrame, by: str, what: str, k: int) -> dict[int, set[int]]:
    """For each value of `by`, the k values of `what` it is most often paired with."""
    counts = pairs.groupby([by, what]).size().rename("n").reset_index()
    counts = counts.sort_values([by, "n", what], ascending=[True, False, True])
    top = counts.groupby(by).head(k)
    return {key: set(group) for key, group in top.groupby(by)[what]}


def hit_rate(pairs: pd.DataFrame, lists: dict[int, set[int]]) -> float:
    if pairs.empty:
        return 0.0
    hits = [nxt in lists.get(last, ()) for last, nxt in zip(pairs["last"], pairs["next"])]
    return float(np.mean(hits))


def user_cooccurrence(df: pd.DataFrame, max_history: int = 200) -> pd.DataFrame:
    """(a, b) for every two distinct items of one user's history (long histories cut to their last items)."""
    parts = []
    for _, items in df.groupby("user", sort=False)["item"]:
        values = items.to_numpy()[-max_history:]
        a, b = np.meshgrid(values, values, indexing="ij")
        keep = a != b
        parts.append(pd.DataFrame({"last": a[keep], "next": b[keep]}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"last": [], "next": []})


def two_fold(df: pd.DataFrame, score, k: int) -> float:
    """Mean of score(learn_df, eval_df) over the two folds of users (by user code parity)."""
    odd = df["user"].to_numpy() % 2 == 1
    return float(np.mean([score(df[odd], df[~odd], k), score(df[~odd], df[odd], k)]))


def successor_hit(learn: pd.DataFrame, test: pd.DataFrame, k: int) -> float:
    return hit_rate(pairs_of(test), top_lists(pairs_of(learn), "last", "next", k))


def cooccurrence_hit(learn: pd.DataFrame, test: pd.DataFrame, k: int) -> float:
    return hit_rate(pairs_of(test), top_lists(user_cooccurrence(learn), "last", "next", k))


def popularity_hit(learn: pd.DataFrame, test: pd.DataFrame, k: int) -> float:
    top = set(learn["item"].value_counts().sort_index().sort_values(ascending=False, kind="stable").index[:k])
    return float(pairs_of(test)["next"].isin(top).mean())


def recent_popularity_hit(df: pd.DataFrame, k: int, window_days: float = 30.0) -> float:
    """Share of next items among the top K of the preceding window (all users): popularity that moves."""
    pairs = pairs_of(df)
    if pairs.empty:
        return 0.0
    t0, t1 = df["t"].min(), df["t"].max()
    edges = np.arange(t0, t1 + window_days * 86400, window_days * 86400)
    hits = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        before = df[(df["t"] >= lo - window_days * 86400) & (df["t"] < lo)]
        now = pairs[(pairs["t"] >= lo) & (pairs["t"] < hi)]
        if before.empty or now.empty:
            continue
        top = set(before["item"].value_counts().index[:k])
        hits.append(now["next"].isin(top).to_numpy())
    return float(np.concatenate(hits).mean()) if hits else 0.0


def gini(counts: np.ndarray) -> float:
    x = np.sort(counts.astype(float))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum())) if n and x.sum() else 0.0


def genre_sets(df: pd.DataFrame, items: pd.DataFrame | None) -> np.ndarray | None:
    """Per item code, the frozenset of its genres ('|'-separated), or None without a genres column."""
    if items is None or "genres" not in items:
        return None
    genres = items.drop_duplicates(C.ITEM_ID).set_index(items[C.ITEM_ID].drop_duplicates().astype(str))["genres"]
    codes = df.drop_duplicates("item").sort_values("item")
    return np.array(
        [frozenset(str(genres.get(i, "")).split("|")) - {""} for i in codes["item_id"]],
        dtype=object,
    )


def same_genre_share(df: pd.DataFrame, sets: np.ndarray) -> float:
    pairs = pairs_of(df)
    return float(np.mean([bool(sets[a] & sets[b]) for a, b in zip(pairs["last"], pairs["next"])]))


def popularity_drift(df: pd.DataFrame) -> float:
    """Overlap (Jaccard) of the 10% most popular items of the first and of the second half of the period."""
    middle = df["t"].min() + (df["t"].max() - df["t"].min()) / 2
    n = max(1, df["item"].nunique() // 10)
    first = set(df.loc[df["t"] < middle, "item"].value_counts().index[:n])
    second = set(df.loc[df["t"] >= middle, "item"].value_counts().index[:n])
    return len(first & second) / max(1, len(first | second))


def world_stats(interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> dict:
    """The statistics table of one log (see the module docstring); numbers rounded to 4 digits."""
    df = ordered(interactions)
    lengths = df.groupby("user").size().to_numpy()
    counts = df["item"].value_counts().to_numpy()
    top_share = np.sort(counts)[::-1][: max(1, len(counts) // 10)].sum() / counts.sum()
    pairs = pairs_of(df)
    shuffle = shuffled(df)
    k = max(1, round(K_SHARE * len(counts)))
    successor, successor_shuffled = two_fold(df, successor_hit, k), two_fold(shuffle, successor_hit, k)
    span_days = df.groupby("user")["t"].agg(lambda t: (t.max() - t.min()) / 86400).to_numpy()
    out = {
        "users": int(len(lengths)),
        "items": int(len(counts)),
        "interactions": int(len(df)),
        "density": len(df) / (len(lengths) * len(counts)),
        "history_mean": float(lengths.mean()),
        "history_median": float(np.median(lengths)),
        "history_p90_over_median": float(np.percentile(lengths, 90) / np.median(lengths)),
        "repeat_rate": float(1 - len(df.drop_duplicates(["user", "item"])) / len(df)),
        "popularity_gini": gini(counts),
        "top10pct_item_share": float(top_share),
        "popularity_half_overlap": popularity_drift(df),
        "hit_k": k,
        "pop_hit": two_fold(df, popularity_hit, k),
        "recent_pop_hit": recent_popularity_hit(df, k),
        "cooccurrence_hit": two_fold(df, cooccurrence_hit, k),
        "successor_hit": successor,
        "successor_hit_shuffled": successor_shuffled,
        "order_lift": successor / successor_shuffled if successor_shuffled else float("nan"),
        "session_gap_share": float((pairs["gap"] > SESSION_GAP_S).mean()),
        "user_span_days_median": float(np.median(span_days)),
    }
    sets = genre_sets(df, items)
    if sets is not None:
        same, same_shuffled = same_genre_share(df, sets), same_genre_share(shuffle, sets)
        out.update(
            same_genre_next=same,
            same_genre_next_shuffled=same_shuffled,
            same_genre_lift=same / same_shuffled if same_shuffled else float("nan"),
        )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


# ---------------------------------------------------------------- the two logs


def movielens_stats(data: Path) -> dict:
    from pipeline_tasks.data.movielens import read_movielens

    tables = read_movielens(data, P.defaults()["ingest"])
    return world_stats(tables.interactions, tables.items)


def good_rows(interactions: pd.DataFrame, injected: pd.DataFrame) -> pd.DataFrame:
    """Raw interactions minus every injected one (a multiset difference): what cleaning should keep."""
    keys = [C.USER_ID, C.ITEM_ID, C.RATING, C.TIMESTAMP]
    raw = interactions.copy()
    bad = injected[injected["table"] == "interactions"][keys].copy()
    raw["_n"] = raw.groupby(keys, dropna=False).cumcount()
    bad["_n"] = bad.groupby(keys, dropna=False).cumcount()
    merged = raw.merge(bad.assign(_bad=True), on=keys + ["_n"], how="left")
    return merged[merged["_bad"].isna()].drop(columns=["_n", "_bad"])


def synthetic_stats(params: dict) -> tuple[dict, float]:
    from pipeline_tasks.data.synthetic import generate

    started = time.perf_counter()
    data = generate(params["ingest"]["synthetic"], params["seed"])
    seconds = time.perf_counter() - started
    return world_stats(good_rows(data.interactions, data.injected), data.items), seconds


# ---------------------------------------------------------------- the pipeline on the default world


def run_pipeline(params: dict, root: Path) -> dict:
    from pipeline_tasks import baselines, clean, evaluate, ingest, split, train

    seconds: dict[str, float] = {}
    results: dict[str, dict] = {}
    for name, stage in [
        ("ingest", ingest),
        ("clean", clean),
        ("split", split),
        ("baselines", baselines),
        ("train", train),
        ("evaluate", evaluate),
    ]:
        started = time.perf_counter()
        log.info("stage %s ...", name)
        results[name] = stage.run(params, root)
        seconds[name] = round(time.perf_counter() - started, 1)
        log.info("stage %s done in %.0f s", name, seconds[name])
    models, intervals = results["evaluate"]["models"], results["evaluate"]["intervals"]  # = metrics/evaluate.json
    ordering = sorted(models, key=lambda n: models[n]["ndcg@10"])
    baseline_names = [n for n in models if n != C.MODEL_NAME]
    best = max(baseline_names, key=lambda n: models[n]["ndcg@10"])
    return {
        "split": results["split"],
        "ndcg@10": {
            n: {
                "mean": round(models[n]["ndcg@10"], 4),
                "low": round(intervals[n]["ndcg@10"]["low"], 4),
                "high": round(intervals[n]["ndcg@10"]["high"], 4),
            }
            for n in ordering
        },
        "recall@10": {n: round(models[n]["recall@10"], 4) for n in ordering},
        "ordering": ordering,
        "movielens_ordering": sorted(ML100K_NDCG10, key=ML100K_NDCG10.get),
        "best_baseline": best,
        "delta_vs_best_baseline": {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in intervals.get("delta_vs_best_baseline", {}).get("ndcg@10", {}).items()
        },
        "text_model_beats_every_baseline": models[C.MODEL_NAME]["ndcg@10"] > models[best]["ndcg@10"],
        "min_ndcg": params["register"]["min_ndcg"],
        "stage_seconds": seconds,
    }


def table(ml: dict, syn: dict) -> str:
    lines = [f"{'statistic':<28}{'ml-100k':>12}{'synthetic':>12}"]
    for key in ml:
        if key in syn:
            lines.append(f"{key:<28}{ml[key]!s:>12}{syn[key]!s:>12}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens-100K folder (u.data, u.item)")
    parser.add_argument("--seed", type=int, default=None, help="generator seed (default: params.yaml seed)")
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false", help="statistics only")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch project root (deleted first)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--note", default="", help="free text stored in the result (how the run was made)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not (args.data / "u.data").exists():
        print(f"MovieLens-100K not found at {args.data}: pass --data DIR", file=sys.stderr)
        return 2
    params = P.load(ROOT / C.PARAMS_FILE, args.overrides)
    params["ingest"]["source"] = "synthetic"
    params["train"]["use_best_params"] = False  # no tune stage here: the defaults are what is measured
    if args.seed is not None:
        params["seed"] = args.seed

    load_before = os.getloadavg()
    ml = movielens_stats(args.data.resolve())
    syn, generate_s = synthetic_stats(params)
    print(table(ml, syn))
    report: dict = {
        "command": " ".join(["bench/bench_world.py", *(argv if argv is not None else sys.argv[1:])]),
        "note": args.note,
        "seed": params["seed"],
        "synthetic_params": params["ingest"]["synthetic"],
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1_5_15_before": [round(x, 2) for x in load_before],
        },
        "generate_seconds": round(generate_s, 2),
        "stats": {"ml-100k": ml, "synthetic": syn},
    }
    if args.pipeline:
        root = args.work.resolve()
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        report["pipeline"] = run_pipeline(params, root)
        report["pipeline"]["movielens_ndcg@10"] = ML100K_NDCG10
        print(json.dumps({k: report["pipeline"][k] for k in ("ndcg@10", "ordering", "movielens_ordering")}, indent=1))
    report["machine"]["load_avg_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

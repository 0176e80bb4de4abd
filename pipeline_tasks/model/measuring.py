"""Measuring compressed variants on equal terms, and the choice among them.

Quality is judged above the noise. Every variant's NDCG@10 is computed per validation user (full
ranking, train items excluded), and its relative drop vs fp32 gets a *paired* bootstrap interval:
`evaluate.bootstrap_resamples` resamplings of the users (seed `params.seed`), one shared by every
variant, each giving (fp32 mean - variant mean) / fp32 mean; the interval holds the central
`evaluate.ci_level` of those drops. The rule:

    a variant is refused when the LOW end of its drop's interval is above compress.max_ndcg_drop,
    or when that low end is above 0 and the point drop above compress.max_ndcg_drop

i.e. when its loss is credibly larger than allowed, or real and larger than allowed at its
estimate (a few users lost their hit and nobody gained one). One hit more or less cannot
refuse a variant: one that differs from fp32 on a single user keeps a low end of 0 (about 37 % of
resamplings leave that user out), and the low end leaves 0 only once about 4 users lost their hit
and none gained one (at ci_level 0.95: e^-4 < 2.5 % < e^-3). The other end ("the HIGH end must be
within the bound") would refuse a variant for one user's hit: on MovieLens-100K's 943 validation
users one hit is 1-3 % of NDCG@10, and the high end of a single differing user is about 3 hits.
The point drop (`ndcg_drop_rel`) stays in the report beside the interval; a variant whose point
drop exceeds the bound but whose interval reaches below it is accepted as noise, and says so.

Speed is measured the same way for every variant, and in the same minutes: all variants are loaded
together, warmed up, then timed round-robin in blocks of `compress.latency_block_calls` calls
(the starting variant rotates each round), `compress.latency_calls` timed calls each, so a burst of
load on a shared CPU hits all of them alike. The median (p50) is the figure the choice and the
register gate read; p99 is reported, not judged (on a busy machine the tail measures the load).
Item-encoding throughput is interleaved the same way, one pass per turn, median of
`compress.timing_rounds`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import metrics as M
from pipeline_tasks.core.errors import ParamsError, PipelineError
from pipeline_tasks.data import dataset
from pipeline_tasks.model.evaluation import bootstrap_means, percentile_interval
from pipeline_tasks.model.recommender import Recommender
from pipeline_tasks.model.training_data import item_text
from pipeline_tasks.model.variants import REFERENCE

log = logging.getLogger(__name__)

K = 10
NDCG = f"ndcg@{K}"


@dataclass(frozen=True)
class EvalData:
    """What every measurement reads, prepared once."""

    task: dataset.EvalTask  # validation users, targets, train items to exclude
    histories: list[list[str]]  # per task user: train history as item ids
    columns: np.ndarray  # model column of each split item (split order)
    texts: list[str]  # item texts in the model's item order (what the encoder read in training)


def load_eval_data(root: Path, model_item_ids: list[str]) -> EvalData:
    split = dataset.load_split(root)
    task = dataset.eval_task(split, "valid")
    if not len(task):
        raise PipelineError(f"{root / C.DATA_SPLIT / 'valid'} is empty, so no variant can be judged: re-run split")
    text_of = {item: item_text(row) for item, row in zip(split.item_ids, split.items.to_dict(orient="records"))}
    where = {item: j for j, item in enumerate(model_item_ids)}
    missing = [item for item in split.item_ids if item not in where]
    unknown = [item for item in model_item_ids if item not in text_of]
    if missing or unknown:
        raise PipelineError(
            f"models/model and data/split/items disagree ({len(missing)} split items unknown to the "
            f"model, {len(unknown)} model items not in the split): re-run the train stage"
        )
    return EvalData(
        task=task,
        histories=[[split.item_ids[i] for i in seen] for seen in task.seen],
        columns=np.array([where[item] for item in split.item_ids], dtype=np.int64),
        texts=[text_of[item] for item in model_item_ids],
    )


# --- speed: every variant in the same minutes ----------------------------------------------------


def interleaved(names: list[str], call: Callable[[str, int], object], calls: int, block: int) -> dict[str, np.ndarray]:
    """Seconds of `calls` timed `call(name, i)` per name, round-robin in blocks of `block` calls.

    Round r times calls [r*block, (r+1)*block) of every name, starting with name r mod len(names):
    call i of every variant sees the same input, and whatever load the machine has at a moment is
    shared by all variants instead of landing on whichever was being timed.
    """
    times = {name: np.empty(calls) for name in names}
    for r, start in enumerate(range(0, calls, block)):
        turn = r % len(names)
        for name in names[turn:] + names[:turn]:
            for i in range(start, min(start + block, calls)):
                started = time.perf_counter()
                call(name, i)
                times[name][i] = time.perf_counter() - started
    return times


def speed(recs: dict[str, Recommender], data: EvalData, cfg: dict) -> dict[str, dict[str, float]]:
    """Latency of one single-user recommendation (user tower + top-K over the item table) and
    item-encoding throughput of every variant, timed interleaved (module docstring)."""
    names, histories = list(recs), data.histories
    n_items = min(cfg["throughput_items"], len(data.texts))
    texts, idx = data.texts[:n_items], list(range(n_items))

    def recommend(name: str, i: int) -> None:
        recs[name].recommend([histories[i % len(histories)]], K)

    def encode(name: str, i: int) -> None:
        recs[name].encode_items(texts, item_idx=idx)

    for name in names:  # warm-up: allocations, lazy init, caches; untimed
        for i in range(cfg["warmup_calls"]):
            recommend(name, i)
        recs[name].encode_items(texts[:8], item_idx=idx[:8])
    latency = interleaved(names, recommend, cfg["latency_calls"], cfg["latency_block_calls"])
    passes = interleaved(names, encode, cfg["timing_rounds"], 1)
    return {
        name: {
            "latency_p50_ms": float(np.percentile(latency[name], 50) * 1e3),
            "latency_p99_ms": float(np.percentile(latency[name], 99) * 1e3),
            "latency_calls": int(cfg["latency_calls"]),
            "encode_items_per_s": float(n_items / max(float(np.median(passes[name])), 1e-9)),
        }
        for name in names
    }


def encode_items_per_s(rec: Recommender, texts: list[str], n_items: int, rounds: int = 1) -> float:
    """Items per second through one model's item tower, median of rounds (bench/bench_compress.py pairs these)."""
    n = min(n_items, len(texts))
    idx = list(range(n))
    rec.encode_items(texts[: min(8, n)], item_idx=idx[: min(8, n)])  # warm-up: allocations, lazy init
    speeds = []
    for _ in range(rounds):
        started = time.perf_counter()
        rec.encode_items(texts[:n], item_idx=idx)
        speeds.append(n / max(time.perf_counter() - started, 1e-9))
    return float(np.median(speeds))


# --- quality: judged above the noise ----------------------------------------------------------


def user_ndcg(rec: Recommender, data: EvalData) -> np.ndarray:
    """(n_users,) NDCG@10 of every validation user: full ranking, train items excluded (metrics.py protocol)."""
    position = {u: j for j, u in enumerate(data.task.users)}

    def score_users(users: np.ndarray) -> np.ndarray:
        scores = rec.scores([data.histories[position[u]] for u in users])
        return np.asarray(scores, dtype=np.float32)[:, data.columns]

    ranked = dataset.rank_in_batches(score_users, data.task, K, batch_size=256, desc="validating")
    return M.PER_USER["ndcg"](ranked, data.task.targets, K)


def relative_drop(reference: float, value: float) -> float:
    """(reference - value) / reference; 0 when the reference is 0 (nothing to lose)."""
    return (reference - value) / reference if reference > 0 else 0.0


def judge(per_user: dict[str, np.ndarray], max_drop: float, resamples: int, level: float, seed: int) -> dict[str, dict]:
    """Each variant's NDCG@10, relative drop vs fp32 with its paired bootstrap interval, and the verdict.

    per_user: {variant: (n_users,) NDCG@10 on the same users in the same order}, fp32 included.
    """
    if resamples < 1 or not 0 < level < 1:
        raise ParamsError(
            f"evaluate.bootstrap_resamples={resamples} must be at least 1 and evaluate.ci_level={level} strictly "
            "between 0 and 1: the compress stage judges every variant's NDCG@10 drop by that interval"
        )
    names = [REFERENCE] + [name for name in per_user if name != REFERENCE]
    values = np.stack([np.asarray(per_user[name], dtype=np.float64) for name in names])
    means = bootstrap_means(values, resamples, seed)  # (resamples, variants): every variant sees the same draws
    reference = means[:, :1]
    drops = np.where(reference > 0, (reference - means) / np.where(reference > 0, reference, 1.0), 0.0)
    lows, highs = percentile_interval(drops, level)
    result = {}
    for j, name in enumerate(names):
        point = relative_drop(float(values[0].mean()), float(values[j].mean()))
        low, high = float(lows[j]), float(highs[j])
        acceptable, why = verdict(name, point, low, high, max_drop, level)
        result[name] = {
            NDCG: float(values[j].mean()),
            "ndcg_drop_rel": point,
            "ndcg_drop_rel_low": low,
            "ndcg_drop_rel_high": high,
            "acceptable": acceptable,
            "why": why,
        }
    return result


def verdict(name: str, point: float, low: float, high: float, max_drop: float, level: float) -> tuple[bool, str]:
    """(acceptable, why): refused when the drop is credibly above max_drop (its whole interval), or
    when it is real (the interval above 0) and its point estimate is above max_drop.

    The second rule stops a variant that loses hits on a few users and gains none elsewhere from
    passing as noise; a drop whose interval reaches 0 (one lost hit, or losses and gains that
    cancel) is noise however large its point."""
    if name == REFERENCE:
        return True, "the reference"
    interval = f"{level:.0%} interval [{low:+.1%}, {high:+.1%}]"
    bound = f"compress.max_ndcg_drop {max_drop:.1%}"
    if low > max_drop:
        return False, f"credibly worse: the drop's whole {interval} is above {bound}"
    if high <= max_drop:
        return True, f"the drop's whole {interval} is within {bound}"
    if point > max_drop and low > 0:
        return False, f"a real loss: point drop {point:+.1%} is above {bound} and its {interval} is above 0"
    if point > max_drop:
        return True, f"noise: point drop {point:+.1%} is above {bound}, but its {interval} reaches 0"
    return True, f"not credibly worse: the drop's {interval} reaches below {bound}"


def choose(variants: dict[str, dict]) -> str:
    """The smallest, then fastest (median latency), acceptable variant (the reference always is)."""
    allowed = [name for name, m in variants.items() if m["acceptable"]]
    assert REFERENCE in allowed, "the reference has no drop"
    return min(allowed, key=lambda name: (variants[name]["size_mb"], variants[name]["latency_p50_ms"]))


def method(params: dict, n_users: int) -> dict:
    """How the variants were judged and timed: stored with the results (metrics/compress.json, report)."""
    cfg, ev = params["compress"], params["evaluate"]
    return {
        "rule": "acceptable unless the low end of the relative NDCG@10 drop's interval > compress.max_ndcg_drop",
        "max_ndcg_drop": cfg["max_ndcg_drop"],
        "validation_users": n_users,
        "bootstrap_resamples": ev["bootstrap_resamples"],
        "ci_level": ev["ci_level"],
        "seed": params["seed"],
        "latency_calls": cfg["latency_calls"],
        "warmup_calls": cfg["warmup_calls"],
        "latency_block_calls": cfg["latency_block_calls"],
        "latency_judged": "latency_p50_ms",
    }


def report(variants: dict[str, dict], chosen: str, how: dict, path: Path) -> None:
    """The trade-off table as Markdown, for people and the MLflow run."""
    level = f"{how['ci_level']:.0%}"
    lines = [
        "# Compression trade-offs (validation split)",
        "",
        f"Chosen: **{chosen}**, the smallest acceptable variant (then the lowest median latency).",
        "",
        f"Quality: NDCG@10 of {how['validation_users']} validation users; each variant's relative drop vs fp32 "
        f"with a paired bootstrap {level} interval ({how['bootstrap_resamples']} resamplings of the users, the same "
        f"for every variant, seed {how['seed']}). A variant is refused when the interval's low end is above "
        f"compress.max_ndcg_drop ({how['max_ndcg_drop']:.1%}), or above 0 with the point drop above that bound: "
        "its loss is credibly larger than allowed, or real and larger at its estimate; not one hit more or less.",
        "",
        f"Speed: {how['latency_calls']} timed single-user recommendations per variant after "
        f"{how['warmup_calls']} warm-up calls, interleaved across variants in blocks of "
        f"{how['latency_block_calls']}, so a burst of load hits every variant alike. The choice and the register "
        "gate read p50 (the median); p99 is shown, not judged (on a shared CPU the tail measures the load).",
        "",
        "| variant | size MB | p50 ms | p99 ms | calls | items/s | NDCG@10 "
        f"| drop ({level} interval) | acceptable | why |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for name, m in variants.items():
        mark = " **(chosen)**" if name == chosen else ""
        drop = f"{m['ndcg_drop_rel']:+.1%} [{m['ndcg_drop_rel_low']:+.1%}, {m['ndcg_drop_rel_high']:+.1%}]"
        lines.append(
            f"| {name}{mark} | {m['size_mb']:.4g} | {m['latency_p50_ms']:.3g} | {m['latency_p99_ms']:.3g} | "
            f"{m['latency_calls']} | {m['encode_items_per_s']:.4g} | {m[NDCG]:.4f} | {drop} | "
            f"{'yes' if m['acceptable'] else 'no'} | {m['why']} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def check_stored_table(reference: Recommender, data: EvalData, sample: int = 64, tolerance: float = 1e-3) -> float:
    """Warn when models/model's item table is not what its own item tower computes.

    Variants that re-encode the catalogue are compared with the stored table; a gap between
    the two would be charged to compression. Checks the first `sample` items (cheap).
    Returns the largest absolute difference.
    """
    n = min(sample, len(data.texts))
    recomputed = reference.encode_items(data.texts[:n], item_idx=list(range(n)))
    gap = float(np.abs(recomputed - reference.item_table[:n]).max())
    if gap > tolerance:
        log.warning(
            "compress: models/model/item_table.npy differs from what its saved encoder computes "
            "(max |difference| %.3g over %d items): every re-encoded variant's NDCG drop includes this "
            "gap; the train stage should save the table its saved weights produce",
            gap,
            n,
        )
    return gap

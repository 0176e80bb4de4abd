"""Measuring compressed variants on equal terms: size, single-request latency, item-encoding
throughput and validation NDCG@10 (full ranking, train items excluded), and the choice among them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core import metrics as M
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.data import dataset
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


def latency_ms(rec: Recommender, histories: list[list[str]], calls: int, warmup: int) -> tuple[float, float]:
    """p50 and p99 (ms) of one single-user recommendation: user tower + top-K over the item table."""
    for i in range(warmup):
        rec.recommend([histories[i % len(histories)]], K)
    times = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        rec.recommend([histories[i % len(histories)]], K)
        times[i] = time.perf_counter() - started
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def encode_items_per_s(rec: Recommender, texts: list[str], n_items: int, rounds: int = 1) -> float:
    """Items per second through the item tower (encoder + projection + ID embedding), median of rounds.

    The median: on a shared CPU one round can land on a busy moment.
    """
    n = min(n_items, len(texts))
    idx = list(range(n))
    rec.encode_items(texts[: min(8, n)], item_idx=idx[: min(8, n)])  # warm-up: allocations, lazy init
    speeds = []
    for _ in range(rounds):
        started = time.perf_counter()
        rec.encode_items(texts[:n], item_idx=idx)
        speeds.append(n / max(time.perf_counter() - started, 1e-9))
    return float(np.median(speeds))


def valid_ndcg(rec: Recommender, data: EvalData) -> float:
    """NDCG@10, full ranking of every validation user, train items excluded (metrics.py protocol)."""
    position = {u: j for j, u in enumerate(data.task.users)}

    def score_users(users: np.ndarray) -> np.ndarray:
        scores = rec.scores([data.histories[position[u]] for u in users])
        return np.asarray(scores, dtype=np.float32)[:, data.columns]

    ranked = dataset.rank_in_batches(score_users, data.task, K, batch_size=256, desc="validating")
    return M.ndcg(ranked, data.task.targets, K, M.EvalContext(n_items=len(data.columns)))


def measure(rec: Recommender, variant_dir: Path, data: EvalData, cfg: dict) -> dict[str, float]:
    p50, p99 = latency_ms(rec, data.histories, cfg["latency_calls"], cfg["warmup_calls"])
    return {
        "size_mb": io.dir_size_mb(variant_dir),
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "encode_items_per_s": encode_items_per_s(rec, data.texts, cfg["throughput_items"], cfg["timing_rounds"]),
        NDCG: valid_ndcg(rec, data),
    }


def relative_drop(reference: float, value: float) -> float:
    """(reference - value) / reference; 0 when the reference is 0 (nothing to lose)."""
    return (reference - value) / reference if reference > 0 else 0.0


def choose(variants: dict[str, dict], max_drop: float) -> str:
    """The smallest, then fastest, variant within the quality bound (the reference always is)."""
    allowed = [name for name, m in variants.items() if m["ndcg_drop_rel"] <= max_drop]
    assert REFERENCE in allowed, "the reference has no drop"
    return min(allowed, key=lambda name: (variants[name]["size_mb"], variants[name]["latency_p50_ms"]))


def report(variants: dict[str, dict], chosen: str, path: Path) -> None:
    """The trade-off table as Markdown, for people and the MLflow run."""
    keys = ["size_mb", "latency_p50_ms", "latency_p99_ms", "encode_items_per_s", NDCG, "ndcg_drop_rel"]
    lines = ["| variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in variants.items():
        mark = " (chosen)" if name == chosen else ""
        lines.append(f"| {name}{mark} | " + " | ".join(f"{m[k]:.4g}" for k in keys) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Compression trade-offs (validation split)\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


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

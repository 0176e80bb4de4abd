"""Full-ranking metrics with one shared signature, and the top-K ranking they read.

    metric(ranked, targets, k, ctx) -> float

`ranked` is an int array (n_users, K) of item indices, best first, with each user's
seen items already excluded; `targets` holds each user's one held-out item index
(leave-one-out). Baselines, training-time validation, compression and evaluation all
use these functions, so every number in a run is computed the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EvalContext:
    """What some metrics need beyond the ranking: catalogue size and item popularity."""

    n_items: int
    item_popularity: np.ndarray = field(default_factory=lambda: np.zeros(0))  # training counts per item index
    long_tail: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # True = long-tail item


def hits(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """(n_users,) rank position (0-based) of the target within the top k, or -1."""
    top = ranked[:, :k] == targets[:, None]
    found = top.any(axis=1)
    return np.where(found, top.argmax(axis=1), -1)


def user_recall(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """(n_users,) 1.0 where the target is in the top k, else 0.0."""
    return (hits(ranked, targets, k) >= 0).astype(np.float64)


def user_ndcg(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """(n_users,) one relevant item: DCG = 1/log2(rank+2), ideal DCG = 1; 0 for a miss."""
    pos = hits(ranked, targets, k)
    # Clip misses to rank 0 before dividing so no 1/log2(1) is ever evaluated.
    return np.where(pos >= 0, 1.0 / np.log2(np.maximum(pos, 0) + 2.0), 0.0)


def user_rr(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """(n_users,) reciprocal rank of the target within the top k; 0 for a miss."""
    pos = hits(ranked, targets, k)
    return np.where(pos >= 0, 1.0 / (np.maximum(pos, 0) + 1.0), 0.0)


def recall(ranked: np.ndarray, targets: np.ndarray, k: int, ctx: EvalContext) -> float:
    """With one held-out item per user, Recall@k is the hit rate."""
    return float(user_recall(ranked, targets, k).mean()) if len(targets) else 0.0


def ndcg(ranked: np.ndarray, targets: np.ndarray, k: int, ctx: EvalContext) -> float:
    return float(user_ndcg(ranked, targets, k).mean()) if len(targets) else 0.0


def mrr(ranked: np.ndarray, targets: np.ndarray, k: int, ctx: EvalContext) -> float:
    return float(user_rr(ranked, targets, k).mean()) if len(targets) else 0.0


def coverage(ranked: np.ndarray, targets: np.ndarray, k: int, ctx: EvalContext) -> float:
    """Share of the catalogue that appears in at least one user's top k."""
    return float(len(np.unique(ranked[:, :k])) / ctx.n_items) if ctx.n_items else 0.0


def long_tail_share(ranked: np.ndarray, targets: np.ndarray, k: int, ctx: EvalContext) -> float:
    """Share of recommended slots (top k) that hold long-tail items."""
    if not len(ctx.long_tail) or not ranked.size:
        return 0.0
    return float(ctx.long_tail[ranked[:, :k]].mean())


def novelty(ranked: np.ndarray, targets: np.ndarray, k: int, ctx: EvalContext) -> float:
    """Mean self-information -log2(p(item)) of recommended items (higher = less obvious)."""
    if not len(ctx.item_popularity) or not ranked.size:
        return 0.0
    p = (ctx.item_popularity + 1.0) / (ctx.item_popularity.sum() + ctx.n_items)
    return float(-np.log2(p[ranked[:, :k]]).mean())


Metric = Callable[[np.ndarray, np.ndarray, int, EvalContext], float]
# Metrics that are a mean over users, by their per-user values (for bootstrap intervals).
PER_USER: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "recall": user_recall,
    "ndcg": user_ndcg,
    "mrr": user_rr,
}
METRICS: dict[str, Metric] = {
    "recall": recall,
    "ndcg": ndcg,
    "mrr": mrr,
    "coverage": coverage,
    "long_tail_share": long_tail_share,
    "novelty": novelty,
}
# The headline set reported for every model: (metric, k).
HEADLINE: tuple[tuple[str, int], ...] = (
    ("recall", 10),
    ("ndcg", 10),
    ("recall", 20),
    ("ndcg", 20),
    ("mrr", 10),
    ("coverage", 10),
    ("long_tail_share", 10),
    ("novelty", 10),
)


def compute_all(
    ranked: np.ndarray, targets: np.ndarray, ctx: EvalContext, which: Sequence[tuple[str, int]] = HEADLINE
) -> dict[str, float]:
    """{'ndcg@10': ..., ...} for every (metric, k) in `which`."""
    return {f"{name}@{k}": METRICS[name](ranked, targets, k, ctx) for name, k in which}


def top_k(scores: np.ndarray, exclude: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Rank all items by score, best first, with each user's excluded item indices removed.

    scores: (n_users, n_items) float; exclude[u]: item indices user u already saw.
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    for u, seen in enumerate(exclude):
        if len(seen):
            scores[u, seen] = -np.inf
    k = min(k, scores.shape[1])
    part = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)
    # A stable sort over index-ordered candidates breaks score ties by item index,
    # so rankings are reproducible across runs and machines.
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def make_context(n_items: int, train_item_idx: np.ndarray, head_share: float = 0.2) -> EvalContext:
    """Popularity from training interactions; long tail = items outside the top `head_share` by count."""
    popularity = np.bincount(train_item_idx, minlength=n_items).astype(np.float64)
    n_head = max(1, int(round(head_share * n_items)))
    head = np.argsort(-popularity, kind="stable")[:n_head]
    long_tail = np.ones(n_items, dtype=bool)
    long_tail[head] = False
    return EvalContext(n_items=n_items, item_popularity=popularity, long_tail=long_tail)


def ranking_length(ks: Sequence[int]) -> int:
    """How many items a stored top-K list holds: enough for every reported k, and at least 20."""
    return max([20, *ks])


def metric_set(ks: Sequence[int]) -> tuple[tuple[str, int], ...]:
    """The headline metrics plus recall and ndcg at every k of evaluate.ks."""
    extra = [(name, k) for k in ks for name in ("recall", "ndcg")]
    return tuple(dict.fromkeys([*HEADLINE, *extra]))

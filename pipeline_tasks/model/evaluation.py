"""Evaluation, the same for every model: full-ranking test metrics, user slices (history length,
cold-start and long-tail targets, user attributes) with a fairness ratio, and bootstrap intervals.

Everything is computed from top-K index arrays aligned with an EvalTask's users (data/dataset.py),
with the metric functions of core/metrics.py; the evaluate stage and the register gate share it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import metrics as M
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.data.dataset import EvalTask, SplitData, eval_task, rank_in_batches, ranked_from_frame, read_ranking
from pipeline_tasks.model.recommender import Recommender
from pipeline_tasks.model.training_data import item_text

log = logging.getLogger(__name__)

SLICE_METRICS = (("ndcg", 10), ("recall", 10))
CI_METRICS = (("ndcg", 10), ("recall", 10))
FAIRNESS_METRIC = "ndcg@10"

# --- Rankings -----------------------------------------------------------------------------


def baseline_rankings(split: SplitData, task: EvalTask, params: dict, root: Path, k: int) -> dict[str, np.ndarray]:
    """The baselines' stored test top-K lists, as index arrays aligned with the task's users."""
    folder = Path(root) / C.DATA_BASELINES / "topk"
    return {
        name: ranked_from_frame(
            split, task, read_ranking(folder / f"{name}.parquet"), k, source=f"{folder / name}.parquet"
        )
        for name in params["baselines"]["models"]
    }


def model_ranking(split: SplitData, task: EvalTask, model_dir: Path, k: int, batch_size: int) -> np.ndarray:
    """A trained Recommender's full ranking of every task user, seen items excluded."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise PipelineError(
            f"no trained model at {model_dir}: run the train stage first "
            "(`python -m pipeline_tasks.train` or `dvc repro train`)"
        )
    rec = Recommender.load(model_dir)
    columns = model_columns(rec, split)
    position = {u: j for j, u in enumerate(task.users)}
    histories = [[split.item_ids[i] for i in seen] for seen in task.seen]

    def score_users(users: np.ndarray) -> np.ndarray:
        scores = np.asarray(rec.scores([histories[position[u]] for u in users]), dtype=np.float32)
        return scores[:, columns]

    return rank_in_batches(score_users, task, k, batch_size, desc=f"{model_dir.name} {task.target_split}")


def model_columns(rec: Recommender, split: SplitData) -> np.ndarray:
    """Column of each split item (in split order) in the model's score matrix.

    Items the model never saw (the catalogue grew since it was trained: every night adds some) are
    added to it first: a text model places them by their text, an ID-only one ranks them last
    (Recommender.add_items). That is how the gate re-scores an older champion on tonight's split.
    """
    unknown = [j for j, item in enumerate(split.item_ids) if item not in rec.item_index]
    if unknown:
        rows = split.items.iloc[unknown].to_dict(orient="records")
        rec.add_items([split.item_ids[j] for j in unknown], [item_text(row) for row in rows])
        how = "placed by their text" if rec.model.uses_text else "ranked last (an ID-only model cannot place them)"
        log.info("%d items of the split are new to this model: %s", len(unknown), how)
    return np.array([rec.item_index[item] for item in split.item_ids], dtype=np.int64)


# --- Slices ---------------------------------------------------------------------------------


def history_groups(lengths: np.ndarray, bins: list[int]) -> pd.Categorical:
    """Label users by history length with half-open bins: '<20', '20-99', '>=100' for bins [20, 100]."""
    edges = sorted(bins)
    labels = [f"<{edges[0]}"] + [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])] + [f">={edges[-1]}"]
    codes = np.searchsorted(edges, lengths, side="right")
    return pd.Categorical.from_codes(codes, categories=labels, ordered=True)


def attribute_groups(values: pd.Series, max_groups: int) -> pd.Categorical | None:
    """Group labels for one user attribute, or None when it cannot be sliced (all missing, too many values).

    A numeric attribute with many values (e.g. age in years) is cut into quartiles,
    labelled by the smallest and largest value inside each ('18-25').
    """
    present = values.dropna()
    if present.empty:
        return None
    if pd.api.types.is_numeric_dtype(values) and present.nunique() > max_groups:
        codes = pd.qcut(values.astype(float), 4, labels=False, duplicates="drop")
        spans = values.groupby(codes).agg(["min", "max"])
        names = {c: f"{row['min']:g}-{row['max']:g}" for c, row in spans.iterrows()}
        labels = codes.map(names)
        order = [names[c] for c in sorted(names)]
    elif present.nunique() > max_groups:
        return None
    else:
        labels = values.map(lambda v: str(v) if pd.notna(v) else None)
        order = sorted(set(labels.dropna()))
    if labels.isna().any():
        order.append("unknown")
    return pd.Categorical(labels.fillna("unknown"), categories=order, ordered=True)


def user_slices(split: SplitData, task: EvalTask, ctx: M.EvalContext, params: dict) -> dict[str, pd.Categorical]:
    """{slice name: group label per task user}, groups in their natural order."""
    cfg = params["evaluate"]
    train_counts = np.bincount(split.train.items, minlength=split.n_items)
    slices = {
        "history_length": history_groups(np.array([len(s) for s in task.seen]), cfg["history_bins"]),
        "cold_start": pd.Categorical.from_codes((train_counts[task.targets] > 0).astype(int), ["cold", "warm"]),
        "popularity": pd.Categorical.from_codes(ctx.long_tail[task.targets].astype(int), ["popular", "long_tail"]),
    }
    users = split.users.iloc[task.users]
    for column in users.columns:
        groups = attribute_groups(users[column].reset_index(drop=True), cfg["max_attribute_groups"])
        if groups is not None:
            slices[f"user.{column}"] = groups
    return slices


def slice_metrics(
    rankings: dict[str, np.ndarray],
    targets: np.ndarray,
    groups: pd.Categorical,
    ctx: M.EvalContext,
    min_group_users: int,
    with_fairness: bool,
) -> dict:
    """{users: {group: n}, metrics: {model: {group: {ndcg@10, recall@10}}}, [fairness: {model: ...}]}."""
    groups = pd.Categorical(groups)
    labels = [g for g in groups.categories if (groups == g).any()]
    groups = np.asarray(groups, dtype=object)
    result: dict = {"users": {g: int((groups == g).sum()) for g in labels}, "metrics": {}}
    for name, ranked in rankings.items():
        result["metrics"][name] = {
            g: M.compute_all(ranked[groups == g], targets[groups == g], ctx, SLICE_METRICS) for g in labels
        }
    if with_fairness:
        result["fairness"] = {
            name: fairness(per_group, result["users"], min_group_users) for name, per_group in result["metrics"].items()
        }
    return result


def fairness(per_group: dict[str, dict], sizes: dict[str, int], min_group_users: int) -> dict:
    """Worst/best group NDCG@10 among groups large enough to judge (1.0 = even service)."""
    eligible = {g: m[FAIRNESS_METRIC] for g, m in per_group.items() if sizes[g] >= min_group_users}
    if len(eligible) < 2:
        return {"ratio": None, "worst": None, "best": None, "groups_judged": len(eligible)}
    worst, best = min(eligible, key=lambda g: eligible[g]), max(eligible, key=lambda g: eligible[g])
    ratio = eligible[worst] / eligible[best] if eligible[best] > 0 else None
    return {"ratio": ratio, "worst": worst, "best": best, "groups_judged": len(eligible)}


# --- Intervals ------------------------------------------------------------------------------


def bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_series) means of `values` (n_series, n_users) over users drawn with replacement.

    Every series sees the same draws, so differences between models are paired.
    """
    rng = np.random.default_rng(seed)
    n_series, n_users = values.shape
    chunk = max(1, 4_000_000 // max(1, n_users * n_series))
    out = []
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, n_users, size=(min(chunk, resamples - start), n_users))
        out.append(values[:, draws].mean(axis=2).T)
    return np.concatenate(out) if out else np.zeros((0, n_series))


def percentile_interval(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the central `level` share of bootstrap draws, per column (axis 0 = resamples)."""
    low, high = np.percentile(draws, [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
    return low, high


def bootstrap_intervals(
    rankings: dict[str, np.ndarray],
    targets: np.ndarray,
    resamples: int,
    level: float,
    seed: int,
    model: str | None = None,
    reference: str | None = None,
) -> dict:
    """{model: {metric: {mean, low, high}}}, plus the model's paired difference to `reference`."""
    names = list(rankings)
    series = [(name, f"{m}@{k}", M.PER_USER[m](rankings[name], targets, k)) for name in names for m, k in CI_METRICS]
    if not len(targets):
        return {}
    means = bootstrap_means(np.stack([v for _, _, v in series]), resamples, seed)
    result: dict = {name: {} for name in names}
    result["level"], result["resamples"] = level, resamples
    column = {}
    for j, (name, metric, v) in enumerate(series):
        low, high = percentile_interval(means[:, j], level)
        result[name][metric] = {"mean": float(v.mean()), "low": float(low), "high": float(high)}
        column[name, metric] = j
    if model in rankings and reference in rankings:
        result["delta_vs_best_baseline"] = {"reference": reference}
        for m, k in CI_METRICS:
            metric = f"{m}@{k}"
            diff = means[:, column[model, metric]] - means[:, column[reference, metric]]
            low, high = percentile_interval(diff, level)
            mean = result[model][metric]["mean"] - result[reference][metric]["mean"]
            result["delta_vs_best_baseline"][metric] = {"mean": mean, "low": float(low), "high": float(high)}
    return result


# --- The whole evaluation -------------------------------------------------------------------


def evaluate_rankings(
    split: SplitData, rankings: dict[str, np.ndarray], params: dict, model: str | None = C.MODEL_NAME
) -> dict:
    """Metrics, slices and intervals of test rankings (index arrays aligned with eval_task(split, 'test'))."""
    cfg = params["evaluate"]
    task = eval_task(split, "test")
    ctx = M.make_context(split.n_items, split.train.items, cfg["head_share"])
    which = M.metric_set(cfg["ks"])
    models = {name: M.compute_all(ranked, task.targets, ctx, which) for name, ranked in rankings.items()}
    baselines = [name for name in rankings if name != model]
    best_baseline = max(baselines, key=lambda n: models[n]["ndcg@10"]) if baselines else None
    slices = {
        name: slice_metrics(
            rankings, task.targets, groups, ctx, cfg["min_group_users"], with_fairness=name.startswith("user.")
        )
        for name, groups in user_slices(split, task, ctx, params).items()
    }
    intervals = bootstrap_intervals(
        rankings,
        task.targets,
        cfg["bootstrap_resamples"],
        cfg["ci_level"],
        params["seed"],
        model=model,
        reference=best_baseline,
    )
    return {
        "models": models,
        "model": model,
        "best_baseline": best_baseline,
        "users": len(task),
        "slices": slices,
        "intervals": intervals,
    }

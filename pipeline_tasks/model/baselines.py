"""The baselines: Pop, ItemKNN, EASE, ALS (Spark MLlib) and SASRec-ID, each selected on validation
and refit on train + valid (the protocol is in the baselines stage's docstring)."""

from __future__ import annotations

import copy
import itertools
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline_tasks.core import metrics as M
from pipeline_tasks.core import tracking
from pipeline_tasks.core.errors import ParamsError, PipelineError
from pipeline_tasks.data.dataset import (
    EvalTask,
    SplitData,
    binary_matrix,
    eval_task,
    rank_in_batches,
)
from pipeline_tasks.model.evaluation import model_ranking
from pipeline_tasks.model.fitting import fit, refit

log = logging.getLogger(__name__)

SASREC = "SASRec-ID"
MATRIX_MODELS = ("Pop", "ItemKNN", "EASE", "ALS")
KNOWN = (*MATRIX_MODELS, SASREC)
# Models that hold an item x item matrix (refused above baselines.max_dense_items).
DENSE = ("ItemKNN", "EASE")

# A scorer maps user indices to (len(users), n_items) scores in item index order.
Scorer = Callable[[np.ndarray], np.ndarray]
# Fitting is split in two: the expensive part once per matrix, then one step per grid value.
Prepared = Callable[[Any], Scorer]


def prepare_pop(x: sp.csr_matrix) -> Prepared:
    counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float32)
    return lambda _unused: lambda users: np.broadcast_to(counts, (len(users), counts.size))


def cosine_neighbours(x: sp.csr_matrix, max_n: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per item: indices and cosine similarities of its `max_n` most similar other items, best first."""
    n_items = x.shape[1]
    max_n = min(max_n, max(n_items - 1, 1))
    xc = x.tocsc().astype(np.float32)
    norms = np.sqrt(np.asarray(xc.multiply(xc).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0  # items with no interaction have zero similarity to all
    idx = np.zeros((n_items, max_n), dtype=np.int64)
    sim = np.zeros((n_items, max_n), dtype=np.float32)
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        co = (xc[:, start:stop].T @ xc).toarray()
        co /= norms[start:stop, None] * norms[None, :]
        co[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # an item is not its own neighbour
        top = np.argsort(-co, axis=1, kind="stable")[:, :max_n]
        idx[start:stop] = top
        sim[start:stop] = np.maximum(np.take_along_axis(co, top, axis=1), 0.0)
    return idx, sim


def prepare_itemknn(x: sp.csr_matrix, max_neighbours: int) -> Prepared:
    idx, sim = cosine_neighbours(x, max_neighbours)
    n_items = x.shape[1]

    def with_neighbours(n: float) -> Scorer:
        n = int(n)
        rows = np.repeat(np.arange(n_items), min(n, idx.shape[1]))
        weights = sp.csr_matrix((sim[:, :n].ravel(), (rows, idx[:, :n].ravel())), shape=(n_items, n_items))
        # score(u, j) = sum of sim(i, j) over the user's items i that keep j as a neighbour
        return lambda users: np.asarray((x[users] @ weights).todense())

    return with_neighbours


def ease_weights(x: sp.csr_matrix) -> Callable[[float], np.ndarray]:
    """lambda -> EASE's item x item matrix B; one eigendecomposition serves the whole grid."""
    gram = (x.T @ x).toarray().astype(np.float64)
    eigvals, eigvecs = np.linalg.eigh(gram)

    def with_lambda(lam: float) -> np.ndarray:
        inverse = (eigvecs / (eigvals + lam)) @ eigvecs.T  # (G + lam I)^-1
        weights = inverse / -np.diag(inverse)[None, :]
        np.fill_diagonal(weights, 0.0)
        return weights.astype(np.float32)

    return with_lambda


def prepare_ease(x: sp.csr_matrix) -> Prepared:
    weights_for = ease_weights(x)

    def with_lambda(lam: float) -> Scorer:
        weights = weights_for(lam)
        return lambda users: np.asarray(x[users] @ weights)

    return with_lambda


def prepare_als(x: sp.csr_matrix, params: dict) -> Prepared:
    """Spark MLlib implicit ALS on the binary matrix; scores are user factors x item factors."""
    from pipeline_tasks.data.spark import get_spark

    spark = get_spark(params)
    coo = x.tocoo()
    frame = pd.DataFrame(
        {
            "user": coo.row.astype(np.int32),
            "item": coo.col.astype(np.int32),
            "rating": np.ones(coo.nnz, dtype=np.float32),
        }
    )
    ratings = spark.createDataFrame(frame).cache()

    def with_values(values: dict) -> Scorer:
        users, items = als_factors(ratings, values, x.shape, params)
        return lambda rows: users[rows] @ items.T

    return with_values


def als_factors(ratings: Any, values: dict, shape: tuple[int, int], params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(n_users, rank), (n_items, rank) factor matrices; zero rows for users/items without data."""
    from pyspark.ml.recommendation import ALS

    als = ALS(
        rank=int(values["rank"]),
        regParam=float(values["reg_param"]),
        alpha=float(values["alpha"]),
        maxIter=params["baselines"]["als_max_iter"],
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="rating",
        seed=params["seed"],
        # Spark's default of 10 blocks per side is overhead on one machine; one per shuffle partition.
        numUserBlocks=params["spark"]["shuffle_partitions"],
        numItemBlocks=params["spark"]["shuffle_partitions"],
    )
    model = als.fit(ratings)
    return (
        factor_matrix(model.userFactors.toPandas(), shape[0], int(values["rank"])),
        factor_matrix(model.itemFactors.toPandas(), shape[1], int(values["rank"])),
    )


def factor_matrix(frame: Any, n: int, rank: int) -> np.ndarray:
    out = np.zeros((n, rank), dtype=np.float32)
    if len(frame):
        out[frame["id"].to_numpy()] = np.stack(frame["features"].to_numpy()).astype(np.float32)
    return out


def als_grid(cfg: dict) -> list[dict]:
    return [
        {"rank": r, "reg_param": reg, "alpha": a}
        for r, reg, a in itertools.product(cfg["als_ranks"], cfg["als_reg_params"], cfg["als_alphas"])
    ]


def grid_of(name: str, params: dict) -> tuple[str | None, list]:
    """The hyperparameter each model selects on validation, and its candidate values."""
    cfg = params["baselines"]
    if name not in MATRIX_MODELS:
        raise ParamsError(f"unknown baseline {name!r} in baselines.models; known: {list(KNOWN)}")
    grids = {
        "Pop": (None, [None]),
        "ItemKNN": ("neighbors", cfg["itemknn_neighbors"]),
        "EASE": ("lambda", cfg["ease_lambdas"]),
        "ALS": ("params", als_grid(cfg)),
    }
    param_key = {
        "ItemKNN": "baselines.itemknn_neighbors",
        "EASE": "baselines.ease_lambdas",
        "ALS": "baselines.als_ranks, als_reg_params and als_alphas",
    }
    key, values = grids[name]
    if not values:
        raise ParamsError(f"the grid for {name} is empty: give {param_key[name]} at least one value")
    return key, list(values)


def check_models(params: dict) -> None:
    """Refuse an unknown model or an impossible iteration count before any fitting starts."""
    for name in params["baselines"]["models"]:
        if name not in KNOWN:
            raise ParamsError(f"unknown baseline {name!r} in baselines.models; known: {list(KNOWN)}")
    cfg = params["baselines"]
    if cfg["als_max_iter"] < 1 or cfg["sasrec_epochs"] < 0 or cfg["sasrec_patience"] < 0:
        raise ParamsError(
            "baselines.als_max_iter must be >= 1, baselines.sasrec_epochs >= 0 (0 = train.epochs) "
            "and baselines.sasrec_patience >= 0 (0 = no early stop)"
        )


def prepare(name: str, x: sp.csr_matrix, params: dict) -> Prepared:
    if name in DENSE and x.shape[1] > params["baselines"]["max_dense_items"]:
        raise PipelineError(
            f"{name} needs an item x item matrix and the catalogue has {x.shape[1]} items "
            f"(> baselines.max_dense_items={params['baselines']['max_dense_items']}): "
            f"remove {name} from baselines.models or raise the limit if memory allows"
        )
    if name == "Pop":
        return prepare_pop(x)
    if name == "ItemKNN":
        return prepare_itemknn(x, max(params["baselines"]["itemknn_neighbors"]))
    if name == "ALS":
        return prepare_als(x, params)
    return prepare_ease(x)


def rank(scorer: Scorer, task: EvalTask, k: int, batch_size: int, desc: str) -> np.ndarray:
    return rank_in_batches(scorer, task, k, batch_size, desc=desc)


def select(name: str, split: SplitData, params: dict, k: int) -> tuple[Any, dict]:
    """Fit on train, rank valid for every grid value; return the best value and the record."""
    key, values = grid_of(name, params)
    task = eval_task(split, "valid")
    x = binary_matrix(split.train, split.n_users, split.n_items)
    prepared = prepare(name, x, params)
    batch = params["baselines"]["batch_size"]
    scores = []
    for value in values:
        ranked = rank(prepared(value), task, k, batch, desc=f"{name} valid {value}")
        scores.append(M.ndcg(ranked, task.targets, 10, M.EvalContext(split.n_items)))
    best = int(np.argmax(scores))  # first of equals: grids are listed in a deliberate order
    record: dict = {"valid_ndcg@10": scores[best]}
    if key is not None:
        record = {key: values[best], **record, "grid": {grid_label(v): s for v, s in zip(values, scores)}}
    return values[best], record


def grid_label(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def fit_and_rank_test(name: str, value: Any, split: SplitData, params: dict, k: int) -> np.ndarray:
    task = eval_task(split, "test")
    x = binary_matrix(split.combined(("train", "valid")), split.n_users, split.n_items)
    return rank(prepare(name, x, params)(value), task, k, params["baselines"]["batch_size"], desc=f"{name} test")


# --- SASRec-ID: the sequential model without text -----------------------------------------


def sasrec_params(params: dict) -> dict:
    """The train params with text off (the same loss), IDs started at random (a text start is text);
    no checkpoints, no tuned params (those were tuned with text). Its epoch budget and patience for
    the selection on valid; the refit takes the selected count."""
    out = copy.deepcopy(params)
    out["train"].update(
        use_text=False,
        use_id_embedding=True,
        id_init="random",
        checkpoint_every=0,
        use_best_params=False,
        epochs=params["baselines"]["sasrec_epochs"] or params["train"]["epochs"],
        patience=params["baselines"]["sasrec_patience"],
    )
    return out


def select_sasrec(root: Path, params: dict) -> tuple[int, dict]:
    """Train on train, validate each epoch; the best epoch count is the selected hyperparameter.

    The trainer stops after `baselines.sasrec_patience` epochs without a better valid NDCG@10
    (0: never), as it does for the text model, so a generous budget costs little once it has converged.
    """
    per_epoch: dict[int, float] = {}

    def on_epoch(epoch: int, value: float) -> None:
        per_epoch[epoch] = value

    started = time.perf_counter()
    with tracking.child_run(f"{SASREC} valid"):  # its learning curves, apart from the stage's metrics
        fit(sasrec_params(params), root, on_epoch=on_epoch)
    best = max(per_epoch, key=lambda e: per_epoch[e])  # first of equals: fewer epochs
    log.info("%s: best valid NDCG@10 %.4f at epoch %d of %d run", SASREC, per_epoch[best], best, len(per_epoch))
    record = {
        "epochs": best,
        "valid_ndcg@10": per_epoch[best],
        "grid": {str(e): v for e, v in per_epoch.items()},
        "seconds": time.perf_counter() - started,
    }
    return best, record


def fit_sasrec_and_rank_test(epochs: int, split: SplitData, root: Path, params: dict, k: int) -> np.ndarray:
    """Refit on train+valid for the selected number of epochs, then rank test like the trained model is."""
    task = eval_task(split, "test")
    with tempfile.TemporaryDirectory(prefix="sasrec-id-") as tmp:
        model_dir = Path(tmp) / "model"
        refit(sasrec_params(params), root, epochs, model_dir, name=SASREC)
        return model_ranking(split, task, model_dir, k, params["baselines"]["batch_size"])

"""Stage `baselines`: the yardstick every gate compares against, on the same split.

Models (params `baselines.models`):
- Pop: rank by interaction count.
- ItemKNN: item-item cosine on the binary matrix, each item's top-n neighbours kept;
  n chosen on validation from `baselines.itemknn_neighbors`.
- EASE (Steck 2019): closed-form linear item-item model; L2 strength chosen on
  validation from `baselines.ease_lambdas`.

Protocol: each hyperparameter is chosen by valid NDCG@10 (fit on train, train items
excluded); the chosen version is refit on train+valid and ranks the test items
(train+valid items excluded). Writes data/baselines/topk/<Model>.parquet.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp

from pipeline_tasks import constants as C
from pipeline_tasks import metrics as M
from pipeline_tasks.cli import stage_main
from pipeline_tasks.dataset import (EvalTask, SplitData, binary_matrix, eval_task, load_split, rank_in_batches,
                                    ranking_frame, write_ranking)
from pipeline_tasks.errors import ParamsError, PipelineError

log = logging.getLogger(__name__)

# A scorer maps user rows of the binary history matrix to (rows, n_items) scores.
Scorer = Callable[[sp.csr_matrix], np.ndarray]
# Fitting is split in two: the expensive part once per matrix, then one cheap step per grid value.
Prepared = Callable[[float], Scorer]


def prepare_pop(x: sp.csr_matrix) -> Prepared:
    counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float32)
    return lambda _unused: (lambda rows: np.broadcast_to(counts, (rows.shape[0], counts.size)))


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
        return lambda user_rows: np.asarray((user_rows @ weights).todense())

    return with_neighbours


def prepare_ease(x: sp.csr_matrix) -> Prepared:
    """One eigendecomposition of the Gram matrix makes every lambda of the grid a matrix product."""
    gram = (x.T @ x).toarray().astype(np.float64)
    eigvals, eigvecs = np.linalg.eigh(gram)

    def with_lambda(lam: float) -> Scorer:
        inverse = (eigvecs / (eigvals + lam)) @ eigvecs.T  # (G + lam I)^-1
        weights = inverse / -np.diag(inverse)[None, :]
        np.fill_diagonal(weights, 0.0)
        weights = weights.astype(np.float32)
        return lambda user_rows: np.asarray(user_rows @ weights)

    return with_lambda


def grid_of(name: str, params: dict) -> tuple[str | None, list]:
    """The hyperparameter each model selects on validation, and its candidate values."""
    cfg = params["baselines"]
    grids = {"Pop": (None, [None]), "ItemKNN": ("neighbors", cfg["itemknn_neighbors"]),
             "EASE": ("lambda", cfg["ease_lambdas"])}
    param_key = {"ItemKNN": "baselines.itemknn_neighbors", "EASE": "baselines.ease_lambdas"}
    if name not in grids:
        raise ParamsError(f"unknown baseline {name!r} in baselines.models; known: {sorted(grids)}")
    key, values = grids[name]
    if not values:
        raise ParamsError(f"the grid for {name} is empty: give {param_key[name]} at least one value")
    return key, list(values)


def prepare(name: str, x: sp.csr_matrix, params: dict) -> Prepared:
    if name in ("ItemKNN", "EASE") and x.shape[1] > params["baselines"]["max_dense_items"]:
        raise PipelineError(f"{name} needs an item x item matrix and the catalogue has {x.shape[1]} items "
                            f"(> baselines.max_dense_items={params['baselines']['max_dense_items']}): "
                            f"remove {name} from baselines.models or raise the limit if memory allows")
    if name == "Pop":
        return prepare_pop(x)
    if name == "ItemKNN":
        return prepare_itemknn(x, max(params["baselines"]["itemknn_neighbors"]))
    return prepare_ease(x)


def rank(scorer: Scorer, x: sp.csr_matrix, task: EvalTask, k: int, batch_size: int, desc: str) -> np.ndarray:
    return rank_in_batches(lambda users: scorer(x[users]), task, k, batch_size, desc=desc)


def select(name: str, split: SplitData, params: dict, k: int) -> tuple[float | None, dict]:
    """Fit on train, rank valid for every grid value; return the best value and the record."""
    key, values = grid_of(name, params)
    task = eval_task(split, "valid")
    x = binary_matrix(split.train, split.n_users, split.n_items)
    prepared = prepare(name, x, params)
    batch = params["baselines"]["batch_size"]
    scores = {}
    for value in values:
        ranked = rank(prepared(value), x, task, k, batch, desc=f"{name} valid {value}")
        scores[value] = M.ndcg(ranked, task.targets, 10, M.EvalContext(split.n_items))
    best = max(values, key=lambda v: scores[v])  # first of equals: grids are listed in a deliberate order
    record: dict = {"valid_ndcg@10": scores[best]}
    if key is not None:
        record = {key: best, **record, "grid": {str(v): s for v, s in scores.items()}}
    return best, record


def fit_and_rank_test(name: str, value: float | None, split: SplitData, params: dict, k: int) -> np.ndarray:
    task = eval_task(split, "test")
    x = binary_matrix(split.combined(("train", "valid")), split.n_users, split.n_items)
    return rank(prepare(name, x, params)(value), x, task, k, params["baselines"]["batch_size"], desc=f"{name} test")


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    split = load_split(root)
    if not len(split.test):
        raise PipelineError("the split has no test users: lower split.min_user_interactions or ingest more data")
    k = M.ranking_length(params["evaluate"]["ks"])
    test = eval_task(split, "test")
    ctx = M.make_context(split.n_items, split.train.items, params["evaluate"]["head_share"])
    which = M.metric_set(params["evaluate"]["ks"])
    out = root / C.DATA_BASELINES / "topk"
    models, selected = {}, {}
    for name in params["baselines"]["models"]:
        best, selected[name] = select(name, split, params, k)
        ranked = fit_and_rank_test(name, best, split, params, k)
        models[name] = M.compute_all(ranked, test.targets, ctx, which)
        write_ranking(ranking_frame(split, test, ranked), out / f"{name}.parquet")
        log.info("baseline %s: %s test ndcg@10=%.4f", name, selected[name], models[name]["ndcg@10"])
    return {"models": models, "selected": selected}


def main(argv: list[str] | None = None) -> int:
    return stage_main("baselines", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

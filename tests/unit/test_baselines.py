"""Baselines on a tiny catalogue with a clear structure: users stay inside one item cluster.

Cluster 0 has the most users, so Pop ranks its items first and fails everyone else;
item-item models (ItemKNN, EASE), ALS and the ID-only sequential model (SASRec-ID) learn
to recommend the unseen items of the user's own cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline_tasks import baselines, split
from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core import metrics as M
from pipeline_tasks.core.errors import ParamsError, PipelineError
from pipeline_tasks.data.dataset import eval_task, load_split, ranked_from_frame
from pipeline_tasks.model import baselines as baseline_models

N_CLUSTERS, ITEMS_PER_CLUSTER, PER_USER = 5, 10, 6
USERS_PER_CLUSTER = [24, 10, 10, 10, 10]


def write_clustered_clean(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows, users = [], []
    for cluster, n_users in enumerate(USERS_PER_CLUSTER):
        for u in range(n_users):
            user = f"c{cluster}u{u}"
            users.append((user, "F" if u % 2 else "M", 20 + u))
            chosen = rng.choice(ITEMS_PER_CLUSTER, size=PER_USER, replace=False)
            for t, item in enumerate(chosen):
                rows.append((user, f"i{cluster * ITEMS_PER_CLUSTER + item:03d}", t))
    df = pd.DataFrame(rows, columns=[C.USER_ID, C.ITEM_ID, "t"])
    stamps = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(df["t"], unit="h")
    inter = pd.DataFrame(
        {
            C.USER_ID: df[C.USER_ID],
            C.ITEM_ID: df[C.ITEM_ID],
            C.RATING: 5.0,
            C.TIMESTAMP: stamps.astype("datetime64[us, UTC]"),
            C.EVENT: "rating",
        }
    )
    item_ids = [f"i{i:03d}" for i in range(N_CLUSTERS * ITEMS_PER_CLUSTER)]
    io.write_table(inter, root / C.DATA_CLEAN / "interactions")
    items = pd.DataFrame({C.ITEM_ID: item_ids, C.TITLE: item_ids, C.TEXT: item_ids})
    io.write_table(items, root / C.DATA_CLEAN / "items")
    io.write_table(pd.DataFrame(users, columns=[C.USER_ID, "gender", "age"]), root / C.DATA_CLEAN / "users")


def tiny_params(params: dict) -> dict:
    params["baselines"].update(
        itemknn_neighbors=[2, 8],
        ease_lambdas=[0.5, 5.0, 50.0],
        batch_size=16,  # several blocks, so batching is exercised
        als_ranks=[8],
        als_reg_params=[0.01, 1.0],
        als_alphas=[10.0],
        als_max_iter=8,
        sasrec_epochs=6,
        sasrec_patience=0,
    )
    params["spark"].update(master="local[2]", shuffle_partitions=2)
    params["train"].update(
        dim=16, user_layers=1, max_seq_len=8, batch_size=4, n_negatives=16, lr=0.01, dropout=0.0, device="cpu"
    )
    return params


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, spark) -> tuple[Path, dict, dict]:
    from pipeline_tasks.core import params as P

    root = tmp_path_factory.mktemp("baselines")
    params = tiny_params(P.defaults())
    write_clustered_clean(root)
    split.run(params, root)
    return root, params, baselines.run(params, root)


def test_item_models_beat_popularity_on_clustered_data(baseline_run):
    _, _, metrics = baseline_run
    models = metrics["models"]
    assert set(models) == {"Pop", "ItemKNN", "EASE", "ALS", "SASRec-ID"}
    for name in ("ItemKNN", "EASE", "ALS"):
        assert models[name]["ndcg@10"] > models["Pop"]["ndcg@10"] + 0.2, name
        assert models[name]["recall@10"] > 0.9, name  # the 4 unseen items of the own cluster fill the top
    # SASRec-ID learns the clusters from 4 items per user and six epochs: clearly, if less cleanly.
    assert models["SASRec-ID"]["ndcg@10"] > models["Pop"]["ndcg@10"] + 0.1
    assert models["Pop"]["recall@10"] < 0.6


def test_selection_picks_a_value_from_each_grid(baseline_run):
    _, params, metrics = baseline_run
    selected = metrics["selected"]
    assert selected["ItemKNN"]["neighbors"] in params["baselines"]["itemknn_neighbors"]
    assert selected["EASE"]["lambda"] in params["baselines"]["ease_lambdas"]
    assert selected["ALS"]["params"] in baseline_models.als_grid(params["baselines"])
    assert len(selected["ALS"]["grid"]) == 2
    # SASRec-ID's hyperparameter is its epoch count, the best of the validated epochs.
    assert set(selected["SASRec-ID"]["grid"]) == {str(e) for e in range(1, 7)}
    assert selected["SASRec-ID"]["grid"][str(selected["SASRec-ID"]["epochs"])] == selected["SASRec-ID"]["valid_ndcg@10"]
    for record in selected.values():
        assert 0.0 <= record["valid_ndcg@10"] <= 1.0
        if "grid" in record:
            assert record["valid_ndcg@10"] == max(record["grid"].values())
    assert set(selected["Pop"]) == {"valid_ndcg@10"}


def test_topk_files_follow_the_contract(baseline_run):
    root, params, metrics = baseline_run
    data = load_split(root)
    test = eval_task(data, "test")
    k = M.ranking_length(params["evaluate"]["ks"])
    ctx = M.make_context(data.n_items, data.train.items, params["evaluate"]["head_share"])
    for name in params["baselines"]["models"]:
        frame = pd.read_parquet(root / C.DATA_BASELINES / "topk" / f"{name}.parquet")
        assert list(frame.columns) == [C.USER_ID, C.TARGET_ITEM_ID, C.ITEM_IDS]
        assert sorted(frame[C.USER_ID]) == sorted(data.user_ids[u] for u in test.users)
        assert all(len(items) == k == len(set(items)) for items in frame[C.ITEM_IDS])
        assert all(isinstance(i, str) for i in frame[C.ITEM_IDS].iloc[0])
        seen = dict(zip(test.users, test.seen))
        for user, items in zip(frame[C.USER_ID], frame[C.ITEM_IDS]):
            assert not set(items) & {data.item_ids[i] for i in seen[data.user_index[user]]}
        # The files alone reproduce the returned metrics: evaluate relies on that.
        ranked = ranked_from_frame(data, test, frame, k, source=name)
        which = M.metric_set(params["evaluate"]["ks"])
        assert M.compute_all(ranked, test.targets, ctx, which) == metrics["models"][name]


def test_ease_matches_the_closed_form_with_an_explicit_inverse():
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 1, 0]], dtype=np.float32))
    lam = 2.0
    p = np.linalg.inv(x.T.toarray() @ x.toarray() + lam * np.eye(4))
    expected = np.eye(4) - p / np.diag(p)
    weights = baseline_models.ease_weights(x)(lam)
    assert np.allclose(weights, expected, atol=1e-5)
    assert np.allclose(np.diag(weights), 0.0)


def test_cosine_neighbours_by_hand():
    # items 0 and 1 share both users; item 2 shares one user with item 0
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1]], dtype=np.float32))
    idx, sim = baseline_models.cosine_neighbours(x, 2)
    assert idx[0].tolist() == [1, 2]
    assert sim[0].tolist() == pytest.approx([1.0, 1 / np.sqrt(2)])
    scorer = baseline_models.prepare_itemknn(x, 2)(1)  # one neighbour each: 0->1, 1->0, 2->0
    assert scorer(np.array([0]))[0].tolist() == pytest.approx([1.0, 1.0, 0])  # user 0 holds items 0, 1
    assert scorer(np.array([1]))[0].tolist() == pytest.approx([1.0 + 1 / np.sqrt(2), 1.0, 0])  # items 0, 1, 2


def test_sasrec_id_stops_when_validation_stops_improving(baseline_run):
    root, params, _ = baseline_run
    params = {**params, "baselines": {**params["baselines"], "sasrec_epochs": 40, "sasrec_patience": 1}}
    best, record = baseline_models.select_sasrec(root, params)
    epochs = [int(e) for e in record["grid"]]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 40, "stopped early"
    assert epochs[-1] == best + 1, "one epoch without gain (patience 1), then stop"
    assert record["grid"][str(best)] == record["valid_ndcg@10"] == max(record["grid"].values())


def test_als_factors_fill_missing_users_and_items_with_zeros():
    import pandas as pd

    frame = pd.DataFrame({"id": [2, 0], "features": [[1.0, 2.0], [3.0, 4.0]]})
    factors = baseline_models.factor_matrix(frame, 4, 2)
    assert factors.tolist() == [[3.0, 4.0], [0.0, 0.0], [1.0, 2.0], [0.0, 0.0]]


def test_als_grid_is_the_product_of_its_lists(params):
    params["baselines"].update(als_ranks=[8, 16], als_reg_params=[0.1], als_alphas=[1.0, 5.0])
    grid = baseline_models.als_grid(params["baselines"])
    assert len(grid) == 4 and {"rank": 16, "reg_param": 0.1, "alpha": 5.0} in grid
    params["baselines"]["als_alphas"] = []
    with pytest.raises(ParamsError, match="als_alphas"):
        baseline_models.grid_of("ALS", params)


def test_unknown_model_is_refused(tmp_path, params):
    params["baselines"]["models"] = ["Pop", "SLIM"]
    write_clustered_clean(tmp_path)
    split.run(params, tmp_path)
    with pytest.raises(ParamsError, match="SLIM"):
        baselines.run(params, tmp_path)


def test_oversized_catalogue_is_refused_with_the_fix(tmp_path, params):
    params["baselines"]["models"] = ["EASE"]
    params["baselines"]["max_dense_items"] = 10
    write_clustered_clean(tmp_path)
    split.run(params, tmp_path)
    with pytest.raises(PipelineError, match="remove EASE from baselines.models"):
        baselines.run(params, tmp_path)


def test_missing_split_names_the_stage_to_run(tmp_path, params):
    with pytest.raises(PipelineError, match="run the stage that writes it"):
        baselines.run(params, tmp_path)


def test_no_baselines_still_leaves_the_stage_output(tmp_path):
    """`baselines.models: []` is a valid choice (the gate then skips its baseline rule); the stage must
    still leave data/baselines, its DVC output, or `dvc repro` fails the stage and Airflow retries it."""
    from pipeline_tasks.core import params as P

    params = tiny_params(P.defaults())
    params["baselines"]["models"] = []
    write_clustered_clean(tmp_path)
    split.run(params, tmp_path)
    assert baselines.run(params, tmp_path) == {"models": {}, "selected": {}}
    assert (tmp_path / C.DATA_BASELINES / "topk").is_dir()

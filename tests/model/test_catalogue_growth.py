"""The catalogue grows every night: a champion trained before tonight's new items must still be
re-scored on tonight's split by the gate, with its own towers, never an error."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core import metrics as M
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.data.dataset import eval_task, load_split
from pipeline_tasks.model import fitting
from pipeline_tasks.model.evaluation import model_ranking
from pipeline_tasks.serving import gate

NEW_ITEMS = [f"new{j}" for j in range(4)]


def grow_the_catalogue(root) -> None:
    """Tonight's split: four new 'jazz piano' items (topic 0), each the test target of a topic-0 user."""
    items = io.read_table(root / C.DATA_SPLIT / "items")
    new = pd.DataFrame(
        {C.ITEM_ID: NEW_ITEMS, C.TITLE: [f"jazz piano new {j}" for j in range(4)], C.TEXT: ["all about jazz piano"] * 4}
    )
    io.write_table(pd.concat([items, new], ignore_index=True), root / C.DATA_SPLIT / "items")
    test = io.read_table(root / C.DATA_SPLIT / "test")
    topic0 = test.index[test[C.USER_ID].map(lambda u: int(u[1:]) % 4 == 0)][: len(NEW_ITEMS)]
    test.loc[topic0, C.ITEM_ID] = NEW_ITEMS[: len(topic0)]
    io.write_table(test, root / C.DATA_SPLIT / "test")


def new_item_indices(split) -> np.ndarray:
    return np.array([split.item_index[item] for item in NEW_ITEMS])


@pytest.fixture
def trained_before_tonight(tiny_params, tiny_split, tmp_path):
    """(params, root, text model dir, ID-only model dir): both trained on yesterday's catalogue."""
    dirs = {}
    for name, use_text in (("text", True), ("ids", False)):
        params = copy.deepcopy(tiny_params)
        params["train"]["use_text"] = use_text
        fitting.fit(params, tiny_split, output_dir=tmp_path / name)
        dirs[name] = tmp_path / name
    grow_the_catalogue(tiny_split)
    return tiny_params, tiny_split, dirs["text"], dirs["ids"]


def test_the_gate_rescores_a_champion_on_a_grown_catalogue(trained_before_tonight):
    params, root, text_model, ids_model = trained_before_tonight
    split = load_split(root)
    task = eval_task(split, "test")
    ctx = M.make_context(split.n_items, split.train.items, params["evaluate"]["head_share"])
    assert set(NEW_ITEMS) <= set(split.item_ids) and set(new_item_indices(split)) & set(split.test.items)
    for model_dir in (text_model, ids_model):
        scored = gate.score(model_dir, params, split, task, ctx)  # raised "trained on another catalogue" before
        assert 0.0 <= scored["metrics"]["ndcg@10"] <= 1.0


def test_a_text_model_places_new_items_by_their_text_an_id_model_ranks_them_last(trained_before_tonight):
    _, root, text_model, ids_model = trained_before_tonight
    split = load_split(root)
    task = eval_task(split, "test")
    new = new_item_indices(split)
    n_known = split.n_items - len(NEW_ITEMS)
    k = split.n_items  # the full ranking: where do the new items land?

    ranked = model_ranking(split, task, ids_model, k, batch_size=64)
    for row, seen in zip(ranked, task.seen):
        unseen_known = n_known - len(set(seen) - set(new))
        where = np.flatnonzero(np.isin(row, new))
        assert len(where) and where.min() >= unseen_known  # after every known item the user has not seen

    ranked = model_ranking(split, task, text_model, k, batch_size=64)
    placed = [
        np.flatnonzero(np.isin(row, new)).min() < n_known - len(set(seen) - set(new))
        for row, seen in zip(ranked, task.seen)
    ]
    assert np.mean(placed) > 0.5  # by their text, among the items it knows: not all behind them


# --- warm nights: tonight's model starts from the champion (model/warm_start.py) ----------------


def test_a_warm_night_starts_from_the_champion_new_items_from_their_text(trained_before_tonight):
    """Before its first step, the warm model ranks known items exactly as the champion did (IDs matched
    by item id, not by row, in a reordered and grown catalogue); a new item has no ID part yet, so its
    vector is its text alone."""
    import torch

    from pipeline_tasks.model.recommender import Recommender
    from pipeline_tasks.model.trainer import Trainer

    params, root, text_model, _ = trained_before_tonight
    first = pd.DataFrame({C.ITEM_ID: ["0-new"], C.TITLE: ["jazz piano first"], C.TEXT: ["jazz piano"]})
    items = pd.concat([first, io.read_table(root / C.DATA_SPLIT / "items")], ignore_index=True)
    io.write_table(items, root / C.DATA_SPLIT / "items")  # sorts first: every known item moves one row down
    champion = Recommender.load(text_model)
    trainer = Trainer(params, root, checkpoint_dir=None, warm_from=text_model)
    model = trainer.model.eval()
    assert trainer.warm_start == {"items_kept": len(champion.item_ids), "items_new": len(NEW_ITEMS) + 1}
    with torch.no_grad():
        tonight = model.item_table(model.encode_pooled(model.tokenize(trainer.data.item_texts))).numpy()
    rows = [model.item_ids.index(item) for item in champion.item_ids]
    assert rows != list(range(len(rows)))  # tonight's catalogue order is not the champion's
    np.testing.assert_allclose(tonight[rows], champion.item_table, atol=1e-4)
    new_rows = [model.item_ids.index(item) for item in ["0-new", *NEW_ITEMS]]
    assert not model.item_tower.id_embedding.weight[new_rows].any()
    text_only = champion.encode_items([trainer.data.item_texts[r] for r in new_rows])
    np.testing.assert_allclose(tonight[new_rows], text_only, atol=1e-4)

    cold = Trainer(params, root, checkpoint_dir=None).model
    assert not torch.allclose(cold.user_tower.positions.weight, model.user_tower.positions.weight)


def test_a_warm_night_trains_at_most_warm_epochs_and_a_champion_of_another_shape_cannot_seed(
    trained_before_tonight, tmp_path
):
    from pipeline_tasks.model import warm_start

    params, root, text_model, ids_model = trained_before_tonight
    params = copy.deepcopy(params)
    params["train"].update(epochs=3, warm_epochs=1, refit=True)
    result = fitting.fit_final(params, root, output_dir=tmp_path / "warm", checkpoint_dir=None, warm_from=text_model)
    assert result["epochs"] == 1 and result["refit_epochs"] == 1
    assert result["warm_start"] == {"items_kept": 24, "items_new": len(NEW_ITEMS)}

    config = warm_start.saved_config(text_model)
    assert warm_start.mismatch(config, params["train"]) is None
    assert "dim 16 vs 32" in warm_start.mismatch(config, {**params["train"], "dim": 32})
    assert "encoder" in warm_start.mismatch(config, {**params["train"], "encoder": "another-encoder"})
    assert "use_text False vs True" in warm_start.mismatch(warm_start.saved_config(ids_model), params["train"])
    assert "compressed copy" in warm_start.mismatch({**config, "encoder_quantization": "onnx_int8"}, params["train"])


def test_a_warm_night_fine_tunes_at_a_share_of_the_learning_rate(trained_before_tonight):
    """At the full rate a warm night's first steps re-enter early training's popularity phase and
    undo what the champion learnt on rare items (README, "Warm nights"): it runs at warm_lr_scale."""
    from pipeline_tasks.model.trainer import Trainer

    params, root, text_model, _ = trained_before_tonight
    params = copy.deepcopy(params)
    params["train"].update(lr=0.01, encoder_lr=0.001, warm_lr_scale=0.1)
    fresh = Trainer(params, root, checkpoint_dir=None)
    warm = Trainer(params, root, checkpoint_dir=None, warm_from=text_model)
    assert [g["initial_lr"] for g in fresh.optimizer.param_groups] == pytest.approx([0.01, 0.001])
    assert [g["initial_lr"] for g in warm.optimizer.param_groups] == pytest.approx([0.001, 0.0001])
    params["train"]["warm_lr_scale"] = 0.0
    with pytest.raises(ParamsError, match="train.warm_lr_scale=0.0 must be positive"):
        Trainer(params, root, checkpoint_dir=None, warm_from=text_model)

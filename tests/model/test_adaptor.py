"""The MoE whitening adaptor over frozen text (train.adaptor_experts): what trains, what is saved,
and how it meets models saved before it existed."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.data.dataset import load_split
from pipeline_tasks.model import fitting, towers, warm_start
from pipeline_tasks.model import recommender as M
from pipeline_tasks.model.text_adaptor import TextAdaptor
from pipeline_tasks.model.trainer import check_train_params
from pipeline_tasks.model.training_data import item_text


def test_the_adaptor_trains_while_the_frozen_encoder_does_not():
    tower = towers.ItemTower(torch.nn.Linear(1, 1), hidden_size=32, n_items=6, dim=8, use_id_embedding=True)
    adaptor = towers.ItemTower(torch.nn.Linear(1, 1), 32, 6, 8, True, adaptor=(4, 0.0)).projection
    assert isinstance(tower.projection, torch.nn.Linear) and isinstance(adaptor, TextAdaptor)

    pooled = torch.randn(6, 32)
    adaptor.eval()
    assert torch.equal(adaptor(pooled), adaptor(pooled)), "no gate noise outside training"
    adaptor.train()
    assert not torch.equal(adaptor(pooled), adaptor(pooled)), "the gate is noisy while training"
    adaptor(pooled).pow(2).sum().backward()
    grads = {name: p.grad for name, p in adaptor.named_parameters()}
    assert set(grads) == {"centres", "maps", "gate", "gate_noise"}
    assert all(g is not None and g.abs().sum() > 0 for name, g in grads.items() if name != "centres"), grads
    # Experts start different (each its own random map), so the gate has something to choose between.
    assert not torch.allclose(adaptor.maps[0], adaptor.maps[1])


def test_an_adaptor_model_is_saved_and_served_as_trained(tiny_params, tiny_split, tmp_path):
    params = copy.deepcopy(tiny_params)
    params["train"].update(finetune="frozen", adaptor_experts=3, epochs=2)
    metrics = fitting.fit(params, tiny_split, output_dir=tmp_path / "model")
    assert 0.0 <= metrics["valid_ndcg@10"] <= 1.0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["adaptor_experts"] == 3
    rec = M.Recommender.load(tmp_path / "model")
    assert isinstance(rec.model.item_tower.projection, TextAdaptor)
    items = load_split(tiny_split).items  # a loaded model keeps no texts: re-encode the split's catalogue
    by_id = {r["item_id"]: item_text(r) for r in items.to_dict(orient="records")}
    recomputed = rec.encode_items([by_id[i] for i in rec.item_ids], list(range(len(rec.item_ids))))
    np.testing.assert_allclose(recomputed, rec.item_table, atol=1e-5)  # eval mode: no gate noise


def test_models_saved_before_the_adaptor_load_and_warm_start_as_linear(tiny_params, tiny_split, tmp_path):
    params = copy.deepcopy(tiny_params)
    params["train"].update(finetune="frozen", epochs=1)
    fitting.fit(params, tiny_split, output_dir=tmp_path / "model")
    config_path = tmp_path / "model" / "config.json"
    config = json.loads(config_path.read_text())
    del config["adaptor_experts"]  # as written by recpipe before train.adaptor_experts existed
    config_path.write_text(json.dumps(config))
    rec = M.Recommender.load(tmp_path / "model")
    assert isinstance(rec.model.item_tower.projection, torch.nn.Linear)
    assert warm_start.mismatch(config, params["train"]) is None
    with_adaptor = {**params["train"], "adaptor_experts": 8}
    assert "adaptor_experts 0 vs 8" in (warm_start.mismatch(config, with_adaptor) or "")


def test_negative_experts_are_refused(tiny_params):
    with pytest.raises(ParamsError, match="adaptor_experts"):
        check_train_params({**tiny_params["train"], "adaptor_experts": -1})

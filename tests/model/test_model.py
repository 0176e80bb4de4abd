"""TextSeqRec and Recommender: shapes, fine-tune modes, learning, save/load, recommending."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from pipeline_tasks.core.errors import ParamsError, PipelineError
from pipeline_tasks.model import fitting, losses, towers, training_data
from pipeline_tasks.model import recommender as M
from pipeline_tasks.model.trainer import Trainer


@pytest.fixture
def tiny_model(tiny_params, tiny_items):
    """build_model(train params + overrides) over the tiny catalogue."""

    def build(**overrides) -> towers.TextSeqRec:
        torch.manual_seed(0)
        texts = [training_data.item_text(r) for r in tiny_items.to_dict(orient="records")]
        return towers.build_model({**tiny_params["train"], **overrides}, tiny_items["item_id"].tolist(), texts)

    return build


def fresh_loss(model: towers.TextSeqRec, histories: list[list[int]]) -> torch.Tensor:
    """A next-item loss whose candidates all run through the encoder with gradient."""
    tokens = model.tokenize(model.item_texts)
    pooled = model.item_tower.pooled(tokens["input_ids"], tokens["attention_mask"]) if model.uses_text else None
    table = model.item_tower.vectors(pooled, torch.arange(model.n_items))
    users = model.user_vectors_from_table(table, [h[:-1] for h in histories])
    targets = torch.tensor([h[-1] for h in histories])
    candidates = torch.arange(model.n_items)
    return losses.sampled_softmax_loss(users, targets, candidates, table, torch.zeros(model.n_items), 0.1)


def test_forward_backward_shapes(tiny_model):
    model = tiny_model(finetune="lora")
    tokens = model.tokenize(model.item_texts[:5])
    pooled = model.item_tower.pooled(tokens["input_ids"], tokens["attention_mask"])
    assert pooled.shape == (5, 32)
    vectors = model.item_tower.vectors(pooled, torch.arange(5))
    assert vectors.shape == (5, 16)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(5), atol=1e-5)

    seq = towers.pad_histories([[0, 1, 2], [3]], max_len=8, pad=model.n_items)
    assert seq.tolist() == [[0, 1, 2], [model.n_items, model.n_items, 3]]
    states = model.user_tower(torch.randn(2, 3, 16), seq != model.n_items)
    assert states.shape == (2, 3, 16) and torch.isfinite(states).all()

    loss = fresh_loss(model, [[0, 1, 2], [6, 7, 8, 9]])
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert grads["item_tower.projection.weight"] is not None
    assert grads["user_tower.positions.weight"] is not None
    assert any("lora_" in name and g is not None for name, g in grads.items())


def test_user_vector_ignores_padding_and_future():
    """Padding never leaks into a real slot, and a slot never sees later items (causality)."""
    tower = towers.UserTower(dim=8, n_layers=1, n_heads=2, max_seq_len=6, dropout=0.0).eval()
    x = torch.randn(1, 4, 8)
    real = torch.tensor([[False, True, True, True]])
    changed_pad = x.clone()
    changed_pad[0, 0] = torch.randn(8)
    changed_future = x.clone()
    changed_future[0, 3] = torch.randn(8)
    out, out_pad, out_future = (tower(v, real) for v in (x, changed_pad, changed_future))
    assert torch.allclose(out[0, 1:], out_pad[0, 1:], atol=1e-6)
    assert torch.allclose(out[0, :3], out_future[0, :3], atol=1e-6)
    assert not torch.allclose(out[0, 3], out_future[0, 3])


def encoder_parameters(model: towers.TextSeqRec) -> dict[str, torch.nn.Parameter]:
    return dict(model.item_tower.encoder.named_parameters())


@pytest.mark.parametrize("mode", ["lora", "full", "top_layers", "frozen"])
def test_finetune_mode_trains_only_its_parameters(tiny_model, mode):
    model = tiny_model(finetune=mode)
    params = encoder_parameters(model)
    trainable = {n for n, p in params.items() if p.requires_grad}
    if mode == "lora":
        assert trainable and all("lora_" in n for n in trainable)
    elif mode == "full":
        assert trainable == set(params)
    elif mode == "top_layers":
        assert trainable == {n for n in params if n.startswith("encoder.layer.1.")} and trainable
    else:
        assert not trainable

    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    fresh_loss(model, [[0, 1, 2], [6, 7, 8], [12, 13, 14]]).backward()
    optimizer.step()
    changed = {n for n, p in params.items() if not torch.equal(p.detach(), before[n])}
    assert changed <= trainable, f"{mode} changed frozen encoder weights: {sorted(changed - trainable)[:3]}"
    assert bool(changed) == bool(trainable)
    assert model.item_tower.projection.weight.grad is not None  # towers still train


def test_unknown_finetune_mode_is_a_params_error(tiny_model):
    with pytest.raises(ParamsError, match="train.finetune"):
        tiny_model(finetune="half")


def test_loss_decreases_when_text_predicts_the_next_item(tiny_params, tiny_split):
    """No ID embedding: only the item text can tell the model which topic comes next."""
    params = copy.deepcopy(tiny_params)
    params["train"].update(use_id_embedding=False, finetune="frozen", lr=0.02)
    trainer = Trainer(params, tiny_split, checkpoint_dir=None)
    trainer.cache = trainer.encode_catalogue()
    everything = torch.arange(len(trainer.data.inputs))
    losses = [trainer.step(everything) for _ in range(25)]
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


def trained_model(params: dict, root) -> tuple[Trainer, np.ndarray]:
    trainer = Trainer(params, root, checkpoint_dir=None)
    trainer.cache = trainer.encode_catalogue()
    for _ in range(4):
        trainer.step(torch.arange(len(trainer.data.inputs)))
    trainer.cache = trainer.encode_catalogue()  # the encoder moved: refresh, as end_epoch does
    return trainer, trainer.valid_table()


def test_save_load_round_trip_from_another_directory(tiny_params, tiny_split, tmp_path, monkeypatch):
    trainer, table = trained_model(tiny_params, tiny_split)  # lora: adapters are non-zero after training
    model = trainer.model.eval()
    histories = [[0, 1, 2], [7], [13, 12, 14, 15]]
    with torch.no_grad():
        expected = (model.user_vectors_from_table(table, histories) @ table.T).numpy()
    model_dir = M.save(model, tmp_path / "saved" / "model", item_table=table.numpy())
    assert {p.name for p in model_dir.iterdir()} >= {
        "config.json",
        "weights.pt",
        "encoder",
        "item_ids.json",
        "item_table.npy",
    }
    assert json.loads((model_dir / "config.json").read_text())["dim"] == 16

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rec = M.Recommender.load(model_dir)
    ids = rec.item_ids
    assert ids == model.item_ids and rec.item_table.shape == (len(ids), 16)
    np.testing.assert_allclose(rec.scores([[ids[i] for i in h] for h in histories]), expected, atol=1e-5)
    # The saved encoder is the LoRA-merged one: re-encoding the catalogue reproduces the stored table.
    assert not any("lora" in n for n, _ in rec.encoder.named_parameters())
    np.testing.assert_allclose(rec.encode_items(model.item_texts, list(range(len(ids)))), rec.item_table, atol=1e-5)
    untrained = towers.load_encoder(towers.resolve_encoder_path(tiny_params["train"]["encoder"]))[0]
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(dict(rec.encoder.named_parameters())[query], dict(untrained.named_parameters())[query])


def test_recommend_excludes_seen_items_and_ignores_unknown_ids(tiny_params, tiny_split, tmp_path):
    trainer, table = trained_model(tiny_params, tiny_split)
    rec = M.Recommender.load(M.save(trainer.model, tmp_path / "model", item_table=table.numpy()))
    ids = rec.item_ids
    seen = [ids[0], ids[1], ids[2]]
    top_all, top_unknown = rec.recommend([seen, ["no-such-item", ids[5]]], k=len(ids))
    assert len(top_all) == len(ids) - 3 and not {i for i, _ in top_all} & set(seen)
    assert len(top_unknown) == len(ids) - 1 and ids[5] not in {i for i, _ in top_unknown}
    scores = [s for _, s in top_all]
    assert scores == sorted(scores, reverse=True)
    with_seen = rec.recommend([seen], k=len(ids), exclude_seen=False)[0]
    assert {i for i, _ in with_seen} == set(ids)


def test_id_only_model_with_random_ids_needs_no_encoder(tiny_params, tiny_split, tmp_path):
    """(IDs started from text read the text with the encoder: tests/model/test_id_init.py.)"""
    params = copy.deepcopy(tiny_params)
    params["train"].update(use_text=False, id_init="random", encoder="/no/such/encoder", epochs=1)
    metrics = fitting.fit(params, tiny_split, output_dir=tmp_path / "model")
    assert 0.0 <= metrics["valid_ndcg@10"] <= 1.0
    assert not (tmp_path / "model" / "encoder").exists()
    rec = M.Recommender.load(tmp_path / "model")
    assert rec.encoder is None
    np.testing.assert_allclose(rec.encode_items([], list(range(len(rec.item_ids)))), rec.item_table, atol=1e-6)
    with pytest.raises(PipelineError, match="item_idx"):
        rec.encode_items(["some text"])
    assert len(rec.recommend([[rec.item_ids[0]]], k=5)[0]) == 5


def test_mixed_precision_choice(monkeypatch):
    """bf16 where the GPU supports it, fp16 (with loss scaling in train) otherwise, nothing on CPU.
    FAKE GPU: no CUDA device here, so torch.cuda.is_bf16_supported is replaced to answer both ways."""
    assert towers.autocast_dtype("cpu") is None
    with towers.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert towers.autocast_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert towers.autocast_dtype("cuda") == torch.float16

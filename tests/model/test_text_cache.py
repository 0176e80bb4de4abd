"""The text cache: the catalogue is encoded once per encoder, keyed by item-text hash, so a night
encodes only new or edited items; the frozen path then never runs the encoder while training."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline_tasks.core import constants as C
from pipeline_tasks.model import fitting, text_cache, towers, training_data


@pytest.fixture
def frozen_model(tiny_params, tiny_items):
    def build(**overrides) -> towers.TextSeqRec:
        texts = [training_data.item_text(r) for r in tiny_items.to_dict(orient="records")]
        cfg = {**tiny_params["train"], "finetune": "frozen", **overrides}
        return towers.build_model(cfg, tiny_items["item_id"].tolist(), texts)

    return build


def encode(model: towers.TextSeqRec, texts: list[str], root) -> tuple[torch.Tensor, dict]:
    return text_cache.pooled_table(model, model.tokenize(texts), texts, root)


def test_a_second_encode_with_one_changed_item_encodes_exactly_that_item(frozen_model, tmp_path):
    model = frozen_model()
    texts = list(model.item_texts)
    first, report = encode(model, texts, tmp_path)
    assert report["encoded"] == 24 and report["items"] == 24
    assert (tmp_path / C.ENCODINGS_DIR).is_dir() and len(list((tmp_path / C.ENCODINGS_DIR).glob("*.npz"))) == 1

    again, report = encode(model, texts, tmp_path)
    assert report["encoded"] == 0 and torch.equal(again, first)

    texts[5] = "a new description of item five"
    edited, report = encode(model, texts, tmp_path)
    assert report["encoded"] == 1
    fresh = model.encode_pooled(model.tokenize(texts))
    assert torch.allclose(edited, fresh, atol=1e-5), "every row, cached or new, is what the encoder gives"
    others = torch.arange(24) != 5
    assert torch.equal(edited[others], first[others])
    assert not torch.allclose(edited[5], first[5])


def test_another_encoder_or_truncation_has_its_own_file(frozen_model, tmp_path):
    model = frozen_model()
    encode(model, list(model.item_texts), tmp_path)
    assert frozen_model(finetune="lora").text_cache_key == model.text_cache_key, "LoRA starts from the same table"
    shorter = frozen_model(max_text_len=6)
    assert shorter.text_cache_key != model.text_cache_key
    _, report = encode(shorter, list(shorter.item_texts), tmp_path)
    assert report["encoded"] == 24
    other = frozen_model()
    with torch.no_grad():
        next(other.item_tower.encoder.parameters()).add_(0.1)  # a warm night's champion encoder
    assert towers.text_identity(other.item_tower.encoder, other.tokenizer, 12) != model.text_cache_key


def encoder_passes(run):
    """run() and the number of forward passes of any Hugging Face encoder (a module with .embeddings)."""
    calls = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: calls.append(1) if hasattr(module, "embeddings") else None
    )
    try:
        return run(), len(calls)
    finally:
        hook.remove()


def test_a_frozen_run_reads_the_cache_and_never_runs_the_encoder(tiny_params, tiny_split):
    params = copy.deepcopy(tiny_params)
    params["train"].update(finetune="frozen", refit=False)
    first, passes = encoder_passes(lambda: fitting.fit(params, tiny_split))
    assert first["text_cache"]["encoded"] == 24 and passes >= 1, "the first run encodes the catalogue"

    second, passes = encoder_passes(lambda: fitting.fit(params, tiny_split))
    assert second["text_cache"]["encoded"] == 0 and second["epochs"] == 2
    assert passes == 0, "the frozen path trains on the cached table alone"
    assert second["valid_ndcg@10"] == pytest.approx(first["valid_ndcg@10"])

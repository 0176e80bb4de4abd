"""compress: every variant built, reloaded and measured on a tiny trained model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_tasks import compress, train
from pipeline_tasks import constants as C
from pipeline_tasks.errors import ParamsError
from pipeline_tasks.model import Recommender

CONTRACT_KEYS = {"size_mb", "latency_p50_ms", "latency_p99_ms", "encode_items_per_s", "ndcg@10", "ndcg_drop_rel"}


@pytest.fixture
def trained_root(tiny_split: Path, tiny_params: dict) -> Path:
    train.fit(tiny_params, tiny_split, output_dir=tiny_split / C.MODEL_DIR)
    return tiny_split


@pytest.fixture
def compress_params(tiny_params: dict) -> dict:
    tiny_params["compress"].update(latency_calls=30, warmup_calls=3, max_ndcg_drop=0.05)
    return tiny_params


def test_every_variant_is_measured_reloadable_and_the_choice_respects_the_bound(trained_root, compress_params):
    result = compress.run(compress_params, trained_root)

    variants = result["variants"]
    assert result["reference"] == "fp32"
    assert set(variants) == {"fp32", "int8_dynamic", "item_table_fp16"}
    for name, m in variants.items():
        assert set(m) == CONTRACT_KEYS, name
        assert all(math.isfinite(v) for v in m.values()), (name, m)
        assert m["size_mb"] > 0 and m["encode_items_per_s"] > 0
        assert 0 < m["latency_p50_ms"] <= m["latency_p99_ms"]
        assert 0.0 <= m["ndcg@10"] <= 1.0
    assert variants["fp32"]["ndcg_drop_rel"] == 0.0
    assert variants["int8_dynamic"]["size_mb"] < variants["fp32"]["size_mb"]
    assert variants["item_table_fp16"]["size_mb"] < variants["fp32"]["size_mb"]

    chosen = result["chosen"]
    allowed = {n: m for n, m in variants.items() if m["ndcg_drop_rel"] <= 0.05}
    assert chosen in allowed
    assert variants[chosen]["size_mb"] == min(m["size_mb"] for m in allowed.values())
    out = trained_root / C.COMPRESSED_DIR
    assert (out / "chosen.txt").read_text().strip() == chosen
    assert (trained_root / "reports" / "compress.md").exists()

    # fp32 is the trained model; fp16 stores the same table at half precision and loads as float32.
    reference = Recommender.load(trained_root / C.MODEL_DIR)
    fp16 = compress.load_variant(out / "item_table_fp16")
    assert np.load(out / "item_table_fp16" / "item_table.npy").dtype == np.float16
    assert fp16.item_table.dtype == np.float32
    np.testing.assert_allclose(fp16.item_table, reference.item_table, atol=2e-3)

    # int8: no fp32 encoder weights on disk; reloads as quantised Linear layers with the stored table.
    int8_dir = out / "int8_dynamic"
    assert not list((int8_dir / "encoder").glob("*.safetensors"))
    int8 = compress.load_variant(int8_dir)
    quantised = [m for m in int8.encoder.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert quantised and not any(type(m) is torch.nn.Linear for m in int8.encoder.modules())
    texts = compress.load_eval_data(trained_root, int8.item_ids).texts
    recomputed = int8.encode_items(texts, item_idx=list(range(len(texts))))
    np.testing.assert_allclose(recomputed, int8.item_table, atol=1e-5)
    assert int8.recommend([[int8.item_ids[0]]], k=5)[0]


def test_choose_takes_the_smallest_then_fastest_within_the_bound():
    variants = {
        "fp32": {"size_mb": 90.0, "latency_p50_ms": 2.0, "ndcg_drop_rel": 0.0},
        "int8_dynamic": {"size_mb": 59.0, "latency_p50_ms": 1.5, "ndcg_drop_rel": 0.03},
        "item_table_fp16": {"size_mb": 89.0, "latency_p50_ms": 2.1, "ndcg_drop_rel": 0.0},
        "tie_but_faster": {"size_mb": 89.0, "latency_p50_ms": 1.9, "ndcg_drop_rel": 0.001},
    }
    assert compress.choose(variants, max_drop=0.05) == "int8_dynamic"
    assert compress.choose(variants, max_drop=0.01) == "tie_but_faster"
    assert compress.choose(variants, max_drop=0.0) == "item_table_fp16"


def test_relative_drop():
    assert compress.relative_drop(0.5, 0.45) == pytest.approx(0.1)
    assert compress.relative_drop(0.5, 0.55) == pytest.approx(-0.1)  # an improvement is a negative drop
    assert compress.relative_drop(0.0, 0.0) == 0.0


def test_unknown_variant_and_negative_bound_are_rejected(trained_root, compress_params):
    compress_params["compress"]["variants"] = ["fp32", "int4_magic"]
    with pytest.raises(ParamsError, match="int4_magic"):
        compress.run(compress_params, trained_root)
    compress_params["compress"].update(variants=["fp32"], max_ndcg_drop=-0.1)
    with pytest.raises(ParamsError, match="max_ndcg_drop"):
        compress.run(compress_params, trained_root)
    assert not (trained_root / C.COMPRESSED_DIR).exists()


def test_quantize_int8_is_silent_about_its_own_deprecation(tiny_encoder_dir):
    import warnings

    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(tiny_encoder_dir), local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning we did not deliberately silence fails here
        quantised = compress.quantize_int8(encoder)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantised.modules())
    assert any(type(m) is torch.nn.Linear for m in encoder.modules())  # the original is left as it was

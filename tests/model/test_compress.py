"""compress: every variant built, reloaded and measured on a tiny trained model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_tasks import compress
from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.model import compression, fitting, measuring, towers
from pipeline_tasks.model.recommender import Recommender
from pipeline_tasks.model.variants import OnnxEncoder, quantize_int8

CONTRACT_KEYS = {"size_mb", "latency_p50_ms", "latency_p99_ms", "encode_items_per_s", "ndcg@10", "ndcg_drop_rel"}


@pytest.fixture
def trained_root(tiny_split: Path, tiny_params: dict) -> Path:
    fitting.fit(tiny_params, tiny_split, output_dir=tiny_split / C.MODEL_DIR)
    return tiny_split


@pytest.fixture
def compress_params(tiny_params: dict) -> dict:
    tiny_params["compress"].update(latency_calls=30, warmup_calls=3, max_ndcg_drop=0.05)
    return tiny_params


ALL_VARIANTS = {
    "fp32",
    "int8_dynamic",
    "onnx_fp32",
    "onnx_int8",
    "pruned",
    "distilled",
    "item_table_fp16",
    "item_table_int8",
}


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tiny_encoder_dir):
    """One compress.run over every variant on a tiny trained model (shared: the ONNX export is the slow part)."""
    from pipeline_tasks.core import params as P
    from tests.model.conftest import write_split

    root = write_split(tmp_path_factory.mktemp("compress") / "project")
    params = P.defaults()
    params["train"].update(
        encoder=str(tiny_encoder_dir),
        dim=16,
        user_layers=1,
        user_heads=2,
        max_seq_len=8,
        max_text_len=12,
        epochs=2,
        batch_size=8,
        n_negatives=8,
        text_grad_items=4,
        checkpoint_every=0,
        device="cpu",
        dropout=0.0,
        lr=0.01,
        encoder_lr=0.001,
    )
    params["compress"].update(latency_calls=30, warmup_calls=3, max_ndcg_drop=0.05, distill_epochs=2, recovery_epochs=1)
    fitting.fit(params, root, output_dir=root / C.MODEL_DIR)
    return root, compress.run(params, root)


def test_every_variant_is_measured_and_the_choice_respects_the_bound(compressed):
    root, result = compressed
    variants = result["variants"]
    assert result["reference"] == "fp32"
    assert set(variants) == ALL_VARIANTS
    for name, m in variants.items():
        assert set(m) == CONTRACT_KEYS, name
        assert all(math.isfinite(v) for v in m.values()), (name, m)
        assert m["size_mb"] > 0 and m["encode_items_per_s"] > 0
        assert 0 < m["latency_p50_ms"] <= m["latency_p99_ms"]
        assert 0.0 <= m["ndcg@10"] <= 1.0
    assert variants["fp32"]["ndcg_drop_rel"] == 0.0
    fp32_size = variants["fp32"]["size_mb"]
    for name in ("int8_dynamic", "onnx_int8", "distilled", "item_table_fp16", "item_table_int8"):
        assert variants[name]["size_mb"] < fp32_size, name
    # ONNX int8 also quantises the word embeddings (most of the encoder), torch.ao int8 does not.
    assert variants["onnx_int8"]["size_mb"] < 0.5 * fp32_size
    assert variants["onnx_int8"]["size_mb"] < variants["int8_dynamic"]["size_mb"]
    assert variants["item_table_int8"]["size_mb"] < variants["item_table_fp16"]["size_mb"]

    chosen = result["chosen"]
    allowed = {n: m for n, m in variants.items() if m["ndcg_drop_rel"] <= 0.05}
    assert chosen in allowed
    assert variants[chosen]["size_mb"] == min(m["size_mb"] for m in allowed.values())
    assert (root / C.COMPRESSED_DIR / "chosen.txt").read_text().strip() == chosen
    assert (root / "reports" / "compress.md").exists()


@pytest.mark.parametrize("name", sorted(ALL_VARIANTS))
def test_every_variant_loads_through_recommender_load_in_its_stored_form(compressed, name):
    """What serving does (model.Recommender.load): each variant comes back with the table it was measured on."""
    root, result = compressed
    variant_dir = root / C.COMPRESSED_DIR / name
    rec = Recommender.load(variant_dir)
    assert rec.item_table.dtype == np.float32
    texts = measuring.load_eval_data(root, rec.item_ids).texts
    recomputed = rec.encode_items(texts, item_idx=list(range(len(texts))))
    # The stored table is what this variant's own item tower computes (int8 tables: within rounding).
    atol = 1e-2 if name == "item_table_int8" else 2e-3 if name == "item_table_fp16" else 1e-4
    np.testing.assert_allclose(recomputed, rec.item_table, atol=atol)
    ranked = rec.recommend([[rec.item_ids[0], rec.item_ids[1]]], k=5)[0]
    assert len(ranked) == 5 and rec.item_ids[0] not in [item for item, _ in ranked]


def test_the_stored_forms_are_what_they_claim(compressed):
    root, _ = compressed
    out = root / C.COMPRESSED_DIR
    reference = Recommender.load(root / C.MODEL_DIR)
    config = lambda name: json.loads((out / name / "config.json").read_text())  # noqa: E731

    assert np.load(out / "item_table_fp16" / "item_table.npy").dtype == np.float16
    assert np.load(out / "item_table_int8" / "item_table.npy").dtype == np.int8
    np.testing.assert_allclose(
        Recommender.load(out / "item_table_int8").item_table, reference.item_table, atol=1.0 / 127
    )  # per-row scale: error at most half a step of max|row| / 127

    # int8 encoders: no fp32 weights on disk; torch int8 reloads as quantised Linear layers.
    for name in ("int8_dynamic", "onnx_int8", "onnx_fp32"):
        assert not list((out / name / "encoder").glob("*.safetensors")), name
    int8 = Recommender.load(out / "int8_dynamic")
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in int8.encoder.modules())
    assert not any(type(m) is torch.nn.Linear for m in int8.encoder.modules())

    # ONNX: onnxruntime runs the encoder; fp32 matches torch, int8 stores int8 MatMul and Gather weights.
    import onnx

    onnx_fp32 = Recommender.load(out / "onnx_fp32")
    assert isinstance(onnx_fp32.encoder, OnnxEncoder)
    np.testing.assert_allclose(onnx_fp32.item_table, reference.item_table, atol=1e-4)
    graph = onnx.load(str(out / "onnx_int8" / "encoder" / "model.onnx")).graph
    # (MatMul weights are stored as int8, Gather tables as uint8 with a zero point.)
    eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    quantised = {t.name: int(np.prod(t.dims)) for t in graph.initializer if t.data_type in eight_bit}
    ops = {node.op_type for node in graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert config("onnx_int8")["encoder_quantization"] == "onnx_int8"
    word_embeddings = reference.encoder.get_input_embeddings().weight.numel()
    assert any(n == word_embeddings and "word_embeddings" in name for name, n in quantised.items())
    assert not [
        t.name
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and int(np.prod(t.dims)) >= word_embeddings
    ]  # no fp32 copy left behind

    # pruned: half of every encoder Linear weight is zero; distilled: fewer layers than the teacher.
    pruned = Recommender.load(out / "pruned")
    for module in (m for m in pruned.encoder.modules() if isinstance(m, torch.nn.Linear)):
        assert float((module.weight == 0).float().mean()) >= 0.5 - 1e-3
    assert config("pruned")["pruned_linear_sparsity"] >= 0.5 - 1e-3
    teacher_layers = reference.encoder.config.num_hidden_layers
    distilled = Recommender.load(out / "distilled")
    assert distilled.encoder.config.num_hidden_layers == config("distilled")["distilled_layers"] < teacher_layers
    assert len(distilled.encoder.encoder.layer) < teacher_layers


def test_distillation_moves_the_student_towards_the_teacher(tiny_encoder_dir, tiny_items):
    """fit_to_teacher lowers the student's error against the teacher's text vectors."""
    from pipeline_tasks.model import recommender as model_lib

    torch.manual_seed(0)
    net = towers.build_model(
        {**_tiny_train_cfg(tiny_encoder_dir), "finetune": "frozen"},
        list(tiny_items["item_id"]),
        list(tiny_items["title"]),
    )
    with torch.no_grad():  # a random tiny BERT's layers are near-identity: give the dropped layer real work
        for module in net.item_tower.encoder.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(20.0)
    rec = Recommender(net, model_lib.compute_item_table(net))
    tokens = net.tokenize(list(tiny_items["title"]))
    targets = compression.teacher_targets(rec, tokens)

    def error() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(compression.text_vectors(net.item_tower, tokens), targets))

    rec.encoder = compression.make_student(rec.encoder, 1)
    before = error()
    compression.fit_to_teacher(rec, targets, tokens, {"distill_lr": 0.001, "distill_batch_size": 8}, epochs=8, seed=0)
    assert error() < 0.5 * before


def _tiny_train_cfg(encoder_dir) -> dict:
    from pipeline_tasks.core import params as P

    cfg = P.defaults()["train"]
    cfg.update(
        encoder=str(encoder_dir), dim=16, user_layers=1, user_heads=2, max_seq_len=8, max_text_len=12, dropout=0.0
    )
    return cfg


def test_quantize_table_int8_round_trip():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 16)).astype(np.float32)
    table[3] = 0.0  # an all-zero row must not divide by zero
    q, scale = compression.quantize_table_int8(table)
    assert q.dtype == np.int8 and scale.shape == (50, 1)
    np.testing.assert_allclose(q * scale, table, atol=float(scale.max()) / 2 + 1e-7)
    assert not q[3].any()


def test_make_student_keeps_first_and_last_layer(tiny_encoder_dir):
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(str(tiny_encoder_dir), local_files_only=True)
    student = compression.make_student(teacher, 1)
    assert len(student.encoder.layer) == 1 and student.config.num_hidden_layers == 1
    assert len(teacher.encoder.layer) == 2  # the teacher is untouched
    assert compression.student_layers(teacher, 3) == 1  # never as deep as the teacher


def test_choose_takes_the_smallest_then_fastest_within_the_bound():
    variants = {
        "fp32": {"size_mb": 90.0, "latency_p50_ms": 2.0, "ndcg_drop_rel": 0.0},
        "int8_dynamic": {"size_mb": 59.0, "latency_p50_ms": 1.5, "ndcg_drop_rel": 0.03},
        "item_table_fp16": {"size_mb": 89.0, "latency_p50_ms": 2.1, "ndcg_drop_rel": 0.0},
        "tie_but_faster": {"size_mb": 89.0, "latency_p50_ms": 1.9, "ndcg_drop_rel": 0.001},
    }
    assert measuring.choose(variants, max_drop=0.05) == "int8_dynamic"
    assert measuring.choose(variants, max_drop=0.01) == "tie_but_faster"
    assert measuring.choose(variants, max_drop=0.0) == "item_table_fp16"


def test_relative_drop():
    assert measuring.relative_drop(0.5, 0.45) == pytest.approx(0.1)
    assert measuring.relative_drop(0.5, 0.55) == pytest.approx(-0.1)  # an improvement is a negative drop
    assert measuring.relative_drop(0.0, 0.0) == 0.0


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
        quantised = quantize_int8(encoder)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantised.modules())
    assert any(type(m) is torch.nn.Linear for m in encoder.modules())  # the original is left as it was


def test_a_stored_table_that_its_encoder_does_not_reproduce_is_reported(compressed, caplog):
    root, _ = compressed
    reference = Recommender.load(root / C.MODEL_DIR)
    data = measuring.load_eval_data(root, reference.item_ids)
    with caplog.at_level("WARNING", logger="pipeline_tasks.compress"):
        assert measuring.check_stored_table(reference, data) < 1e-3
        assert "differs from what its saved encoder computes" not in caplog.text
        reference.item_table = reference.item_table + 0.05
        assert measuring.check_stored_table(reference, data) == pytest.approx(0.05, abs=1e-3)
    assert "differs from what its saved encoder computes" in caplog.text

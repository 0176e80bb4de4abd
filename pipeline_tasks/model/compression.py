"""Building compressed variants of a trained model (the table of variants is in the compress
stage's docstring), each written as a model directory that `Recommender.load` reads.

Longer than most modules on purpose: each builder is short, and they share the export,
quantisation, pruning and distillation helpers above them, which no other module uses.

Pruning and distillation recover against the fp32 model's own text vectors (projected
pooled encoder output): the compressed tower should reproduce the trained one, and that needs
only the catalogue texts, not another pass over the interactions.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core.errors import ParamsError, PipelineError
from pipeline_tasks.model import towers
from pipeline_tasks.model.measuring import EvalData, check_stored_table, judge, load_eval_data, method, speed, user_ndcg
from pipeline_tasks.model.recommender import Recommender
from pipeline_tasks.model.towers import Encoder
from pipeline_tasks.model.variants import (
    INT8,
    INT8_STATE_FILE,
    ONNX_FILE,
    ONNX_FP32,
    ONNX_INT8,
    QUANTIZATION_KEY,
    REFERENCE,
    TABLE_FORMAT_KEY,
    TABLE_INT8,
    TABLE_SCALE_FILE,
    OnnxEncoder,
    quantize_int8,
)

log = logging.getLogger(__name__)


# --- torch int8 and ONNX ---------------------------------------------------------------------


def save_int8_encoder(encoder: Encoder, tokenizer, encoder_dir: Path) -> None:
    """HF config + tokenizer + the quantised state dict (no fp32 weights)."""
    encoder_dir.mkdir(parents=True, exist_ok=True)
    encoder.config.save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    torch.save(encoder.state_dict(), encoder_dir / INT8_STATE_FILE)


class HiddenStates(nn.Module):
    """An HF encoder as a plain tensor function (what the ONNX exporter traces)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@contextlib.contextmanager
def quiet_onnx() -> Iterator[None]:
    """The exporter's and quantiser's progress lines and advice (nothing an operator can act on)."""
    # onnxruntime's quantiser logs its advice on the root logger, hence "".
    noisy = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "")]
    levels = [logger.level for logger in noisy]
    for logger in noisy:
        logger.setLevel(logging.ERROR)
    try:
        # The exporter prints progress to stdout and warns about torch internals it uses.
        with warnings.catch_warnings(), contextlib.redirect_stdout(StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(noisy, levels):
            logger.setLevel(level)


def export_onnx(encoder: Encoder, tokenizer, max_text_len: int, path: Path) -> None:
    """Dynamo export with dynamic batch and sequence axes, one self-contained file."""
    length = max(2, max_text_len)  # a length of 1 would be specialised into the graph
    example = tokenizer(
        ["an example item", "another example item text"],
        truncation=True,
        max_length=length,
        padding="max_length",
        return_tensors="pt",
    )
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_onnx():
            torch.onnx.export(
                HiddenStates(encoder.cpu().eval()),
                (example["input_ids"], example["attention_mask"]),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            )
    except Exception as err:  # the exporter raises many types; all mean "this encoder does not export"
        raise PipelineError(
            f"ONNX export of the {type(encoder).__name__} encoder failed ({type(err).__name__}: "
            f"{str(err)[:300]}); remove onnx_fp32/onnx_int8 from compress.variants"
        ) from err


def quantize_onnx_int8(fp32_path: Path, int8_path: Path, per_channel: bool) -> None:
    """onnxruntime dynamic quantisation: int8 weights for MatMul and Gather (the embedding tables)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_onnx():
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=["MatMul", "Gather"],
        )


# --- pruning and distillation -----------------------------------------------------------------


def layer_list(encoder: Encoder) -> tuple[Encoder, str, nn.ModuleList]:
    """(parent, attribute, layers) of the encoder's transformer blocks (BERT, DistilBERT, others)."""
    for path in ("encoder.layer", "transformer.layer", "layers"):
        parent: Any = encoder
        *heads, attr = path.split(".")
        for part in heads:
            parent = getattr(parent, part, None)
        layers = getattr(parent, attr, None) if parent is not None else None
        if isinstance(layers, nn.ModuleList) and len(layers):
            return parent, attr, layers
    raise PipelineError(
        f"cannot find the transformer layers of {type(encoder).__name__} to build a student; "
        "remove `distilled` from compress.variants"
    )


def make_student(teacher: Encoder, n_layers: int) -> Encoder:
    """A copy of the teacher keeping n evenly spaced layers (first and last included)."""
    student = copy.deepcopy(teacher)
    parent, attr, layers = layer_list(student)
    keep = sorted({int(round(i)) for i in np.linspace(0, len(layers) - 1, n_layers)})
    setattr(parent, attr, nn.ModuleList(layers[i] for i in keep))
    for key in ("num_hidden_layers", "n_layers"):  # BERT-style / DistilBERT-style config names
        if hasattr(student.config, key):
            setattr(student.config, key, len(keep))
    return student


def student_layers(teacher: Encoder, wanted: int) -> int:
    """`compress.student_layers`, but always fewer than the teacher has (a tiny teacher gets L-1)."""
    total = len(layer_list(teacher)[2])
    n = min(wanted, total - 1)
    if n < 1:
        raise PipelineError(
            f"the encoder has {total} layer(s): a student needs fewer, so `distilled` cannot be "
            "built; remove it from compress.variants"
        )
    if n != wanted:
        log.warning("compress: the encoder has %d layers, so the student gets %d (not %d)", total, n, wanted)
    return n


def prune_linear_weights(encoder: Encoder, amount: float) -> list[Encoder]:
    """Zero the smallest-|w| share of every Linear weight (masks stay on until `make_permanent`)."""
    from torch.nn.utils import prune

    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    for module in linears:
        prune.l1_unstructured(module, "weight", amount=amount)
    return linears


def make_permanent(linears: list[Encoder]) -> float:
    """Fold the masks into the weights; returns the share of zero weights."""
    from torch.nn.utils import prune

    zeros = total = 0
    for module in linears:
        prune.remove(module, "weight")
        zeros += int((module.weight == 0).sum())
        total += module.weight.numel()
    return zeros / max(total, 1)


def projection_of(tower: towers.ItemTower) -> nn.Module:
    """The text projection or adaptor (only text models have an encoder to compress)."""
    assert tower.projection is not None, "the model has no text tower"
    return tower.projection


def text_vectors(tower: towers.ItemTower, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """(n, dim) projected pooled text: the item tower's text part, before the ID embedding."""
    return projection_of(tower)(tower.pooled(tokens["input_ids"], tokens["attention_mask"]))


def fit_to_teacher(
    rec: Recommender, targets: torch.Tensor, tokens: dict[str, torch.Tensor], cfg: dict, epochs: int, seed: int
) -> float:
    """Train rec's encoder so its text vectors match `targets` (MSE); projection and IDs stay fixed.

    Returns the last epoch's mean loss. Dropout is off: this is regression onto fixed targets.
    """
    tower = rec.model.item_tower
    projection_of(tower).requires_grad_(False)
    encoder = tower.encoder.train(False).requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [p for p in encoder.parameters() if p.requires_grad], lr=cfg["distill_lr"], weight_decay=0.0
    )  # no pull towards zero: the start is the teacher
    generator = torch.Generator().manual_seed(seed)
    n, batch, loss_sum = len(targets), cfg["distill_batch_size"], 0.0
    for epoch in range(epochs):
        order, loss_sum = torch.randperm(n, generator=generator), 0.0
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            loss = F.mse_loss(text_vectors(tower, {k: v[rows] for k, v in tokens.items()}), targets[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += float(loss) * len(rows)
        log.info("compress: fit to teacher epoch %d/%d, mse %.3g", epoch + 1, epochs, loss_sum / n)
    encoder.requires_grad_(False)
    return loss_sum / n


# --- building variants -----------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One variant to build: where from, where to, what with."""

    source: Path  # models/model
    out: Path  # models/compressed/<variant>
    data: EvalData
    cfg: dict  # params["compress"]
    seed: int


def copy_model(job: Job, config_updates: dict[str, Any] | None = None, with_encoder: bool = True) -> dict:
    """The source model directory copied to job.out (optionally without encoder/), config updated."""
    config = io.read_json(job.source / towers.CONFIG_FILE)
    ignore = None if with_encoder else shutil.ignore_patterns(config["encoder_dir"])
    shutil.copytree(job.source, job.out, ignore=ignore)
    config = {**config, **(config_updates or {})}
    io.write_json(config, job.out / towers.CONFIG_FILE)
    return config


def recomputed_table(rec: Recommender, data: EvalData) -> np.ndarray:
    """The catalogue's item vectors through rec's (compressed) item tower."""
    return rec.encode_items(data.texts, item_idx=list(range(len(rec.item_ids)))).astype(np.float32)


def build_fp32(job: Job) -> None:
    shutil.copytree(job.source, job.out)


def build_item_table_fp16(job: Job) -> None:
    config = copy_model(job, {TABLE_FORMAT_KEY: "fp16"})
    table = np.load(job.out / config["item_table_file"])
    np.save(job.out / config["item_table_file"], table.astype(np.float16))  # upcast by np.asarray on load


def quantize_table_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: row * 127 / max|row|; returns (int8 table, (n, 1) float32 scales)."""
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(table / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def build_item_table_int8(job: Job) -> None:
    config = copy_model(
        job, {TABLE_FORMAT_KEY: TABLE_INT8, "item_table_scale_file": TABLE_SCALE_FILE, QUANTIZATION_KEY: "fp32"}
    )  # marks a compressed variant (before the package layout only compress.load_variant read one)
    table, scale = quantize_table_int8(np.load(job.out / config["item_table_file"]))
    np.save(job.out / config["item_table_file"], table)
    np.save(job.out / TABLE_SCALE_FILE, scale)


def build_int8_dynamic(job: Job) -> None:
    rec = Recommender.load(job.source)
    rec.encoder = quantize_int8(rec.encoder)
    table = recomputed_table(rec, job.data)
    config = copy_model(job, {QUANTIZATION_KEY: INT8}, with_encoder=False)
    save_int8_encoder(rec.encoder, rec.model.tokenizer, job.out / config["encoder_dir"])
    np.save(job.out / config["item_table_file"], table)


def build_onnx(job: Job, quantized: bool) -> None:
    rec = Recommender.load(job.source)
    config = copy_model(job, {QUANTIZATION_KEY: ONNX_INT8 if quantized else ONNX_FP32}, with_encoder=False)
    encoder_dir = job.out / config["encoder_dir"]
    rec.model.tokenizer.save_pretrained(encoder_dir)
    rec.encoder.config.save_pretrained(encoder_dir)
    if quantized:
        # The onnx_fp32 variant's graph when it was built in this run (an export costs ~a minute).
        fp32_path = job.out.parent / ONNX_FP32 / config["encoder_dir"] / ONNX_FILE
        scratch = not fp32_path.exists()
        if scratch:
            fp32_path = job.out.parent / f".{job.out.name}.fp32.onnx"  # never part of the variant
            export_onnx(rec.encoder, rec.model.tokenizer, rec.config["max_text_len"], fp32_path)
        quantize_onnx_int8(fp32_path, encoder_dir / ONNX_FILE, job.cfg["onnx_per_channel"])
        if scratch:
            fp32_path.unlink()
    else:
        export_onnx(rec.encoder, rec.model.tokenizer, rec.config["max_text_len"], encoder_dir / ONNX_FILE)
    rec.encoder = OnnxEncoder(encoder_dir / ONNX_FILE, job.cfg["num_threads"])
    np.save(job.out / config["item_table_file"], recomputed_table(rec, job.data))


def teacher_targets(rec: Recommender, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fp32 model's text vectors of the whole catalogue: what pruning/distillation must keep."""
    tower = rec.model.item_tower
    with torch.no_grad():
        pooled = rec.model.encode_pooled(tokens, desc="teacher vectors")
        return projection_of(tower)(pooled)


def save_with_encoder(rec: Recommender, job: Job, **config_updates: Any) -> None:
    """A plain model directory (fp32 HF encoder) holding rec's encoder and a recomputed table."""
    table = recomputed_table(rec, job.data)
    config = copy_model(job, config_updates, with_encoder=False)
    rec.encoder.save_pretrained(job.out / config["encoder_dir"])
    rec.model.tokenizer.save_pretrained(job.out / config["encoder_dir"])
    np.save(job.out / config["item_table_file"], table)


def build_pruned(job: Job) -> None:
    rec = Recommender.load(job.source)
    tokens = rec.model.tokenize(job.data.texts)
    targets = teacher_targets(rec, tokens)
    linears = prune_linear_weights(rec.encoder, job.cfg["prune_amount"])
    fit_to_teacher(rec, targets, tokens, job.cfg, job.cfg["recovery_epochs"], job.seed)
    sparsity = make_permanent(linears)
    log.info("compress: pruned encoder Linear weights are %.1f%% zeros", 100 * sparsity)
    save_with_encoder(rec, job, pruned_linear_sparsity=sparsity)


def build_distilled(job: Job) -> None:
    rec = Recommender.load(job.source)
    tokens = rec.model.tokenize(job.data.texts)
    targets = teacher_targets(rec, tokens)
    n_layers = student_layers(rec.encoder, job.cfg["student_layers"])
    rec.encoder = make_student(rec.encoder, n_layers)
    fit_to_teacher(rec, targets, tokens, job.cfg, job.cfg["distill_epochs"], job.seed)
    save_with_encoder(rec, job, distilled_layers=n_layers)


Builder = Callable[[Job], None]
BUILDERS: dict[str, Builder] = {
    REFERENCE: build_fp32,
    INT8: build_int8_dynamic,
    ONNX_FP32: lambda job: build_onnx(job, quantized=False),
    ONNX_INT8: lambda job: build_onnx(job, quantized=True),
    "pruned": build_pruned,
    "distilled": build_distilled,
    "item_table_fp16": build_item_table_fp16,
    "item_table_int8": build_item_table_int8,
}
NEEDS_ENCODER = {INT8, ONNX_FP32, ONNX_INT8, "pruned", "distilled"}


def check_params(cfg: dict) -> None:
    unknown = [name for name in cfg["variants"] if name not in BUILDERS]
    if unknown:
        raise ParamsError(f"compress.variants names unknown variants {unknown}; choose from {sorted(BUILDERS)}")
    if cfg["between_searches"] not in ("chosen", "all"):
        raise ParamsError(
            f"compress.between_searches={cfg['between_searches']!r} is unknown; use chosen (fp32 and the last "
            "search night's variant) or all (every variant every night)"
        )
    if cfg["max_ndcg_drop"] < 0:
        raise ParamsError(
            f"compress.max_ndcg_drop={cfg['max_ndcg_drop']} is negative, so not even the fp32 "
            "reference would qualify; set it to 0 (no loss allowed) or more"
        )
    for key in (
        "latency_calls",
        "latency_block_calls",
        "throughput_items",
        "timing_rounds",
        "student_layers",
        "distill_batch_size",
    ):
        if cfg[key] < 1:
            raise ParamsError(f"compress.{key}={cfg[key]} must be at least 1")
    if not 0 < cfg["prune_amount"] < 1:
        raise ParamsError(
            f"compress.prune_amount={cfg['prune_amount']} must be a share strictly between 0 and 1 "
            "(e.g. 0.5 zeroes half of every encoder weight matrix)"
        )


def variant_names(cfg: dict, has_encoder: bool, only: str | None = None) -> list[str]:
    """fp32 and compress.variants (or fp32 and `only`), less what needs an encoder the model lacks."""
    wanted: list[str] = [only] if only is not None and only in cfg["variants"] else cfg["variants"]
    names = [REFERENCE] + [n for n in wanted if n != REFERENCE]
    skipped = [n for n in names if n in NEEDS_ENCODER and not has_encoder]
    if skipped:
        log.warning("skipping %s: the model has no text encoder (train.use_text=false)", skipped)
    return [n for n in names if n not in skipped]


def build_and_measure(params: dict, root: Path, out: Path, only: str | None = None) -> tuple[dict[str, dict], dict]:
    """Every variant (or fp32 and `only`) built under `out`, reloaded the way serving loads it, and measured.

    Returns ({variant: measurements}, how they were judged). One variant is built and scored at a time;
    then all are loaded together for the interleaved timing (model/measuring.py), so memory holds every
    variant at once for that part (about the sum of their sizes on disk).
    """
    cfg = params["compress"]
    source = root / C.MODEL_DIR
    reference = Recommender.load(source)  # fails with a clear message if train has not run
    data = load_eval_data(root, reference.item_ids)
    names = variant_names(cfg, has_encoder=reference.encoder is not None, only=only)
    if any(name in NEEDS_ENCODER for name in names):
        check_stored_table(reference, data)
    del reference
    sizes: dict[str, float] = {}
    per_user: dict[str, np.ndarray] = {}
    for name in names:
        log.info("compress: building and scoring %s", name)
        started = time.perf_counter()
        BUILDERS[name](Job(source=source, out=out / name, data=data, cfg=cfg, seed=int(params["seed"])))
        sizes[name] = io.dir_size_mb(out / name)
        per_user[name] = user_ndcg(Recommender.load(out / name), data)
        log.info(
            "compress: %s built and scored in %.0f s: %.1f MB, valid NDCG@10 %.4f",
            name,
            time.perf_counter() - started,
            sizes[name],
            float(per_user[name].mean()),
        )
        gc.collect()  # one variant's encoder at a time in memory while building
    log.info("compress: timing %s interleaved", ", ".join(names))
    timed = speed({name: Recommender.load(out / name) for name in names}, data, cfg)
    judged = judge(
        per_user,
        cfg["max_ndcg_drop"],
        params["evaluate"]["bootstrap_resamples"],
        params["evaluate"]["ci_level"],
        int(params["seed"]),
    )
    variants = {name: {"size_mb": sizes[name], **timed[name], **judged[name]} for name in names}
    for name, m in variants.items():
        log.info("compress: %s %s", name, json.dumps(m))
    return variants, method(params, len(data.task))

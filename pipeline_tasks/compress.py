"""Stage `compress`: smaller/faster variants of the trained model, measured side by side.

    python -m pipeline_tasks.compress --root DIR

From models/model it writes models/compressed/<variant>/ for each name in
`compress.variants` (fp32 is always built: it is the reference):

| variant | item tower | item table |
|---|---|---|
| `fp32` | the trained model unchanged | float32 |
| `int8_dynamic` | torch.ao dynamic int8 of the encoder's Linear layers (embeddings stay fp32) | recomputed |
| `onnx_fp32` | the encoder exported to ONNX, run by onnxruntime | recomputed |
| `onnx_int8` | that ONNX graph dynamically quantised by onnxruntime: MatMul *and* Gather (word embeddings) int8 | recomputed |
| `pruned` | `prune_amount` of every encoder Linear weight zeroed by magnitude, then a short recovery fine-tune | recomputed |
| `distilled` | a student encoder of `student_layers` of the teacher's layers, trained to reproduce the teacher's text vectors | recomputed |
| `item_table_fp16` | unchanged | float16 on disk |
| `item_table_int8` | unchanged | int8 + one float32 scale per row on disk |

Each variant is measured in the same run: size on disk, CPU latency p50/p99 of one
recommendation (user tower + top-K over the item table), item-encoding throughput (median of
`timing_rounds`), validation NDCG@10 (full ranking, train items excluded) and its relative
drop vs fp32. `chosen` is the smallest (then fastest) variant whose drop is within
`compress.max_ndcg_drop`; its name is also written to models/compressed/chosen.txt.

Loading: `load_variant(dir)` loads any of them. Variants the plain `model.Recommender.load`
cannot read (an int8 / ONNX encoder, an int8 item table) carry `encoder_quantization` in
config.json (the encoder's storage format: int8_dynamic, onnx_fp32, onnx_int8, or fp32 when
only the table is special), which is what makes `Recommender.load` hand them to
`load_variant`. `pruned`, `distilled` and `item_table_fp16` are plain model directories.

Pruning and distillation recover against the fp32 model's own text vectors (projected
pooled encoder output): the compressed tower should reproduce the trained one, and that needs
only the catalogue texts, not another pass over the interactions.

The torch.ao quantiser is deprecated in torch 2.13 in favour of torchao (GPU-oriented, not a
dependency here); onnxruntime's dynamic quantisation is the supported CPU route, and the one
that also quantises the word-embedding matrix (most of MiniLM's weights).
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
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline_tasks import constants as C
from pipeline_tasks import dataset, io, tracking
from pipeline_tasks import metrics as M
from pipeline_tasks import model as model_lib
from pipeline_tasks.cli import stage_main
from pipeline_tasks.errors import ParamsError, PipelineError

log = logging.getLogger(__name__)

REFERENCE = "fp32"
QUANTIZATION_KEY = "encoder_quantization"  # model.Recommender.load dispatches on it
TABLE_FORMAT_KEY = "item_table_format"
INT8 = "int8_dynamic"
ONNX_FP32 = "onnx_fp32"
ONNX_INT8 = "onnx_int8"
TABLE_INT8 = "int8_rowwise"
INT8_STATE_FILE = "int8_state_dict.pt"
ONNX_FILE = "model.onnx"
TABLE_SCALE_FILE = "item_table_scale.npy"
CHOSEN_FILE = "chosen.txt"
K = 10
NDCG = f"ndcg@{K}"
REPORT = Path(C.REPORTS_DIR) / "compress.md"


# --- torch int8 -------------------------------------------------------------------------------

@contextlib.contextmanager
def quiet_quantization() -> Iterator[None]:
    """Silence torch.ao's deprecation notices (quantize_dynamic, qint8 tensors, TypedStorage on load).

    They announce a future removal we know about (see the module docstring); any other
    warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*(torch\.ao\.quantization|quantized tensor).*deprecated")
        warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated")
        yield


def quantize_int8(encoder: nn.Module) -> nn.Module:
    """A dynamically int8-quantised copy of the encoder (Linear layers only; embeddings stay fp32)."""
    with quiet_quantization():
        return torch.ao.quantization.quantize_dynamic(encoder.cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def save_int8_encoder(encoder: nn.Module, tokenizer, encoder_dir: Path) -> None:
    """HF config + tokenizer + the quantised state dict (no fp32 weights)."""
    encoder_dir.mkdir(parents=True, exist_ok=True)
    encoder.config.save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    torch.save(encoder.state_dict(), encoder_dir / INT8_STATE_FILE)


def encoder_skeleton(encoder_dir: Path) -> nn.Module:
    """The HF encoder's architecture from its config, with untrained weights."""
    from transformers import AutoConfig, AutoModel

    return AutoModel.from_config(AutoConfig.from_pretrained(str(encoder_dir), local_files_only=True))


def load_int8_encoder(encoder_dir: Path, skeleton: nn.Module | None = None) -> nn.Module:
    """Rebuild the quantised encoder: skeleton from the HF config, quantised, saved state loaded."""
    encoder = quantize_int8(skeleton if skeleton is not None else encoder_skeleton(encoder_dir))
    with quiet_quantization():
        state = torch.load(encoder_dir / INT8_STATE_FILE, map_location="cpu", weights_only=True)
    encoder.load_state_dict(state)
    return encoder.eval()


# --- ONNX ---------------------------------------------------------------------------------------

class HiddenStates(nn.Module):
    """An HF encoder as a plain tensor function (what the ONNX exporter traces)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class OnnxEncoder(nn.Module):
    """An onnxruntime session behind the HF encoder interface the item tower calls.

    A module without parameters, so it can take the HF encoder's place in ItemTower;
    `encoder(input_ids=..., attention_mask=...).last_hidden_state` as usual.
    """

    def __init__(self, path: Path, num_threads: int = 0):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Same thread budget as torch, so the variants are compared on equal terms.
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        feeds = {"input_ids": input_ids.cpu().numpy().astype(np.int64),
                 "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        (hidden,) = self.session.run(None, feeds)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))


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


def export_onnx(encoder: nn.Module, tokenizer, max_text_len: int, path: Path) -> None:
    """Dynamo export with dynamic batch and sequence axes, one self-contained file."""
    length = max(2, max_text_len)  # a length of 1 would be specialised into the graph
    example = tokenizer(["an example item", "another example item text"], truncation=True, max_length=length,
                        padding="max_length", return_tensors="pt")
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_onnx():
            torch.onnx.export(HiddenStates(encoder.cpu().eval()), (example["input_ids"], example["attention_mask"]),
                              str(path), input_names=["input_ids", "attention_mask"],
                              output_names=["last_hidden_state"], dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
    except Exception as err:  # the exporter raises many types; all mean "this encoder does not export"
        raise PipelineError(f"ONNX export of the {type(encoder).__name__} encoder failed ({type(err).__name__}: "
                            f"{str(err)[:300]}); remove onnx_fp32/onnx_int8 from compress.variants") from err


def quantize_onnx_int8(fp32_path: Path, int8_path: Path, per_channel: bool) -> None:
    """onnxruntime dynamic quantisation: int8 weights for MatMul and Gather (the embedding tables)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_onnx():
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=["MatMul", "Gather"])


# --- pruning and distillation -----------------------------------------------------------------

def layer_list(encoder: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent, attribute, layers) of the encoder's transformer blocks (BERT, DistilBERT, others)."""
    for path in ("encoder.layer", "transformer.layer", "layers"):
        parent: Any = encoder
        *heads, attr = path.split(".")
        for part in heads:
            parent = getattr(parent, part, None)
        layers = getattr(parent, attr, None) if parent is not None else None
        if isinstance(layers, nn.ModuleList) and len(layers):
            return parent, attr, layers
    raise PipelineError(f"cannot find the transformer layers of {type(encoder).__name__} to build a student; "
                        "remove `distilled` from compress.variants")


def make_student(teacher: nn.Module, n_layers: int) -> nn.Module:
    """A copy of the teacher keeping n evenly spaced layers (first and last included)."""
    student = copy.deepcopy(teacher)
    parent, attr, layers = layer_list(student)
    keep = sorted({int(round(i)) for i in np.linspace(0, len(layers) - 1, n_layers)})
    setattr(parent, attr, nn.ModuleList(layers[i] for i in keep))
    for key in ("num_hidden_layers", "n_layers"):  # BERT-style / DistilBERT-style config names
        if hasattr(student.config, key):
            setattr(student.config, key, len(keep))
    return student


def student_layers(teacher: nn.Module, wanted: int) -> int:
    """`compress.student_layers`, but always fewer than the teacher has (a tiny teacher gets L-1)."""
    total = len(layer_list(teacher)[2])
    n = min(wanted, total - 1)
    if n < 1:
        raise PipelineError(f"the encoder has {total} layer(s): a student needs fewer, so `distilled` cannot be "
                            "built; remove it from compress.variants")
    if n != wanted:
        log.warning("compress: the encoder has %d layers, so the student gets %d (not %d)", total, n, wanted)
    return n


def prune_linear_weights(encoder: nn.Module, amount: float) -> list[nn.Module]:
    """Zero the smallest-|w| share of every Linear weight (masks stay on until `make_permanent`)."""
    from torch.nn.utils import prune

    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    for module in linears:
        prune.l1_unstructured(module, "weight", amount=amount)
    return linears


def make_permanent(linears: list[nn.Module]) -> float:
    """Fold the masks into the weights; returns the share of zero weights."""
    from torch.nn.utils import prune

    zeros = total = 0
    for module in linears:
        prune.remove(module, "weight")
        zeros += int((module.weight == 0).sum())
        total += module.weight.numel()
    return zeros / max(total, 1)


def text_vectors(tower: model_lib.ItemTower, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """(n, dim) projected pooled text: the item tower's text part, before the ID embedding."""
    return tower.projection(tower.pooled(tokens["input_ids"], tokens["attention_mask"]))


def fit_to_teacher(rec: model_lib.Recommender, targets: torch.Tensor, tokens: dict[str, torch.Tensor],
                   cfg: dict, epochs: int, seed: int) -> float:
    """Train rec's encoder so its text vectors match `targets` (MSE); projection and IDs stay fixed.

    Returns the last epoch's mean loss. Dropout is off: this is regression onto fixed targets.
    """
    tower = rec.model.item_tower
    tower.projection.requires_grad_(False)
    encoder = tower.encoder.train(False).requires_grad_(True)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=cfg["distill_lr"],
                                  weight_decay=0.0)  # no pull towards zero: the start is the teacher
    generator = torch.Generator().manual_seed(seed)
    n, batch, loss_sum = len(targets), cfg["distill_batch_size"], 0.0
    for epoch in range(epochs):
        order, loss_sum = torch.randperm(n, generator=generator), 0.0
        for start in range(0, n, batch):
            rows = order[start:start + batch]
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
class EvalData:
    """What every measurement reads, prepared once."""

    task: dataset.EvalTask  # validation users, targets, train items to exclude
    histories: list[list[str]]  # per task user: train history as item ids
    columns: np.ndarray  # model column of each split item (split order)
    texts: list[str]  # item texts in the model's item order (what the encoder read in training)


def load_eval_data(root: Path, model_item_ids: list[str]) -> EvalData:
    from pipeline_tasks.train import item_text  # the one definition of an item's text

    split = dataset.load_split(root)
    task = dataset.eval_task(split, "valid")
    if not len(task):
        raise PipelineError(f"{root / C.DATA_SPLIT / 'valid'} is empty, so no variant can be judged: re-run split")
    text_of = {item: item_text(row) for item, row in zip(split.item_ids, split.items.to_dict(orient="records"))}
    where = {item: j for j, item in enumerate(model_item_ids)}
    missing = [item for item in split.item_ids if item not in where]
    unknown = [item for item in model_item_ids if item not in text_of]
    if missing or unknown:
        raise PipelineError(f"models/model and data/split/items disagree ({len(missing)} split items unknown to the "
                            f"model, {len(unknown)} model items not in the split): re-run the train stage")
    return EvalData(task=task, histories=[[split.item_ids[i] for i in seen] for seen in task.seen],
                    columns=np.array([where[item] for item in split.item_ids], dtype=np.int64),
                    texts=[text_of[item] for item in model_item_ids])


@dataclass(frozen=True)
class Job:
    """One variant to build: where from, where to, what with."""

    source: Path  # models/model
    out: Path  # models/compressed/<variant>
    data: EvalData
    cfg: dict  # params["compress"]
    seed: int


def copy_model(job: Job, with_encoder: bool = True, **config_updates: Any) -> dict:
    """The source model directory copied to job.out (optionally without encoder/), config updated."""
    config = io.read_json(job.source / model_lib.CONFIG_FILE)
    ignore = None if with_encoder else shutil.ignore_patterns(config["encoder_dir"])
    shutil.copytree(job.source, job.out, ignore=ignore)
    config = {**config, **config_updates}
    io.write_json(config, job.out / model_lib.CONFIG_FILE)
    return config


def recomputed_table(rec: model_lib.Recommender, data: EvalData) -> np.ndarray:
    """The catalogue's item vectors through rec's (compressed) item tower."""
    return rec.encode_items(data.texts, item_idx=list(range(len(rec.item_ids)))).astype(np.float32)


def build_fp32(job: Job) -> None:
    shutil.copytree(job.source, job.out)


def build_item_table_fp16(job: Job) -> None:
    config = copy_model(job, **{TABLE_FORMAT_KEY: "fp16"})
    table = np.load(job.out / config["item_table_file"])
    np.save(job.out / config["item_table_file"], table.astype(np.float16))  # upcast by np.asarray on load


def quantize_table_int8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: row * 127 / max|row|; returns (int8 table, (n, 1) float32 scales)."""
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(table / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def build_item_table_int8(job: Job) -> None:
    config = copy_model(job, **{TABLE_FORMAT_KEY: TABLE_INT8, "item_table_scale_file": TABLE_SCALE_FILE,
                                QUANTIZATION_KEY: "fp32"})  # the plain loader cannot read an int8 table
    table, scale = quantize_table_int8(np.load(job.out / config["item_table_file"]))
    np.save(job.out / config["item_table_file"], table)
    np.save(job.out / TABLE_SCALE_FILE, scale)


def build_int8_dynamic(job: Job) -> None:
    rec = model_lib.Recommender.load(job.source)
    rec.encoder = quantize_int8(rec.encoder)
    table = recomputed_table(rec, job.data)
    config = copy_model(job, with_encoder=False, **{QUANTIZATION_KEY: INT8})
    save_int8_encoder(rec.encoder, rec.model.tokenizer, job.out / config["encoder_dir"])
    np.save(job.out / config["item_table_file"], table)


def build_onnx(job: Job, quantized: bool) -> None:
    rec = model_lib.Recommender.load(job.source)
    config = copy_model(job, with_encoder=False, **{QUANTIZATION_KEY: ONNX_INT8 if quantized else ONNX_FP32})
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


def teacher_targets(rec: model_lib.Recommender, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fp32 model's text vectors of the whole catalogue: what pruning/distillation must keep."""
    tower = rec.model.item_tower
    with torch.no_grad():
        pooled = rec.model.encode_pooled(tokens, desc="teacher vectors")
        return tower.projection(pooled)


def save_with_encoder(rec: model_lib.Recommender, job: Job, **config_updates: Any) -> None:
    """A plain model directory (fp32 HF encoder) holding rec's encoder and a recomputed table."""
    table = recomputed_table(rec, job.data)
    config = copy_model(job, with_encoder=False, **config_updates)
    rec.encoder.save_pretrained(job.out / config["encoder_dir"])
    rec.model.tokenizer.save_pretrained(job.out / config["encoder_dir"])
    np.save(job.out / config["item_table_file"], table)


def build_pruned(job: Job) -> None:
    rec = model_lib.Recommender.load(job.source)
    tokens = rec.model.tokenize(job.data.texts)
    targets = teacher_targets(rec, tokens)
    linears = prune_linear_weights(rec.encoder, job.cfg["prune_amount"])
    fit_to_teacher(rec, targets, tokens, job.cfg, job.cfg["recovery_epochs"], job.seed)
    sparsity = make_permanent(linears)
    log.info("compress: pruned encoder Linear weights are %.1f%% zeros", 100 * sparsity)
    save_with_encoder(rec, job, pruned_linear_sparsity=sparsity)


def build_distilled(job: Job) -> None:
    rec = model_lib.Recommender.load(job.source)
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


# --- loading ------------------------------------------------------------------------------------

def load_item_table(variant_dir: Path, config: dict) -> np.ndarray:
    """The float32 item table of any variant (an int8 one dequantised with its row scales)."""
    table = np.load(variant_dir / config["item_table_file"])
    if config.get(TABLE_FORMAT_KEY) == TABLE_INT8:
        return table.astype(np.float32) * np.load(variant_dir / config["item_table_scale_file"])
    return table.astype(np.float32)


def load_variant(variant_dir: str | Path, device: str = "cpu") -> model_lib.Recommender:
    """A Recommender from any variant directory (plain ones through Recommender.load)."""
    from transformers import AutoTokenizer

    variant_dir = Path(variant_dir).resolve()
    config = io.read_json(variant_dir / model_lib.CONFIG_FILE)
    encoder_format = config.get(QUANTIZATION_KEY)
    if encoder_format is None:
        return model_lib.Recommender.load(variant_dir, device=device)
    known = (REFERENCE, INT8, ONNX_FP32, ONNX_INT8)
    if encoder_format not in known:
        raise PipelineError(f"{variant_dir} has {QUANTIZATION_KEY}={encoder_format!r}, which this version cannot "
                            f"load (known: {', '.join(known)}); re-run the compress stage")
    if encoder_format != REFERENCE and device != "cpu":
        raise PipelineError(f"{variant_dir} holds a {encoder_format} encoder, which runs on the CPU only "
                            f"(asked for {device!r}); load it with device='cpu' or use the fp32 variant")
    encoder_dir = variant_dir / config["encoder_dir"]
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    if encoder_format == REFERENCE:
        encoder, _ = model_lib.load_encoder(encoder_dir)
    elif encoder_format == INT8:
        encoder = encoder_skeleton(encoder_dir)  # swapped for the int8 one after the towers load
    else:
        encoder = OnnxEncoder(encoder_dir / ONNX_FILE)
    arch = {key: config[key] for key in model_lib.ARCH_KEYS}
    item_ids = io.read_json(variant_dir / config["item_ids_file"])
    net = model_lib.TextSeqRec(arch, item_ids, None, encoder, tokenizer, config["hidden_size"])
    # The towers' weights go in while an int8 encoder is still a float skeleton (a quantised
    # Linear insists on its own keys even with strict=False); then the int8 encoder replaces it.
    weights = torch.load(variant_dir / config["weights_file"], map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith(model_lib.ENCODER_PREFIX) for k in missing), (missing, unexpected)
    if encoder_format == INT8:
        net.item_tower.encoder = load_int8_encoder(encoder_dir, encoder)
    return model_lib.Recommender(net.to(device), load_item_table(variant_dir, config), device)


# --- measuring --------------------------------------------------------------------------------

def latency_ms(rec: model_lib.Recommender, histories: list[list[str]], calls: int, warmup: int) -> tuple[float, float]:
    """p50 and p99 (ms) of one single-user recommendation: user tower + top-K over the item table."""
    for i in range(warmup):
        rec.recommend([histories[i % len(histories)]], K)
    times = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        rec.recommend([histories[i % len(histories)]], K)
        times[i] = time.perf_counter() - started
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def encode_items_per_s(rec: model_lib.Recommender, texts: list[str], n_items: int, rounds: int = 1) -> float:
    """Items per second through the item tower (encoder + projection + ID embedding), median of rounds.

    The median: on a shared CPU one round can land on a busy moment.
    """
    n = min(n_items, len(texts))
    idx = list(range(n))
    rec.encode_items(texts[:min(8, n)], item_idx=idx[:min(8, n)])  # warm-up: allocations, lazy init
    speeds = []
    for _ in range(rounds):
        started = time.perf_counter()
        rec.encode_items(texts[:n], item_idx=idx)
        speeds.append(n / max(time.perf_counter() - started, 1e-9))
    return float(np.median(speeds))


def valid_ndcg(rec: model_lib.Recommender, data: EvalData) -> float:
    """NDCG@10, full ranking of every validation user, train items excluded (metrics.py protocol)."""
    position = {u: j for j, u in enumerate(data.task.users)}

    def score_users(users: np.ndarray) -> np.ndarray:
        scores = rec.scores([data.histories[position[u]] for u in users])
        return np.asarray(scores, dtype=np.float32)[:, data.columns]

    ranked = dataset.rank_in_batches(score_users, data.task, K, batch_size=256, desc="validating")
    return M.ndcg(ranked, data.task.targets, K, M.EvalContext(n_items=len(data.columns)))


def measure(rec: model_lib.Recommender, variant_dir: Path, data: EvalData, cfg: dict) -> dict[str, float]:
    p50, p99 = latency_ms(rec, data.histories, cfg["latency_calls"], cfg["warmup_calls"])
    return {
        "size_mb": io.dir_size_mb(variant_dir),
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "encode_items_per_s": encode_items_per_s(rec, data.texts, cfg["throughput_items"], cfg["timing_rounds"]),
        NDCG: valid_ndcg(rec, data),
    }


def relative_drop(reference: float, value: float) -> float:
    """(reference - value) / reference; 0 when the reference is 0 (nothing to lose)."""
    return (reference - value) / reference if reference > 0 else 0.0


def choose(variants: dict[str, dict], max_drop: float) -> str:
    """The smallest, then fastest, variant within the quality bound (the reference always is)."""
    allowed = [name for name, m in variants.items() if m["ndcg_drop_rel"] <= max_drop]
    assert REFERENCE in allowed, "the reference has no drop"
    return min(allowed, key=lambda name: (variants[name]["size_mb"], variants[name]["latency_p50_ms"]))


# --- the stage --------------------------------------------------------------------------------

def check_params(cfg: dict) -> None:
    unknown = [name for name in cfg["variants"] if name not in BUILDERS]
    if unknown:
        raise ParamsError(f"compress.variants names unknown variants {unknown}; choose from {sorted(BUILDERS)}")
    if cfg["max_ndcg_drop"] < 0:
        raise ParamsError(f"compress.max_ndcg_drop={cfg['max_ndcg_drop']} is negative, so not even the fp32 "
                          "reference would qualify; set it to 0 (no loss allowed) or more")
    for key in ("latency_calls", "throughput_items", "timing_rounds", "student_layers", "distill_batch_size"):
        if cfg[key] < 1:
            raise ParamsError(f"compress.{key}={cfg[key]} must be at least 1")
    if not 0 < cfg["prune_amount"] < 1:
        raise ParamsError(f"compress.prune_amount={cfg['prune_amount']} must be a share strictly between 0 and 1 "
                          "(e.g. 0.5 zeroes half of every encoder weight matrix)")


def variant_names(cfg: dict, has_encoder: bool) -> list[str]:
    names = [REFERENCE] + [n for n in cfg["variants"] if n != REFERENCE]
    skipped = [n for n in names if n in NEEDS_ENCODER and not has_encoder]
    if skipped:
        log.warning("skipping %s: the model has no text encoder (train.use_text=false)", skipped)
    return [n for n in names if n not in skipped]


def report(variants: dict[str, dict], chosen: str, path: Path) -> None:
    """The trade-off table as Markdown, for people and the MLflow run."""
    keys = ["size_mb", "latency_p50_ms", "latency_p99_ms", "encode_items_per_s", NDCG, "ndcg_drop_rel"]
    lines = ["| variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in variants.items():
        mark = " (chosen)" if name == chosen else ""
        lines.append(f"| {name}{mark} | " + " | ".join(f"{m[k]:.4g}" for k in keys) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Compression trade-offs (validation split)\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


def check_stored_table(reference: model_lib.Recommender, data: EvalData, sample: int = 64,
                       tolerance: float = 1e-3) -> float:
    """Warn when models/model's item table is not what its own item tower computes.

    Variants that re-encode the catalogue are compared with the stored table; a gap between
    the two would be charged to compression. Checks the first `sample` items (cheap).
    Returns the largest absolute difference.
    """
    n = min(sample, len(data.texts))
    recomputed = reference.encode_items(data.texts[:n], item_idx=list(range(n)))
    gap = float(np.abs(recomputed - reference.item_table[:n]).max())
    if gap > tolerance:
        log.warning("compress: models/model/item_table.npy differs from what its saved encoder computes "
                    "(max |difference| %.3g over %d items): every re-encoded variant's NDCG drop includes this "
                    "gap; the train stage should save the table its saved weights produce", gap, n)
    return gap


def build_and_measure(params: dict, root: Path, out: Path) -> dict[str, dict]:
    """Every variant built under `out`, reloaded the way serving loads it, and measured."""
    cfg = params["compress"]
    source = root / C.MODEL_DIR
    reference = model_lib.Recommender.load(source)  # fails with a clear message if train has not run
    data = load_eval_data(root, reference.item_ids)
    names = variant_names(cfg, has_encoder=reference.encoder is not None)
    if any(name in NEEDS_ENCODER for name in names):
        check_stored_table(reference, data)
    del reference
    variants: dict[str, dict] = {}
    for name in names:
        log.info("compress: building and measuring %s", name)
        started = time.perf_counter()
        BUILDERS[name](Job(source=source, out=out / name, data=data, cfg=cfg, seed=int(params["seed"])))
        variants[name] = measure(load_variant(out / name), out / name, data, cfg)
        log.info("compress: %s built and measured in %.0f s: %s", name, time.perf_counter() - started,
                 json.dumps(variants[name]))
        gc.collect()  # one variant's encoder at a time in memory
    for m in variants.values():
        m["ndcg_drop_rel"] = relative_drop(variants[REFERENCE][NDCG], m[NDCG])
    return variants


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    cfg = params["compress"]
    check_params(cfg)
    if cfg["num_threads"] > 0:
        torch.set_num_threads(cfg["num_threads"])
    with io.atomic_dir(root / C.COMPRESSED_DIR) as out:
        variants = build_and_measure(params, root, out)
        chosen = choose(variants, cfg["max_ndcg_drop"])
        (out / CHOSEN_FILE).write_text(chosen + "\n", encoding="utf-8")
    report(variants, chosen, root / REPORT)
    tracking.log_artifact(root / REPORT, artifact_path="compress")
    log.info("compress: chose %s %s", chosen, json.dumps(variants[chosen]))
    return {"variants": variants, "reference": REFERENCE, "chosen": chosen}


def main(argv: list[str] | None = None) -> int:
    return stage_main("compress", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Stage `compress`: smaller/faster variants of the trained model, measured side by side.

    python -m pipeline_tasks.compress --root DIR

From models/model it writes models/compressed/<variant>/ (the layout of model.save) for:
- `fp32`: the trained model unchanged, the reference every other variant is compared to;
- `int8_dynamic`: the text encoder's Linear layers dynamically quantised to int8 (weights
  int8, activations quantised per batch at run time); the item table is recomputed with the
  quantised encoder, since that is where the quality change shows;
- `item_table_fp16`: the precomputed item table stored as float16 (upcast when loaded).

and, for each, measures size on disk, CPU latency of one recommendation (user tower + top-K
over the item table), item-encoding throughput, and validation NDCG@10 (full ranking,
history = train, train items excluded) with its relative drop vs fp32. `chosen` is the
smallest (then fastest) variant whose drop is within `compress.max_ndcg_drop`; its name is
also written to models/compressed/chosen.txt.

Int8 on disk: a quantised module cannot be written by `save_pretrained` (its packed weights
are not plain tensors), and keeping the fp32 weights plus a "quantise on load" flag would
leave the variant as large as fp32. So encoder/ holds the HF config and tokenizer and
`int8_state_dict.pt` (the quantised module's state dict, loadable with weights_only=True),
and config.json says `"encoder_quantization": "int8_dynamic"`. `load_variant` rebuilds it:
an encoder skeleton from the config, quantised the same way, then the saved state loaded.

Quantiser: `torch.ao.quantization.quantize_dynamic` is deprecated in torch 2.13 in favour of
torchao, whose int8 kernels target GPUs and which is not a dependency here; onnxruntime's
dynamic quantisation is the other supported CPU route. Until one of them replaces it, the
deprecation warnings are silenced only around the quantise/load calls (see `quiet_quantization`).
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from pipeline_tasks import constants as C
from pipeline_tasks import dataset, io, tracking
from pipeline_tasks import metrics as M
from pipeline_tasks import model as model_lib
from pipeline_tasks.cli import stage_main
from pipeline_tasks.errors import ParamsError, PipelineError

log = logging.getLogger(__name__)

REFERENCE = "fp32"
QUANTIZATION_KEY = "encoder_quantization"
INT8 = "int8_dynamic"
INT8_STATE_FILE = "int8_state_dict.pt"
CHOSEN_FILE = "chosen.txt"
K = 10
NDCG = f"ndcg@{K}"
REPORT = Path(C.REPORTS_DIR) / "compress.md"


# --- int8 -------------------------------------------------------------------------------------

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


def load_variant(variant_dir: str | Path, device: str = "cpu") -> model_lib.Recommender:
    """A Recommender from any variant directory (plain ones through Recommender.load)."""
    variant_dir = Path(variant_dir).resolve()
    config = io.read_json(variant_dir / model_lib.CONFIG_FILE)
    quantization = config.get(QUANTIZATION_KEY)
    if quantization is None:
        return model_lib.Recommender.load(variant_dir, device=device)
    if quantization != INT8 or device != "cpu":
        raise PipelineError(f"{variant_dir} holds a {quantization} encoder, which loads on the CPU only "
                            f"(asked for {device!r}); load it with device='cpu' or use the fp32 variant")
    from transformers import AutoTokenizer

    encoder_dir = variant_dir / config["encoder_dir"]
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir), local_files_only=True)
    arch = {key: config[key] for key in model_lib.ARCH_KEYS}
    item_ids = io.read_json(variant_dir / config["item_ids_file"])
    skeleton = encoder_skeleton(encoder_dir)
    net = model_lib.TextSeqRec(arch, item_ids, None, skeleton, tokenizer, config["hidden_size"])
    # The towers' weights go in while the encoder is still a float skeleton (a quantised
    # Linear insists on its own keys even with strict=False); then the int8 encoder replaces it.
    weights = torch.load(variant_dir / config["weights_file"], map_location="cpu", weights_only=True)
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith(model_lib.ENCODER_PREFIX) for k in missing), (missing, unexpected)
    net.item_tower.encoder = load_int8_encoder(encoder_dir, skeleton)
    return model_lib.Recommender(net, np.load(variant_dir / config["item_table_file"]), device)


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


def build_fp32(source: Path, out: Path, data: EvalData) -> None:
    shutil.copytree(source, out)


def build_item_table_fp16(source: Path, out: Path, data: EvalData) -> None:
    shutil.copytree(source, out)
    config = io.read_json(out / model_lib.CONFIG_FILE)
    table = np.load(out / config["item_table_file"])
    np.save(out / config["item_table_file"], table.astype(np.float16))


def build_int8_dynamic(source: Path, out: Path, data: EvalData) -> None:
    rec = model_lib.Recommender.load(source)
    rec.encoder = quantize_int8(rec.encoder)
    table = rec.encode_items(data.texts, item_idx=list(range(len(rec.item_ids))))
    config = io.read_json(source / model_lib.CONFIG_FILE)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(config["encoder_dir"]))
    save_int8_encoder(rec.encoder, rec.model.tokenizer, out / config["encoder_dir"])
    np.save(out / config["item_table_file"], table.astype(np.float32))
    io.write_json({**config, QUANTIZATION_KEY: INT8}, out / model_lib.CONFIG_FILE)


Builder = Callable[[Path, Path, EvalData], None]
BUILDERS: dict[str, Builder] = {
    "fp32": build_fp32,
    INT8: build_int8_dynamic,
    "item_table_fp16": build_item_table_fp16,
}
NEEDS_ENCODER = {INT8}


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


def encode_items_per_s(rec: model_lib.Recommender, texts: list[str], n_items: int) -> float:
    """Items per second through the item tower (encoder + projection + ID embedding)."""
    n = min(n_items, len(texts))
    idx = list(range(n))
    rec.encode_items(texts[:min(8, n)], item_idx=idx[:min(8, n)])  # warm-up: allocations, lazy init
    started = time.perf_counter()
    rec.encode_items(texts[:n], item_idx=idx)
    return n / max(time.perf_counter() - started, 1e-9)


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
        "encode_items_per_s": encode_items_per_s(rec, data.texts, cfg["throughput_items"]),
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
    for key in ("latency_calls", "throughput_items"):
        if cfg[key] < 1:
            raise ParamsError(f"compress.{key}={cfg[key]} must be at least 1")


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


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    cfg = params["compress"]
    check_params(cfg)
    if cfg["num_threads"] > 0:
        torch.set_num_threads(cfg["num_threads"])
    source = root / C.MODEL_DIR
    reference = model_lib.Recommender.load(source)  # fails with a clear message if train has not run
    data = load_eval_data(root, reference.item_ids)
    names = variant_names(cfg, has_encoder=reference.encoder is not None)
    del reference
    variants: dict[str, dict] = {}
    with io.atomic_dir(root / C.COMPRESSED_DIR) as out:
        for name in names:
            log.info("compress: building and measuring %s", name)
            BUILDERS[name](source, out / name, data)
            variants[name] = measure(load_variant(out / name), out / name, data, cfg)
            gc.collect()  # one variant's encoder at a time in memory
        for m in variants.values():
            m["ndcg_drop_rel"] = relative_drop(variants[REFERENCE][NDCG], m[NDCG])
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

"""Warm nights: a new TextSeqRec that starts from a saved model (the champion) instead of from scratch.

What carries over, and why it is safe with a grown catalogue:
- the encoder: the saved directory holds the champion's encoder with its LoRA adapters merged in;
  it becomes the base that this night's fine-tune mode wraps again (fresh LoRA adapters start as a
  no-op, so the warm model's text vectors equal the champion's before the first step);
- the user tower and the text projection: copied as they are, the text whitening's statistics too
  (the projection learnt on them; tonight's catalogue does not refit them);
- the item-ID embedding: matched by item id, not by row, because tonight's catalogue is ordered
  anew and holds items the champion never saw. A new item's ID row starts at zero: its vector is
  its text alone, exactly how the champion would place it cold, until training gives it an ID part.
  An ID-only model started from text (`train.id_init: text`) has no text part to place it: the
  trainer puts its row where the champion's rows map its text (text_adaptor.ids_for_new_items).

Only a model of the same shape can seed another (`mismatch` says what differs); a compressed
variant whose encoder is not a plain fp32 Hugging Face model (int8, ONNX, a pruned or distilled
student) is not a faithful copy of the trained weights (`faithful_weights`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from pipeline_tasks.core import io
from pipeline_tasks.model import variants
from pipeline_tasks.model.towers import ARCH_DEFAULTS, CONFIG_FILE, ENCODER_PREFIX, TextSeqRec

# Keys that shape the weights: a champion differing in any of them cannot seed tonight's model.
SHAPE_KEYS = tuple(
    "dim user_layers user_heads max_seq_len use_text use_id_embedding adaptor_experts text_whitening".split()
)
ID_EMBEDDING = "item_tower.id_embedding.weight"
# Set by the compress stage on variants whose encoder is no longer the trained one.
REBUILT_ENCODER_KEYS = ("pruned_linear_sparsity", "distilled_layers")


def saved_config(model_dir: Path) -> dict:
    return io.read_json(Path(model_dir) / CONFIG_FILE)


def faithful_weights(config: dict) -> bool:
    """True when a saved model directory holds the trained fp32 weights (any item-table format)."""
    encoder_format = config.get(variants.QUANTIZATION_KEY) or variants.REFERENCE
    return encoder_format == variants.REFERENCE and not any(key in config for key in REBUILT_ENCODER_KEYS)


def mismatch(config: dict, train_cfg: dict) -> str | None:
    """Why a saved model cannot seed a model built from `train_cfg` (None: it can)."""
    differs = [
        f"{key} {saved} vs {train_cfg[key]}"
        for key in SHAPE_KEYS
        if (saved := config.get(key, ARCH_DEFAULTS.get(key))) != train_cfg[key]
    ]
    saved_encoder = (config.get("trained_with") or {}).get("encoder")
    if train_cfg["use_text"] and saved_encoder != train_cfg["encoder"]:
        differs.append(f"encoder {saved_encoder} vs {train_cfg['encoder']}")
    if not faithful_weights(config):
        differs.append("its encoder is a compressed copy (int8, ONNX, pruned or distilled), not the trained weights")
    return "; ".join(differs) or None


def weights_digest(model_dir: Path) -> str:
    """Identity of a saved model's weights (part of the training fingerprint: a resumed checkpoint must
    come from the same starting point)."""
    config = saved_config(model_dir)
    digest = hashlib.sha256()
    for name in (config["weights_file"], config["item_ids_file"]):
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()


def init_from(model: TextSeqRec, model_dir: Path) -> dict:
    """Copy a saved model's towers into `model` (built with the saved encoder as its base), IDs by item id.

    Returns how many items kept their ID row and how many start from text alone.
    """
    model_dir = Path(model_dir)
    config = saved_config(model_dir)
    saved = torch.load(model_dir / config["weights_file"], map_location="cpu", weights_only=True)
    saved_ids = io.read_json(model_dir / config["item_ids_file"])
    state = {key: value for key, value in saved.items() if not key.startswith(ENCODER_PREFIX)}
    kept = 0
    if ID_EMBEDDING in state:
        state[ID_EMBEDDING], kept = rows_by_item_id(state[ID_EMBEDDING], saved_ids, model.item_ids)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(key.startswith(ENCODER_PREFIX) for key in missing), (missing, unexpected)
    return {"items_kept": kept, "items_new": model.n_items - kept if ID_EMBEDDING in state else model.n_items}


def kept_items(model_dir: Path, item_ids: list[str]) -> torch.Tensor:
    """(n_items,) True for each item of `item_ids` the saved model has an ID row for."""
    saved = set(io.read_json(Path(model_dir) / saved_config(model_dir)["item_ids_file"]))
    return torch.tensor([item in saved for item in item_ids], dtype=torch.bool)


def rows_by_item_id(saved: torch.Tensor, saved_ids: list[str], item_ids: list[str]) -> tuple[torch.Tensor, int]:
    """An ID-embedding matrix in `item_ids` order: the saved row of every known item, zeros for new ones."""
    where = {item: row for row, item in enumerate(saved_ids)}
    rows = torch.zeros(len(item_ids), saved.shape[1], dtype=saved.dtype)
    known = [(i, where[item]) for i, item in enumerate(item_ids) if item in where]
    if known:
        new_rows, old_rows = (torch.as_tensor(list(column)) for column in zip(*known))
        rows[new_rows] = saved[old_rows]
    return rows, len(known)

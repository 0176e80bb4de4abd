"""The catalogue's pooled text, encoded once and kept across runs, keyed by each item's text hash.

Where: `data/encodings/<encoder key>.npz` under the project root (C.ENCODINGS_DIR): a persistent
local cache, not a DVC output and not in git. Nothing downstream reads it as data: deleting it costs
one re-encode of the catalogue, never a different model. One file per encoder key, i.e. per
(encoder weights, max_text_len, tokenizer, precision): a warm night's champion encoder or another
`train.max_text_len` gets its own file; the newest KEEP_FILES files are kept, older ones deleted.

Each file maps sha256(item text) -> the encoder's mean-pooled output (hidden_size floats). A night
encodes only the items whose text it has not seen with this encoder (new or edited items); the
train stage and every tune trial read the rest. The frozen and adaptor paths train on this table
alone; LoRA starts from it (its adapters are a no-op at step 0) and refreshes it after each epoch.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline_tasks.core import constants as C
from pipeline_tasks.model.towers import TextSeqRec, autocast_dtype

log = logging.getLogger(__name__)

KEEP_FILES = 8  # encoder keys kept (a key changes with each warm night's champion)
HASHES, VECTORS = "hashes", "vectors"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_path(root: Path, model: TextSeqRec, device: torch.device | str) -> Path:
    """This model's cache file: its base encoder's identity (towers.text_identity) and the precision
    of the encoding (bf16 on a GPU, fp32 on a CPU)."""
    assert model.text_cache_key is not None, "build_model sets the key of a text model"
    precision = str(autocast_dtype(device) or torch.float32).removeprefix("torch.")
    return Path(root) / C.ENCODINGS_DIR / f"{model.text_cache_key}-{precision}.npz"


def read_cache(path: Path) -> dict[str, np.ndarray]:
    """hash -> vector; an unreadable file is a cache miss (it is rewritten), never an error."""
    if not path.exists():
        return {}
    try:
        with np.load(path) as data:
            return dict(zip(data[HASHES].tolist(), data[VECTORS], strict=True))
    except (OSError, ValueError, KeyError) as err:
        log.warning("ignoring the unreadable text cache %s (%s): re-encoding", path, err)
        return {}


def write_cache(path: Path, vectors: dict[str, np.ndarray]) -> None:
    """Atomically (a tune worker may read it meanwhile), then drop the oldest files beyond KEEP_FILES."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, hashes=np.array(list(vectors)), vectors=np.stack(list(vectors.values())))
    os.replace(tmp, path)
    files = sorted(path.parent.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP_FILES:]:
        old.unlink(missing_ok=True)


def pooled_table(
    model: TextSeqRec,
    tokens: dict[str, torch.Tensor],
    texts: Sequence[str],
    root: Path,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, dict]:
    """(n_items, hidden) pooled text of the catalogue, encoding only texts the cache lacks.

    The model's encoder must still be the one its key was made from (before any training step).
    Returns the table on `device` and a report: items, encoded (this call's encoder passes), file.
    """
    path = cache_path(root, model, device)
    known = read_cache(path)
    hashes = [text_hash(text) for text in texts]
    first_row: dict[str, int] = {}
    for row, h in enumerate(hashes):
        if h not in known:
            first_row.setdefault(h, row)  # identical texts are encoded once
    if first_row:
        rows = torch.as_tensor(list(first_row.values()), dtype=torch.long)
        subset = {key: value[rows.to(value.device)] for key, value in tokens.items()}
        fresh = model.encode_pooled(subset, desc="encoding new item texts", device=device)
        assert fresh is not None, "only a text model has a text cache"
        known.update(zip(first_row, fresh.cpu().numpy(), strict=True))
        write_cache(path, known)
    log.info("item text: %d of %d items encoded, the rest read from %s", len(first_row), len(texts), path)
    table = torch.as_tensor(np.stack([known[h] for h in hashes]), dtype=torch.float, device=device)
    return table, {"items": len(texts), "encoded": len(first_row), "file": str(path)}

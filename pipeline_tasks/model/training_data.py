"""What TextSeqRec learns from: every user's train history cut into windows of max_seq_len + 1 items
(from the most recent backwards, overlapping by one item, so every transition is predicted once);
the user tower predicts the next item at every position. Validation ranks the full catalogue
for each user with a valid item, their train items excluded (the shared protocol of core/metrics.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.data import dataset


@dataclass
class TrainingData:
    item_ids: list[str]
    item_texts: list[str]
    inputs: torch.Tensor  # (n_seq, max_seq_len) left-padded item indices, pad = n_items
    targets: torch.Tensor  # (n_seq, max_seq_len) next item at each slot, -1 = none
    popularity: np.ndarray  # training interactions per item
    train_histories: list[np.ndarray]  # per user index, oldest first
    valid: dataset.EvalTask | None  # None when valid is part of the training data (a refit)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def digest(self) -> str:
        """Identifies the data a checkpoint was made from."""
        h = hashlib.sha256()
        valid = (self.valid.targets, self.valid.users) if self.valid is not None else ()
        for array in (self.inputs.numpy(), self.targets.numpy(), *valid):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update(json.dumps(self.item_ids).encode())
        h.update(json.dumps(self.item_texts).encode())
        return h.hexdigest()


def item_text(row: dict) -> str:
    """What the encoder reads: the title, then the description/genres text (which MovieLens'
    ingest already starts with the title: it is not read twice)."""
    title, text = (str(row.get(key) or "").strip() for key in (C.TITLE, C.TEXT))
    parts = [title, text[len(title) :].lstrip(" .") if title and text.startswith(title) else text]
    return ". ".join(part for part in parts if part and part.lower() != "nan")


def windows_of(history: np.ndarray, max_seq_len: int) -> list[np.ndarray]:
    """Windows of at most max_seq_len + 1 items from the end, overlapping by one (each transition once)."""
    windows, end = [], len(history)
    while end >= 2:
        start = max(0, end - max_seq_len - 1)
        windows.append(history[start:end])
        if start == 0:
            break
        end = start + 1
    return windows


def window_tensors(windows: list[np.ndarray], max_seq_len: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.full((len(windows), max_seq_len), pad, dtype=torch.long)
    targets = torch.full((len(windows), max_seq_len), -1, dtype=torch.long)
    for row, window in enumerate(windows):
        n = len(window) - 1
        inputs[row, max_seq_len - n :] = torch.as_tensor(window[:-1], dtype=torch.long)
        targets[row, max_seq_len - n :] = torch.as_tensor(window[1:], dtype=torch.long)
    return inputs, targets


def load_training_data(root: Path, max_seq_len: int, train_splits: tuple[str, ...] = ("train",)) -> TrainingData:
    """Training windows of the named splits; validation on 'valid' unless it is one of them (a refit)."""
    split = dataset.load_split(root)
    if len(split.train) == 0:
        raise PipelineError(f"{root / C.DATA_SPLIT / 'train'} has no interactions: re-run ingest, clean and split")
    histories = split.histories(train_splits)
    windows = [w for h in histories for w in windows_of(h, max_seq_len)]
    if not windows:
        raise PipelineError(
            "no user has two or more training interactions, so there is nothing to learn: "
            "check split.min_user_interactions and the clean stage's k-core filter"
        )
    inputs, targets = window_tensors(windows, max_seq_len, pad=split.n_items)
    texts = [item_text(row) for row in split.items.to_dict(orient="records")]
    return TrainingData(
        item_ids=split.item_ids,
        item_texts=texts,
        inputs=inputs,
        targets=targets,
        popularity=np.bincount(split.combined(train_splits).items, minlength=split.n_items).astype(np.float64),
        train_histories=histories,
        valid=None if "valid" in train_splits else dataset.eval_task(split, "valid"),
    )

"""Training checkpoints: atomic writes and the RNG states that make a resumed run bit-identical.

A checkpoint holds the trainable weights, optimiser, scheduler, RNG states, the cached text table
and the progress counters; batch order is a pure function of (seed, epoch). A run killed at any
point and restarted with the same params and data therefore continues where its last checkpoint
was and ends with the same model as an uninterrupted run (on the same device and thread count;
CUDA kernels may differ in the last bits).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"


def rng_state(generator: torch.Generator) -> dict:
    """Every random source a training step draws from."""
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_torch_save(obj: dict, path: Path) -> None:
    """Write next to the target and rename, so a kill mid-write never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)

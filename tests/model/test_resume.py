"""Kill -9 and resume, for real: a training process killed with SIGKILL right after it wrote a
checkpoint is restarted and ends with exactly the model of a run that was never interrupted.

Both runs are separate `python -m pipeline_tasks.train` processes with one thread each, so the
only difference between them is the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core import params as P
from pipeline_tasks.model.checkpoint import CHECKPOINT_FILE

STARTUP_TIMEOUT_S = 300  # imports + tiny training on a busy, shared 2-core machine


def train_command(root: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline_tasks.train", "--root", str(root), "--no-mlflow"]


def run_to_completion(root: Path) -> dict:
    done = subprocess.run(train_command(root), capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return io.read_json(root / C.METRICS_DIR / "train.json")


def kill_after_first_checkpoint(root: Path, phase: str) -> None:
    """Start training, wait for a checkpoint file of `phase` (the epoch selection on valid, or the
    refit on train + valid after it), SIGKILL the process (no cleanup can run)."""
    checkpoint = root / C.CHECKPOINT_DIR / phase / CHECKPOINT_FILE
    proc = subprocess.Popen(train_command(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while not checkpoint.exists():
            assert proc.poll() is None, f"training ended before its first checkpoint: {proc.stderr.read()[-2000:]!r}"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the process must die by SIGKILL, not finish"


def project(split_writer, tmp_path: Path, name: str, params: dict) -> Path:
    root = split_writer(tmp_path / name)
    P.dump(params, root / C.PARAMS_FILE)
    return root


@pytest.mark.parametrize("phase", ["select", "refit"])
def test_sigkilled_training_resumes_to_the_uninterrupted_result(tiny_params, split_writer, tmp_path, phase):
    params = tiny_params
    # 3 batches per epoch x 6 epochs, a checkpoint after every step; dropout exercises the RNG restore.
    params["train"].update(epochs=6, checkpoint_every=1, dropout=0.2, num_threads=1, refit=True)
    reference_root = project(split_writer, tmp_path, "reference", params)
    killed_root = project(split_writer, tmp_path, "killed", params)

    kill_after_first_checkpoint(killed_root, phase)
    assert not (killed_root / C.MODEL_DIR).exists() and not (killed_root / C.METRICS_DIR / "train.json").exists()
    resumed = run_to_completion(killed_root)
    reference = run_to_completion(reference_root)

    assert resumed["resumed_from_step"] >= 1 and reference["resumed_from_step"] == 0
    for key in ("final_loss", "valid_ndcg@10", "best_epoch", "epochs", "refit_epochs"):
        assert resumed[key] == reference[key], key
    weights = [torch.load(r / C.MODEL_DIR / "weights.pt", weights_only=True) for r in (killed_root, reference_root)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    tables = [np.load(r / C.MODEL_DIR / "item_table.npy") for r in (killed_root, reference_root)]
    assert np.array_equal(tables[0], tables[1])
    assert not (killed_root / C.CHECKPOINT_DIR).exists(), "the finished run deletes its checkpoints"


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun not installed")
def test_torchrun_single_process_matches_a_plain_run(tiny_params, split_writer, tmp_path):
    """torchrun joins a (gloo) process group, shards batches with DistributedSampler and all-reduces
    gradients; with one process that must change nothing in the result."""
    params = tiny_params
    params["train"]["num_threads"] = 1
    plain_root = project(split_writer, tmp_path, "plain", params)
    ddp_root = project(split_writer, tmp_path, "ddp", params)
    plain = run_to_completion(plain_root)
    torchrun = [
        str(Path(sys.executable).with_name("torchrun")),
        "--standalone",
        "--nproc_per_node=1",
        "-m",
        "pipeline_tasks.train",
        "--root",
        str(ddp_root),
        "--no-mlflow",
    ]
    done = subprocess.run(torchrun, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = io.read_json(ddp_root / C.METRICS_DIR / "train.json")
    assert ddp["processes"] == 1 and plain["processes"] == 1
    assert ddp["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-6)
    assert ddp["valid_ndcg@10"] == pytest.approx(plain["valid_ndcg@10"], abs=1e-9)

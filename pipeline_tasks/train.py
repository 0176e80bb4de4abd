"""Train stage: fit TextSeqRec on data/split/train, pick the best epoch on data/split/valid.

    python -m pipeline_tasks.train --root DIR

`run` applies metrics/tune/best_params.json (when train.use_best_params), trains with
resumable checkpoints under models/checkpoints, picks the best validation epoch and (train.refit,
as every baseline does) fits again on train + valid for that many epochs into models/model.
`fit` is the same training for the tune stage: it reports each epoch's validation NDCG@10 to
`on_epoch` (which may raise optuna.TrialPruned) and saves nothing unless asked; `refit` is the
final fit on train + valid that the train stage and the SASRec-ID baseline share.

Training data: every user's train history cut into windows of max_seq_len + 1 items (from
the most recent backwards, overlapping by one item, so every transition is predicted once);
the user tower predicts the next item at every position. Validation ranks the full catalogue
for each user with a valid item, their train items excluded (the shared protocol of metrics.py).

Resume: a checkpoint holds the trainable weights, optimiser, scheduler, RNG states, the
cached text table and the progress counters; batch order is a pure function of (seed, epoch).
A run killed at any point and restarted with the same params and data therefore continues
where its last checkpoint was and ends with the same model as an uninterrupted run (on the
same device and thread count; CUDA kernels may differ in the last bits).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from pipeline_tasks import constants as C
from pipeline_tasks import dataset, io, params as P, tracking
from pipeline_tasks.cli import stage_main
from pipeline_tasks.errors import ParamsError, PipelineError, RecpipeError
from pipeline_tasks.metrics import EvalContext, ndcg
from pipeline_tasks.model import (TextSeqRec, autocast, autocast_dtype, build_model, sampled_softmax_loss, save)

log = logging.getLogger(__name__)

OnEpoch = Callable[[int, float], None]
VALID_K = 10
VALID_METRIC = "valid_ndcg@10"
# train.* keys that change neither the trained weights nor the data order (not in the resume hash).
NOT_TRAINING_KEYS = {"checkpoint_every", "use_best_params", "num_threads", "device", "refit"}
CHECKPOINT_FILE = "checkpoint.pt"
STEP_POINTS_PER_EPOCH = 10  # step-level loss points logged to MLflow per epoch (rank 0, active run only)
BEST_FILE = "best.pt"


# --- data ------------------------------------------------------------------------------------

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
    parts = [title, text[len(title):].lstrip(" .") if title and text.startswith(title) else text]
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
        inputs[row, max_seq_len - n:] = torch.as_tensor(window[:-1], dtype=torch.long)
        targets[row, max_seq_len - n:] = torch.as_tensor(window[1:], dtype=torch.long)
    return inputs, targets


def load_training_data(root: Path, max_seq_len: int, train_splits: tuple[str, ...] = ("train",)) -> TrainingData:
    """Training windows of the named splits; validation on 'valid' unless it is one of them (a refit)."""
    split = dataset.load_split(root)
    if len(split.train) == 0:
        raise PipelineError(f"{root / C.DATA_SPLIT / 'train'} has no interactions: re-run ingest, clean and split")
    histories = split.histories(train_splits)
    windows = [w for h in histories for w in windows_of(h, max_seq_len)]
    if not windows:
        raise PipelineError("no user has two or more training interactions, so there is nothing to learn: "
                            "check split.min_user_interactions and the clean stage's k-core filter")
    inputs, targets = window_tensors(windows, max_seq_len, pad=split.n_items)
    texts = [item_text(row) for row in split.items.to_dict(orient="records")]
    return TrainingData(item_ids=split.item_ids, item_texts=texts, inputs=inputs, targets=targets,
                        popularity=np.bincount(split.combined(train_splits).items,
                                               minlength=split.n_items).astype(np.float64),
                        train_histories=histories,
                        valid=None if "valid" in train_splits else dataset.eval_task(split, "valid"))


# --- setup -----------------------------------------------------------------------------------

def resolve_device(name: str) -> str:
    if name not in ("auto", "cpu", "cuda"):
        raise ParamsError(f"train.device={name!r} is unknown; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device=cuda but torch sees no CUDA device: set train.device=auto or cpu")
    return "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)


def check_train_params(cfg: dict) -> None:
    for key in ("epochs", "batch_size", "dim", "max_seq_len", "max_text_len", "user_layers", "user_heads"):
        if cfg[key] < 1:
            raise ParamsError(f"train.{key}={cfg[key]} must be at least 1")
    for key in ("lr", "temperature"):
        if cfg[key] <= 0:
            raise ParamsError(f"train.{key}={cfg[key]} must be positive")
    if cfg["n_negatives"] < 0 or cfg["text_grad_items"] < 0 or cfg["checkpoint_every"] < 0:
        raise ParamsError("train.n_negatives, train.text_grad_items and train.checkpoint_every must be >= 0")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def training_fingerprint(params: dict, device: str, data: TrainingData, world: int = 1) -> str:
    """Hash of everything that shapes the trained weights: a checkpoint resumes only on a match."""
    knobs = {k: v for k, v in params["train"].items() if k not in NOT_TRAINING_KEYS}
    payload = json.dumps({"train": knobs, "seed": params["seed"], "device": device, "world": world},
                         sort_keys=True, default=str)
    return hashlib.sha256((payload + data.digest()).encode()).hexdigest()


# --- several processes (torchrun) ------------------------------------------------------------

def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run) sets these for every process it starts, even with one."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def process_rank() -> int:
    """This process's rank under torchrun; 0 when run alone."""
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


@contextmanager
def process_group(device: str) -> Iterator[tuple[int, int]]:
    """(rank, world size). Under torchrun: joins the process group (NCCL on CUDA, gloo on CPU) and
    pins this process to its local GPU; alone: (0, 1) and nothing to set up."""
    import torch.distributed as dist

    if not launched_by_torchrun():
        yield 0, 1
        return
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        if owner:
            dist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """What DDP does after backward, in one flat all-reduce.

    The loss reads the towers' submodules directly (cached text table, sampled candidates), not
    one forward() that DistributedDataParallel could hook, so the averaging is explicit. A
    parameter without a gradient on this rank contributes zeros, so every rank reduces the same
    tensors in the same order.
    """
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for param, grad in zip(params, grads):
        param.grad = flat[offset:offset + grad.numel()].view_as(grad)
        offset += grad.numel()


@dataclass
class Progress:
    """Counters a checkpoint restores (epochs are 1-based in reports, `epoch` counts completed ones)."""

    epoch: int = 0
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimiser steps overall
    loss_sum: float = 0.0  # over the current epoch's batches
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, loss, valid_ndcg@10
    best_epoch: int = 0
    best_ndcg: float = -1.0


# --- the trainer -----------------------------------------------------------------------------

class Trainer:
    """One training run: model, optimiser, cached text table, progress, checkpoints."""

    def __init__(self, params: dict, root: Path, checkpoint_dir: Path | None,
                 train_splits: tuple[str, ...] = ("train",), rank: int = 0, world: int = 1):
        self.cfg = params["train"]
        check_train_params(self.cfg)
        self.seed = params["seed"]
        self.rank, self.world = rank, world
        # In a process group (torchrun, even with one process) gradients and RNG states go through
        # the collectives; a single plain process skips them.
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.device = resolve_device(self.cfg["device"])
        self.batch_size = self.cfg["cuda_batch_size"] if self.device == "cuda" and self.cfg["cuda_batch_size"] else \
            self.cfg["batch_size"]
        self.data = load_training_data(root, self.cfg["max_seq_len"], train_splits)
        self.select_on_valid = self.data.valid is not None
        self.fingerprint = training_fingerprint(params, self.device, self.data, world)
        seed_everything(self.seed)
        self.model: TextSeqRec = build_model(self.cfg, self.data.item_ids, self.data.item_texts, root).to(self.device)
        if world > 1:
            torch.manual_seed(self.seed + rank)  # same initial weights on every rank, different dropout
        self.trains_encoder = self.model.uses_text and any(
            p.requires_grad for p in self.model.item_tower.encoder.parameters())
        self.tokens = ({k: v.to(self.device) for k, v in self.model.tokenize(self.data.item_texts).items()}
                       if self.model.uses_text else None)
        self.optimizer = self.make_optimizer()
        # fp16 autocast (GPUs without bf16) needs loss scaling; disabled it passes everything through.
        self.scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(self.device) == torch.float16)
        self.n_batches = math.ceil(math.ceil(len(self.data.inputs) / world) / self.batch_size)
        self.scheduler = self.make_scheduler(self.cfg["epochs"] * self.n_batches)
        self.log_every = max(1, self.n_batches // STEP_POINTS_PER_EPOCH)
        self.generator = torch.Generator().manual_seed(self.seed + rank)  # negatives and grad-row choice
        q = self.data.popularity / self.data.popularity.sum()
        self.sampling_p = torch.as_tensor(q, dtype=torch.float)
        # Items never seen in training are never sampled; their log q only matters if one is a
        # target, which cannot happen, so a floor avoids -inf without changing any loss.
        self.log_q = torch.log(torch.as_tensor(np.maximum(q, 1e-12), dtype=torch.float)).to(self.device)
        self.cache: torch.Tensor | None = None
        self.progress = Progress()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_table: np.ndarray | None = None
        self.checkpoint_dir = checkpoint_dir
        self.resumed_from_step = 0
        self.sequences_done = 0
        self.step_seconds = 0.0

    # setup helpers
    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def make_optimizer(self) -> torch.optim.Optimizer:
        encoder, rest = [], []
        for name, param in self.trainable().items():
            (encoder if name.startswith("item_tower.encoder.") else rest).append(param)
        groups = [{"params": rest, "lr": self.cfg["lr"]}]
        if encoder:
            groups.append({"params": encoder, "lr": self.cfg["encoder_lr"]})
        return torch.optim.AdamW(groups, weight_decay=self.cfg["weight_decay"])

    def make_scheduler(self, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up, then cosine decay to 10% of the base rate."""
        warmup = max(1, int(self.cfg["warmup_share"] * total_steps))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            done = (step - warmup) / max(1, total_steps - warmup)
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # the loop
    def train(self, on_epoch: OnEpoch | None) -> None:
        from tqdm.auto import tqdm

        from torch.utils.data import DistributedSampler

        if self.cache is None:
            self.cache = self.encode_catalogue()
        # One rank: a permutation seeded by (seed, epoch). Several: each rank's disjoint share of it.
        sampler = DistributedSampler(range(len(self.data.inputs)), num_replicas=self.world, rank=self.rank,
                                     shuffle=True, seed=self.seed)
        for epoch in range(self.progress.epoch, self.cfg["epochs"]):
            sampler.set_epoch(epoch)
            order = torch.as_tensor(list(sampler), dtype=torch.long)
            bar = tqdm(range(self.progress.batch, self.n_batches), desc=f"epoch {epoch + 1}/{self.cfg['epochs']}",
                       leave=False, mininterval=2.0, disable=self.rank > 0)
            for b in bar:
                rows = order[b * self.batch_size:(b + 1) * self.batch_size]
                loss = self.step(rows)
                self.progress.batch, self.progress.step = b + 1, self.progress.step + 1
                self.progress.loss_sum += loss
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                if self.progress.step % self.log_every == 0:  # the step-level learning curve
                    tracking.log_metrics({"step/loss": loss, "step/lr": self.scheduler.get_last_lr()[0]},
                                         step=self.progress.step)
                if self.cfg["checkpoint_every"] and self.progress.step % self.cfg["checkpoint_every"] == 0:
                    self.save_checkpoint()
            self.end_epoch(epoch + 1, on_epoch)

    def step(self, rows: torch.Tensor) -> float:
        started = time.perf_counter()
        self.model.train()
        inputs, targets = self.data.inputs[rows], self.data.targets[rows]
        first = int((inputs != self.data.n_items).any(dim=0).float().argmax())  # drop all-padding columns
        inputs, targets = inputs[:, first:], targets[:, first:]
        if self.device == "cuda":  # page-locked rows copy to the GPU asynchronously
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with autocast(self.device):
            loss = self.batch_loss(inputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.distributed:
            average_gradients(list(self.trainable().values()), self.world)
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(self.trainable().values(), self.cfg["grad_clip_norm"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.sequences_done += len(rows)
        self.step_seconds += time.perf_counter() - started
        return float(loss.detach())

    def batch_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-item sampled softmax over the batch's unique targets + popularity-sampled negatives."""
        n_items = self.data.n_items
        table = self.model.item_table(self.cache)  # cached text: gradient reaches projection + IDs only
        padded = torch.cat([table, table.new_zeros(1, table.shape[1])])
        states = self.model.user_tower(padded[inputs], inputs != n_items)
        has_target = targets >= 0
        users, wanted = states[has_target], targets[has_target]
        negatives = torch.multinomial(self.sampling_p, self.cfg["n_negatives"], replacement=True,
                                      generator=self.generator) if self.cfg["n_negatives"] else wanted.new_zeros(0)
        candidates = torch.unique(torch.cat([wanted, negatives.to(self.device)]))
        vectors = self.candidate_vectors(candidates, wanted)
        return sampled_softmax_loss(users, wanted, candidates, vectors, self.log_q[candidates],
                                    self.cfg["temperature"])

    def candidate_vectors(self, candidates: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """Candidate item vectors: cached text, except up to text_grad_items rows re-encoded with gradient."""
        pooled = self.cache[candidates] if self.cache is not None else None
        n_fresh = min(self.cfg["text_grad_items"], len(candidates)) if self.trains_encoder else 0
        if n_fresh:
            rows = self.grad_rows(candidates, positives, n_fresh)
            items = candidates[rows]
            fresh = self.model.item_tower.pooled(self.tokens["input_ids"][items], self.tokens["attention_mask"][items])
            pooled = pooled.index_copy(0, rows, fresh.to(pooled.dtype))
        return self.model.item_tower.vectors(pooled, candidates)

    def grad_rows(self, candidates: torch.Tensor, positives: torch.Tensor, n: int) -> torch.Tensor:
        """Which candidate rows get a fresh encoder pass: positives first, each group in random order."""
        is_positive = torch.isin(candidates, positives).cpu()
        order = torch.randperm(len(candidates), generator=self.generator)
        ranked = torch.cat([order[is_positive[order]], order[~is_positive[order]]])
        return ranked[:n].to(self.device)

    def encode_catalogue(self) -> torch.Tensor | None:
        return self.model.encode_pooled(self.tokens, desc="encoding items", device=self.device) if self.tokens else None

    # epochs
    def end_epoch(self, epoch: int, on_epoch: OnEpoch | None) -> None:
        if self.trains_encoder:
            self.cache = self.encode_catalogue()  # the encoder moved: refresh the text table
        loss = self.progress.loss_sum / max(1, self.n_batches)
        if not self.select_on_valid:  # a refit on train+valid: nothing to select on, the last epoch is kept
            self.progress.history.append({"epoch": epoch, "loss": loss})
            log.info("epoch %d: loss %.4f (refit, no validation)", epoch, loss)
            tracking.log_metrics({"epoch/loss": loss}, step=epoch)
            if epoch == self.cfg["epochs"]:
                self.keep_as_best(epoch, 0.0, self.valid_table())
            self.progress.epoch, self.progress.batch, self.progress.loss_sum = epoch, 0, 0.0
            return
        table = self.valid_table()
        value = self.validate(table)
        self.progress.history.append({"epoch": epoch, "loss": loss, VALID_METRIC: value})
        log.info("epoch %d: loss %.4f, %s %.4f", epoch, loss, VALID_METRIC, value)
        tracking.log_metrics({"epoch/loss": loss, f"epoch/{VALID_METRIC}": value}, step=epoch)
        if value > self.progress.best_ndcg:
            self.keep_as_best(epoch, value, table)
        self.progress.epoch, self.progress.batch, self.progress.loss_sum = epoch, 0, 0.0
        if on_epoch is not None:
            on_epoch(epoch, value)

    def keep_as_best(self, epoch: int, value: float, table: torch.Tensor) -> None:
        self.progress.best_epoch, self.progress.best_ndcg = epoch, value
        self.best_state = {k: v.detach().cpu().clone() for k, v in self.trainable().items()}
        self.best_table = table.cpu().numpy()
        self.save_best()

    @torch.no_grad()
    def valid_table(self) -> torch.Tensor:
        self.model.eval()
        return self.model.item_table(self.cache).float()

    @torch.no_grad()
    def validate(self, table: torch.Tensor) -> float:
        """NDCG@10 of full-catalogue ranking for every valid user, train items excluded."""
        task = self.data.valid
        assert task is not None, "validation needs the valid split outside the training data"
        if not len(task):
            log.warning("no validation users: %s is reported as 0", VALID_METRIC)
            return 0.0
        self.model.eval()

        def score_users(users: np.ndarray) -> np.ndarray:
            histories = [self.data.train_histories[u] for u in users]
            with autocast(self.device):
                vectors = self.model.user_vectors_from_table(table, histories).float()
            return (vectors @ table.T).cpu().numpy()

        ranked = dataset.rank_in_batches(score_users, task, VALID_K, batch_size=512, desc="validating")
        return ndcg(ranked, task.targets, VALID_K, EvalContext(n_items=self.data.n_items))

    def restore_best(self) -> np.ndarray:
        """Load the best epoch's weights into the model; return its item table."""
        assert self.best_state is not None and self.best_table is not None, "at least one epoch ran"
        self.model.load_state_dict(self.best_state, strict=False)
        return self.best_table

    # checkpoints
    def rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
                 "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        self.generator.set_state(state["generator"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def all_rng_states(self) -> list[dict]:
        """Every rank's RNG state (a collective call under torchrun: all ranks take part)."""
        if not self.distributed:
            return [self.rng_state()]
        import torch.distributed as dist

        states: list = [None] * self.world
        dist.all_gather_object(states, self.rng_state())
        return states

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None:
            return
        rng = self.all_rng_states()
        if self.rank > 0:  # one writer; the weights are the same on every rank
            return
        atomic_torch_save({
            "fingerprint": self.fingerprint,
            "progress": asdict(self.progress),
            "model": {k: v.detach().cpu() for k, v in self.trainable().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "cache": self.cache.cpu() if self.cache is not None else None,
        }, self.checkpoint_dir / CHECKPOINT_FILE)

    def save_best(self) -> None:
        if self.checkpoint_dir is None or self.rank > 0:
            return
        atomic_torch_save({"fingerprint": self.fingerprint, "epoch": self.progress.best_epoch,
                           "ndcg": self.progress.best_ndcg, "state": self.best_state, "table": self.best_table},
                          self.checkpoint_dir / BEST_FILE)

    def resume(self) -> None:
        """Continue from a checkpoint of the same params and data, if one exists."""
        if self.checkpoint_dir is None or not (self.checkpoint_dir / CHECKPOINT_FILE).exists():
            return
        # weights_only=False: our own file, holding numpy / Python RNG states beside the tensors.
        ckpt = torch.load(self.checkpoint_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        if ckpt.get("fingerprint") != self.fingerprint:
            log.info("ignoring %s: it was made with other params or data", self.checkpoint_dir / CHECKPOINT_FILE)
            return
        self.model.load_state_dict(ckpt["model"], strict=False)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):  # empty when loss scaling is off
            self.scaler.load_state_dict(ckpt["scaler"])
        self.set_rng_state(ckpt["rng"][self.rank])  # one state per rank (the world size is in the fingerprint)
        self.cache = ckpt["cache"].to(self.device) if ckpt["cache"] is not None else None
        self.progress = Progress(**ckpt["progress"])
        self.resumed_from_step = self.progress.step
        best_file = self.checkpoint_dir / BEST_FILE
        if best_file.exists():
            best = torch.load(best_file, map_location="cpu", weights_only=False)
            if best.get("fingerprint") == self.fingerprint:
                self.best_state, self.best_table = best["state"], best["table"]
                self.progress.best_epoch, self.progress.best_ndcg = best["epoch"], best["ndcg"]
        if self.progress.best_epoch and self.best_state is None:
            self.progress.best_epoch, self.progress.best_ndcg = 0, -1.0  # its weights are gone: re-earn it
        log.info("resumed from %s at step %d (epoch %d, batch %d)", self.checkpoint_dir, self.progress.step,
                 self.progress.epoch + 1, self.progress.batch)

    def summary(self, seconds: float) -> dict:
        history = self.progress.history
        return {
            "epochs": len(history),
            "final_loss": history[-1]["loss"],
            "best_epoch": self.progress.best_epoch,
            VALID_METRIC: self.progress.best_ndcg if self.select_on_valid else None,
            "seconds": seconds,
            "sequences_per_s": self.sequences_done / self.step_seconds if self.step_seconds else 0.0,
            "sequences_done": self.sequences_done, "step_seconds": self.step_seconds,
            "device": self.device,
            "n_params_trainable": int(sum(p.numel() for p in self.trainable().values())),
            "n_sequences": len(self.data.inputs),
            "processes": self.world,
            "resumed_from_step": self.resumed_from_step,
        }


def atomic_torch_save(obj: dict, path: Path) -> None:
    """Write next to the target and rename, so a kill mid-write never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# --- entry points ----------------------------------------------------------------------------

def fit(params: dict, root: Path, on_epoch: OnEpoch | None = None, output_dir: Path | None = None,
        checkpoint_dir: Path | None = None, train_splits: tuple[str, ...] = ("train",),
        keep_checkpoint: bool = False) -> dict:
    """Train, validate each epoch, save the best epoch to output_dir (None: save nothing).

    on_epoch(epoch, valid_ndcg10) runs after each epoch; an exception from it (optuna.TrialPruned)
    propagates. checkpoint_dir None: no checkpoints (tune trials); else resume from it and
    delete it after a successful run — or, keep_checkpoint, leave the finished state there, so a
    restart of a later phase finds this one done. train_splits ("train", "valid"): a refit on
    train+valid for exactly train.epochs epochs, keeping the last (nothing left to validate on).
    Under torchrun every process runs this; rank 0 alone writes files.
    """
    started = time.perf_counter()
    if params["train"]["num_threads"] > 0:
        torch.set_num_threads(params["train"]["num_threads"])
    with process_group(resolve_device(params["train"]["device"])) as (rank, world):
        trainer = Trainer(params, Path(root), checkpoint_dir, tuple(train_splits), rank, world)
        trainer.resume()
        trainer.train(on_epoch)
        if keep_checkpoint:
            trainer.save_checkpoint()
        best_table = trainer.restore_best()
        if output_dir is not None and rank == 0:
            save(trainer.model, output_dir, item_table=best_table)
        if checkpoint_dir is not None and rank == 0 and not keep_checkpoint:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return trainer.summary(time.perf_counter() - started)


def fit_final(params: dict, root: Path, output_dir: Path, checkpoint_dir: Path | None) -> dict:
    """The train stage's model: the best epoch count on valid, then (train.refit) a fit from scratch on
    train + valid for that many epochs — the protocol every baseline follows, so the final model has
    learnt from each user's latest interactions before it ranks their test item.

    Each phase checkpoints in its own sub-folder of checkpoint_dir; the selection keeps its finished
    state until the refit is done, so a run killed during the refit resumes there.
    """
    if not params["train"]["refit"]:
        return fit(params, root, output_dir=output_dir, checkpoint_dir=checkpoint_dir)

    def phase_dir(phase: str) -> Path | None:
        return checkpoint_dir / phase if checkpoint_dir is not None else None

    selected = fit(params, root, checkpoint_dir=phase_dir("select"), keep_checkpoint=True)
    final = refit(params, root, selected["best_epoch"], output_dir, checkpoint_dir=phase_dir("refit"))
    if checkpoint_dir is not None and process_rank() == 0:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return refit_summary(selected, final)


def refit(params: dict, root: Path, epochs: int, output_dir: Path, checkpoint_dir: Path | None = None,
          name: str = C.MODEL_NAME) -> dict:
    """Fit from scratch on train + valid for `epochs` (the count selected on valid), as an MLflow child
    run `<name> refit`: the final version of a model selected on validation."""
    params = copy.deepcopy(params)
    params["train"]["epochs"] = epochs
    log.info("%s: refit on train + valid for the selected %d epochs", name, epochs)
    with tracking.child_run(f"{name} refit"):
        return fit(params, root, output_dir=output_dir, checkpoint_dir=checkpoint_dir,
                   train_splits=("train", "valid"))


def refit_summary(selected: dict, final: dict) -> dict:
    """The selection's validation figures, the refit's loss, time and throughput over both phases."""
    done = selected["sequences_done"] + final["sequences_done"]
    busy = selected["step_seconds"] + final["step_seconds"]
    return {**selected, "final_loss": final["final_loss"], "refit_epochs": final["epochs"],
            "selection_seconds": selected["seconds"], "refit_seconds": final["seconds"],
            "seconds": selected["seconds"] + final["seconds"], "sequences_done": done, "step_seconds": busy,
            "sequences_per_s": done / busy if busy else 0.0, "refit_n_sequences": final["n_sequences"],
            "resumed_from_step": selected["resumed_from_step"] + final["resumed_from_step"]}


def with_best_params(params: dict, root: Path) -> tuple[dict, dict]:
    """params with metrics/tune/best_params.json applied (when train.use_best_params), and what was applied."""
    path = root / C.BEST_PARAMS_FILE
    if not params["train"]["use_best_params"] or not path.exists():
        return params, {}
    best = io.read_json(path)
    if not isinstance(best, dict):
        raise ParamsError(f"{path} must map dotted keys to values (e.g. {{\"train.lr\": 0.001}}): re-run the tune stage")
    tuned = copy.deepcopy(params)
    for dotted, value in best.items():
        P.set_dotted(tuned, dotted, value)
    log.info("applied tuned params from %s: %s", path, best)
    return tuned, best


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    params, applied = with_best_params(params, root)
    if applied:
        tracking.log_params({"tuned": applied})
    metrics = fit_final(params, root, output_dir=root / C.MODEL_DIR, checkpoint_dir=root / C.CHECKPOINT_DIR)
    return {**metrics, "n_tuned_params": len(applied)}


def worker_main(argv: list[str] | None) -> int:
    """Ranks > 0 under torchrun: the same training, but rank 0 alone logs to MLflow and writes metrics."""
    from pipeline_tasks.cli import params_path, parse_args, quiet_environment

    quiet_environment()
    args = parse_args("train", argv)
    root = Path(args.root).resolve()
    try:
        run(P.load(params_path(args.params, root), args.overrides), root)
    except RecpipeError as err:
        print(f"\nrecpipe train (rank {process_rank()}) FAILED: {type(err).__name__}: {err}\n", file=sys.stderr)
        return err.exit_code
    return 0


def main(argv: list[str] | None = None) -> int:
    if process_rank() > 0:
        return worker_main(argv)
    return stage_main("train", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

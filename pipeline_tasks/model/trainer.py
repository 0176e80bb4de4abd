"""The training loop of TextSeqRec: model, optimiser, cached text table, progress, checkpoints.

Longer than most modules because `Trainer` is one object with one job (a resumable, optionally
distributed training run); its pieces share that state, and splitting the class would spread it.

The catalogue's pooled text is cached: read at the start from the text cache kept across runs
(model/text_cache.py: only new or edited items are encoded), refreshed after each epoch only when
the encoder trains; each step re-encodes with gradient only
`train.text_grad_items` of the candidates (positives first), so fine-tuning the encoder costs a
bounded number of encoder passes per step. The candidates are the whole catalogue (`train.loss`
softmax, the default up to `train.softmax_max_items` items) or the batch's targets plus
popularity-sampled negatives (sampled). With validation, training stops once valid NDCG@10 has
not improved for `train.patience` epochs (at most `train.epochs`); the best epoch is kept.
Under torchrun every process runs it; rank 0 alone
writes files and logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_tasks.core import tracking
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.core.metrics import EvalContext, ndcg
from pipeline_tasks.data import dataset
from pipeline_tasks.model import checkpoint, text_cache, warm_start
from pipeline_tasks.model.distributed import average_gradients
from pipeline_tasks.model.losses import full_softmax_loss, sampled_softmax_loss
from pipeline_tasks.model.text_adaptor import fit_whitening, ids_for_new_items, ids_from_text
from pipeline_tasks.model.towers import (
    ENCODER_DIR,
    ENCODER_PREFIX,
    TextSeqRec,
    autocast,
    autocast_dtype,
    build_model,
)
from pipeline_tasks.model.training_data import TrainingData, load_training_data

log = logging.getLogger(__name__)

OnEpoch = Callable[[int, float], None]
VALID_K = 10
VALID_METRIC = "valid_ndcg@10"
LOSSES = ("auto", "softmax", "sampled")
ID_INITS = ("random", "text")  # where item-ID rows start (start_ids_from_text)
# train.* keys that change neither the trained weights nor the data order (not in the resume hash).
# (warm_start / warm_epochs: where training starts is hashed on its own, the epochs it runs are in `epochs`.)
NOT_TRAINING_KEYS = {
    "checkpoint_every",
    "use_best_params",
    "num_threads",
    "device",
    "refit",
    "warm_start",
    "warm_epochs",
}
STEP_POINTS_PER_EPOCH = 10  # step-level loss points logged to MLflow per epoch (rank 0, active run only)


def resolve_device(name: str) -> str:
    if name not in ("auto", "cpu", "cuda"):
        raise ParamsError(f"train.device={name!r} is unknown; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device=cuda but torch sees no CUDA device: set train.device=auto or cpu")
    return "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)


def check_train_params(cfg: dict) -> None:
    if cfg["patience"] < 0:
        raise ParamsError(f"train.patience={cfg['patience']} must be >= 0 (0 = train every one of train.epochs)")
    for key in ("epochs", "batch_size", "dim", "max_seq_len", "max_text_len", "user_layers", "user_heads"):
        if cfg[key] < 1:
            raise ParamsError(f"train.{key}={cfg[key]} must be at least 1")
    for key in ("lr", "temperature", "warm_lr_scale"):
        if cfg[key] <= 0:
            raise ParamsError(f"train.{key}={cfg[key]} must be positive")
    if min(cfg["n_negatives"], cfg["text_grad_items"], cfg["checkpoint_every"], cfg["adaptor_experts"]) < 0:
        raise ParamsError(
            "train.n_negatives, train.text_grad_items, train.checkpoint_every and train.adaptor_experts must be >= 0"
        )
    if cfg["id_init"] not in ID_INITS:
        raise ParamsError(f"train.id_init={cfg['id_init']!r} is unknown; use one of {', '.join(ID_INITS)}")
    if cfg["id_init_std"] <= 0:
        raise ParamsError(f"train.id_init_std={cfg['id_init_std']} must be positive (the ID rows' spread)")
    if cfg["loss"] not in LOSSES:
        raise ParamsError(f"train.loss={cfg['loss']!r} is unknown; use one of {', '.join(LOSSES)}")


def resolve_loss(cfg: dict, n_items: int) -> str:
    """softmax or sampled: `auto` takes the full softmax while the catalogue fits (softmax_max_items).

    One step's logits are (target positions x items). At the default batch (64 x 50 = 3200
    positions) the loss alone measured, forward + backward on this 2-core CPU: 0.18 CPU-s and
    0.55 GB peak at 2k items, 1.2 s and 1.3 GB at 20k, 2.9 s and 2.4 GB at 50k. 20k is where it
    stops being a small part of a step; beyond it sampled negatives keep the step's cost flat.
    """
    if cfg["loss"] != "auto":
        return cfg["loss"]
    return "softmax" if n_items <= cfg["softmax_max_items"] else "sampled"


def training_fingerprint(
    params: dict,
    device: str,
    data: TrainingData,
    world: int = 1,
    warm_from: Path | None = None,
    schedule_epochs: int | None = None,
) -> str:
    """Hash of everything that shapes the trained weights: a checkpoint resumes only on a match."""
    knobs = {k: v for k, v in params["train"].items() if k not in NOT_TRAINING_KEYS}
    start = warm_start.weights_digest(warm_from) if warm_from is not None else "scratch"
    run = {"seed": params["seed"], "device": device, "world": world, "start": start, "schedule": schedule_epochs}
    payload = json.dumps(
        {"train": knobs, **run},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((payload + data.digest()).encode()).hexdigest()


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

    def __init__(
        self,
        params: dict,
        root: Path,
        checkpoint_dir: Path | None,
        train_splits: tuple[str, ...] = ("train",),
        rank: int = 0,
        world: int = 1,
        warm_from: Path | None = None,
        schedule_epochs: int | None = None,
    ):
        """schedule_epochs: the learning-rate schedule's length in epochs (default train.epochs). A refit
        that runs the selected k epochs passes the selection's budget, so its first k epochs follow
        the same learning rates as the k epochs that were selected."""
        self.cfg = params["train"]
        check_train_params(self.cfg)
        self.root = Path(root)
        self.seed = params["seed"]
        self.rank, self.world = rank, world
        # In a process group (torchrun, even with one process) gradients and RNG states go through
        # the collectives; a single plain process skips them.
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.device = resolve_device(self.cfg["device"])
        self.batch_size = (
            self.cfg["cuda_batch_size"]
            if self.device == "cuda" and self.cfg["cuda_batch_size"]
            else self.cfg["batch_size"]
        )
        self.data = load_training_data(root, self.cfg["max_seq_len"], train_splits)
        self.select_on_valid = self.data.valid is not None
        self.loss = resolve_loss(self.cfg, self.data.n_items)
        self.schedule_epochs = max(schedule_epochs or self.cfg["epochs"], self.cfg["epochs"])
        self.fingerprint = training_fingerprint(params, self.device, self.data, world, warm_from, self.schedule_epochs)
        checkpoint.seed_everything(self.seed)
        self.model: TextSeqRec = self.initial_model(root, warm_from).to(self.device)
        if world > 1:
            torch.manual_seed(self.seed + rank)  # same initial weights on every rank, different dropout
        self.trains_encoder = self.model.uses_text and any(
            p.requires_grad for p in self.model.item_tower.encoder.parameters()
        )
        self.tokens = (
            {k: v.to(self.device) for k, v in self.model.tokenize(self.data.item_texts).items()}
            if self.model.uses_text
            else None
        )
        self.optimizer = self.make_optimizer()
        # fp16 autocast (GPUs without bf16) needs loss scaling; disabled it passes everything through.
        self.scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype(self.device) == torch.float16)
        self.n_batches = math.ceil(math.ceil(len(self.data.inputs) / world) / self.batch_size)
        self.scheduler = self.make_scheduler(self.schedule_epochs * self.n_batches)
        self.log_every = max(1, self.n_batches // STEP_POINTS_PER_EPOCH)
        self.generator = torch.Generator().manual_seed(self.seed + rank)  # negatives and grad-row choice
        q = self.data.popularity / self.data.popularity.sum()
        self.sampling_p = torch.as_tensor(q, dtype=torch.float)
        # Items never seen in training are never sampled; their log q only matters if one is a
        # target, which cannot happen, so a floor avoids -inf without changing any loss.
        self.log_q = torch.log(torch.as_tensor(np.maximum(q, 1e-12), dtype=torch.float)).to(self.device)
        self.cache: torch.Tensor | None = None
        self.text_cache: dict = {}  # what the initial table cost: items, encoded, file
        self.progress = Progress()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_table: np.ndarray | None = None
        self.checkpoint_dir = checkpoint_dir
        self.resumed_from_step = 0
        self.sequences_done = 0
        self.step_seconds = 0.0

    # setup helpers
    def initial_model(self, root: Path, warm_from: Path | None) -> TextSeqRec:
        """A fresh model, or (warm_from) one that starts from a saved model's weights (warm_start.py)."""
        encoder_dir = warm_from / ENCODER_DIR if warm_from is not None and self.cfg["use_text"] else None
        model = build_model(self.cfg, self.data.item_ids, self.data.item_texts, root, encoder_dir)
        self.warm_start: dict = {}
        self.warm_from = warm_from
        if warm_from is not None:
            self.warm_start = warm_start.init_from(model, warm_from)
            log.info(
                "warm start from %s: %d items keep their ID vectors, %d start from their text",
                warm_from,
                self.warm_start["items_kept"],
                self.warm_start["items_new"],
            )
        return model

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def make_optimizer(self) -> torch.optim.Optimizer:
        encoder: list[torch.nn.Parameter] = []
        rest: list[torch.nn.Parameter] = []
        for name, param in self.trainable().items():
            (encoder if name.startswith("item_tower.encoder.") else rest).append(param)
        # A warm night fine-tunes the champion: at the full rate its first steps re-enter early
        # training's popularity phase and undo what it learnt on rare items (README, "Warm nights").
        scale = self.cfg["warm_lr_scale"] if self.warm_from is not None else 1.0
        groups = [{"params": rest, "lr": self.cfg["lr"] * scale}]
        if encoder:
            groups.append({"params": encoder, "lr": self.cfg["encoder_lr"] * scale})
        return torch.optim.AdamW(groups, weight_decay=self.cfg["weight_decay"])

    def make_scheduler(self, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up (warmup_share of the steps, at most one epoch: a long budget that early
        stopping cuts short must not spend its first epochs warming up), then cosine decay to 10%."""
        warmup = max(1, min(int(self.cfg["warmup_share"] * total_steps), self.n_batches))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            done = (step - warmup) / max(1, total_steps - warmup)
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    # the loop
    def train(self, on_epoch: OnEpoch | None) -> None:
        from torch.utils.data import DistributedSampler
        from tqdm.auto import tqdm

        if self.cache is None:  # a resumed run has its table (and its whitening) from the checkpoint
            self.cache = self.initial_text_table()
            if self.cache is not None and not self.warm_start:  # a warm start keeps the champion's
                fit_whitening(self.model.item_tower.projection, self.cache)
        if self.progress.step == 0:  # not again on a resume
            self.start_ids_from_text()
        # One rank: a permutation seeded by (seed, epoch). Several: each rank's disjoint share of it.
        # Any sized sequence serves as the sampler's dataset: only its length is read.
        rows: Any = range(len(self.data.inputs))
        sampler: DistributedSampler[int] = DistributedSampler(
            rows, num_replicas=self.world, rank=self.rank, shuffle=True, seed=self.seed
        )
        epochs = tqdm(
            total=self.epoch_horizon(),
            initial=self.progress.epoch,
            desc="epochs (time left if valid stops improving)" if self.select_on_valid else "epochs",
            unit="epoch",
            disable=self.rank > 0,
        )
        for epoch in range(self.progress.epoch, self.cfg["epochs"]):
            if self.out_of_patience():  # also after a resume of a run that had already stopped
                break
            sampler.set_epoch(epoch)
            order = torch.as_tensor(list(sampler), dtype=torch.long)
            bar = tqdm(
                range(self.progress.batch, self.n_batches),
                desc=f"epoch {epoch + 1}/{self.cfg['epochs']}",
                leave=False,
                mininterval=2.0,
                disable=self.rank > 0,
            )
            for b in bar:
                rows = order[b * self.batch_size : (b + 1) * self.batch_size]
                loss = self.step(rows)
                self.progress.batch, self.progress.step = b + 1, self.progress.step + 1
                self.progress.loss_sum += loss
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                if self.progress.step % self.log_every == 0:  # the step-level learning curve
                    tracking.log_metrics(
                        {"step/loss": loss, "step/lr": self.scheduler.get_last_lr()[0]}, step=self.progress.step
                    )
                if self.cfg["checkpoint_every"] and self.progress.step % self.cfg["checkpoint_every"] == 0:
                    self.save_checkpoint()
            self.end_epoch(epoch + 1, on_epoch)
            epochs.total = self.epoch_horizon()
            epochs.set_postfix(best=f"{self.progress.best_ndcg:.4f}@{self.progress.best_epoch}", refresh=False)
            epochs.update(1)
        epochs.close()

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
        """Next-item cross-entropy against the whole catalogue (softmax) or against the batch's
        unique targets + popularity-sampled negatives (sampled)."""
        n_items = self.data.n_items
        table = self.model.item_table(self.cache)  # cached text: gradient reaches projection + IDs only
        padded = torch.cat([table, table.new_zeros(1, table.shape[1])])
        states = self.model.user_tower(padded[inputs], inputs != n_items)
        has_target = targets >= 0
        users, wanted = states[has_target], targets[has_target]
        if self.loss == "softmax":
            # Every item's vector, with fresh text (and the encoder's gradient) for text_grad_items of them.
            every = torch.arange(n_items, device=self.device)
            return full_softmax_loss(users, wanted, self.candidate_vectors(every, wanted), self.cfg["temperature"])
        negatives = (
            torch.multinomial(self.sampling_p, self.cfg["n_negatives"], replacement=True, generator=self.generator)
            if self.cfg["n_negatives"]
            else wanted.new_zeros(0)
        )
        candidates = torch.unique(torch.cat([wanted, negatives.to(self.device)]))
        vectors = self.candidate_vectors(candidates, wanted)
        return sampled_softmax_loss(users, wanted, candidates, vectors, self.log_q[candidates], self.cfg["temperature"])

    def candidate_vectors(self, candidates: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        """Candidate item vectors: cached text, except up to text_grad_items rows re-encoded with gradient."""
        pooled = self.cache[candidates] if self.cache is not None else None
        n_fresh = min(self.cfg["text_grad_items"], len(candidates)) if self.trains_encoder else 0
        if n_fresh:
            assert pooled is not None and self.tokens is not None, "only a text model trains its encoder"
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

    def initial_text_table(self) -> torch.Tensor | None:
        """Before the first step the encoder is its base one: read the kept text table, encode only
        the items it lacks (the frozen path never runs the encoder again)."""
        if self.tokens is None:
            return None
        table, self.text_cache = text_cache.pooled_table(
            self.model, self.tokens, self.data.item_texts, self.root, self.device
        )
        return table

    def start_ids_from_text(self) -> None:
        """train.id_init=text: the ID rows start at the catalogue text's principal components; on a
        warm night the champion's rows stay, and an ID-only model's new items start where the
        champion's rows map their text (a text model's start from text alone, warm_start.py)."""
        embedding = self.model.item_tower.id_embedding
        if self.cfg["id_init"] != "text" or embedding is None or (self.warm_from and self.model.uses_text):
            return
        known = warm_start.kept_items(self.warm_from, self.data.item_ids) if self.warm_from else None
        if known is not None and (known.all() or not known.any()):
            return  # a warm night with no new item (or nothing to map from): the text is not read
        pooled = (self.cache if self.cache is not None else self.text_table_for_ids()).cpu()
        with torch.no_grad():
            if known is not None:
                embedding.weight.copy_(ids_for_new_items(pooled, embedding.weight.cpu(), known))
                return
            rows = ids_from_text(pooled, embedding.weight.shape[1], self.cfg["id_init_std"])
            if rows is None:
                log.warning("train.id_init=text: every item's text reads the same, so ID rows keep their random start")
                return
            embedding.weight.copy_(rows)

    def text_table_for_ids(self) -> torch.Tensor:
        """An ID-only model's pooled catalogue text (from the text cache): a frozen reader of the
        configured encoder, built without touching the run's random state."""
        reader_cfg = {**self.cfg, "use_text": True, "finetune": "frozen"}
        try:
            with torch.random.fork_rng(devices=[]):
                reader = build_model(reader_cfg, self.data.item_ids, [], self.root)
        except ParamsError as err:
            raise ParamsError(
                f"train.id_init=text reads the item text with train.encoder, even for an ID-only model: {err}; "
                "or set train.id_init=random"
            ) from err
        reader.to(self.device)
        tokens = reader.tokenize(self.data.item_texts)
        table, self.text_cache = text_cache.pooled_table(reader, tokens, self.data.item_texts, self.root, self.device)
        return table

    def encode_catalogue(self) -> torch.Tensor | None:
        return self.model.encode_pooled(self.tokens, desc="encoding items", device=self.device) if self.tokens else None

    # epochs
    def epoch_horizon(self) -> int:
        """The epoch training ends at if valid NDCG@10 does not improve again (each gain moves it
        out by up to `patience`): what the stage's progress bar counts its time left to."""
        patience = self.cfg["patience"] if self.select_on_valid else 0
        if not patience:
            return self.cfg["epochs"]
        return min(self.cfg["epochs"], self.progress.best_epoch + patience)

    def out_of_patience(self) -> bool:
        """True once valid NDCG@10 has not improved for train.patience epochs (never without validation)."""
        patience = self.cfg["patience"]
        if not (self.select_on_valid and patience and self.best_state is not None):
            return False
        return self.progress.epoch - self.progress.best_epoch >= patience

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
        if self.out_of_patience():
            log.info(
                "no better %s for %d epochs: stopping after epoch %d of at most %d, the best is epoch %d",
                VALID_METRIC,
                self.cfg["patience"],
                epoch,
                self.cfg["epochs"],
                self.progress.best_epoch,
            )
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
        return checkpoint.rng_state(self.generator)

    def all_rng_states(self) -> list[dict]:
        """Every rank's RNG state (a collective call under torchrun: all ranks take part)."""
        if not self.distributed:
            return [self.rng_state()]
        import torch.distributed as dist

        states: list = [None] * self.world
        dist.all_gather_object(states, self.rng_state())
        return states

    def resumable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the model: its trainable weights and the towers' buffers (the
        text whitening's statistics, fitted once before the first step and never trained)."""
        buffers = {k: v for k, v in self.model.named_buffers() if not k.startswith(ENCODER_PREFIX)}
        return {k: v.detach().cpu() for k, v in {**self.trainable(), **buffers}.items()}

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None:
            return
        rng = self.all_rng_states()
        if self.rank > 0:  # one writer; the weights are the same on every rank
            return
        checkpoint.atomic_torch_save(
            {
                "fingerprint": self.fingerprint,
                "progress": asdict(self.progress),
                "model": self.resumable_state(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng,
                "cache": self.cache.cpu() if self.cache is not None else None,
            },
            self.checkpoint_dir / checkpoint.CHECKPOINT_FILE,
        )

    def save_best(self) -> None:
        if self.checkpoint_dir is None or self.rank > 0:
            return
        checkpoint.atomic_torch_save(
            {
                "fingerprint": self.fingerprint,
                "epoch": self.progress.best_epoch,
                "ndcg": self.progress.best_ndcg,
                "state": self.best_state,
                "table": self.best_table,
            },
            self.checkpoint_dir / checkpoint.BEST_FILE,
        )

    def resume(self) -> None:
        """Continue from a checkpoint of the same params and data, if one exists."""
        if self.checkpoint_dir is None or not (self.checkpoint_dir / checkpoint.CHECKPOINT_FILE).exists():
            return
        # weights_only=False: our own file, holding numpy / Python RNG states beside the tensors; it lives in
        # this run's checkpoint folder, which only the pipeline's user writes (as it writes the code).
        path = self.checkpoint_dir / checkpoint.CHECKPOINT_FILE
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # nosec B614 # our own checkpoint
        if ckpt.get("fingerprint") != self.fingerprint:
            log.info(
                "ignoring %s: it was made with other params or data", self.checkpoint_dir / checkpoint.CHECKPOINT_FILE
            )
            return
        self.model.load_state_dict(ckpt["model"], strict=False)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):  # empty when loss scaling is off
            self.scaler.load_state_dict(ckpt["scaler"])
        checkpoint.set_rng_state(
            ckpt["rng"][self.rank], self.generator
        )  # one state per rank (the world size is in the fingerprint)
        self.cache = ckpt["cache"].to(self.device) if ckpt["cache"] is not None else None
        self.progress = Progress(**ckpt["progress"])
        self.resumed_from_step = self.progress.step
        best_file = self.checkpoint_dir / checkpoint.BEST_FILE
        if best_file.exists():
            best = torch.load(best_file, map_location="cpu", weights_only=False)  # nosec B614 # our own file
            if best.get("fingerprint") == self.fingerprint:
                self.best_state, self.best_table = best["state"], best["table"]
                self.progress.best_epoch, self.progress.best_ndcg = best["epoch"], best["ndcg"]
        if self.progress.best_epoch and self.best_state is None:
            self.progress.best_epoch, self.progress.best_ndcg = 0, -1.0  # its weights are gone: re-earn it
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            self.checkpoint_dir,
            self.progress.step,
            self.progress.epoch + 1,
            self.progress.batch,
        )

    def summary(self, seconds: float) -> dict:
        history = self.progress.history
        return {
            "epochs": len(history),
            "final_loss": history[-1]["loss"],
            "best_epoch": self.progress.best_epoch,
            "max_epochs": self.cfg["epochs"],
            "stopped_early": len(history) < self.cfg["epochs"],
            VALID_METRIC: self.progress.best_ndcg if self.select_on_valid else None,
            "seconds": seconds,
            "sequences_per_s": self.sequences_done / self.step_seconds if self.step_seconds else 0.0,
            "sequences_done": self.sequences_done,
            "step_seconds": self.step_seconds,
            "device": self.device,
            "loss": self.loss,
            "n_params_trainable": int(sum(p.numel() for p in self.trainable().values())),
            "n_sequences": len(self.data.inputs),
            "processes": self.world,
            "resumed_from_step": self.resumed_from_step,
            "warm_start": self.warm_start,
            "text_cache": self.text_cache,
        }

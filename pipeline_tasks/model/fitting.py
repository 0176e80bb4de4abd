"""Entry points of training: `fit` (one training run, also a tune trial), `fit_final` (the train
stage's model: select the epoch count on valid, then refit on train + valid), `refit` (shared with
the SASRec-ID baseline) and `with_best_params` (the tune stage's result applied)."""

from __future__ import annotations

import copy
import logging
import shutil
import time
from pathlib import Path

import torch

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io, tracking
from pipeline_tasks.core import params as P
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.model.distributed import process_group, process_rank
from pipeline_tasks.model.recommender import save
from pipeline_tasks.model.trainer import OnEpoch, Trainer, resolve_device

log = logging.getLogger(__name__)


def fit(
    params: dict,
    root: Path,
    on_epoch: OnEpoch | None = None,
    output_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    train_splits: tuple[str, ...] = ("train",),
    keep_checkpoint: bool = False,
    warm_from: Path | None = None,
    schedule_epochs: int | None = None,
) -> dict:
    """Train, validate each epoch, save the best epoch to output_dir (None: save nothing).

    on_epoch(epoch, valid_ndcg10) runs after each epoch; an exception from it (optuna.TrialPruned)
    propagates. checkpoint_dir None: no checkpoints (tune trials); else resume from it and
    delete it after a successful run — or, keep_checkpoint, leave the finished state there, so a
    restart of a later phase finds this one done. train_splits ("train", "valid"): a refit on
    train+valid for exactly train.epochs epochs, keeping the last (nothing left to validate on).
    With validation, training stops after train.patience epochs without a better valid NDCG@10.
    schedule_epochs: the learning-rate schedule's length (a refit: the selection's epoch budget).
    warm_from: a saved model directory to start from instead of scratch (model/warm_start.py).
    Under torchrun every process runs this; rank 0 alone writes files.
    """
    started = time.perf_counter()
    if params["train"]["num_threads"] > 0:
        torch.set_num_threads(params["train"]["num_threads"])
    with process_group(resolve_device(params["train"]["device"])) as (rank, world):
        trainer = Trainer(
            params, Path(root), checkpoint_dir, tuple(train_splits), rank, world, warm_from, schedule_epochs
        )
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


def fit_final(
    params: dict, root: Path, output_dir: Path, checkpoint_dir: Path | None, warm_from: Path | None = None
) -> dict:
    """The train stage's model: the best epoch count on valid (training stops train.patience epochs
    after the best), then (train.refit) a fit from scratch on train + valid for that many epochs —
    the protocol every baseline follows, so the final model has learnt from each user's latest
    interactions before it ranks their test item.

    warm_from (a warm night): both phases start from that saved model instead of scratch, for at most
    `train.warm_epochs` epochs at `train.warm_lr_scale` of the learning rates — a model that already
    knows the catalogue needs only a few passes over tonight's data, which is what makes a warm
    night cheap.

    Each phase checkpoints in its own sub-folder of checkpoint_dir; the selection keeps its finished
    state until the refit is done, so a run killed during the refit resumes there.
    """
    if warm_from is not None:
        params = copy.deepcopy(params)
        params["train"]["epochs"] = params["train"]["warm_epochs"]
    if not params["train"]["refit"]:
        return fit(params, root, output_dir=output_dir, checkpoint_dir=checkpoint_dir, warm_from=warm_from)

    def phase_dir(phase: str) -> Path | None:
        return checkpoint_dir / phase if checkpoint_dir is not None else None

    selected = fit(params, root, checkpoint_dir=phase_dir("select"), keep_checkpoint=True, warm_from=warm_from)
    log.info(
        "%s: best valid NDCG@10 %.4f at epoch %d of %d run (at most %d)",
        C.MODEL_NAME,
        selected["valid_ndcg@10"],
        selected["best_epoch"],
        selected["epochs"],
        params["train"]["epochs"],
    )
    final = refit(
        params, root, selected["best_epoch"], output_dir, checkpoint_dir=phase_dir("refit"), warm_from=warm_from
    )
    if checkpoint_dir is not None and process_rank() == 0:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return refit_summary(selected, final)


def refit(
    params: dict,
    root: Path,
    epochs: int,
    output_dir: Path,
    checkpoint_dir: Path | None = None,
    name: str = C.MODEL_NAME,
    warm_from: Path | None = None,
) -> dict:
    """Fit on train + valid for `epochs` (the count selected on valid), from scratch or from warm_from,
    as an MLflow child run `<name> refit`: the final version of a model selected on validation.
    Its learning-rate schedule is the selection's (params' train.epochs long), cut after `epochs`."""
    schedule_epochs = params["train"]["epochs"]
    params = copy.deepcopy(params)
    params["train"]["epochs"] = epochs
    log.info("%s: refit on train + valid for the selected %d epochs", name, epochs)
    with tracking.child_run(f"{name} refit"):
        return fit(
            params,
            root,
            output_dir=output_dir,
            checkpoint_dir=checkpoint_dir,
            train_splits=("train", "valid"),
            warm_from=warm_from,
            schedule_epochs=schedule_epochs,
        )


def refit_summary(selected: dict, final: dict) -> dict:
    """The selection's validation figures, the refit's loss, time and throughput over both phases."""
    done = selected["sequences_done"] + final["sequences_done"]
    busy = selected["step_seconds"] + final["step_seconds"]
    return {
        **selected,
        "final_loss": final["final_loss"],
        "refit_epochs": final["epochs"],
        "selection_seconds": selected["seconds"],
        "refit_seconds": final["seconds"],
        "seconds": selected["seconds"] + final["seconds"],
        "sequences_done": done,
        "step_seconds": busy,
        "sequences_per_s": done / busy if busy else 0.0,
        "refit_n_sequences": final["n_sequences"],
        "resumed_from_step": selected["resumed_from_step"] + final["resumed_from_step"],
    }


def with_best_params(params: dict, root: Path) -> tuple[dict, dict]:
    """params with metrics/tune/best_params.json applied (when train.use_best_params), and what was applied."""
    path = root / C.BEST_PARAMS_FILE
    if not params["train"]["use_best_params"] or not path.exists():
        return params, {}
    best = io.read_json(path)
    if not isinstance(best, dict):
        raise ParamsError(f'{path} must map dotted keys to values (e.g. {{"train.lr": 0.001}}): re-run the tune stage')
    tuned = copy.deepcopy(params)
    for dotted, value in best.items():
        P.set_dotted(tuned, dotted, value)
    log.info("applied tuned params from %s: %s", path, best)
    return tuned, best

"""Early stopping: train until valid NDCG@10 has not improved for train.patience epochs, keep the
best epoch, refit on train + valid for that many epochs on the selection's learning-rate schedule."""

from __future__ import annotations

import copy

import pytest

from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.model import fitting
from pipeline_tasks.model.trainer import Trainer


def id_only(params: dict, **train_knobs) -> dict:
    """SASRec-ID-sized runs: no encoder, so thirty epochs of the tiny world take a few seconds."""
    params = copy.deepcopy(params)
    params["train"].update(use_text=False, use_id_embedding=True, lr=0.05, **train_knobs)
    return params


def test_training_stops_patience_epochs_after_the_best_and_keeps_the_best(tiny_params, tiny_split):
    params = id_only(tiny_params, epochs=30, patience=2)
    seen: dict[int, float] = {}
    summary = fitting.fit(params, tiny_split, on_epoch=lambda epoch, value: seen.__setitem__(epoch, value))

    best = max(seen, key=lambda e: seen[e])  # the first of equals
    assert summary["stopped_early"] and summary["epochs"] == len(seen) < 30
    assert summary["best_epoch"] == best and summary["valid_ndcg@10"] == seen[best]
    assert len(seen) == best + 2, "two epochs without a better valid NDCG@10, then stop"
    assert all(seen[e] <= seen[best] for e in seen if e > best)


def test_patience_zero_runs_every_epoch_and_a_negative_one_is_refused(tiny_params, tiny_split):
    summary = fitting.fit(id_only(tiny_params, epochs=4, patience=0), tiny_split)
    assert summary["epochs"] == 4 and not summary["stopped_early"]
    with pytest.raises(ParamsError, match="train.patience=-1"):
        fitting.fit(id_only(tiny_params, patience=-1), tiny_split)


def test_the_refit_runs_the_selected_epochs_on_the_selections_schedule(tiny_params, tiny_split, tmp_path):
    params = id_only(tiny_params, epochs=30, patience=2, refit=True)
    metrics = fitting.fit_final(params, tiny_split, tmp_path / "model", checkpoint_dir=None)
    assert metrics["stopped_early"] and metrics["refit_epochs"] == metrics["best_epoch"] < 30

    # The refit's k epochs follow the learning rates of the selection's first k, not a schedule
    # squeezed into k epochs (which would end at 10% of the rate the selected epoch had).
    refit = Trainer(id_only(tiny_params, epochs=3), tiny_split, None, ("train", "valid"), schedule_epochs=30)
    squeezed = Trainer(id_only(tiny_params, epochs=3), tiny_split, None, ("train", "valid"))
    end = 3 * refit.n_batches
    assert refit.scheduler.lr_lambdas[0](end) > 0.9 > squeezed.scheduler.lr_lambdas[0](end) == pytest.approx(0.1)


def test_a_resumed_run_that_had_stopped_trains_no_further(tiny_params, tiny_split, tmp_path):
    params = id_only(tiny_params, epochs=30, patience=2, checkpoint_every=1)
    first = fitting.fit(params, tiny_split, checkpoint_dir=tmp_path / "ckpt", keep_checkpoint=True)
    again = fitting.fit(params, tiny_split, checkpoint_dir=tmp_path / "ckpt")
    assert first["stopped_early"] and again["sequences_done"] == 0
    assert (again["epochs"], again["best_epoch"], again["valid_ndcg@10"]) == (
        first["epochs"],
        first["best_epoch"],
        first["valid_ndcg@10"],
    )


def test_the_epoch_bar_counts_down_to_where_training_would_stop(tiny_params, tiny_split):
    """The stage's progress bar counts to best epoch + patience (its time left: if valid stops
    improving); every gain moves that out, and training ends exactly there."""
    trainer = Trainer(id_only(tiny_params, epochs=30, patience=2), tiny_split, None, ("train",))
    assert trainer.epoch_horizon() == 2  # nothing learnt yet: patience epochs
    horizons: list[tuple[int, int, int]] = []
    trainer.train(lambda epoch, value: horizons.append((epoch, trainer.progress.best_epoch, trainer.epoch_horizon())))
    assert all(horizon == min(30, best + 2) >= epoch for epoch, best, horizon in horizons), horizons
    assert horizons[-1][0] == horizons[-1][2] < 30, "it stopped where the bar said it would"
    refit = Trainer(id_only(tiny_params, epochs=5, patience=2), tiny_split, None, ("train", "valid"))
    assert refit.epoch_horizon() == 5  # a refit has no validation: it runs every epoch

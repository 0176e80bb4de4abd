"""The train stage: run/CLI outputs, tuned params, pruning, checkpoint resume."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch

from pipeline_tasks import train
from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core import params as P
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.model import checkpoint, fitting, training_data
from pipeline_tasks.model.recommender import Recommender

METRIC_KEYS = {
    "epochs",
    "final_loss",
    "best_epoch",
    "valid_ndcg@10",
    "seconds",
    "sequences_per_s",
    "device",
    "n_params_trainable",
}


def crash(epoch: int, value: float) -> None:
    """An on_epoch that stands in for a kill after the first epoch."""
    raise KeyboardInterrupt


def test_stage_cli_writes_model_and_metrics(tiny_params, tiny_split):
    tiny_params["train"]["checkpoint_every"] = 2
    P.dump(tiny_params, tiny_split / C.PARAMS_FILE)
    assert train.main(["--root", str(tiny_split), "--no-mlflow"]) == 0

    metrics = io.read_json(tiny_split / C.METRICS_DIR / "train.json")
    assert METRIC_KEYS <= set(metrics)
    assert metrics["epochs"] == 2 and metrics["device"] == "cpu" and metrics["n_params_trainable"] > 0
    assert 1 <= metrics["best_epoch"] <= 2 and 0.0 <= metrics["valid_ndcg@10"] <= 1.0
    assert metrics["final_loss"] > 0 and metrics["sequences_per_s"] > 0
    assert not (tiny_split / C.CHECKPOINT_DIR).exists(), "checkpoints are deleted after a successful run"
    rec = Recommender.load(tiny_split / C.MODEL_DIR)
    assert len(rec.item_ids) == 24 and len(rec.recommend([[rec.item_ids[0]]], k=3)[0]) == 3


def test_refit_trains_on_train_and_valid_for_the_selected_epochs(tiny_params, tiny_split):
    """The final model is fit again on train + valid for the best epoch count, as every baseline is.
    One epoch: the refit and the selection then differ only in their data (the valid interactions)."""
    tiny_params["train"].update(epochs=1, checkpoint_every=1, refit=True)
    refit = train.run(tiny_params, tiny_split)
    refit_weights = torch.load(tiny_split / C.MODEL_DIR / "weights.pt", weights_only=True)
    assert refit["refit_epochs"] == refit["best_epoch"] == 1
    assert refit["refit_n_sequences"] >= refit["n_sequences"]
    assert refit["seconds"] == pytest.approx(refit["selection_seconds"] + refit["refit_seconds"])
    assert not (tiny_split / C.CHECKPOINT_DIR).exists(), "both phases' checkpoints are deleted at the end"

    tiny_params["train"]["refit"] = False
    selected = train.run(tiny_params, tiny_split)
    assert "refit_epochs" not in selected
    assert (selected["best_epoch"], selected["valid_ndcg@10"]) == (refit["best_epoch"], refit["valid_ndcg@10"])
    weights = torch.load(tiny_split / C.MODEL_DIR / "weights.pt", weights_only=True)
    assert any(not torch.equal(weights[k], refit_weights[k]) for k in weights), "the refit saw the valid items"


def test_tuned_params_are_applied(tiny_params, tiny_split):
    io.write_json({"train.epochs": 1, "train.lr": 0.005}, tiny_split / C.BEST_PARAMS_FILE)
    metrics = train.run(tiny_params, tiny_split)
    assert metrics["epochs"] == 1 and metrics["n_tuned_params"] == 2

    io.write_json({"train.no_such_knob": 1}, tiny_split / C.BEST_PARAMS_FILE)
    with pytest.raises(ParamsError, match="train.no_such_knob"):
        train.run(tiny_params, tiny_split)
    tiny_params["train"]["use_best_params"] = False
    tiny_params["train"]["epochs"] = 0  # rejected before any training: proves the file was ignored
    with pytest.raises(ParamsError, match="train.epochs"):
        train.run(tiny_params, tiny_split)


def test_fit_reports_each_epoch_and_propagates_pruning(tiny_params, tiny_split):
    seen: list[tuple[int, float]] = []

    def on_epoch(epoch: int, value: float) -> None:
        seen.append((epoch, value))
        raise optuna.TrialPruned("pruned")

    with pytest.raises(optuna.TrialPruned):
        fitting.fit(tiny_params, tiny_split, on_epoch=on_epoch)
    assert len(seen) == 1 and seen[0][0] == 1 and 0.0 <= seen[0][1] <= 1.0
    assert not (tiny_split / C.MODELS_DIR).exists(), "fit without output_dir saves nothing"


def test_interrupted_run_resumes_to_the_same_result(tiny_params, tiny_split):
    """3 batches per epoch, a checkpoint every 2 steps: the restart resumes mid-epoch 1."""
    params = copy.deepcopy(tiny_params)
    params["train"].update(checkpoint_every=2, dropout=0.2)  # dropout: the RNG state must be restored too
    ckpt = tiny_split / C.CHECKPOINT_DIR
    reference = fitting.fit(params, tiny_split, checkpoint_dir=tiny_split / "reference_ckpt")

    with pytest.raises(KeyboardInterrupt):
        fitting.fit(params, tiny_split, on_epoch=crash, checkpoint_dir=ckpt)
    assert (ckpt / checkpoint.CHECKPOINT_FILE).exists()
    resumed = fitting.fit(params, tiny_split, checkpoint_dir=ckpt)

    assert resumed["resumed_from_step"] == 2 and reference["resumed_from_step"] == 0
    assert resumed["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-5)
    assert resumed["valid_ndcg@10"] == pytest.approx(reference["valid_ndcg@10"], abs=1e-6)
    assert not ckpt.exists()


def test_checkpoint_of_other_params_is_ignored(tiny_params, tiny_split):
    params = copy.deepcopy(tiny_params)
    params["train"]["checkpoint_every"] = 1
    ckpt = tiny_split / C.CHECKPOINT_DIR
    with pytest.raises(KeyboardInterrupt):
        fitting.fit(params, tiny_split, on_epoch=crash, checkpoint_dir=ckpt)
    params["train"].update(lr=0.02, epochs=1)
    assert fitting.fit(params, tiny_split, checkpoint_dir=ckpt)["resumed_from_step"] == 0


@pytest.mark.slow
def test_real_minilm_trains_a_few_steps(tiny_params, tiny_split):
    params = copy.deepcopy(tiny_params)
    params["train"].update(encoder="all-MiniLM-L6-v2", epochs=1, dim=32)
    metrics = fitting.fit(params, tiny_split)
    assert metrics["n_params_trainable"] > 0 and 0.0 <= metrics["valid_ndcg@10"] <= 1.0


def test_learning_curves_go_to_mlflow(tiny_params, tiny_split, tmp_path):
    """A real SQLite MLflow store: per-epoch loss and valid NDCG@10, plus a step-level loss curve."""
    import mlflow

    from pipeline_tasks.core import tracking

    tiny_params["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.stage_run("train", tiny_params, tmp_path) as run:
        summary = fitting.fit(tiny_params, tiny_split)
    client = mlflow.MlflowClient(tracking.tracking_uri(tiny_params, tmp_path))
    history = {
        key: client.get_metric_history(run.info.run_id, key)
        for key in ("epoch/loss", "epoch/valid_ndcg_at_10", "step/loss", "step/lr")
    }
    assert [m.step for m in history["epoch/loss"]] == [1, 2]
    assert max(m.value for m in history["epoch/valid_ndcg_at_10"]) == pytest.approx(summary["valid_ndcg@10"])
    n_steps = 2 * 3  # 24 one-window users in batches of 8, two epochs; under 10 batches: every step
    assert [m.step for m in history["step/loss"]] == list(range(1, n_steps + 1))
    assert all(m.value > 0 for m in history["step/lr"])


def test_item_text_does_not_repeat_the_title():
    assert (
        training_data.item_text({C.TITLE: "Heat (1995)", C.TEXT: "Heat (1995). Genres: Crime."})
        == "Heat (1995). Genres: Crime."
    )
    assert training_data.item_text({C.TITLE: "Heat", C.TEXT: "a heist"}) == "Heat. a heist"
    assert training_data.item_text({C.TITLE: "Heat", C.TEXT: None}) == "Heat"

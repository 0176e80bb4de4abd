"""tune: the search-space mapper, pruning, and a real (tiny) study that continues across runs."""
from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from pipeline_tasks import constants as C
from pipeline_tasks import tracking, tune
from pipeline_tasks.errors import ParamsError

SPACE = {
    "train.lr": {"type": "float", "low": 0.001, "high": 0.05, "log": True},
    "train.dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
    "train.finetune": {"type": "categorical", "choices": ["frozen", "lora"]},
    "train.lora_r": {"type": "int", "low": 2, "high": 8, "step": 2, "condition": {"train.finetune": "lora"}},
}


def test_suggest_params_maps_every_type_onto_a_real_trial(params):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen_lora = seen_frozen = False
    for _ in range(12):
        trial = study.ask()
        chosen = tune.suggest_params(trial, SPACE, params)
        dists = trial.distributions
        assert dists["train.lr"] == FloatDistribution(0.001, 0.05, log=True)
        assert dists["train.dropout"] == FloatDistribution(0.0, 0.3, step=0.1)
        assert dists["train.finetune"] == CategoricalDistribution(["frozen", "lora"])
        if chosen["train.finetune"] == "lora":
            seen_lora = True
            assert dists["train.lora_r"] == IntDistribution(2, 8, step=2)
            assert chosen["train.lora_r"] in (2, 4, 6, 8)
        else:
            seen_frozen = True
            assert "train.lora_r" not in chosen and "train.lora_r" not in dists  # condition not met
        study.tell(trial, 0.0)
    assert seen_lora and seen_frozen


def test_conditions_read_base_params_and_fixed_trials(params):
    space = {"train.lora_r": {"type": "int", "low": 2, "high": 8, "condition": {"train.finetune": ["lora", "full"]}}}
    params["train"]["finetune"] = "frozen"
    assert tune.suggest_params(optuna.trial.FixedTrial({"train.lora_r": 4}), space, params) == {}
    params["train"]["finetune"] = "full"
    assert tune.suggest_params(optuna.trial.FixedTrial({"train.lora_r": 4}), space, params) == {"train.lora_r": 4}


@pytest.mark.parametrize("entry, message", [
    ({"train.nope": {"type": "float", "low": 0.1, "high": 1.0}}, "train.nope"),
    ({"train.lr": {"type": "gaussian", "low": 0.1, "high": 1.0}}, "gaussian"),
    ({"train.lr": {"type": "float", "low": 0.1}}, "high"),
    ({"train.lr": {"type": "float", "low": 0.1, "high": 1.0, "logg": True}}, "logg"),
    ({"train.finetune": {"type": "categorical", "choices": []}}, "choices"),
])
def test_a_bad_search_space_fails_before_training(params, entry, message):
    params["tune"]["search_space"] = entry
    with pytest.raises(ParamsError, match=message):
        tune.check_space(params)


def test_trial_params_override_epochs_seed_and_check_types(params):
    params["tune"]["epochs"] = 2
    trial = tune.trial_params(params, {"train.lr": 0.01, "train.lora_r": 4}, number=3)
    assert trial["train"]["lr"] == 0.01 and trial["train"]["lora_r"] == 4 and trial["train"]["epochs"] == 2
    assert trial["seed"] == params["seed"] + 3
    assert params["train"]["lr"] != 0.01  # the stage's params are not touched
    with pytest.raises(ParamsError, match="train.lora_r"):
        tune.trial_params(params, {"train.lora_r": 4.5}, number=0)


def test_median_pruner_prunes_a_bad_trial_after_the_warm_up(params, tmp_path):
    params["tune"].update(pruner="median", pruner_startup_trials=2, pruner_warmup_epochs=1)
    study = tune.open_study(params, tmp_path)
    for good in (0.5, 0.6):
        trial = study.ask()
        report = tune.epoch_reporter(trial)
        report(1, good)
        report(2, good)
        study.tell(trial, good)
    bad = study.ask()
    report = tune.epoch_reporter(bad)
    report(1, 0.0)  # warm-up epoch: never pruned
    with pytest.raises(optuna.TrialPruned):
        report(2, 0.0)
    study.tell(bad, state=optuna.trial.TrialState.PRUNED)
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.PRUNED) == 1


def test_pruner_choices(params):
    params["tune"]["pruner"] = "hyperband"
    assert isinstance(tune.make_pruner(params), optuna.pruners.HyperbandPruner)
    params["tune"]["pruner"] = "none"
    assert isinstance(tune.make_pruner(params), optuna.pruners.NopPruner)
    params["tune"]["pruner"] = "sometimes"
    with pytest.raises(ParamsError, match="sometimes"):
        tune.make_pruner(params)


def test_the_study_never_shares_the_mlflow_database(params, tmp_path, monkeypatch):
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    assert tune.storage_url(params, tmp_path) == f"sqlite:///{(tmp_path / 'optuna' / 'study.db').resolve()}"
    params["tune"]["storage"] = tracking.tracking_uri(params, tmp_path)
    with pytest.raises(ParamsError, match="MLflow"):
        tune.storage_url(params, tmp_path)


def test_tune_run_logs_child_runs_writes_best_params_and_continues_the_study(tiny_split, tiny_params, monkeypatch):
    import mlflow

    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(C.PARENT_RUN_ENV, raising=False)
    root = tiny_split
    space = {key: SPACE[key] for key in ("train.lr", "train.finetune", "train.lora_r")}
    tiny_params["tune"].update(n_trials=2, epochs=1, search_space=space, study_name="t")

    with tracking.stage_run("tune", tiny_params, root) as parent:
        first = tune.run(tiny_params, root)

    assert first["n_trials"] == 2 and first["n_complete"] + first["n_pruned"] == 2
    best = json.loads((root / C.BEST_PARAMS_FILE).read_text())
    assert best == first["best_params"] and best and set(best) <= set(space)
    assert 0.001 <= best["train.lr"] <= 0.05
    assert (root / "optuna" / "study.db").exists()
    assert {p.name for p in (root / "reports" / "tune").iterdir()} >= {
        "optimization_history.png", "parallel_coordinate.png", "param_importances.png", "trials.html"}

    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  output_format="list")
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1"]
    for child in children:
        assert child.data.tags["optuna.state"] == "COMPLETE" and child.info.status == "FINISHED"
        assert "train.lr" in child.data.params and "value" in child.data.metrics
        assert "epoch/valid_ndcg_at_10" in child.data.metrics  # the per-epoch curve (train.fit logs it)

    tiny_params["tune"]["n_trials"] = 1
    second = tune.run(tiny_params, root)  # no MLflow run active: still works
    assert second["n_trials"] == 3
    study = optuna.load_study(study_name="t", storage=tune.storage_url(tiny_params, root))
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert second["best_value"] >= first["best_value"]


def test_a_trial_worse_than_its_predecessors_is_pruned_inside_run(tiny_split, tiny_params, monkeypatch):
    """Two earlier trials that scored a perfect 1.0 every epoch make any real trial below median."""
    import mlflow

    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(C.PARENT_RUN_ENV, raising=False)
    space = {"train.lr": SPACE["train.lr"]}
    tiny_params["tune"].update(n_trials=1, epochs=2, search_space=space, study_name="p", pruner="median",
                               pruner_startup_trials=2, pruner_warmup_epochs=1)
    study = tune.open_study(tiny_params, tiny_split)
    for lr in (0.01, 0.02):
        study.add_trial(optuna.trial.create_trial(
            params={"train.lr": lr}, distributions={"train.lr": FloatDistribution(0.001, 0.05, log=True)},
            value=1.0, intermediate_values={1: 1.0, 2: 1.0}))

    with tracking.stage_run("tune", tiny_params, tiny_split) as parent:
        result = tune.run(tiny_params, tiny_split)

    assert result["n_trials"] == 3 and result["n_pruned"] == 1 and result["best_value"] == 1.0
    (child,) = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  output_format="list")
    assert child.data.tags["optuna.state"] == "PRUNED" and child.info.status == "FINISHED"

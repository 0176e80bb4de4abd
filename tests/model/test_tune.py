"""tune: the search-space mapper, pruning, and a real (tiny) study that continues across runs."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from pipeline_tasks import tune
from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io, tracking
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.model import search_space, tuning

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
        chosen = search_space.suggest_params(trial, SPACE, params)
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
    assert search_space.suggest_params(optuna.trial.FixedTrial({"train.lora_r": 4}), space, params) == {}
    params["train"]["finetune"] = "full"
    fixed = optuna.trial.FixedTrial({"train.lora_r": 4})
    assert search_space.suggest_params(fixed, space, params) == {"train.lora_r": 4}


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"train.nope": {"type": "float", "low": 0.1, "high": 1.0}}, "train.nope"),
        ({"train.lr": {"type": "gaussian", "low": 0.1, "high": 1.0}}, "gaussian"),
        ({"train.lr": {"type": "float", "low": 0.1}}, "high"),
        ({"train.lr": {"type": "float", "low": 0.1, "high": 1.0, "logg": True}}, "logg"),
        ({"train.finetune": {"type": "categorical", "choices": []}}, "choices"),
    ],
)
def test_a_bad_search_space_fails_before_training(params, entry, message):
    params["tune"]["search_space"] = entry
    with pytest.raises(ParamsError, match=message):
        search_space.check_space(params)


def test_trial_params_override_epochs_seed_and_check_types(params):
    params["tune"]["epochs"] = 2
    trial = tuning.trial_params(params, {"train.lr": 0.01, "train.lora_r": 4}, number=3)
    assert trial["train"]["lr"] == 0.01 and trial["train"]["lora_r"] == 4 and trial["train"]["epochs"] == 2
    assert trial["seed"] == params["seed"] + 3
    assert params["train"]["lr"] != 0.01  # the stage's params are not touched
    with pytest.raises(ParamsError, match="train.lora_r"):
        tuning.trial_params(params, {"train.lora_r": 4.5}, number=0)


def test_median_pruner_prunes_a_bad_trial_after_the_warm_up(params, tiny_split):
    params["tune"].update(pruner="median", pruner_startup_trials=2, pruner_warmup_epochs=1)
    study = tuning.open_study(params, tiny_split)
    for good in (0.5, 0.6):
        trial = study.ask()
        report = tuning.epoch_reporter(trial)
        report(1, good)
        report(2, good)
        study.tell(trial, good)
    bad = study.ask()
    report = tuning.epoch_reporter(bad)
    report(1, 0.0)  # warm-up epoch: never pruned
    with pytest.raises(optuna.TrialPruned):
        report(2, 0.0)
    study.tell(bad, state=optuna.trial.TrialState.PRUNED)
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.PRUNED) == 1


def test_pruner_choices(params):
    params["tune"]["pruner"] = "hyperband"
    assert isinstance(tuning.make_pruner(params), optuna.pruners.HyperbandPruner)
    params["tune"]["pruner"] = "none"
    assert isinstance(tuning.make_pruner(params), optuna.pruners.NopPruner)
    params["tune"]["pruner"] = "sometimes"
    with pytest.raises(ParamsError, match="sometimes"):
        tuning.make_pruner(params)


def test_the_study_never_shares_the_mlflow_database(params, tmp_path, monkeypatch):
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    assert tuning.storage_url(params, tmp_path) == f"sqlite:///{(tmp_path / 'optuna' / 'study.db').resolve()}"
    params["tune"]["storage"] = tracking.tracking_uri(params, tmp_path)
    with pytest.raises(ParamsError, match="MLflow"):
        tuning.storage_url(params, tmp_path)


def test_tune_run_logs_child_runs_writes_best_params_and_continues_the_study(tiny_split, tiny_params, monkeypatch):
    import mlflow

    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(C.PARENT_RUN_ENV, raising=False)
    root = tiny_split
    space = {key: SPACE[key] for key in ("train.lr", "train.finetune", "train.lora_r")}
    # every_n_nights=1: both runs search (the schedule between searches is its own test below).
    tiny_params["tune"].update(n_trials=2, epochs=1, search_space=space, study_name="t", every_n_nights=1)

    with tracking.stage_run("tune", tiny_params, root) as parent:
        first = tune.run(tiny_params, root)

    assert first["n_trials"] == 2 and first["n_complete"] + first["n_pruned"] == 2
    best = json.loads((root / C.BEST_PARAMS_FILE).read_text())
    assert best == first["best_params"] and best and set(best) <= set(space)
    assert 0.001 <= best["train.lr"] <= 0.05
    assert (root / "optuna" / "study.db").exists()
    assert {p.name for p in (root / "reports" / "tune").iterdir()} >= {
        "optimization_history.png",
        "parallel_coordinate.png",
        "param_importances.png",
        "trials.html",
    }

    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1"]
    for child in children:
        assert child.data.tags["optuna.state"] == "COMPLETE" and child.info.status == "FINISHED"
        assert "train.lr" in child.data.params and "value" in child.data.metrics
        assert "epoch/valid_ndcg_at_10" in child.data.metrics  # the per-epoch curve (train.fit logs it)

    tiny_params["tune"]["n_trials"] = 1
    second = tune.run(tiny_params, root)  # no MLflow run active: still works
    assert second["n_trials"] == 3
    assert second["study"] == first["study"] == tuning.study_name(tiny_params, root)
    study = optuna.load_study(study_name=second["study"], storage=tuning.storage_url(tiny_params, root))
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert second["best_value"] >= first["best_value"]


def test_a_trial_worse_than_its_predecessors_is_pruned_inside_run(tiny_split, tiny_params, monkeypatch):
    """Two earlier trials that scored a perfect 1.0 every epoch make any real trial below median."""
    import mlflow

    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(C.PARENT_RUN_ENV, raising=False)
    space = {"train.lr": SPACE["train.lr"]}
    tiny_params["tune"].update(
        n_trials=1,
        epochs=2,
        search_space=space,
        study_name="p",
        pruner="median",
        pruner_startup_trials=2,
        pruner_warmup_epochs=1,
    )
    study = tuning.open_study(tiny_params, tiny_split)
    for lr in (0.01, 0.02):
        study.add_trial(
            optuna.trial.create_trial(
                params={"train.lr": lr},
                distributions={"train.lr": FloatDistribution(0.001, 0.05, log=True)},
                value=1.0,
                intermediate_values={1: 1.0, 2: 1.0},
            )
        )

    with tracking.stage_run("tune", tiny_params, tiny_split) as parent:
        result = tune.run(tiny_params, tiny_split)

    assert result["n_trials"] == 3 and result["n_pruned"] == 1 and result["best_value"] == 1.0
    (child,) = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list"
    )
    assert child.data.tags["optuna.state"] == "PRUNED" and child.info.status == "FINISHED"


# --- several workers on one PostgreSQL study ---------------------------------------------------

# Each worker is the real stage (`tune.main`, as `python -m pipeline_tasks.tune` runs it), started
# after its heavy imports and a barrier, so the two really run their trials at the same time.
WORKER = """
import sys, time
from pathlib import Path
from pipeline_tasks import train, tune  # torch, transformers, optuna: imported before the barrier
ready, other = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
deadline = time.monotonic() + 300
while not other.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(tune.main(sys.argv[3:]))
"""


@pytest.fixture
def postgres_url(postgres_parent_dir):
    """A throwaway PostgreSQL 15 cluster (pipeline_tasks.infra.postgres), stopped afterwards."""
    from pipeline_tasks.infra import postgres

    with postgres.postgres_server(postgres_parent_dir / "cluster", database="optuna", user="optuna") as server:
        yield server.url


def test_two_worker_processes_share_one_postgres_study(postgres_url, split_writer, tiny_params, tmp_path, monkeypatch):
    import subprocess
    import sys

    from pipeline_tasks.core import params as P
    from tests.conftest import PROJECT_ROOT

    per_worker = 3
    tiny_params["tune"].update(
        storage=postgres_url,
        study_name="shared",
        n_trials=per_worker,
        epochs=2,
        pruner="median",
        pruner_startup_trials=2,
        pruner_warmup_epochs=1,
        search_space={"train.lr": SPACE["train.lr"], "train.dropout": SPACE["train.dropout"]},
    )
    params_file = tmp_path / "params.yaml"
    P.dump(tiny_params, params_file)
    roots = [split_writer(tmp_path / f"worker{i}") for i in range(2)]  # as on two hosts: own disk, one study
    flags = [tmp_path / f"ready{i}" for i in range(2)]
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(flags[i]),
                str(flags[1 - i]),
                "--params",
                str(params_file),
                "--root",
                str(roots[i]),
                "--no-mlflow",
            ],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-3000:]

    reports = [json.loads((root / "metrics" / "tune.json").read_text()) for root in roots]
    assert reports[0]["study"] == reports[1]["study"]  # the same data and search: one study
    study = optuna.load_study(study_name=reports[0]["study"], storage=postgres_url)
    trials = study.trials
    # None lost, none duplicated: exactly the trials both asked for, numbered 0..n-1, all finished.
    assert sorted(t.number for t in trials) == list(range(2 * per_worker))
    assert len({t._trial_id for t in trials}) == 2 * per_worker
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 2 * per_worker  # no suggestion twice
    by_worker: dict[str, list] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    assert sorted(len(ts) for ts in by_worker.values()) == [per_worker, per_worker]
    # They really ran side by side: each worker started a trial before the other had finished.
    spans = [(min(t.datetime_start for t in ts), max(t.datetime_complete for t in ts)) for ts in by_worker.values()]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]

    assert max(r["n_trials"] for r in reports) == 2 * per_worker  # the last to finish saw every trial
    assert all(r["best_value"] <= study.best_value for r in reports)
    assert max(r["best_value"] for r in reports) == study.best_value


def test_shared_storage_workers_draw_different_start_up_trials(params, monkeypatch):
    url = "postgresql+psycopg2://u@h/db"
    assert tuning.sampler_seed(params, "sqlite:///x.db", 3) == params["tune"]["sampler_seed"] + 3  # reproducible
    monkeypatch.setattr(tuning, "worker_name", lambda: "host-a:7")
    first = tuning.sampler_seed(params, url, 0)
    monkeypatch.setattr(tuning, "worker_name", lambda: "host-b:7")  # another container, same pid
    assert tuning.sampler_seed(params, url, 0) != first
    assert 0 <= first < 2**32


def test_an_unreachable_storage_fails_with_a_clear_message(tmp_path):
    from pipeline_tasks.core.errors import PipelineError

    with pytest.raises(PipelineError, match=r"(?s)u:\*\*\*@127.0.0.1:1/db.*check tune.storage") as err:
        tuning.open_storage("postgresql+psycopg2://u:secret@127.0.0.1:1/db", attempts=2)
    assert "secret" not in str(err.value)  # the password never reaches a log


# --- one study per data version; searching every n nights -------------------------------------


def test_new_data_opens_a_new_study_warm_started_from_the_last_best(tiny_split, tiny_params, monkeypatch):
    """Tonight's split differs (one more valid interaction per user): its trials are not mixed with
    yesterday's, its best is its own, and its first trial is yesterday's best."""
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(C.PARENT_RUN_ENV, raising=False)
    space = {"train.lr": SPACE["train.lr"]}
    # every_n_nights=1: both nights search (with the weekly default the second would reuse the first).
    tiny_params["tune"].update(
        n_trials=2, epochs=1, search_space=space, study_name="night", pruner="none", every_n_nights=1
    )
    first = tune.run(tiny_params, tiny_split)

    valid = io.read_table(tiny_split / C.DATA_SPLIT / "valid")
    shifted = valid.assign(**{C.TIMESTAMP: valid[C.TIMESTAMP] + pd.Timedelta(minutes=1)})
    io.write_table(shifted, tiny_split / C.DATA_SPLIT / "valid")  # another night's data
    second = tune.run(tiny_params, tiny_split)

    assert first["study"] != second["study"] and second["n_trials"] == 2  # not 4: no trial of the old data
    study = optuna.load_study(study_name=second["study"], storage=tuning.storage_url(tiny_params, tiny_split))
    assert study.trials[0].params == first["best_params"]
    assert study.trials[0].user_attrs["warm_start_from"] == first["study"]
    assert json.loads((tiny_split / C.BEST_PARAMS_FILE).read_text()) == second["best_params"]


def test_a_new_search_tries_the_configured_values_before_sampling(tiny_split, tiny_params, monkeypatch):
    """The run's own values (lr 0.01, finetune lora, lora_r 8 in tiny_params) are a trial of the
    first search, so a few random trials cannot replace them with something worse; values outside
    the space are not queued."""
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(C.PARENT_RUN_ENV, raising=False)
    tiny_params["train"].update(lr=0.01, finetune="lora", lora_r=8)
    tiny_params["tune"].update(n_trials=2, epochs=1, search_space=SPACE, study_name="cfg", pruner="none")
    result = tune.run(tiny_params, tiny_split)

    study = optuna.load_study(study_name=result["study"], storage=tuning.storage_url(tiny_params, tiny_split))
    configured = {"train.lr": 0.01, "train.dropout": tiny_params["train"]["dropout"], "train.finetune": "lora"}
    assert study.trials[0].params == {**configured, "train.lora_r": 8}
    assert study.trials[0].user_attrs["configured"] and "configured" not in study.trials[1].user_attrs
    assert result["best_value"] >= study.trials[0].value

    tiny_params["train"]["finetune"] = "frozen"  # lora_r's condition no longer holds: not a searched key
    assert search_space.configured_values(SPACE, tiny_params) == {**configured, "train.finetune": "frozen"}
    tiny_params["train"]["lr"] = 0.5  # outside [0.001, 0.05]: the search has no such point
    assert search_space.configured_values(SPACE, tiny_params) is None


def test_the_nights_between_searches_reuse_the_last_search(tiny_split, tiny_params, monkeypatch):
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(C.PARENT_RUN_ENV, raising=False)
    space = {"train.lr": SPACE["train.lr"]}
    tiny_params["tune"].update(n_trials=1, epochs=1, search_space=space, study_name="weekly", every_n_nights=3)
    nights = [tune.run(tiny_params, tiny_split) for _ in range(4)]
    assert [n["searched"] for n in nights] == [True, False, False, True]
    assert nights[1]["study"] == nights[2]["study"] == nights[0]["study"]
    assert nights[1]["best_params"] == nights[0]["best_params"] and "reused" in nights[1]["why"]
    with pytest.raises(ParamsError, match="every_n_nights"):
        tune.run({**tiny_params, "tune": {**tiny_params["tune"], "every_n_nights": 0}}, tiny_split)

"""The gate, audited alias moves, rollback and the A/B config, on a real MLflow registry.

A tiny project (topic split, tiny encoder) is trained twice and registered twice (v1, v2)
once per module; each test works on its own copy of the SQLite store.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline_tasks import baselines, compress, evaluate, register, train
from pipeline_tasks.core import constants as C
from pipeline_tasks.core import params as P
from pipeline_tasks.core.stage_cli import run_stage
from pipeline_tasks.serving import registry
from pipeline_tasks.serving.gate import decide

TESTS = Path(__file__).resolve().parents[1]


def write_split(root: Path) -> Path:
    """The model tests' tiny topic split (tests/model/conftest.py), imported by path."""
    spec = importlib.util.spec_from_file_location("model_fixtures", TESTS / "model" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_split(root)


def tiny_registry_params(encoder_dir: Path) -> dict:
    params = P.defaults()
    params["train"].update(
        encoder=str(encoder_dir),
        dim=16,
        user_layers=1,
        user_heads=2,
        max_seq_len=8,
        max_text_len=12,
        epochs=2,
        batch_size=8,
        n_negatives=8,
        text_grad_items=4,
        checkpoint_every=0,
        device="cpu",
        dropout=0.0,
        lr=0.01,
        encoder_lr=0.001,
    )
    params["baselines"]["models"] = ["Pop"]
    params["compress"].update(variants=["fp32"], latency_calls=10, warmup_calls=1, throughput_items=8)
    params["evaluate"].update(bootstrap_resamples=50, min_group_users=5)
    return params


def train_and_register(params: dict, root: Path) -> dict:
    for name, module in (("train", train), ("compress", compress), ("evaluate", evaluate)):
        run_stage(name, module.run, params, root, use_mlflow=False)
    return register.run(params, root)


# The shape `dvc repro` writes; the md5s are what register must copy into the version's tags.
DVC_LOCK = """schema: '2.0'
stages:
  split:
    cmd: python -m pipeline_tasks.split
    outs:
    - path: data/split
      hash: md5
      md5: 0123456789abcdef0123456789abcdef.dir
  train:
    cmd: python -m pipeline_tasks.train
    outs:
    - path: models/model
      hash: md5
      md5: fedcba9876543210fedcba9876543210.dir
"""
AIRFLOW_RUN = {"RECPIPE_DAG_ID": "recpipe_nightly", "RECPIPE_DAG_RUN_ID": "scheduled__2026-11-25T02:00:00+00:00"}


def build_registry_project(root: Path, encoder_dir: Path) -> tuple[Path, dict, list[dict]]:
    """Split, baselines, then two trainings (different seeds) registered as v1 and v2 (v2 "from Airflow")."""
    write_split(root)
    (root / "dvc.lock").write_text(DVC_LOCK)
    params = tiny_registry_params(encoder_dir)
    params["mlflow"]["tracking_uri"] = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    os.environ.pop(C.TRACKING_URI_ENV, None)  # mlflow.set_tracking_uri exports it: another test's store
    run_stage("baselines", baselines.run, params, root, use_mlflow=False)
    first = train_and_register(params, root)
    client = registry.client_for(params, root)
    if registry.aliases(client, "recpipe").get(C.ALIAS_CHAMPION) != "1":
        registry.promote(client, "recpipe", "1", reason="test fixture: v1 must be champion", who="fixture")
    os.environ.update(AIRFLOW_RUN)
    try:
        second = train_and_register({**params, "seed": 7}, root)
    finally:
        for key in AIRFLOW_RUN:
            os.environ.pop(key, None)
    return root, params, [first, second]


@pytest.fixture(scope="module")
def registry_project(tmp_path_factory, tiny_encoder_dir):
    return build_registry_project(tmp_path_factory.mktemp("registry") / "project", tiny_encoder_dir)


@pytest.fixture
def store(registry_project, tmp_path, monkeypatch):
    """(params, client, results) on a private copy of the store (artifacts stay shared, read-only)."""
    root, params, results = registry_project
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which tracking.tracking_uri lets win over
    # params: without this the CLI would talk to the previous test's store.
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    shutil.copy(root / "mlflow" / "mlflow.db", tmp_path / "mlflow.db")
    params = {**params, "mlflow": {**params["mlflow"], "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    P.dump(params, tmp_path / "params.yaml")
    return params, registry.client_for(params, root), results, tmp_path


def champion(client) -> str | None:
    return registry.aliases(client, "recpipe").get(C.ALIAS_CHAMPION)


# --- the gate as a function ----------------------------------------------------------------------


def scores(ndcg: float, slices: dict | None = None) -> dict:
    return {"metrics": {"ndcg@10": ndcg}, "slices": slices or {}}


def slice_of(**groups) -> dict:
    return {"history_length": {g: {"users": n, "ndcg@10": v} for g, (n, v) in groups.items()}}


@pytest.fixture
def gate_params() -> dict:
    params = P.defaults()
    params["register"].update(min_improvement=0.05, max_slice_drop=0.1, max_latency_p50_ms=20.0, max_size_mb=100.0)
    params["evaluate"]["min_group_users"] = 20
    return params


BUDGET_OK = {"latency_p50_ms": 5.0, "latency_p99_ms": 9.0, "latency_calls": 500, "size_mb": 50.0}


def test_gate_promotes_a_clear_improvement_and_keeps_a_small_one(gate_params):
    good = decide(scores(0.21), ("3", scores(0.20 / 1.06)), gate_params, BUDGET_OK, None)
    assert good.passed and good.promote and good.kind == "compare" and good.champion_version == "3"
    small = decide(scores(0.201), ("3", scores(0.20)), gate_params, BUDGET_OK, None)
    assert not small.passed and "ndcg_improvement" in small.summary and "champion kept" in small.summary


def test_gate_fails_on_a_guarded_slice_drop_but_ignores_tiny_groups(gate_params):
    champ = scores(0.20, slice_of(short=(100, 0.30), long=(5, 0.50)))
    dropped = decide(
        scores(0.30, slice_of(short=(100, 0.25), long=(5, 0.50))), ("1", champ), gate_params, BUDGET_OK, None
    )
    assert not dropped.passed
    assert [c.name for c in dropped.checks if not c.passed] == ["guarded_slices"]
    assert dropped.slice_deltas["history_length"]["short"]["drop_rel"] == pytest.approx(1 / 6)
    tiny_group = decide(
        scores(0.30, slice_of(short=(100, 0.30), long=(5, 0.0))), ("1", champ), gate_params, BUDGET_OK, None
    )
    assert tiny_group.passed  # 5 users < evaluate.min_group_users: too noisy to judge


def test_gate_enforces_latency_and_size_budgets(gate_params):
    slow = decide(scores(0.3), ("1", scores(0.1)), gate_params, {**BUDGET_OK, "latency_p50_ms": 25.0}, None)
    big = decide(scores(0.3), ("1", scores(0.1)), gate_params, {**BUDGET_OK, "size_mb": 500.0}, None)
    assert [c.name for c in slow.checks if not c.passed] == ["latency_budget"]
    assert [c.name for c in big.checks if not c.passed] == ["size_budget"]


def test_the_latency_budget_reads_the_median_not_a_loaded_tail(gate_params):
    """A loaded machine stretches p99 (89 ms measured under load for a 0.95 ms model): the gate judges p50."""
    loaded = {"latency_p50_ms": 1.2, "latency_p99_ms": 89.0, "latency_calls": 500, "size_mb": 50.0}
    decision = decide(scores(0.3), None, gate_params, loaded, ("Pop", 0.1))
    assert decision.passed
    latency = next(c for c in decision.checks if c.name == "latency_budget")
    assert latency.passed
    assert "p50 1.20 ms (median of 500 calls; p99 89.00 ms shown, not judged)" in latency.detail
    assert "register.max_latency_p50_ms" in latency.detail and latency.detail in decision.summary
    slow_median = decide(scores(0.3), None, gate_params, {**loaded, "latency_p50_ms": 21.0}, ("Pop", 0.1))
    assert [c.name for c in slow_median.checks if not c.passed] == ["latency_budget"]
    assert "no champion" in slow_median.summary and "p50 21.00 ms" in slow_median.summary
    unmeasured = decide(scores(0.3), None, gate_params, {"latency_p99_ms": 1.0, "size_mb": 50.0}, ("Pop", 0.1))
    assert [c.name for c in unmeasured.checks if not c.passed] == ["latency_budget"]
    assert "re-run the compress stage" in unmeasured.summary


def test_guarded_slices_must_be_slices_of_this_split():
    from pipeline_tasks.core.errors import ParamsError
    from pipeline_tasks.serving.gate import check_guarded_slices

    available = ["history_length", "cold_start", "popularity", "user.gender"]
    check_guarded_slices(["cold_start", "user.gender"], available)
    with pytest.raises(ParamsError, match=r"'user.gendre', which .* valid here: history_length, .*user.gender"):
        check_guarded_slices(["cold_start", "user.gendre"], available)


def test_first_champion_needs_the_floor_and_the_best_baseline(gate_params):
    gate_params["register"]["min_ndcg"] = 0.1
    ok = decide(scores(0.2), None, gate_params, BUDGET_OK, ("EASE", 0.15))
    assert ok.passed and ok.kind == "first" and "first champion" in ok.summary
    below_baseline = decide(scores(0.2), None, gate_params, BUDGET_OK, ("EASE", 0.25))
    below_floor = decide(scores(0.05), None, gate_params, BUDGET_OK, ("EASE", 0.01))
    assert [c.name for c in below_baseline.checks if not c.passed] == ["beats_best_baseline"]
    assert [c.name for c in below_floor.checks if not c.passed] == ["ndcg_floor"]
    gate_params["register"]["auto_promote"] = False
    manual = decide(scores(0.2), None, gate_params, BUDGET_OK, ("EASE", 0.15))
    assert manual.passed and not manual.promote and "recpipe promote" in manual.summary


# --- the registered pipeline runs ------------------------------------------------------------------


def test_pipeline_registrations_are_gated_and_the_champion_is_rescored(store):
    params, client, (first, second), _ = store
    assert first["version"] == "1" and second["version"] == "2"
    assert first["decision"]["kind"] == "first"
    assert {c["name"] for c in first["decision"]["checks"]} >= {"ndcg_floor", "beats_best_baseline", "latency_budget"}
    # The second run re-scored v1 (downloaded from the registry) on the same split: same number as v1's own gate.
    assert second["decision"]["kind"] == "compare" and second["decision"]["champion_version"] == "1"
    assert second["decision"]["champion_ndcg"] == pytest.approx(first["decision"]["challenger_ndcg"], abs=1e-9)
    assert registry.aliases(client, "recpipe")[C.ALIAS_CHALLENGER] == "2"
    assert champion(client) == ("2" if second["decision"]["promote"] else "1")
    v2 = client.get_model_version("recpipe", "2")
    assert v2.tags["gate.passed"] == str(second["decision"]["passed"]).lower()
    assert v2.tags["gate.champion_version"] == "1"
    actions = [(e["action"], e["to_version"]) for e in registry.history(client, "recpipe")]
    assert actions[0] == ("register", "1") and ("first_champion", "1") in actions and ("register", "2") in actions
    # Each move started an experiment naming the aliases it left; the last one is what servers run.
    running = registry.current_experiment(client, "recpipe")
    assert running["recorded"] and (running["champion"], running["challenger"]) == (champion(client), "2")


def force_state(client, champion_version: str, previous: str | None) -> None:
    client.set_registered_model_alias("recpipe", C.ALIAS_CHAMPION, champion_version)
    registry.set_or_delete_alias(client, "recpipe", C.ALIAS_PREVIOUS_CHAMPION, previous)


def test_promotion_past_a_failed_gate_needs_a_reason_which_is_recorded(store):
    _, client, _, _ = store
    force_state(client, "1", None)
    client.set_model_version_tag("recpipe", "2", "gate.passed", "false")
    with pytest.raises(registry.RegistryError, match="--reason"):
        registry.promote(client, "recpipe", "2")
    assert champion(client) == "1"
    event = registry.promote(client, "recpipe", "2", reason="hotfix for the holiday catalogue", who="alice")
    assert event["forced"] and event["from_version"] == "1" and event["to_version"] == "2"
    assert {C.ALIAS_CHAMPION: "2", C.ALIAS_PREVIOUS_CHAMPION: "1"}.items() <= registry.aliases(
        client, "recpipe"
    ).items()
    last = registry.history(client, "recpipe")[-1]
    assert last["actor"] == "alice" and last["reason"] == "hotfix for the holiday catalogue" and last["forced"]
    assert last["metrics"]["ndcg@10"]["from"] is not None and last["metrics"]["ndcg@10"]["delta"] is not None
    tags = client.get_model_version("recpipe", "2").tags
    assert (
        tags["champion.promoted_by"] == "alice"
        and "champion.retired_at" in client.get_model_version("recpipe", "1").tags
    )


def test_a_version_that_passed_the_gate_against_the_current_champion_needs_no_reason(store):
    _, client, _, _ = store
    force_state(client, "1", None)
    for key, value in {"gate.passed": "true", "gate.champion_version": "1"}.items():
        client.set_model_version_tag("recpipe", "2", key, value)
    assert not registry.promote(client, "recpipe", "2", who="bob")["forced"]
    with pytest.raises(registry.RegistryError, match="already the champion"):
        registry.promote(client, "recpipe", "2")
    force_state(client, "1", None)
    client.set_model_version_tag("recpipe", "2", "gate.champion_version", "99")  # gated against another champion
    with pytest.raises(registry.RegistryError, match="--reason"):
        registry.promote(client, "recpipe", "2")


def test_rollback_goes_back_after_a_load_check_and_refuses_a_broken_version(store):
    _, client, _, _ = store
    force_state(client, "2", "1")
    event = registry.rollback(client, "recpipe", reason="CTR fell", who="carol")
    assert (event["from_version"], event["to_version"]) == ("2", "1") and champion(client) == "1"
    assert registry.history(client, "recpipe")[-1]["action"] == "rollback"
    # A version whose artifacts cannot load is never made champion.
    broken = client.create_model_version("recpipe", source=str(Path("/nonexistent/recpipe-model").as_posix()))
    force_state(client, "1", str(broken.version))
    with pytest.raises(registry.RegistryError, match="load check"):
        registry.rollback(client, "recpipe")
    assert champion(client) == "1"
    with pytest.raises(registry.RegistryError, match="no previous_champion"):
        force_state(client, "1", None)
        registry.rollback(client, "recpipe")


class FlakyClient:
    """The real MlflowClient, except that the n-th registry write raises (a crash midway)."""

    WRITES = {
        "set_registered_model_alias",
        "delete_registered_model_alias",
        "set_model_version_tag",
        "set_registered_model_tag",
    }

    def __init__(self, client, fail_at: int):
        self.client, self.fail_at, self.writes = client, fail_at, 0

    def __getattr__(self, attr):
        method = getattr(self.client, attr)
        if attr not in self.WRITES:
            return method

        def write(*args, **kwargs):
            self.writes += 1
            if self.writes == self.fail_at:
                raise ConnectionError(f"injected failure at write {self.writes} ({attr})")
            return method(*args, **kwargs)

        return write


def test_a_failure_at_any_step_of_a_promotion_leaves_one_consistent_champion(store):
    _, client, _, _ = store
    force_state(client, "1", None)
    registry.set_ab_config(client, "recpipe", 0.5, salt="s1")  # an experiment that matches v1 / v2
    experiment_before = registry.experiment(client, "recpipe")
    n_events = len(registry.history(client, "recpipe"))
    fail_at = 1
    while True:
        flaky = FlakyClient(client, fail_at)
        try:
            registry.promote(flaky, "recpipe", "2", reason="failure injection", who="chaos")
        except registry.RegistryError as err:
            assert "failed midway" in str(err)
            now = registry.aliases(client, "recpipe")
            # Nothing happened: still exactly the old state, and nothing audited.
            assert now.get(C.ALIAS_CHAMPION) == "1" and C.ALIAS_PREVIOUS_CHAMPION not in now, (fail_at, now)
            assert len(registry.history(client, "recpipe")) == n_events
            assert "champion.promoted_at" not in client.get_model_version("recpipe", "2").tags
            # ... and the experiment servers log is still the one of those aliases.
            assert registry.experiment(client, "recpipe") == experiment_before, fail_at
            assert registry.current_experiment(client, "recpipe")["recorded"], fail_at
            fail_at += 1
            continue
        break
    assert fail_at > 5  # every write of the move was made to fail once
    assert registry.aliases(client, "recpipe")[C.ALIAS_CHAMPION] == "2"
    assert registry.history(client, "recpipe")[-1]["reason"] == "failure injection"
    after = registry.current_experiment(client, "recpipe")
    assert after["recorded"] and after["champion"] == "2" and after["id"] != experiment_before["id"]
    assert registry.history(client, "recpipe")[-1]["experiment_id"] == after["id"]


@pytest.mark.parametrize("action", ["set_challenger", "set_ab_config"])
def test_a_failure_at_any_step_of_a_split_change_leaves_the_old_split_and_experiment(store, action):
    _, client, _, _ = store
    force_state(client, "1", None)
    registry.set_ab_config(client, "recpipe", 0.5, salt="s1")
    before = (registry.aliases(client, "recpipe"), registry.ab_config(client, "recpipe"))
    experiment_before, n_events = registry.experiment(client, "recpipe"), len(registry.history(client, "recpipe"))
    change = {
        "set_challenger": lambda c: registry.set_challenger(c, "recpipe", "1", reason="failure injection"),
        "set_ab_config": lambda c: registry.set_ab_config(c, "recpipe", 0.2, reason="failure injection"),
    }[action]
    fail_at = 1
    while True:
        try:
            change(FlakyClient(client, fail_at))
        except ConnectionError:
            assert (registry.aliases(client, "recpipe"), registry.ab_config(client, "recpipe")) == before, fail_at
            assert registry.experiment(client, "recpipe") == experiment_before, fail_at
            assert len(registry.history(client, "recpipe")) == n_events, fail_at
            fail_at += 1
            continue
        break
    assert fail_at > 3  # the split, the experiment and both audit events each failed once
    assert registry.current_experiment(client, "recpipe")["id"] != experiment_before["id"]


def test_every_action_that_changes_the_split_starts_a_new_experiment(store):
    _, client, _, _ = store
    force_state(client, "1", None)
    client.set_registered_model_alias("recpipe", C.ALIAS_CHALLENGER, "1")  # by hand: the record is stale
    assert not registry.current_experiment(client, "recpipe")["recorded"]
    ids = []

    def restarted(champion_version: str, challenger_version: str, share: float) -> dict:
        record = registry.experiment(client, "recpipe")
        assert (record["champion"], record["challenger"], record["share"]) == (
            champion_version,
            challenger_version,
            share,
        )
        assert record["id"] not in ids and registry.current_experiment(client, "recpipe")["recorded"]
        ids.append(record["id"])
        return record

    registry.set_ab_config(client, "recpipe", 0.5, salt="s1", planned_exposures=1234, plan_basis="test plan")
    assert restarted("1", "1", 0.5)["planned_exposures_per_arm"] == 1234
    registry.set_ab_config(client, "recpipe", 0.5, guardrails=["purchase_rate"])  # how it is judged: same experiment
    assert registry.experiment(client, "recpipe")["id"] == ids[-1]
    registry.set_ab_config(client, "recpipe", 0.5, planned_exposures=999)  # a new plan is a new experiment
    assert restarted("1", "1", 0.5)["planned_exposures_per_arm"] == 999
    registry.set_ab_config(client, "recpipe", 0.3)
    restarted("1", "1", 0.3)
    registry.set_challenger(client, "recpipe", "2", reason="test")
    restarted("1", "2", 0.3)
    event = registry.promote(client, "recpipe", "2", reason="test promotion", who="gina")
    assert restarted("2", "2", 0.3)["started_by"] == "gina" and event["experiment_id"] == ids[-1]
    registry.rollback(client, "recpipe", reason="test rollback", check=lambda *_: None)
    restarted("1", "2", 0.3)
    events = registry.history(client, "recpipe")
    assert [e["id"] for e in registry.experiments(client, "recpipe")][-len(ids) :] == ids
    # The restart is audited just before the action that caused it (whose event stays the last write).
    assert [e["action"] for e in events[-2:]] == ["experiment", "rollback"]
    assert events[-2]["experiment"]["id"] == ids[-1] and f"experiment {ids[-1]}" in events[-2]["reason"]


def test_a_record_that_does_not_name_the_served_aliases_gets_a_derived_id():
    record = {"id": "abc123", "champion": "1", "challenger": "2", "share": 0.5, "salt": "s"}
    ab = {"share": 0.5, "salt": "s", "planned_exposures_per_arm": 100}
    assert registry.served_experiment(record, "1", "2", ab) == {**record, "recorded": True}
    moved = registry.served_experiment(record, "1", "3", ab)  # challenger moved in the MLflow UI
    assert moved["id"].startswith("unrecorded-") and not moved["recorded"] and moved["stored_id"] == "abc123"
    assert moved["challenger"] == "3" and moved["planned_exposures_per_arm"] == 100
    assert registry.served_experiment(None, "1", "3", ab)["id"] == moved["id"]  # every server derives the same id
    assert registry.served_experiment(record, "1", "3", {**ab, "salt": "t"})["id"] != moved["id"]


def test_ab_config_lives_in_the_registry_and_keeps_its_salt(store):
    _, client, _, _ = store
    assert registry.ab_config(client, "recpipe")["share"] == 0.0
    first = registry.set_ab_config(client, "recpipe", 0.1, guardrails=["purchase_rate"], who="dana")
    second = registry.set_ab_config(client, "recpipe", 0.25)
    assert second["salt"] == first["salt"] and second["guardrails"] == ["purchase_rate"]
    assert registry.ab_config(client, "recpipe")["share"] == 0.25
    assert registry.set_ab_config(client, "recpipe", 0.25, salt="s2")["salt"] == "s2"
    with pytest.raises(registry.RegistryError, match="between 0 and 1"):
        registry.set_ab_config(client, "recpipe", 1.5)
    assert registry.history(client, "recpipe")[-1]["action"] == "ab_config"


def test_cli_promote_history_and_ab(store, capsys):
    from pipeline_tasks.ops.cli import main

    params, client, _, root = store
    force_state(client, "1", None)
    client.set_model_version_tag("recpipe", "2", "gate.passed", "false")
    assert main(["--root", str(root), "promote", "2"]) == 2
    assert "--reason" in capsys.readouterr().err
    assert main(["--root", str(root), "promote", "2", "--reason", "manual test", "--actor", "erin"]) == 0
    assert main(["--root", str(root), "ab", "--share", "0.2", "--salt", "xyz"]) == 0
    assert main(["--root", str(root), "history"]) == 0
    out = capsys.readouterr().out
    assert "[FORCED] manual test" in out and "erin" in out and "champion=v2" in out and "'salt': 'xyz'" in out
    assert registry.ab_config(client, "recpipe")["guardrails"] == params["register"]["ab_guardrails"]
    # The plan: from params' baseline CTR unless --planned-exposures, stored with the experiment.
    from pipeline_tasks.serving import ab_report

    planned = ab_report.planned_exposures(params["register"])
    assert registry.experiment(client, "recpipe")["planned_exposures_per_arm"] == planned
    assert main(["--root", str(root), "ab", "--share", "0.2", "--planned-exposures", "5000"]) == 0
    assert "'planned_exposures_per_arm': 5000" in capsys.readouterr().out
    assert registry.experiment(client, "recpipe")["plan_basis"] == "recpipe ab --planned-exposures"
    assert main(["--root", str(root), "ab", "--share", "0.2", "--planned-exposures", "0"]) == 2
    assert "--planned-exposures must be a positive number" in capsys.readouterr().err


# --- model card, version tags and lineage ----------------------------------------------------------


def test_version_carries_lineage_tags_and_a_model_card(store):
    params, client, _, _ = store
    v1, v2 = (client.get_model_version("recpipe", v) for v in ("1", "2"))
    for v in (v1, v2):
        assert v.tags["dvc.dataset"] == "0123456789abcdef0123456789abcdef.dir"
        assert v.tags["dvc.checkpoint"] == "fedcba9876543210fedcba9876543210.dir"
        assert v.tags["git_commit"] and v.tags["compression_variant"] == "fp32"
        assert v.tags["params.train.dim"] == "16" and len(v.tags["params.sha256"]) == 64
        assert float(v.tags["metric.ndcg_at_10"]) >= 0
    assert v1.tags["params.seed"] == "42" and v2.tags["params.seed"] == "7"
    assert (v1.tags["airflow.dag_id"], v1.tags["airflow.dag_run_id"]) == ("none", "none")
    assert (v2.tags["airflow.dag_id"], v2.tags["airflow.dag_run_id"]) == tuple(AIRFLOW_RUN.values())
    # The card: the version's description and an artifact of its run, with the sections the issue asks for.
    for section in (
        "## Data",
        "## Metrics",
        "bootstrap interval",
        "## Slices and fairness",
        "## Compression",
        "## Gate (compare)",
        "## Known limits",
        "recpipe_nightly",
    ):
        assert section in v2.description, section
    import mlflow

    card = mlflow.artifacts.load_text(f"runs:/{v2.run_id}/model_card.md")
    assert card == v2.description and "fedcba9876543210fedcba9876543210.dir" in card


def test_lineage_prints_data_params_commit_and_airflow_run_and_restores_dvc_lock(store, capsys):
    from pipeline_tasks.ops.cli import main
    from pipeline_tasks.serving import lineage

    params, client, _, root = store
    info = lineage.version_lineage(client, "recpipe", "2")
    assert info["airflow"] == {"dag_id": AIRFLOW_RUN["RECPIPE_DAG_ID"], "dag_run_id": AIRFLOW_RUN["RECPIPE_DAG_RUN_ID"]}
    assert info["data"]["data/split"] == info["data"]["dataset"] and info["params"]["train.epochs"] == "2"
    assert lineage.full_params(client, "recpipe", "2")["seed"] == 7
    assert main(["--root", str(root), "lineage", "2", "--restore-lock", str(root / "restored" / "dvc.lock")]) == 0
    out = capsys.readouterr().out
    assert "0123456789abcdef0123456789abcdef.dir" in out and "recpipe_nightly" in out and "train.dim = 16" in out
    assert (root / "restored" / "dvc.lock").read_text() == DVC_LOCK
    assert main(["--root", str(root), "lineage", "champion"]) == 0
    assert main(["--root", str(root), "lineage", "42"]) == 2
    assert "no version '42'" in capsys.readouterr().err


def test_auto_promote_false_leaves_a_passing_first_champion_to_a_person(store, registry_project, tmp_path):
    """No champion yet and the gate passes, but register.auto_promote=false: only `challenger` moves."""
    params, client, _, _ = store
    project_root = registry_project[0]
    copy = tmp_path / "project"
    for part in ("data", "models", "metrics", "dvc.lock"):
        src = project_root / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / part)
    evaluate_json = copy / C.METRICS_DIR / "evaluate.json"
    metrics = json.loads(evaluate_json.read_text())
    metrics["best_baseline"] = None  # a run configured with no baselines
    evaluate_json.write_text(json.dumps(metrics))
    client.delete_registered_model_alias("recpipe", C.ALIAS_CHAMPION)
    # This test is about auto_promote, not the budgets (compress measured a loaded 2-core box).
    params = {
        **params,
        "register": {**params["register"], "auto_promote": False, "min_ndcg": 0.0, "max_latency_p50_ms": 1e6},
    }
    result = register.run(params, copy)
    assert result["decision"]["kind"] == "first" and result["decision"]["passed"]
    assert not result["decision"]["promote"] and "awaiting `recpipe promote`" in result["decision"]["summary"]
    assert result["aliases"] == [C.ALIAS_CHALLENGER] and champion(client) is None
    # A person promotes it: it passed against "no champion", so no --reason is needed.
    event = registry.promote(client, "recpipe", result["version"], who="frank")
    assert not event["forced"] and event["action"] == "first_champion" and champion(client) == result["version"]


def test_registered_pyfunc_loads_in_a_fresh_process_elsewhere_and_excludes_seen_items(store):
    """models:/recpipe@champion from / in a new interpreter: a known user, and a new user's explicit history."""
    import subprocess
    import sys

    params, client, _, _ = store
    force_state(client, "2", "1")
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "m = mlflow.pyfunc.load_model('models:/recpipe@champion')\n"
        "frame = pd.DataFrame({'user_id': ['u001', 'brand-new'], 'history': [None, ['i00', 'i01']], 'k': [5, 4]})\n"
        "out = m.predict(frame)\n"
        "print(json.dumps({'items': [list(x) for x in out['item_ids']], 'scores': [list(x) for x in out['scores']]}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != C.TRACKING_URI_ENV}
    done = subprocess.run(
        [sys.executable, "-c", script, params["mlflow"]["tracking_uri"]],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    known, new = out["items"]
    seen = set(_history_of("u001"))
    assert len(known) == 5 and not seen & set(known)
    assert len(new) == 4 and not {"i00", "i01"} & set(new)
    assert out["scores"][0] == sorted(out["scores"][0], reverse=True)


def _history_of(user: str) -> list[str]:
    spec = importlib.util.spec_from_file_location("model_fixtures", TESTS / "model" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.topic_histories(24, 8)[user]


def test_a_version_registered_before_the_package_layout_still_loads(store, tmp_path):
    """Versions registered by the flat layout pickled their model as `pipeline_tasks.serving.RecpipePyfunc`
    (serving was a module then). That name must keep resolving, in this process (where `recpipe serve`
    loads versions, with the package already imported) and in a fresh one, with the same answers."""
    import subprocess
    import sys

    import cloudpickle
    import mlflow

    from pipeline_tasks.serving.pyfunc import RecpipePyfunc

    params, client, _, _ = store
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/recpipe/2", dst_path=str(tmp_path)))
    pickled = local / "python_model.pkl"
    assert b"pipeline_tasks.serving.pyfunc" in pickled.read_bytes()  # what this layout writes
    # The pickle the flat layout wrote: the same class, referenced under its old module path.
    RecpipePyfunc.__module__ = "pipeline_tasks.serving"
    try:
        pickled.write_bytes(cloudpickle.dumps(RecpipePyfunc()))
    finally:
        RecpipePyfunc.__module__ = "pipeline_tasks.serving.pyfunc"
    assert b"pipeline_tasks.serving.pyfunc" not in pickled.read_bytes()

    request = {"user_id": ["u001", "brand-new"], "history": [None, ["i00", "i01"]], "k": [5, 4]}
    import pandas as pd

    expected = [
        list(x) for x in mlflow.pyfunc.load_model("models:/recpipe/2").predict(pd.DataFrame(request))["item_ids"]
    ]
    here = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame(request))
    assert [list(x) for x in here["item_ids"]] == expected

    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "out = mlflow.pyfunc.load_model(sys.argv[1]).predict(pd.DataFrame(json.loads(sys.argv[2])))\n"
        "print(json.dumps([list(x) for x in out['item_ids']]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(local), json.dumps(request)],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


# --- a registry that blinks -------------------------------------------------------------------


def test_a_locked_store_is_never_read_as_no_champion(store):
    """A SQLite store held by another writer: reading the aliases fails loudly (retryable), it does not
    answer {} ("no champion yet"), which would let the gate apply the first-run rule."""
    import sqlite3

    params, client, _, tmp = store
    before = champion(client)
    holder = sqlite3.connect(tmp / "mlflow.db", timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing: readers get "database is locked"
    try:
        with pytest.raises(registry.RegistryUnavailable, match="could not read the aliases") as caught:
            registry.aliases(client, "recpipe")
        assert caught.value.exit_code == 75  # Airflow retries it
    finally:
        holder.rollback()
        holder.close()
    assert before and champion(client) == before  # nothing moved (v2 may or may not have won its gate)


def test_the_register_stage_fails_and_moves_nothing_when_the_registry_blinks(store, registry_project, monkeypatch):
    """An HTTP 5xx (here: an INTERNAL_ERROR from the client) while the gate reads the champion: the stage
    fails with a retryable error, and the champion and previous_champion are exactly as before."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    params, client, _, tmp = store
    root, _, _ = registry_project
    before = registry.aliases(client, "recpipe")
    real = MlflowClient.get_registered_model

    def blink(self, name):
        raise MlflowException("503 Service Unavailable", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(MlflowClient, "get_registered_model", blink)
    generous = {**params["register"], "min_ndcg": 0.0, "min_improvement": -1.0, "max_latency_p50_ms": 1e6}
    with pytest.raises(registry.RegistryUnavailable):
        register.run({**params, "register": generous}, root)
    monkeypatch.setattr(MlflowClient, "get_registered_model", real)
    assert registry.aliases(client, "recpipe") == before


def test_promote_refuses_when_the_champion_moved_since_the_gate_read_it(store):
    """The gate of v2's run found no champion; meanwhile a person made v1 champion. v2's "first champion"
    verdict is stale: it must not replace v1. With the champion the gate saw, the promotion goes through."""
    params, client, _, _ = store
    force_state(client, "1", None)
    with pytest.raises(registry.RegistryError, match=r"compared v2 against v-, the champion is now v1"):
        registry.promote(client, "recpipe", "2", gate={"passed": True, "summary": "ok"}, expected_champion=None)
    assert registry.aliases(client, "recpipe")[C.ALIAS_CHAMPION] == "1"
    assert C.ALIAS_PREVIOUS_CHAMPION not in registry.aliases(client, "recpipe")
    event = registry.promote(client, "recpipe", "2", gate={"passed": True, "summary": "ok"}, expected_champion="1")
    assert event["from_version"] == "1" and registry.aliases(client, "recpipe")[C.ALIAS_CHAMPION] == "2"


# --- warm nights: the registry keeps what tomorrow starts from (serving/warm_source.py) -----------


def test_a_compressed_champion_carries_its_trained_weights_for_the_next_warm_night(registry_project, store, tmp_path):
    """An int8 serving variant is not the trained weights: the version also carries the fp32 model
    (artifact `weights`), the serving variant stays at artifacts/model (where the gate reads it), and
    the next night's warm source is the fp32 copy, which can seed a model of tonight's shape."""
    import mlflow

    from pipeline_tasks.core import io
    from pipeline_tasks.model import warm_start
    from pipeline_tasks.model.compression import BUILDERS, Job
    from pipeline_tasks.model.measuring import load_eval_data
    from pipeline_tasks.model.recommender import Recommender
    from pipeline_tasks.serving import publish, warm_source

    params, client, _, _ = store
    root = registry_project[0]
    source = root / C.MODEL_DIR
    int8 = tmp_path / "int8_dynamic"
    data = load_eval_data(root, Recommender.load(source).item_ids)
    BUILDERS["int8_dynamic"](Job(source=source, out=int8, data=data, cfg=params["compress"], seed=0))
    assert not warm_start.faithful_weights(warm_start.saved_config(int8))

    with mlflow.start_run():
        info = publish.log_model(
            params, root, int8, "int8_dynamic", io.read_json(root / C.METRICS_DIR / "evaluate.json")
        )
    version = mlflow.register_model(info.model_uri, "warm-test").version
    client.set_registered_model_alias("warm-test", C.ALIAS_CHAMPION, version)

    night = {**params, "register": {**params["register"], "model_name": "warm-test"}}
    start = warm_source.champion_weights(night, root, tmp_path / "download")
    assert start.version == str(version) and start.model_dir.name == C.WEIGHTS_ARTIFACT, start
    assert warm_start.saved_config(start.model_dir) == warm_start.saved_config(source)  # the trained fp32 model
    assert not (tmp_path / "download" / "artifacts" / C.MODEL_ARTIFACT).exists()  # the weights alone were fetched
    served = registry.registered_artifact("warm-test", version, C.MODEL_ARTIFACT, tmp_path / "served")
    assert warm_start.saved_config(served)["encoder_quantization"] == "int8_dynamic"
    assert registry.registered_artifact("warm-test", version, "no-such-artifact", tmp_path / "none") is None
    cold = warm_source.champion_weights({**night, "train": {**night["train"], "dim": 32}}, root, tmp_path / "again")
    assert cold.model_dir is None and "dim 16 vs 32" in cold.why


def test_deleting_a_missing_alias_is_fine_but_an_unreachable_store_is_an_error(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("recpipe")
    registry.set_or_delete_alias(client, "recpipe", C.ALIAS_PREVIOUS_CHAMPION, None)  # no such alias: fine
    # An outage is not "already deleted": hiding it let restore_aliases report aliases it had not restored.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = MlflowClient(tracking_uri="http://127.0.0.1:9", registry_uri="http://127.0.0.1:9")  # nothing listens
    with pytest.raises(MlflowException):
        registry.set_or_delete_alias(down, "recpipe", C.ALIAS_PREVIOUS_CHAMPION, None)

"""What the DAG tasks call, without a DAG run: run versioning (real git + DVC), alerts, registry actions.

Fast: real git, real DVC on a one-stage toy project, a real MLflow SQLite registry.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_tasks.core.constants import DAG_ID_ENV, DAG_RUN_ID_ENV
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.ops import alerts
from pipeline_tasks.ops.pipeline import backfill_dates, repro_stage, stage_env
from pipeline_tasks.ops.run_versions import data_versions, dvc_push, keep_lock_on_branch, restore_data_version

DVC = str(Path(sys.executable).parent / "dvc")


def sh(root: Path, *cmd: str) -> str:
    out = subprocess.run(list(cmd), cwd=root, capture_output=True, text=True, env=stage_env(root))  # venv on PATH
    assert out.returncode == 0, f"{cmd}: {out.stderr}"
    return out.stdout.strip()


def git(root: Path, *args: str) -> str:
    return sh(root, "git", "-c", "user.email=t@t", "-c", "user.name=t", *args)


# A toy DVC project: `ingest` writes data/raw/rows.txt from params.yaml's ingest.rows; `count` reads it.
DVC_YAML = """stages:
  ingest:
    cmd: python -c "import yaml; n = yaml.safe_load(open('params.yaml'))['ingest']['rows']; import os; os.makedirs('data/raw', exist_ok=True); open('data/raw/rows.txt', 'w').write('row\\\\n' * n)"
    params: [ingest]
    outs: [data/raw]
  count:
    cmd: python -c "import sys; n = len(open('data/raw/rows.txt').read().split()); sys.exit(2 if n > 100 else 0)"
    deps: [data/raw]
"""


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("ingest:\n  rows: 3\n")
    git(root, "init", "-q", "-b", "main")
    sh(root, DVC, "init", "-q")
    sh(root, DVC, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "toy")
    sh(root, DVC, "repro", "ingest")
    return root


def test_lock_is_committed_on_the_runs_branch_without_touching_the_checkout(toy: Path):
    (toy / "notes.txt").write_text("the user's staged work\n")
    git(toy, "add", "notes.txt")
    status_before, head_before = git(toy, "status", "--porcelain"), git(toy, "rev-parse", "HEAD")

    first = keep_lock_on_branch(toy, "recpipe-runs", "run 1")
    (toy / "params.yaml").write_text("ingest:\n  rows: 5\n")
    sh(toy, DVC, "repro", "ingest")
    second = keep_lock_on_branch(toy, "recpipe-runs", "run 2")

    # The user's branch, HEAD, index and working tree are as they were (params.yaml: changed by the run).
    assert git(toy, "symbolic-ref", "HEAD") == "refs/heads/main"
    assert git(toy, "rev-parse", "HEAD") == head_before
    assert git(toy, "diff", "--cached", "--name-only") == "notes.txt"
    status_after = set(git(toy, "status", "--porcelain").splitlines())
    assert status_after == set(status_before.splitlines()) | {" M params.yaml"}
    # The branch holds each run's lock and params, in order, on top of the code that ran.
    assert git(toy, "rev-parse", "recpipe-runs") == second
    assert git(toy, "show", "recpipe-runs:dvc.lock") == (toy / "dvc.lock").read_text().strip()
    assert "rows: 5" in git(toy, "show", "recpipe-runs:params.yaml")
    assert "rows: 3" in git(toy, "show", f"{first}:params.yaml")
    assert git(toy, "rev-list", "--parents", "-n", "1", second).split()[1:] == [first, head_before]
    assert "notes.txt" not in git(toy, "ls-tree", "--name-only", second)


def test_lock_of_a_project_in_a_subfolder_lands_at_its_path(tmp_path: Path):
    repo = tmp_path / "mono"
    (repo / "recsys").mkdir(parents=True)
    (repo / "recsys" / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    git(repo, "init", "-q")
    commit = keep_lock_on_branch(repo / "recsys", "recpipe-runs", "run")  # no commit on HEAD yet
    assert git(repo, "ls-tree", "-r", "--name-only", commit) == "recsys/dvc.lock"


def test_not_a_git_checkout_keeps_the_lock_in_mlflow_only(tmp_path: Path, capsys):
    assert keep_lock_on_branch(tmp_path, "recpipe-runs", "run") is None
    assert "not a git checkout" in capsys.readouterr().out


def test_push_then_retrain_on_an_older_data_version(toy: Path, tmp_path: Path):
    assert "pushed" in dvc_push(toy) or "1 file" in dvc_push(toy)
    assert any((tmp_path / "remote").rglob("*")), "dvc push wrote nothing to the remote"
    old_rev = keep_lock_on_branch(toy, "recpipe-runs", "run 1")
    old_md5 = data_versions(toy)["data/raw"]
    (toy / "params.yaml").write_text("ingest:\n  rows: 7\n")
    sh(toy, DVC, "repro", "ingest")
    assert (toy / "data/raw/rows.txt").read_text().count("row") == 7
    sh(toy, DVC, "gc", "-w", "-f")  # the old data is gone from the cache: it must come from the remote

    restored = restore_data_version(toy, old_rev)

    assert restored == {"data/raw": old_md5}
    assert (toy / "data/raw/rows.txt").read_text().count("row") == 3
    status = json.loads(sh(toy, DVC, "status", "--json"))
    assert "count" in status, "the stage after ingest must see the restored data as a change"


def test_a_revision_without_data_is_refused_and_changes_nothing(toy: Path):
    lock_before = (toy / "dvc.lock").read_text()
    with pytest.raises(PipelineError, match="no dvc.lock at git revision"):
        restore_data_version(toy, "HEAD")  # the toy's commit holds no dvc.lock
    with pytest.raises(
        PipelineError, match="data version 'no-such-rev' names no commit in .*commit hash, branch or tag"
    ):
        restore_data_version(toy, "no-such-rev")
    assert (toy / "dvc.lock").read_text() == lock_before


@pytest.mark.parametrize("rev", ["--output=x", " -p", "", "HEAD:dvc.yaml"])
def test_a_revision_that_is_an_option_or_no_commit_is_refused_before_use(toy: Path, rev: str):
    with pytest.raises(PipelineError, match=r"data version '.*' (is not a git revision|names no commit).*commit hash"):
        restore_data_version(toy, rev)
    assert not (toy / "x").exists()


def test_a_run_conf_cannot_choose_the_project_folder():
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from pipeline_tasks.ops.airflow_tasks import PROJECT_DIR, project_dir

    # Airflow merges unknown conf keys into params: the folder must come from neither.
    allowed = {"dag_run": SimpleNamespace(conf={"train__epochs": 2}), "params": {"project_dir": "/elsewhere"}}
    assert project_dir(allowed) == Path(PROJECT_DIR)
    refused = {"dag_run": SimpleNamespace(conf={"project_dir": "/elsewhere"}), "params": {}}
    with pytest.raises(AirflowFailException, match=r"project_dir='/elsewhere'.*RECPIPE_PROJECT_DIR.*Nothing was run"):
        project_dir(refused)


def test_stage_exit_code_is_told_apart_from_dvcs(toy: Path, capsys):
    (toy / "params.yaml").write_text("ingest:\n  rows: 200\n")
    sh(toy, DVC, "repro", "ingest")
    code, stage_code = repro_stage(toy, "count")
    assert (code, stage_code) == (255, 2)  # 2 = bad input: the DAG does not retry it
    assert "exited with 2" in capsys.readouterr().out  # streamed into the task log
    (toy / "params.yaml").write_text("ingest:\n  rows: 4\n")
    sh(toy, DVC, "repro", "ingest")
    assert repro_stage(toy, "count") == (0, None)


def test_stage_processes_get_the_dag_run(tmp_path: Path):
    env = stage_env(tmp_path, "parent", {DAG_ID_ENV: "recpipe_nightly", DAG_RUN_ID_ENV: "manual__1"})
    assert env["RECPIPE_DAG_ID"] == "recpipe_nightly" and env["RECPIPE_DAG_RUN_ID"] == "manual__1"


def test_backfill_dates_are_inclusive_and_in_order():
    assert backfill_dates("2026-01-30", "2026-02-02") == ["2026-01-30", "2026-01-31", "2026-02-01", "2026-02-02"]
    assert backfill_dates("2026-03-01", None) == ["2026-03-01"]
    with pytest.raises(PipelineError, match="before it starts"):
        backfill_dates("2026-02-02", "2026-01-30")
    with pytest.raises(PipelineError, match="must look like"):
        backfill_dates("yesterday", None)


def write_register(root: Path, aliases: list[str], checks: list[dict], passed: bool) -> None:
    (root / "metrics").mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "register.json").write_text(
        json.dumps(
            {
                "model_name": "recpipe",
                "version": "3",
                "aliases": aliases,
                "decision": {
                    "kind": "compare",
                    "passed": passed,
                    "promote": False,
                    "summary": "...",
                    "challenger_ndcg": 0.081,
                    "champion_ndcg": 0.09,
                    "champion_version": "2",
                    "checks": checks,
                },
            }
        )
    )


def test_not_promoted_alert_names_the_failing_gate_and_its_numbers(tmp_path: Path):
    checks = [
        {
            "name": "ndcg_improvement",
            "passed": False,
            "detail": "NDCG@10 0.0810 vs champion v2 re-scored 0.0900 (-10.0%, needs >= +1.0%)",
        },
        {"name": "size_budget", "passed": True, "detail": "size 20 MB vs budget 1000 MB"},
    ]
    write_register(tmp_path, ["challenger"], checks, passed=False)
    found = alerts.not_promoted(tmp_path)
    assert found["reason"].startswith("gate FAILED: ndcg_improvement: NDCG@10 0.0810 vs champion v2")
    assert list(found["failed_checks"]) == ["ndcg_improvement"] and found["version"] == "3"
    assert (found["challenger_ndcg"], found["champion_ndcg"]) == (0.081, 0.09)

    write_register(tmp_path, ["challenger"], [], passed=True)  # passed, auto_promote off
    assert "auto_promote is false" in alerts.not_promoted(tmp_path)["reason"]
    write_register(tmp_path, ["challenger", "champion"], [], passed=True)
    assert alerts.not_promoted(tmp_path) is None


def test_registry_actions_from_the_promote_form(tmp_path: Path):
    """Real SQLite registry; the versions are registered from a folder (never loaded here)."""
    from pipeline_tasks.core.params import defaults
    from pipeline_tasks.ops.airflow_tasks import apply_registry_action
    from pipeline_tasks.serving import registry

    root = tmp_path
    client = registry.client_for(defaults(), root)
    client.create_registered_model("recpipe")
    for _ in range(2):
        client.create_model_version(
            "recpipe", source=str(tmp_path), tags={"gate.passed": "false", "gate.summary": "FAIL (ndcg_floor)"}
        )
    who = "airflow:recpipe_promote/manual__1"

    with pytest.raises(registry.RegistryError, match="needs --reason"):  # a forced promotion needs a reason
        apply_registry_action(root, "promote", version=2, reason="  ", who=who)
    with pytest.raises(registry.RegistryError, match="needs a version"):
        apply_registry_action(root, "promote", reason="x", who=who)
    event = apply_registry_action(root, "promote", version=2, reason="hotfix for the catalogue bug", who=who)
    assert event["forced"] and event["actor"] == who and registry.aliases(client, "recpipe")["champion"] == "2"

    config = apply_registry_action(root, "set_ab_share", share=0.25, who=who)
    assert registry.ab_config(client, "recpipe")["share"] == 0.25 == config["share"]
    assert config["guardrails"] == defaults()["register"]["ab_guardrails"]
    with pytest.raises(registry.RegistryError, match="no previous_champion"):
        apply_registry_action(root, "rollback", who=who)
    # Each move starts a new A/B experiment, audited just before it; the refused rollback wrote nothing.
    assert [e["action"] for e in registry.history(client, "recpipe")] == [
        "experiment",
        "first_champion",
        "experiment",
        "ab_config",
    ]


def test_form_values_become_overrides_of_changed_params_only():
    from pipeline_tasks.core.params import defaults
    from pipeline_tasks.ops.form import form_schema, overrides_from_form

    params = defaults()
    schema = form_schema(params)
    assert schema["ingest__path"]["type"] == ["null", "string"]  # may stay empty: not a required field
    assert schema["ingest__source"]["type"] == "string"  # an enum: always one of its values
    values = {
        "ingest__path": None,
        "train__epochs": params["train"]["epochs"] + 1,
        "skip_search": True,
        "data_rev": "abc123",
        "project_dir": "/x",
    }
    assert overrides_from_form(values, params) == [f"train.epochs={params['train']['epochs'] + 1}"]
    assert overrides_from_form({"ingest__path": "/data/ml-1m"}, params) == ['ingest.path="/data/ml-1m"']


@pytest.mark.slow
def test_backfill_ingests_each_increment_in_order(tiny_project: Path):
    """recpipe_manual's backfill with the real ingest stage: a full load, then two daily increments."""
    import pandas as pd

    from pipeline_tasks.core import params as P
    from pipeline_tasks.ops.pipeline import backfill
    from pipeline_tasks.ops.run_params import write_run_params

    nightly_config = (tiny_project / "params.yaml").read_bytes()
    write_run_params(tiny_project, [])
    sh(tiny_project, DVC, "repro", "--single-item", "ingest")  # the full load the increments build on
    rows_before = len(pd.read_parquet(tiny_project / "data/raw/interactions"))
    end = P.load(tiny_project / "params.yaml")["ingest"]["synthetic"]
    first_day = (pd.Timestamp(end["start_date"]) + pd.Timedelta(days=end["days"])).date()  # synthetic day 1
    days = [str(first_day), str(first_day + pd.Timedelta(days=1))]

    assert backfill(tiny_project, days[0], days[1]) == days

    assert sorted(p.name for p in (tiny_project / "data/batches").iterdir()) == sorted(["base", *days])
    assert P.load(tiny_project / "params.run.yaml")["ingest"]["batch"] == days[1]  # the run's params
    assert (tiny_project / "params.yaml").read_bytes() == nightly_config  # not the nightly configuration
    assert len(pd.read_parquet(tiny_project / "data/raw/interactions")) > rows_before
    assert "ingest" not in json.loads(sh(tiny_project, DVC, "status", "--json", "ingest") or "{}")
    with pytest.raises(PipelineError, match="backfill stopped at the increment of 2026-01-05"):
        backfill(tiny_project, "2026-01-05", "2026-01-06")  # inside the full load's history: refused by ingest


def test_operator_actions_skip_the_stages_they_replace(tmp_path: Path, capsys):
    from pipeline_tasks.ops.airflow_tasks import skipped_stage

    assert skipped_stage("tune", tmp_path, {"skip_search": True}) is None  # no best params yet: search runs
    assert "so the search runs" in capsys.readouterr().out
    (tmp_path / "metrics/tune").mkdir(parents=True)
    (tmp_path / "metrics/tune/best_params.json").write_text("{}")
    assert "reuses the last" in skipped_stage("tune", tmp_path, {"skip_search": True})
    assert skipped_stage("tune", tmp_path, {"skip_search": False}) is None
    assert "data version of v1.2" in skipped_stage("ingest", tmp_path, {"data_rev": " v1.2 "})
    assert skipped_stage("ingest", tmp_path, {"data_rev": None}) is None
    assert skipped_stage("train", tmp_path, {"skip_search": True, "data_rev": "x"}) is None

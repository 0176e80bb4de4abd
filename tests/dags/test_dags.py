"""The Airflow DAGs: they import cleanly, are wired in stage order, and really run (dag.test())."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_tasks.core import constants as C

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def airflow_env(home: Path, project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (C.TRACKING_URI_ENV, C.PARENT_RUN_ENV)}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
            "AIRFLOW__CORE__PARALLELISM": "2",
            "RECPIPE_PROJECT_DIR": str(project),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        }
    )
    return env


def parse_dags(snippet: str) -> str:
    """Parse dags/ in a fresh interpreter (as Airflow's processor does) and run `snippet` on `bag`."""
    code = (
        "from airflow.dag_processing.dagbag import DagBag;"
        f"bag = DagBag(dag_folder={str(PROJECT_ROOT / 'dags')!r});"
        "print('ERRORS', bag.import_errors);" + snippet
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=airflow_env(Path("/tmp/recpipe-dagbag-home"), PROJECT_ROOT),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERRORS {}" in out.stdout
    return out.stdout


def test_dags_import_without_errors_and_are_wired_in_stage_order():
    started = time.perf_counter()
    out = parse_dags(
        "[print('TASKS', d.dag_id, ','.join(t.task_id for t in d.topological_sort())) for d in bag.dags.values()]"
    )
    tasks = {line.split()[1]: line.split()[2].split(",") for line in out.splitlines() if line.startswith("TASKS")}
    flow = ["anything_to_do", "start_pipeline_run", *C.STAGES, "publish_run", "finish_pipeline_run"]
    assert tasks["recpipe_nightly"] == ["nightly_params", *flow]  # first: the night this run ingests
    assert tasks["recpipe_manual"] == ["apply_form", "prepare_data", *flow]
    assert tasks["recpipe_promote"] == ["registry_action"]
    # Parsing must stay cheap: no Spark, torch or MLflow work at import time.
    assert time.perf_counter() - started < 60


def test_no_dag_form_takes_a_project_folder():
    """The folder `dvc repro` runs in is the deployment's (RECPIPE_PROJECT_DIR), never a trigger's."""
    out = parse_dags("[print('PARAMS', d.dag_id, ','.join(d.params)) for d in bag.dags.values()]")
    params = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line.startswith("PARAMS")}
    assert set(params) == {"recpipe_nightly", "recpipe_manual", "recpipe_promote"}
    assert not any("project_dir" in ",".join(keys) for keys in params.values()), params


def test_manual_form_comes_from_params_yaml_and_refuses_invalid_values():
    out = parse_dags(
        "import json;"
        "p = bag.dags['recpipe_manual'].params;"
        "print('FORM', json.dumps({k: {**p.get_param(k).schema, 'default': p.get_param(k).value} for k in p}));"
        "q = bag.dags['recpipe_promote'].params;"
        "print('PROMOTE', json.dumps({k: q.get_param(k).schema for k in q}));"
        "bad = [(p, 'train__epochs', 0), (p, 'train__device', 'gpu'), (p, 'register__auto_promote', 'yes'),"
        "       (p, 'ab_share', 1.5), (p, 'backfill_start', 'last week'), (q, 'action', 'delete'),"
        "       (q, 'share', -0.1), (q, 'version', 0)]\n"
        "for params, key, value in bad:\n"
        "    try:\n        params.get_param(key).resolve(value); print('ACCEPTED', key)\n"
        "    except Exception as err:\n        print('REFUSED', key, type(err).__name__)"
    )
    import json

    from pipeline_tasks.core import params as P

    form = json.loads(out.split("FORM ", 1)[1].splitlines()[0])
    defaults = P.load(PROJECT_ROOT / "params.yaml")
    assert form["train__epochs"]["type"] == "integer" and form["train__epochs"]["minimum"] == 1
    assert form["ingest__source"]["enum"] == ["synthetic", "movielens", "amazon", "generic"]
    assert form["train__finetune"]["enum"] == ["lora", "full", "top_layers", "frozen"]
    assert form["register__auto_promote"]["type"] == "boolean"
    assert "ACCEPTED" not in out and out.count("REFUSED") == 8
    assert form["train__epochs"]["default"] == defaults["train"]["epochs"]
    # Operator actions: skip the search, a data version, a backfill range, the A/B share.
    assert form["skip_search"]["type"] == "boolean" and form["data_rev"]["default"] is None
    assert form["backfill_start"]["format"] == "date" and form["ab_share"]["maximum"] == 1
    promote = json.loads(out.split("PROMOTE ", 1)[1].splitlines()[0])
    assert promote["action"]["enum"] == ["promote", "rollback", "set_ab_share"]
    assert promote["reason"]["type"] == ["null", "string"] and promote["share"]["minimum"] == 0


# Runs one DAG through dag.test() in a fresh interpreter (as Airflow would) and reports every task's state.
RUN_DAG = """
import datetime, json, sys
from airflow.dag_processing.dagbag import DagBag
dag_id, conf, when, folder = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
bag = DagBag(dag_folder=folder)
dr = bag.dags[dag_id].test(logical_date=datetime.datetime.fromisoformat(when), run_conf=conf)
value = lambda s: getattr(s, 'value', s)
print('DAGRUN ' + json.dumps({'state': value(dr.state), 'run_id': dr.run_id,
                              'tasks': {ti.task_id: value(ti.state) for ti in dr.get_task_instances()}}))
"""


def run_dag(project: Path, env: dict, dag_id: str, when: str, conf: dict | None = None) -> tuple[dict, str]:
    """dag.test() of one DAG run at logical date `when` (the same date again = that run cleared and re-run)."""
    out = subprocess.run(
        [sys.executable, "-c", RUN_DAG, dag_id, json.dumps(conf or {}), when, str(project / "dags")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    log = out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("DAGRUN ")]
    assert lines, log[-8000:]
    return json.loads(lines[-1][len("DAGRUN ") :]), log


def alerts_of(project: Path) -> list[dict]:
    path = project / C.REPORTS_DIR / "alerts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def registry_state(project: Path) -> tuple[dict, list[dict]]:
    from mlflow import MlflowClient

    from pipeline_tasks.core import params as P
    from pipeline_tasks.core import tracking

    tracking.setup(P.load(project / "params.yaml"), project)
    client = MlflowClient()
    name = P.load(project / "params.yaml")["register"]["model_name"]
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    return dict(client.get_registered_model(name).aliases), versions


def git_in(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, capture_output=True, text=True).stdout.strip()


UPSTREAM = ["ingest", "validate_raw", "clean", "validate_clean", "split", "baselines"]


# --- night after night --------------------------------------------------------------------------

# The five-night world: the tiny one with enough optimiser steps to learn something (batches of 8 users,
# up to 8 cold epochs: ~80 steps), the server polling the registry every second. No baselines: on a world
# this small, Pop against a tiny random-encoder model is a coin flip, and who beats the baselines is the
# benchmarks' question (bench_world.py, bench_model.py), not the loop's; the first night's rule is then
# the NDCG floor. The latency budget is off (p99 of a 200-call loop on a CPU shared with the test runner
# is noise; bench/bench_serve.py measures it). Every other gate rule is the nightly one, and every night
# is versioned as in production (dvc push, the lock on the runs branch).
# The history is 30 days instead of 180 (the same 1,440 events), so a day's increment holds ~48 events:
# enough new data for a night's retraining to matter at all. Its daily bot sends 24 events, not the tiny
# world's 120 (which would outnumber a day's real events 2.5 to 1 and, night after night, push the
# quarantine share past validate_clean's 30% on its own).
NIGHTS_OVERRIDES = [
    "ingest.synthetic.days=30",
    "ingest.synthetic.dirt.bot_events=24",
    "baselines.models=[]",
    "train.batch_size=8",
    "train.epochs=8",
    "register.max_latency_p50_ms=100000",
    "register.serve_poll_s=1.0",
    # Cost: two compression variants (int8_dynamic is a compressed copy, so the weights artifact is exercised).
    "compress.variants=[fp32,int8_dynamic]",
]
# What the source or the operator does to the nightly configuration before a night (never a run's doing):
TONIGHT = {
    # A quick first champion (one epoch: early stopping would otherwise make it as good as this tiny world
    # allows, leaving the warm nights no 1% to win); its first try has a broken search space (below).
    0: ["train.epochs=1"],
    2: ["ingest.synthetic.dirt.null_id_rate=1.0"],  # the day's export lost every user id
    4: ["register.min_improvement=10.0"],  # a tenfold gain asked: the gate refuses, a person forces the promotion
}
BROKEN_SEARCH_SPACE = ["tune.search_space={}"]  # tune fails; fixed, the night is re-run and continues there
NIGHTS, BROKEN_SEARCH, DIRTY_NIGHT, REFUSED_NIGHT = 5, 0, 2, 4


def start_server(project: Path, env: dict) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(BIN / "recpipe"), "--root", str(project), "serve", "--port", str(port)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return server, f"http://127.0.0.1:{port}"


def served_version(server: subprocess.Popen, url: str, user: str, wanted: str, timeout: float = 90) -> str:
    """The version /recommend answers with, once it is `wanted` (the server polls the aliases)."""
    import httpx

    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stdout.read().decode()[-4000:]
        try:
            answer = httpx.get(f"{url}/recommend", params={"user_id": user, "k": 5}, timeout=10)
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["items"]) == 5
            seen = answer.json()["model_version"]
            if seen == wanted:
                return seen
        except httpx.TransportError:
            pass  # still starting
        time.sleep(0.5)
    return seen


def metrics_mtimes(project: Path) -> dict[str, int]:
    return {s: (project / C.METRICS_DIR / f"{s}.json").stat().st_mtime_ns for s in UPSTREAM}


def failed_alerts(project: Path, run: dict) -> list[dict]:
    return [a for a in alerts_of(project) if a["kind"] == "run_failed" and a["run_id"] == run["run_id"]]


def assert_fails_at_tune_then_continues(project: Path, env: dict, when: str) -> tuple:
    """Tonight's search space is broken: tune fails (bad params: not retried, one alert naming the stage),
    nothing after it runs. Fixed and re-run at the same logical date (dag.test() recreates the run; a clear
    in the UI re-runs tune and what follows), it continues from tune: the stages before it are DVC no-ops."""
    from pipeline_tasks.core import params as P

    tonight = (project / "params.yaml").read_bytes()
    P.dump(P.load(project / "params.yaml", BROKEN_SEARCH_SPACE), project / "params.yaml")
    first, log = run_dag(project, env, "recpipe_nightly", when)
    assert first["state"] == "failed", log[-6000:]
    assert [first["tasks"][s] for s in UPSTREAM] == ["success"] * len(UPSTREAM), first
    assert first["tasks"]["tune"] == "failed" and first["tasks"]["register"] == "upstream_failed", first
    assert "tune.search_space is empty" in log
    assert [a["stage"] for a in failed_alerts(project, first)] == ["tune"]
    upstream = metrics_mtimes(project)
    (project / "params.yaml").write_bytes(tonight)
    rerun, log = run_dag(project, env, "recpipe_nightly", when)
    assert metrics_mtimes(project) == upstream
    assert log.count("didn't change, skipping") >= len(UPSTREAM), "earlier stages were not DVC no-ops"
    return rerun, log


def assert_versioned(project: Path, run: dict, version: str, head: str) -> None:
    """Data and models pushed, the lock on the runs branch and in MLflow, the checkout untouched, the
    registered version tagged with its DAG run (for `recpipe lineage`)."""
    from mlflow import MlflowClient

    from pipeline_tasks.core import params as P
    from pipeline_tasks.core import tracking

    assert any((project / "dvc-storage").rglob("*")), "dvc push wrote nothing to the remote"
    runs_commit = git_in(project, "rev-parse", "recpipe-runs")
    assert git_in(project, "show", "recpipe-runs:dvc.lock") == (project / "dvc.lock").read_text().strip()
    assert git_in(project, "rev-parse", "HEAD") == head
    assert git_in(project, "branch", "--show-current") in ("main", "master")
    experiment = tracking.setup(P.load(project / "params.yaml"), project)
    parent = MlflowClient().search_runs(
        [experiment],
        order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`airflow.run_id` = '{run['run_id']}' and tags.`recpipe.kind` = 'pipeline'",
    )[0]
    assert parent.data.tags["recpipe.runs_commit"] == runs_commit and parent.info.status == "FINISHED"
    assert [a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "dvc")] == ["dvc/dvc.lock"]
    tags = MlflowClient().get_model_version("recpipe", version).tags
    assert (tags.get("airflow.dag_id"), tags.get("airflow.dag_run_id")) == ("recpipe_nightly", run["run_id"])


def assert_short_circuits(project: Path, env: dict, when: str) -> None:
    """The same night again, nothing changed: nothing to do, nothing registered."""
    again, log = run_dag(project, env, "recpipe_nightly", when)
    assert again["state"] == "success" and again["tasks"]["register"] == "skipped", again
    assert "nothing to do" in log


def assert_refused_then_forced(project: Path, env: dict, client, register: dict, when: str) -> str:
    """The gate refused tonight's model (an alert with its numbers); recpipe_promote moves it past the
    failed gate only with a written reason, audited with the DAG run. Returns the new champion."""
    from datetime import datetime, timedelta

    from pipeline_tasks.serving import registry

    version = register["version"]
    refusals = [a for a in alerts_of(project) if a["kind"] == "not_promoted" and a["version"] == version]
    assert len(refusals) == 1 and "ndcg_improvement" in refusals[0]["failed_checks"], refusals
    assert "needs >= +1000.0%" in refusals[0]["message"]
    later = datetime.fromisoformat(when) + timedelta(hours=7)
    asked = {"action": "promote", "version": int(version), "reason": ""}
    refused, log = run_dag(project, env, "recpipe_promote", later.isoformat(), asked)
    assert refused["state"] == "failed" and "needs --reason" in log, log[-4000:]
    assert registry.aliases(client, "recpipe")["champion"] != version
    asked["reason"] = "launch anyway: the floor was set too high"
    forced, log = run_dag(project, env, "recpipe_promote", (later + timedelta(minutes=5)).isoformat(), asked)
    assert forced["state"] == "success", log[-4000:]
    assert registry.aliases(client, "recpipe")["champion"] == version
    event = registry.history(client, "recpipe")[-1]
    assert event["forced"] and event["actor"] == f"airflow:recpipe_promote/{forced['run_id']}"
    return version


@pytest.mark.slow
def test_five_nights_in_a_row(tiny_project_with, tmp_path):
    """The real recpipe_nightly DAG on five consecutive logical dates of synthetic increments (new items
    every day): every clean night ingests its day, retrains warm from the champion, registers, gates and
    is versioned; night 0 first fails at tune and, re-run, continues there, then short-circuits; the dirty
    night stops at validation with the champion unmoved and an alert; the champion moves on merit; the last
    night's refused model is promoted by hand (with a reason); params.yaml is never rewritten by a run;
    `recpipe serve` answers from night 0 on, following the champion."""
    from datetime import timedelta

    from pipeline_tasks.core import params as P
    from pipeline_tasks.data.synthetic import history_end
    from pipeline_tasks.serving import registry

    project = tiny_project_with(NIGHTS_OVERRIDES)
    env = airflow_env(tmp_path / "airflow", project)
    migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    nightly_config = (project / "params.yaml").read_bytes()
    head = git_in(project, "rev-parse", "HEAD")
    params = P.load(project / "params.yaml")
    last_history_day = (history_end(params["ingest"]["synthetic"]) - timedelta(days=1)).date()
    client = registry.client_for(params, project)

    server = url = None
    raw_rows, catalogue, champions = [], [], []
    try:
        for night in range(NIGHTS):
            when = f"{last_history_day + timedelta(days=night)}T02:00:00+00:00"  # night 0: the history itself
            if night in TONIGHT:
                P.dump(P.load(project / "params.yaml", TONIGHT[night]), project / "params.yaml")
            if night == BROKEN_SEARCH:
                result, log = assert_fails_at_tune_then_continues(project, env, when)
                assert result["state"] == "success", log[-8000:]
                assert_short_circuits(project, env, when)  # under tonight's config, before it is put back
            else:
                result, log = run_dag(project, env, "recpipe_nightly", when)
            (project / "params.yaml").write_bytes(nightly_config)
            champion_before = champions[-1] if champions else None
            aliases = registry.aliases(client, "recpipe")
            if night == DIRTY_NIGHT:
                assert result["state"] == "failed", log[-6000:]
                assert result["tasks"]["validate_raw"] == "failed", result
                assert result["tasks"]["register"] == "upstream_failed", result
                assert "Bad data: not retried" in log
                assert aliases.get("champion") == champion_before
                assert [a["stage"] for a in failed_alerts(project, result)] == ["validate_raw"]
                continue
            assert result["state"] == "success" and result["tasks"]["register"] == "success", log[-8000:]
            ingest = json.loads((project / C.METRICS_DIR / "ingest.json").read_text())
            train = json.loads((project / C.METRICS_DIR / "train.json").read_text())
            register = json.loads((project / C.METRICS_DIR / "register.json").read_text())
            raw_rows.append(ingest["rows"]["interactions"])
            catalogue.append(len(pd_items(project)))
            assert train["warm_start"]["warm"] == (champion_before is not None), train["warm_start"]
            assert train["epochs"] <= (params["train"]["warm_epochs"] if champion_before else params["train"]["epochs"])
            assert aliases["challenger"] == register["version"] and register["decision"]["summary"]
            assert_versioned(project, result, register["version"], head)
            if night == REFUSED_NIGHT:
                assert aliases.get("champion") == champion_before, register["decision"]["summary"]
                champions.append(assert_refused_then_forced(project, env, client, register, when))
            else:
                champions.append(aliases.get("champion"))
            assert champions[-1], f"night {night}: no champion: {register['decision']['summary']}"
            if server is None:  # from night 0 on, the server answers with the champion
                server, url = start_server(project, env)
            assert served_version(server, url, "u0001", champions[-1]) == champions[-1]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)

    assert raw_rows == sorted(raw_rows) and len(set(raw_rows)) == len(raw_rows), raw_rows  # every night added rows
    assert catalogue == sorted(catalogue) and catalogue[-1] > catalogue[0], catalogue  # and new items
    merit = [
        e
        for e in registry.history(client, "recpipe")
        if e["action"] == "promote" and e["from_version"] and not e["forced"]
    ]
    assert merit, f"the champion never moved on merit: {champions}"
    assert (project / "params.yaml").read_bytes() == nightly_config
    assert (project / C.RUN_PARAMS_FILE).exists()


def pd_items(project: Path):
    from pipeline_tasks.core import io

    return io.read_table(project / C.DATA_SPLIT / "items")

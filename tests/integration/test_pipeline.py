"""The whole pipeline, end to end, on the real components: `recpipe run` (dvc repro) in a
fresh git + DVC checkout with tiny synthetic data, real Spark, GX, MLflow (SQLite) and DVC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline_tasks.core import constants as C

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def recpipe(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (C.TRACKING_URI_ENV, C.PARENT_RUN_ENV)}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return subprocess.run([str(BIN / "recpipe"), *args], cwd=project, env=env, capture_output=True, text=True)


def read_metrics(project: Path, stage: str) -> dict:
    return json.loads((project / C.METRICS_DIR / f"{stage}.json").read_text())


def test_make_run_end_to_end_then_no_op(tiny_project: Path):
    from pipeline_tasks.core import params as P

    # Two baselines and two compression variants: the flow is under test here (every baseline and every
    # variant has its own tests in tests/unit/test_baselines.py and tests/model/test_compress.py).
    cheap = ["baselines.models=[Pop,EASE]", "compress.variants=[fp32,item_table_int8]"]
    P.dump(P.load(tiny_project / "params.yaml", cheap), tiny_project / "params.yaml")
    first = recpipe(tiny_project, "run")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]

    for stage in C.STAGES:
        assert (tiny_project / C.METRICS_DIR / f"{stage}.json").exists(), f"no metrics for {stage}"

    clean = read_metrics(tiny_project, "clean")
    for table in C.TABLES:
        counts = clean[table]
        assert counts["rows_in"] == counts["rows_kept"] + counts["rows_quarantined"], table
    assert clean["interactions"]["rows_quarantined"] > 0  # the synthetic data has injected dirt

    evaluate = read_metrics(tiny_project, "evaluate")
    assert evaluate["model"] == C.MODEL_NAME
    assert {"Pop", "EASE", C.MODEL_NAME} <= set(evaluate["models"])
    for name, values in evaluate["models"].items():
        assert 0.0 <= values["ndcg@10"] <= values["recall@10"] <= 1.0, name
        topk = pd.read_parquet(tiny_project / C.DATA_EVAL_TOPK / f"{name}.parquet")
        assert list(topk.columns[:3]) == [C.USER_ID, C.TARGET_ITEM_ID, C.ITEM_IDS]
        assert topk[C.ITEM_IDS].map(len).min() >= 20

    register = read_metrics(tiny_project, "register")
    assert register["version"] == "1"
    assert C.ALIAS_CHALLENGER in register["aliases"]
    assert "recpipe — run summary" in first.stdout and "MLflow UI" in first.stdout
    times = first.stdout.split("Stage times (s): ", 1)[1].split(";", 1)[0]
    assert [part.split()[0] for part in times.split(", ")] == list(C.STAGES), times  # every stage ran, timed

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{tiny_project / 'mlflow/mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("recpipe")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("recpipe.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    nested = {
        r.data.tags.get("recpipe.stage")
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    assert set(C.STAGES) <= nested

    # The registered model loads in a fresh process, from another directory, and recommends.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mlflow, pandas as pd, sys; mlflow.set_tracking_uri(sys.argv[1]);"
            "m = mlflow.pyfunc.load_model('models:/recpipe@challenger');"
            "out = m.predict(pd.DataFrame({'user_id': [sys.argv[2]], 'k': [5]}));"
            "print(len(out.loc[0, 'item_ids']))",
            f"sqlite:///{tiny_project / 'mlflow/mlflow.db'}",
            pd.read_parquet(tiny_project / C.DATA_SPLIT / "test")[C.USER_ID].iloc[0],
        ],
        cwd="/",
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip().splitlines()[-1] == "5"

    # Nothing changed: no stage re-runs and nothing new is registered.
    second = recpipe(tiny_project, "run")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Nothing changed" in second.stdout
    assert len(client.search_model_versions("name='recpipe'")) == 1

"""What a registered version carries besides its weights: the serving data (known users'
histories, cold-start lists), lineage tags (git commit, DVC md5s, params, Airflow run), the model
card's inputs, the run's lineage artifacts, and the pyfunc model itself with its signature (plus
the trained fp32 weights when the serving variant is a compressed copy: the next warm night starts
from them, see serving/warm_source.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io, tracking
from pipeline_tasks.core.params import flatten
from pipeline_tasks.model import warm_start
from pipeline_tasks.model.towers import CONFIG_FILE

# Sections whose every key becomes a version tag (the whole resolved params is an artifact).
PARAM_SECTIONS_TAGGED = ("seed", "train", "compress")


def serving_data(root: Path, fresh_share: float = 0.3, n_popular: int = 100, n_fresh: int = 100) -> dict:
    """Known users' full histories (time order) and the cold-start lists for new users.

    popular: most interacted items; fresh: catalogue items nobody has interacted with yet
    (the newest arrivals), then items by their most recent first appearance.
    """
    import pandas as pd

    frames = [io.read_table(root / C.DATA_SPLIT / s) for s in C.SPLITS]
    inter = pd.concat(frames).sort_values([C.TIMESTAMP, C.ITEM_ID])
    histories = inter.groupby(C.USER_ID, sort=True)[C.ITEM_ID].apply(list).to_dict()
    popular = inter[C.ITEM_ID].value_counts().index[:n_popular].tolist()
    catalogue = io.read_table(root / C.DATA_SPLIT / "items", columns=[C.ITEM_ID])[C.ITEM_ID].astype(str)
    first_seen = inter.groupby(C.ITEM_ID)[C.TIMESTAMP].min().sort_values(ascending=False)
    never_seen = sorted(set(catalogue) - set(first_seen.index.astype(str)))
    fresh = [*never_seen, *first_seen.index.astype(str)][:n_fresh]
    return {"histories": histories, "popular": popular, "fresh": fresh, "fresh_share": fresh_share}


def git_commit(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def dvc_versions(root: Path) -> dict[str, str]:
    """md5 of each DVC-tracked output in dvc.lock: the data and model version of this run."""
    lock_path = root / "dvc.lock"
    if not lock_path.exists():
        return {}
    lock = yaml.safe_load(lock_path.read_text()) or {}
    versions = {}
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs", []):
            if "md5" in out:
                versions[out["path"]] = out["md5"]
    return versions


def airflow_run() -> dict[str, str]:
    """The Airflow DAG run this stage runs in (exported by the DAG), or "none" outside Airflow."""
    return {
        "airflow.dag_id": os.environ.get(C.DAG_ID_ENV) or "none",
        "airflow.dag_run_id": os.environ.get(C.DAG_RUN_ID_ENV) or "none",
    }


def lineage_tags(params: dict, root: Path) -> dict[str, str]:
    """git commit, DVC md5s (every output, plus dataset/checkpoint by name), params and the Airflow run."""
    versions = dvc_versions(root)
    flat = flatten({key: params[key] for key in PARAM_SECTIONS_TAGGED})
    resolved = json.dumps(params, sort_keys=True, default=str)
    return {
        "git_commit": git_commit(root),
        "dvc.dataset": versions.get(C.DATA_SPLIT, "untracked"),
        "dvc.checkpoint": versions.get(C.MODEL_DIR, "untracked"),
        **{f"dvc.{path}": md5 for path, md5 in versions.items()},
        "params.sha256": hashlib.sha256(resolved.encode()).hexdigest(),
        **{f"params.{key}": str(value)[:500] for key, value in flat.items()},
        **airflow_run(),
    }


def split_stats(root: Path) -> dict:
    path = root / C.METRICS_DIR / "split.json"
    return io.read_json(path) if path.exists() else {}


def card_lineage(params: dict, tags: dict[str, str]) -> dict:
    return {
        "source": params["ingest"]["source"],
        "dataset": tags["dvc.dataset"],
        "checkpoint": tags["dvc.checkpoint"],
        "git_commit": tags["git_commit"],
        "dag_id": tags["airflow.dag_id"],
        "dag_run_id": tags["airflow.dag_run_id"],
    }


def log_lineage(params: dict, root: Path, card: str) -> None:
    """The card, dvc.lock (`recpipe lineage V --restore-lock` + `dvc checkout` bring the data back), the params."""
    import mlflow

    if not tracking.active():
        return
    mlflow.log_text(card, "model_card.md")
    mlflow.log_text(yaml.safe_dump(params, sort_keys=False), f"{C.LINEAGE_DIR}/params.yaml")
    if (root / "dvc.lock").exists():
        mlflow.log_artifact(str(root / "dvc.lock"), artifact_path=C.LINEAGE_DIR)


def log_model(params: dict, root: Path, model_dir: Path, variant: str, evaluate_metrics: dict):
    import mlflow

    from pipeline_tasks.serving.pyfunc import RecpipePyfunc

    with tempfile.TemporaryDirectory() as tmp:
        # A stable artifact name ("model"), whatever the variant's folder is called.
        staged = Path(tmp) / C.MODEL_ARTIFACT
        shutil.copytree(model_dir, staged)
        serving_path = Path(tmp) / "serving.json"
        data = serving_data(root, params["register"]["cold_start_fresh_share"])
        serving_path.write_text(json.dumps(data), encoding="utf-8")
        user = next(iter(data["histories"]))
        example = {"user_id": [user], "history": [data["histories"][user][-3:]], "k": [10]}
        import pandas as pd

        example_in = pd.DataFrame(example)
        artifacts = {C.MODEL_ARTIFACT: str(staged), "serving": str(serving_path)}
        if not warm_start.faithful_weights(io.read_json(model_dir / CONFIG_FILE)):
            # The serving variant is not the trained weights: keep those too, for tomorrow's warm start.
            # Staged under their own name: MLflow nests artifacts that share a folder name under
            # artifacts/0/, artifacts/1/, which would move `model` away from artifacts/model.
            weights = Path(tmp) / C.WEIGHTS_ARTIFACT
            shutil.copytree(root / C.MODEL_DIR, weights)
            artifacts[C.WEIGHTS_ARTIFACT] = str(weights)
        return mlflow.pyfunc.log_model(
            name="recommender",
            python_model=RecpipePyfunc(),
            artifacts=artifacts,
            code_paths=[str(C.PACKAGE_DIR)],
            signature=model_signature(),
            input_example=example_in,
            pip_requirements=pip_requirements(),
            metadata={"variant": variant},
        )


def model_signature():
    """user_id is required; history (a new user's items) and k are optional."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema(
        [
            ColSpec(DataType.string, "user_id"),
            ColSpec(Array(DataType.string), "history", required=False),
            ColSpec(DataType.long, "k", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec(DataType.string, "user_id"),
            ColSpec(Array(DataType.string), "item_ids"),
            ColSpec(Array(DataType.double), "scores"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    # onnxruntime: the chosen compression variant may be an ONNX model.
    packages = ("mlflow", "torch", "transformers", "peft", "pandas", "numpy", "onnxruntime")
    return [f"{pkg}=={version(pkg)}" for pkg in packages]

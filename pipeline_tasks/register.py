"""Register the evaluated model in MLflow as `challenger`, and gate it to `champion`.

The gate re-scores the current champion on this run's test split (never stale numbers)
and promotes only when the challenger is at least `register.min_improvement` better on
NDCG@10. With no champion yet, the challenger becomes the first champion only if it
clears `register.min_ndcg`. `register.auto_promote: false` leaves promotion to a person.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from pipeline_tasks import constants as C
from pipeline_tasks import io, tracking
from pipeline_tasks.cli import stage_main
from pipeline_tasks.errors import PipelineError

HEADLINE = "ndcg@10"


@dataclass
class Decision:
    promote: bool
    summary: str
    challenger_ndcg: float
    champion_ndcg: float | None
    champion_version: str | None


def chosen_model_dir(root: Path) -> tuple[str, Path]:
    """The compression variant picked by the compress stage (fp32 model if none)."""
    compress = io.read_json(root / C.METRICS_DIR / "compress.json")
    variant = compress.get("chosen") or compress.get("reference") or "fp32"
    path = root / C.COMPRESSED_DIR / variant
    if not path.exists():
        path = root / C.MODEL_DIR
    if not (path / "config.json").exists():
        raise PipelineError(f"no model to register at {path}: run the train and compress stages first")
    return variant, path


def serving_data(root: Path, n_popular: int = 100) -> dict:
    """Known users' full histories (time order) and a popularity fallback for new users."""
    import pandas as pd

    frames = [io.read_table(root / C.DATA_SPLIT / s) for s in C.SPLITS]
    inter = pd.concat(frames).sort_values([C.TIMESTAMP, C.ITEM_ID])
    histories = inter.groupby(C.USER_ID, sort=True)[C.ITEM_ID].apply(list).to_dict()
    popular = inter[C.ITEM_ID].value_counts().index[:n_popular].tolist()
    return {"histories": histories, "popular": popular}


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


def rescore_champion(client, name: str, params: dict, root: Path) -> tuple[str, float] | None:
    """NDCG@10 of the current champion on *this* run's test split, or None if there is none."""
    from pipeline_tasks import evaluate

    try:
        version = client.get_model_version_by_alias(name, C.ALIAS_CHAMPION)
    except Exception:  # noqa: BLE001 - MLflow raises RestException when the alias does not exist
        return None
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=tmp)
        score = evaluate.score_model_dir(Path(local) / "artifacts" / "model", params, root)[HEADLINE]
    return version.version, score


def decide(challenger: float, champion: tuple[str, float] | None, params: dict) -> Decision:
    cfg = params["register"]
    if champion is None:
        ok = challenger >= cfg["min_ndcg"]
        summary = (f"first champion: NDCG@10 {challenger:.4f} {'>=' if ok else '<'} floor {cfg['min_ndcg']:.4f}")
        return Decision(ok, summary, challenger, None, None)
    version, score = champion
    needed = score * (1 + cfg["min_improvement"])
    ok = challenger > needed if cfg["min_improvement"] > 0 else challenger > score
    summary = (f"challenger NDCG@10 {challenger:.4f} vs champion v{version} re-scored on this test split "
               f"{score:.4f} (needs > {needed:.4f}): {'promote' if ok else 'keep champion'}")
    return Decision(ok, summary, challenger, score, version)


def log_model(params: dict, root: Path, model_dir: Path, variant: str, evaluate_metrics: dict):
    import mlflow

    from pipeline_tasks.serving import RecpipePyfunc

    with tempfile.TemporaryDirectory() as tmp:
        # A stable artifact name ("model"), whatever the variant's folder is called.
        staged = Path(tmp) / "model"
        shutil.copytree(model_dir, staged)
        serving_path = Path(tmp) / "serving.json"
        data = serving_data(root)
        serving_path.write_text(json.dumps(data), encoding="utf-8")
        user = next(iter(data["histories"]))
        example = {"user_id": [user], "history": [data["histories"][user][-3:]], "k": [10]}
        import pandas as pd

        example_in = pd.DataFrame(example)
        return mlflow.pyfunc.log_model(
            name="recommender",
            python_model=RecpipePyfunc(),
            artifacts={"model": str(staged), "serving": str(serving_path)},
            code_paths=[str(Path(__file__).parent)],
            signature=model_signature(),
            input_example=example_in,
            pip_requirements=pip_requirements(),
            metadata={"variant": variant},
        )


def model_signature():
    """user_id is required; history (a new user's items) and k are optional."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.string, "user_id"),
                     ColSpec(Array(DataType.string), "history", required=False),
                     ColSpec(DataType.long, "k", required=False)])
    outputs = Schema([ColSpec(DataType.string, "user_id"), ColSpec(Array(DataType.string), "item_ids"),
                      ColSpec(Array(DataType.double), "scores")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "torch", "transformers", "peft", "pandas", "numpy")]


def run(params: dict, root: Path) -> dict:
    import mlflow
    from mlflow import MlflowClient

    tracking.setup(params, root)
    name = params["register"]["model_name"]
    evaluate_metrics = io.read_json(root / C.METRICS_DIR / "evaluate.json")
    model_name = evaluate_metrics["model"]
    challenger_ndcg = float(evaluate_metrics["models"][model_name][HEADLINE])
    variant, model_dir = chosen_model_dir(root)

    client = MlflowClient()
    champion = rescore_champion(client, name, params, root) if client.search_registered_models(f"name='{name}'") else None
    decision = decide(challenger_ndcg, champion, params)

    started_here = mlflow.active_run() is None
    run_ctx = mlflow.start_run(run_name="register") if started_here else None
    try:
        info = log_model(params, root, model_dir, variant, evaluate_metrics)
    finally:
        if run_ctx is not None:
            mlflow.end_run()
    tags = {"git_commit": git_commit(root), "compression_variant": variant, "gate": decision.summary,
            **{f"dvc.{path}": md5 for path, md5 in dvc_versions(root).items()},
            **{tracking.metric_key(f"metric.{k}"): f"{v:.5f}" for k, v in evaluate_metrics["models"][model_name].items()
               if isinstance(v, (int, float))}}
    # Registered with its tags in one call; aliases move only after everything else succeeded.
    version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    client.set_registered_model_alias(name, C.ALIAS_CHALLENGER, version)
    if decision.promote and params["register"]["auto_promote"]:
        if decision.champion_version:
            client.set_registered_model_alias(name, C.ALIAS_PREVIOUS_CHAMPION, decision.champion_version)
        client.set_registered_model_alias(name, C.ALIAS_CHAMPION, version)
    aliases = sorted(a for a, v in client.get_registered_model(name).aliases.items() if str(v) == version)
    print(f"register: {name} v{version} aliases={aliases} — {decision.summary}")
    return {"model_name": name, "version": version, "variant": variant, "aliases": aliases,
            "decision": asdict(decision)}


def main(argv: list[str] | None = None) -> int:
    return stage_main("register", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

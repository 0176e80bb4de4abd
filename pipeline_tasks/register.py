"""Register the evaluated model in MLflow as `challenger`, and gate it to `champion`.

The gate scores the chosen compression variant (what would serve) and re-scores the
current champion, downloaded from the registry, on *this* run's test split with the same
functions as the evaluate stage (never stale numbers). The challenger passes when:
- NDCG@10 gains at least `register.min_improvement` (relative) over the champion,
- no group of a guarded slice (`register.guarded_slices`: history length, cold-start and
  long-tail targets, ...) with at least `evaluate.min_group_users` users loses more than
  `register.max_slice_drop` (relative) NDCG@10,
- the variant's p99 latency and size (metrics/compress.json) fit `register.max_latency_p99_ms`
  and `register.max_size_mb`.
With no champion yet, it must instead clear `register.min_ndcg` and beat the run's best
baseline (plus the same budgets). `register.auto_promote: false` leaves a passing challenger
to `recpipe promote`. Alias moves go through pipeline_tasks.registry (audited, all or nothing).
The decision is printed, logged to MLflow (metrics gate.*, tags, gate.json) and stored as
version tags (gate.passed, gate.summary, gate.champion_version, ...).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pipeline_tasks import constants as C
from pipeline_tasks import io, model_card, tracking
from pipeline_tasks import metrics as M
from pipeline_tasks.cli import stage_main
from pipeline_tasks.errors import PipelineError
from pipeline_tasks.params import flatten

HEADLINE = "ndcg@10"
# Exported by the Airflow DAGs into the stage environment; tagged on the version for lineage.
DAG_ID_ENV = "RECPIPE_DAG_ID"
DAG_RUN_ID_ENV = "RECPIPE_DAG_RUN_ID"
# Sections whose every key becomes a version tag (the whole resolved params is an artifact).
PARAM_SECTIONS_TAGGED = ("seed", "train", "compress")
LINEAGE_DIR = "lineage"  # run artifacts: dvc.lock and the resolved params, for `recpipe lineage`


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Decision:
    """The gate's verdict. `passed`: the challenger deserves champion; `promote`: it is promoted now."""

    kind: str  # "first" (no champion yet) | "compare" (against the re-scored champion)
    passed: bool
    promote: bool
    summary: str
    challenger_ndcg: float
    champion_ndcg: float | None
    champion_version: str | None
    checks: list[Check] = field(default_factory=list)
    slice_deltas: dict = field(default_factory=dict)


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
    return {"airflow.dag_id": os.environ.get(DAG_ID_ENV) or "none",
            "airflow.dag_run_id": os.environ.get(DAG_RUN_ID_ENV) or "none"}


def lineage_tags(params: dict, root: Path) -> dict[str, str]:
    """git commit, DVC md5s (every output, plus dataset/checkpoint by name), params and the Airflow run."""
    versions = dvc_versions(root)
    flat = flatten({key: params[key] for key in PARAM_SECTIONS_TAGGED})
    resolved = json.dumps(params, sort_keys=True, default=str)
    return {"git_commit": git_commit(root),
            "dvc.dataset": versions.get(C.DATA_SPLIT, "untracked"),
            "dvc.checkpoint": versions.get(C.MODEL_DIR, "untracked"),
            **{f"dvc.{path}": md5 for path, md5 in versions.items()},
            "params.sha256": hashlib.sha256(resolved.encode()).hexdigest(),
            **{f"params.{key}": str(value)[:500] for key, value in flat.items()},
            **airflow_run()}


# --- the gate ------------------------------------------------------------------------------

def score(model_dir: Path, params: dict, split, task, ctx) -> dict:
    """Headline test metrics and guarded-slice NDCG@10 of one saved model on this run's split."""
    from pipeline_tasks import evaluate

    cfg = params["evaluate"]
    ranked = evaluate.model_ranking(split, task, Path(model_dir), M.ranking_length(cfg["ks"]), cfg["batch_size"])
    headline = M.compute_all(ranked, task.targets, ctx, M.metric_set(cfg["ks"]))
    groups = evaluate.user_slices(split, task, ctx, params)
    slices = {}
    for name in params["register"]["guarded_slices"]:
        if name in groups:
            data = evaluate.slice_metrics({"m": ranked}, task.targets, groups[name], ctx, cfg["min_group_users"], False)
            slices[name] = {g: {"users": n, HEADLINE: data["metrics"]["m"][g][HEADLINE]} for g, n in data["users"].items()}
    return {"metrics": headline, "slices": slices}


def rescore_champion(client, name: str, version: str, params: dict, split, task, ctx) -> dict:
    """The current champion, downloaded from the registry, scored on *this* run's test split."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        return score(Path(local) / "artifacts" / "model", params, split, task, ctx)


def slice_check(challenger: dict, champion: dict, max_drop: float, min_users: int) -> tuple[Check, dict]:
    """Relative NDCG@10 drop of every guarded group big enough to judge; fails above max_drop."""
    deltas: dict = {}
    worst = (0.0, None)
    for name, groups in champion["slices"].items():
        for group, champ in groups.items():
            chall = challenger["slices"].get(name, {}).get(group)
            if chall is None or champ["users"] < min_users:
                continue
            drop = (champ[HEADLINE] - chall[HEADLINE]) / champ[HEADLINE] if champ[HEADLINE] > 0 else 0.0
            deltas.setdefault(name, {})[group] = {"champion": champ[HEADLINE], "challenger": chall[HEADLINE],
                                                  "drop_rel": drop, "users": champ["users"]}
            if drop > worst[0]:
                worst = (drop, f"{name}/{group}")
    judged = sum(len(g) for g in deltas.values())
    detail = (f"worst guarded slice drop {worst[0]:.1%} ({worst[1]}) vs max {max_drop:.1%}" if worst[1]
              else f"no guarded slice group dropped ({judged} groups with >= {min_users} users judged)")
    return Check("guarded_slices", worst[0] <= max_drop, detail), deltas


def budget_checks(budget: dict, cfg: dict) -> list[Check]:
    p99, size = budget.get("latency_p99_ms"), budget.get("size_mb")
    return [Check("latency_budget", p99 is not None and p99 <= cfg["max_latency_p99_ms"],
                  f"p99 {p99 if p99 is None else round(p99, 2)} ms vs budget {cfg['max_latency_p99_ms']} ms"),
            Check("size_budget", size is not None and size <= cfg["max_size_mb"],
                  f"size {size if size is None else round(size, 1)} MB vs budget {cfg['max_size_mb']} MB")]


def decide(challenger: dict, champion: tuple[str, dict] | None, params: dict, budget: dict,
           best_baseline: tuple[str, float] | None) -> Decision:
    """Every check of the gate; the challenger passes only if all pass."""
    cfg = params["register"]
    ndcg = challenger["metrics"][HEADLINE]
    deltas: dict = {}
    if champion is None:
        checks = [Check("ndcg_floor", ndcg >= cfg["min_ndcg"], f"NDCG@10 {ndcg:.4f} vs floor {cfg['min_ndcg']:.4f}")]
        if best_baseline is None:
            checks.append(Check("beats_best_baseline", True, "no baseline in this run"))
        else:
            base_name, base = best_baseline
            checks.append(Check("beats_best_baseline", ndcg > base, f"NDCG@10 {ndcg:.4f} vs {base_name} {base:.4f}"))
        champ_version = champ_ndcg = None
        head = "first champion (no champion yet)"
    else:
        champ_version, champ_scores = champion
        champ_ndcg = champ_scores["metrics"][HEADLINE]
        gain = (ndcg - champ_ndcg) / champ_ndcg if champ_ndcg > 0 else (float("inf") if ndcg > 0 else 0.0)
        checks = [Check("ndcg_improvement", ndcg > champ_ndcg and gain >= cfg["min_improvement"],
                        f"NDCG@10 {ndcg:.4f} vs champion v{champ_version} re-scored {champ_ndcg:.4f} "
                        f"({gain:+.1%}, needs >= {cfg['min_improvement']:+.1%})")]
        slices, deltas = slice_check(challenger, champ_scores, cfg["max_slice_drop"],
                                     params["evaluate"]["min_group_users"])
        checks.append(slices)
        head = f"challenger vs champion v{champ_version} re-scored on this run's test split"
    checks += budget_checks(budget, cfg)
    passed = all(c.passed for c in checks)
    failed = [c.name for c in checks if not c.passed]
    verdict = "PASS" if passed else f"FAIL ({', '.join(failed)})"
    action = ("promoted" if cfg["auto_promote"] else "awaiting `recpipe promote` (register.auto_promote=false)") \
        if passed else "champion kept" if champion else "no champion"
    summary = f"{head}: {verdict}; {action}. " + "; ".join(c.detail for c in checks)
    return Decision(kind="first" if champion is None else "compare", passed=passed,
                    promote=passed and cfg["auto_promote"], summary=summary, challenger_ndcg=ndcg,
                    champion_ndcg=champ_ndcg, champion_version=champ_version, checks=checks, slice_deltas=deltas)


def best_baseline(evaluate_metrics: dict) -> tuple[str, float] | None:
    name = evaluate_metrics.get("best_baseline")
    return (name, float(evaluate_metrics["models"][name][HEADLINE])) if name else None


def variant_budget(root: Path, variant: str) -> dict:
    """Latency and size of the chosen variant as the compress stage measured them."""
    compress = io.read_json(root / C.METRICS_DIR / "compress.json")
    return compress.get("variants", {}).get(variant, {})


def report(decision: Decision) -> str:
    lines = [f"gate ({decision.kind}): {'PASS' if decision.passed else 'FAIL'}"]
    lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in decision.checks]
    return "\n".join(lines)


def log_gate(decision: Decision) -> None:
    """Numbers as metrics, the verdict as tags, the whole decision as gate.json (no-op without a run)."""
    import mlflow

    if not tracking.active():
        return
    numbers = {"challenger_ndcg": decision.challenger_ndcg, "champion_ndcg": decision.champion_ndcg,
               "passed": float(decision.passed), "promoted": float(decision.promote),
               **{f"check.{c.name}": float(c.passed) for c in decision.checks},
               **{f"slice_drop.{s}.{g}": d["drop_rel"] for s, groups in decision.slice_deltas.items()
                  for g, d in groups.items()}}
    tracking.log_metrics({k: v for k, v in numbers.items() if v is not None}, prefix="gate.")
    mlflow.set_tags({"gate.passed": str(decision.passed).lower(), "gate.summary": decision.summary[:5000]})
    mlflow.log_dict(asdict(decision), "gate.json")


def gate_tags(decision: Decision) -> dict[str, str]:
    return {"gate.passed": str(decision.passed).lower(), "gate.summary": decision.summary[:5000],
            "gate.kind": decision.kind, "gate.challenger_ndcg": f"{decision.challenger_ndcg:.5f}",
            "gate.champion_version": decision.champion_version or "",
            "gate.champion_ndcg": "" if decision.champion_ndcg is None else f"{decision.champion_ndcg:.5f}"}


def split_stats(root: Path) -> dict:
    path = root / C.METRICS_DIR / "split.json"
    return io.read_json(path) if path.exists() else {}


def card_lineage(params: dict, tags: dict[str, str]) -> dict:
    return {"source": params["ingest"]["source"], "dataset": tags["dvc.dataset"], "checkpoint": tags["dvc.checkpoint"],
            "git_commit": tags["git_commit"], "dag_id": tags["airflow.dag_id"], "dag_run_id": tags["airflow.dag_run_id"]}


def log_lineage(params: dict, root: Path, card: str) -> None:
    """The card, dvc.lock (so `recpipe lineage V --restore-lock` + `dvc checkout` bring the data back) and the params."""
    import mlflow

    if not tracking.active():
        return
    mlflow.log_text(card, "model_card.md")
    mlflow.log_text(yaml.safe_dump(params, sort_keys=False), f"{LINEAGE_DIR}/params.yaml")
    if (root / "dvc.lock").exists():
        mlflow.log_artifact(str(root / "dvc.lock"), artifact_path=LINEAGE_DIR)


def log_model(params: dict, root: Path, model_dir: Path, variant: str, evaluate_metrics: dict):
    import mlflow

    from pipeline_tasks.serving import RecpipePyfunc

    with tempfile.TemporaryDirectory() as tmp:
        # A stable artifact name ("model"), whatever the variant's folder is called.
        staged = Path(tmp) / "model"
        shutil.copytree(model_dir, staged)
        serving_path = Path(tmp) / "serving.json"
        data = serving_data(root, params["register"]["cold_start_fresh_share"])
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

    # onnxruntime: the chosen compression variant may be an ONNX model.
    packages = ("mlflow", "torch", "transformers", "peft", "pandas", "numpy", "onnxruntime")
    return [f"{pkg}=={version(pkg)}" for pkg in packages]


def run(params: dict, root: Path) -> dict:
    import mlflow
    from mlflow import MlflowClient

    from pipeline_tasks import registry
    from pipeline_tasks.dataset import eval_task, load_split

    root = Path(root)
    tracking.setup(params, root)
    name = params["register"]["model_name"]
    evaluate_metrics = io.read_json(root / C.METRICS_DIR / "evaluate.json")
    model_name = evaluate_metrics["model"]
    variant, model_dir = chosen_model_dir(root)

    # Challenger (the variant that will serve) and champion scored the same way on this split.
    split = load_split(root)
    task = eval_task(split, "test")
    ctx = M.make_context(split.n_items, split.train.items, params["evaluate"]["head_share"])
    challenger = score(model_dir, params, split, task, ctx)
    client = MlflowClient()
    champion_version = registry.aliases(client, name).get(C.ALIAS_CHAMPION)
    champion = None
    if champion_version:
        champion = (champion_version, rescore_champion(client, name, champion_version, params, split, task, ctx))
    decision = decide(challenger, champion, params, variant_budget(root, variant), best_baseline(evaluate_metrics))

    lineage = lineage_tags(params, root)
    card = model_card.render(name, evaluate_metrics, io.read_json(root / C.METRICS_DIR / "compress.json"),
                             split_stats(root), asdict(decision), card_lineage(params, lineage))
    started_here = mlflow.active_run() is None
    if started_here:
        mlflow.start_run(run_name="register")
    try:
        info = log_model(params, root, model_dir, variant, evaluate_metrics)
        log_gate(decision)
        log_lineage(params, root, card)
    finally:
        if started_here:
            mlflow.end_run()
    tags = {"compression_variant": variant, **lineage, **gate_tags(decision),
            **{tracking.metric_key(f"metric.{k}"): f"{v:.5f}" for k, v in evaluate_metrics["models"][model_name].items()
               if isinstance(v, (int, float))}}
    # Registered with its tags in one call; aliases move only after everything else succeeded.
    version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    client.update_model_version(name, version, description=model_card.description(card))
    registry.set_challenger(client, name, version, reason=f"registered by the pipeline ({variant})")
    if decision.promote:
        registry.promote(client, name, version, gate={"passed": True, "summary": decision.summary,
                                                      "champion_version": decision.champion_version,
                                                      "champion_ndcg": decision.champion_ndcg,
                                                      "challenger_ndcg": decision.challenger_ndcg})
    aliases = sorted(a for a, v in registry.aliases(client, name).items() if v == version)
    print(report(decision))
    print(f"register: {name} v{version} aliases={aliases} — {decision.summary}")
    return {"model_name": name, "version": version, "variant": variant, "aliases": aliases,
            "decision": asdict(decision)}


def main(argv: list[str] | None = None) -> int:
    return stage_main("register", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

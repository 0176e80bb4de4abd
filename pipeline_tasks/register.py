"""Register the evaluated model in MLflow as `challenger`, and gate it to `champion`.

Scores the chosen compression variant (what would serve) and the current champion on this run's
test split, decides with the gate (its rules: serving/gate.py), logs the model with what it carries
(serving data, lineage, model card: serving/publish.py), registers the version with its tags, moves
`challenger` and, when the gate passed and `register.auto_promote`, `champion` (through
serving/registry.py: audited, all or nothing, only if the champion is still the one the gate saw).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io, tracking
from pipeline_tasks.core import metrics as M
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.core.stage_cli import stage_main
from pipeline_tasks.model.evaluation import user_slices
from pipeline_tasks.serving import model_card
from pipeline_tasks.serving.gate import (
    best_baseline,
    check_guarded_slices,
    decide,
    gate_tags,
    log_gate,
    report,
    rescore_champion,
    score,
    variant_budget,
)
from pipeline_tasks.serving.publish import card_lineage, lineage_tags, log_lineage, log_model, split_stats


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


def run(params: dict, root: Path) -> dict:
    import mlflow
    from mlflow import MlflowClient

    from pipeline_tasks.data.dataset import eval_task, load_split
    from pipeline_tasks.serving import registry

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
    # Before any scoring: a guarded slice this split lacks (a typo, a dropped users column) would switch its guard off.
    check_guarded_slices(params["register"]["guarded_slices"], list(user_slices(split, task, ctx, params)))
    challenger = score(model_dir, params, split, task, ctx)
    client = MlflowClient()
    champion_version = registry.aliases(client, name).get(C.ALIAS_CHAMPION)
    champion = None
    if champion_version:
        champion = (champion_version, rescore_champion(client, name, champion_version, params, split, task, ctx))
    decision = decide(challenger, champion, params, variant_budget(root, variant), best_baseline(evaluate_metrics))

    lineage = lineage_tags(params, root)
    card = model_card.render(
        name,
        evaluate_metrics,
        io.read_json(root / C.METRICS_DIR / "compress.json"),
        split_stats(root),
        asdict(decision),
        card_lineage(params, lineage),
    )
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
    tags = {
        "compression_variant": variant,
        **lineage,
        **gate_tags(decision),
        **{
            tracking.metric_key(f"metric.{k}"): f"{v:.5f}"
            for k, v in evaluate_metrics["models"][model_name].items()
            if isinstance(v, (int, float))
        },
    }
    # Registered with its tags in one call; aliases move only after everything else succeeded.
    version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    client.update_model_version(name, version, description=model_card.description(card))
    registry.set_challenger(client, name, version, reason=f"registered by the pipeline ({variant})")
    if decision.promote:
        registry.promote(
            client,
            name,
            version,
            expected_champion=champion_version,
            gate={
                "passed": True,
                "summary": decision.summary,
                "champion_version": decision.champion_version,
                "champion_ndcg": decision.champion_ndcg,
                "challenger_ndcg": decision.challenger_ndcg,
            },
        )
    aliases = sorted(a for a, v in registry.aliases(client, name).items() if v == version)
    print(report(decision))
    print(f"register: {name} v{version} aliases={aliases} — {decision.summary}")
    return {
        "model_name": name,
        "version": version,
        "variant": variant,
        "aliases": aliases,
        "decision": asdict(decision),
    }


def main(argv: list[str] | None = None) -> int:
    return stage_main("register", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""The recommender on MovieLens-100K through the real stages, against every baseline.

    .venv/bin/python bench/bench_model.py [--data ../shared/datasets/ml-100k] [--work DIR]
        [--ablation frozen,full] [--ablation-epochs N] [--reuse] [--set section.key=value ...]

Runs ingest (ingest.source=movielens) -> clean (Spark) -> split -> baselines (Pop, ItemKNN, EASE,
ALS, SASRec-ID) -> train -> evaluate in one process on a scratch project root (the data is
never copied into the repo), with params.yaml plus the given overrides; no tune stage (the
train section's defaults are what is measured). Then the ablation: the same training with
each other fine-tune mode, scored on the same test split. Writes bench/results/model.json:
every model's test NDCG@10 / Recall@10, the cold-start slice, the ablation table, training
wall time and sequences/s, and the issue's quality targets checked against this run.
One run per configuration (training on a shared 2-core CPU takes minutes): no medians.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_tasks import baselines, clean, evaluate, ingest, split, train  # noqa: E402
from pipeline_tasks import constants as C  # noqa: E402
from pipeline_tasks import metrics as M  # noqa: E402
from pipeline_tasks import params as P  # noqa: E402
from pipeline_tasks.dataset import eval_task, load_split  # noqa: E402

log = logging.getLogger("bench_model")
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "ml-100k"
RESULT = ROOT / "bench" / "results" / "model.json"
# The targets: fine-tuned NDCG@10 >= 1.05 x the best other model of the run, and >= 0.0795.
TARGET_RATIO, TARGET_NDCG = 1.05, 0.0795
HEADLINE = ("ndcg@10", "recall@10")


def bench_params(data: Path, overrides: list[str]) -> dict:
    params = P.load(ROOT / C.PARAMS_FILE, ["ingest.source=movielens", f"ingest.path={data}", *overrides])
    params["train"]["use_best_params"] = False  # no tune stage here: the defaults are what is measured
    return params


def timed(name: str, stage, params: dict, root: Path, seconds: dict, reuse: bool) -> dict:
    """Run a stage (or, with --reuse, take its stored result from an earlier bench run on this root)."""
    stored = root / "bench_stages" / f"{name}.json"
    if reuse and stored.exists():
        log.info("stage %s: reusing %s", name, stored)
        kept = json.loads(stored.read_text())
        seconds[name] = kept["seconds"]
        return kept["result"]
    started = time.perf_counter()
    log.info("stage %s ...", name)
    result = stage.run(params, root)
    seconds[name] = round(time.perf_counter() - started, 1)
    log.info("stage %s done in %.0f s", name, seconds[name])
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps({"seconds": seconds[name], "result": result}, default=str))
    return result


def run_baselines(params: dict, root: Path, seconds: dict, reuse: bool) -> dict:
    """The baselines stage one model at a time (the same run(), a one-name models list), so a
    --reuse run only fits the models an interrupted bench had not finished."""
    merged: dict = {"models": {}, "selected": {}}
    for name in params["baselines"]["models"]:
        one = copy.deepcopy(params)
        one["baselines"]["models"] = [name]
        part = timed(f"baselines-{name}", baselines, one, root, seconds, reuse)
        merged["models"].update(part["models"])
        merged["selected"].update(part["selected"])
    return merged


def headline(metrics: dict) -> dict:
    return {key: round(metrics[key], 4) for key in HEADLINE}


def cold_start_slice(result: dict) -> dict:
    data = result["slices"]["cold_start"]
    return {"users": data["users"],
            "ndcg@10": {name: {g: round(v["ndcg@10"], 4) for g, v in groups.items()}
                        for name, groups in data["metrics"].items()},
            "recall@10": {name: {g: round(v["recall@10"], 4) for g, v in groups.items()}
                          for name, groups in data["metrics"].items()}}


def ablation_run(mode: str, params: dict, root: Path, epochs: int | None) -> dict:
    """Train with another fine-tune mode into a side folder and score it on the same test split."""
    p = copy.deepcopy(params)
    p["train"]["finetune"] = mode
    if epochs:
        p["train"]["epochs"] = epochs
    out = root / "models" / f"ablation-{mode}"
    started = time.perf_counter()
    summary = train.fit_final(p, root, output_dir=out, checkpoint_dir=None)  # as the train stage: select, refit
    seconds = time.perf_counter() - started
    split_data = load_split(root)
    task = eval_task(split_data, "test")
    k = M.ranking_length(params["evaluate"]["ks"])
    ranked = evaluate.model_ranking(split_data, task, out, k, params["evaluate"]["batch_size"])
    ctx = M.make_context(split_data.n_items, split_data.train.items, params["evaluate"]["head_share"])
    test = M.compute_all(ranked, task.targets, ctx, M.metric_set(params["evaluate"]["ks"]))
    return {"epochs": p["train"]["epochs"], "best_epoch": summary["best_epoch"],
            "valid_ndcg@10": round(summary["valid_ndcg@10"], 4), **headline(test),
            "seconds": round(seconds, 1), "sequences_per_s": round(summary["sequences_per_s"], 1),
            "n_params_trainable": summary["n_params_trainable"]}


def targets(models: dict, trained: str) -> dict:
    others = {n: m["ndcg@10"] for n, m in models.items() if n != trained}
    best = max(others, key=others.get)
    ratio = models[trained]["ndcg@10"] / others[best] if others[best] else None
    return {"best_other": best, "best_other_ndcg@10": round(others[best], 4),
            "ratio": round(ratio, 3) if ratio is not None else None, "ratio_target": TARGET_RATIO,
            "ndcg_target": TARGET_NDCG,
            "ratio_met": ratio is not None and ratio >= TARGET_RATIO,
            "ndcg_met": models[trained]["ndcg@10"] >= TARGET_NDCG}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recpipe-bench-ml100k"),
                        help="scratch project root (deleted first)")
    parser.add_argument("--ablation", default="frozen", help="other fine-tune modes to train, comma-separated")
    parser.add_argument("--ablation-epochs", type=int, default=0, help="epochs of each ablation run (0 = train.epochs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--note", default="", help="free text stored in the result (how the run was made)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep --work and skip the stages (and baseline models) an earlier run finished")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not (args.data / "u.data").exists():
        print(f"MovieLens-100K not found at {args.data}: pass --data DIR", file=sys.stderr)
        return 2

    params = bench_params(args.data.resolve(), args.overrides)
    root = args.work.resolve()
    if not args.reuse:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    reuse = args.reuse
    timed("ingest", ingest, params, root, seconds, reuse)
    clean_metrics = timed("clean", clean, params, root, seconds, reuse)
    split_metrics = timed("split", split, params, root, seconds, reuse)
    base = run_baselines(params, root, seconds, reuse)
    trained = timed("train", train, params, root, seconds, reuse)
    result = timed("evaluate", evaluate, params, root, seconds, False)

    ablation = {params["train"]["finetune"]: {
        "epochs": params["train"]["epochs"], "best_epoch": trained["best_epoch"],
        "valid_ndcg@10": round(trained["valid_ndcg@10"], 4), **headline(result["models"][C.MODEL_NAME]),
        "seconds": round(trained["seconds"], 1), "sequences_per_s": round(trained["sequences_per_s"], 1),
        "n_params_trainable": trained["n_params_trainable"]}}
    for mode in [m for m in args.ablation.split(",") if m and m != params["train"]["finetune"]]:
        stored = root / "bench_stages" / f"ablation-{mode}-{args.ablation_epochs}.json"
        if reuse and stored.exists():
            ablation[mode] = json.loads(stored.read_text())
            continue
        log.info("ablation: finetune=%s", mode)
        ablation[mode] = ablation_run(mode, params, root, args.ablation_epochs)
        stored.write_text(json.dumps(ablation[mode]))

    report = {
        "dataset": str(args.data), "command": " ".join(["bench/bench_model.py", *(argv or sys.argv[1:])]),
        "note": args.note,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch_threads": __import__("torch").get_num_threads(),
                    "note": "2 shared cores, other engineers' jobs running: wall times are upper bounds"},
        "split": split_metrics, "clean_rows_kept": clean_metrics.get("interactions", {}).get("rows_kept"),
        "models": {name: headline(m) for name, m in result["models"].items()},
        "trained_model": C.MODEL_NAME,
        "baselines_selected": {n: {k: v for k, v in s.items() if k != "grid"} for n, s in base["selected"].items()},
        "cold_start": cold_start_slice(result),
        "ablation": ablation,
        "training": {"device": trained["device"], "epochs": trained["epochs"], "seconds": round(trained["seconds"], 1),
                     "sequences_per_s": round(trained["sequences_per_s"], 1), "n_sequences": trained["n_sequences"],
                     "finetune": params["train"]["finetune"]},
        "stage_seconds": seconds,
        "targets": targets(result["models"], C.MODEL_NAME),
        "intervals": {n: v for n, v in result["intervals"].items() if n in result["models"]
                      or n == "delta_vs_best_baseline"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps({"models": report["models"], "targets": report["targets"], "ablation": ablation,
                      "cold_start": report["cold_start"]["ndcg@10"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

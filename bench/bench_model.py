"""The recommender on MovieLens-100K through the real stages, against every baseline.

    .venv/bin/python bench/bench_model.py [--data ../shared/datasets/ml-100k] [--work DIR]
        [--ablation frozen,full] [--ablation-epochs N] [--ablation-seeds 1,2] [--reuse] [--set section.key=value ...]
        [--cold-start-share X]

Runs ingest (ingest.source=movielens) -> clean (Spark) -> split -> baselines (Pop, ItemKNN, EASE,
ALS, SASRec-ID) -> train -> evaluate in one process on a scratch project root (the data is
never copied into the repo), with params.yaml plus the given overrides; no tune stage (the
train section's defaults are what is measured). Then the ablation: the same training with
each other fine-tune mode, scored on the same test split, and with --ablation-seeds the
same table again for each other training seed. Writes bench/results/model.json:
every model's test NDCG@10 / Recall@10, the cold-start slice, the ablation table, training
wall time and sequences/s, and the issue's quality targets checked against this run.
One run per configuration (training on a shared 2-core CPU takes minutes): no medians.

--compare A,B,... (issue 18: loss and epoch budget) runs ingest -> clean -> split and then only
the named training variants of COMPARE, each selected on valid and refit on train + valid as the
stages do, scored on the same test split: TextSeqRec and SASRec-ID with the old recipe (sampled
negatives, a fixed epoch budget) and the new one (params.yaml: full softmax, early stopping),
frozen and LoRA. Writes bench/results/model_loss.json: test NDCG@10 / Recall@10 with bootstrap
intervals, the paired new-minus-old interval per model and each new TextSeqRec minus the new
SASRec-ID, epochs run and chosen, wall and CPU seconds (process time, all threads). Each
variant is kept under bench_stages/ (--reuse).

--cold-start-share X sets split.cold_start_share (X of the test users get a target whose
train/valid interactions were withheld) and writes bench/results/model_cold_start.json
(no ablation unless asked): the cold group of every model, and the issue's cold-start target,
TextSeqRec against SASRec-ID on those targets.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_tasks import baselines, clean, evaluate, ingest, split, train  # noqa: E402
from pipeline_tasks.core import constants as C  # noqa: E402
from pipeline_tasks.core import metrics as M  # noqa: E402
from pipeline_tasks.core import params as P  # noqa: E402
from pipeline_tasks.data.dataset import eval_task, load_split  # noqa: E402
from pipeline_tasks.model import evaluation, fitting  # noqa: E402

log = logging.getLogger("bench_model")
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "ml-100k"
RESULT = ROOT / "bench" / "results" / "model.json"
COLD_RESULT = ROOT / "bench" / "results" / "model_cold_start.json"
LOSS_RESULT = ROOT / "bench" / "results" / "model_loss.json"
# name -> (model, overrides). "old" pins the recipe before issue 18 (sampled negatives; TextSeqRec a
# fixed 6 epochs, SASRec-ID the best of at most 20 with patience 3); "new" is params.yaml as it is.
OLD_TEXT = {"train.loss": "sampled", "train.epochs": 6, "train.patience": 0}
COMPARE = {
    "TextSeqRec-lora-old": ("text", {"train.finetune": "lora", **OLD_TEXT}),
    "TextSeqRec-lora-new": ("text", {"train.finetune": "lora"}),
    "TextSeqRec-frozen-old": ("text", {"train.finetune": "frozen", **OLD_TEXT}),
    "TextSeqRec-frozen-new": ("text", {"train.finetune": "frozen"}),
    "SASRec-ID-old": (
        "sasrec",
        {"train.loss": "sampled", "baselines.sasrec_epochs": 20, "baselines.sasrec_patience": 3},
    ),
    "SASRec-ID-new": ("sasrec", {}),
}
DEFAULT_WORK, COLD_WORK = Path("/tmp/recpipe-bench-ml100k"), Path("/tmp/recpipe-bench-cold")
# The targets: fine-tuned NDCG@10 >= 1.05 x the best other model of the run, and >= 0.0795.
TARGET_RATIO, TARGET_NDCG = 1.05, 0.0795
HEADLINE = ("ndcg@10", "recall@10")
# Our reading of "far better" on cold-start targets (the issue gives no number).
COLD_TARGET_RATIO = 2.0


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
    return {
        "users": data["users"],
        "ndcg@10": {
            name: {g: round(v["ndcg@10"], 4) for g, v in groups.items()} for name, groups in data["metrics"].items()
        },
        "recall@10": {
            name: {g: round(v["recall@10"], 4) for g, v in groups.items()} for name, groups in data["metrics"].items()
        },
    }


def cold_start_target(result: dict, n_items: int, k: int = 10) -> dict:
    """The issue's "ranks cold-start items far better than SASRec-ID, which cannot rank them at all".

    "Cannot rank them" is judged against chance: a random ranking puts the target in the top k
    with probability about k / n_items; SASRec-ID counts as near zero within 2x of that.
    "Far better" is read as at least COLD_TARGET_RATIO x SASRec-ID's cold NDCG@10 and Recall@10.
    """
    groups = result["slices"]["cold_start"]["metrics"]
    text, ids = groups.get(C.MODEL_NAME, {}).get("cold"), groups.get(baselines.SASREC, {}).get("cold")
    if text is None or ids is None:
        return {"judged": False, "why": "no cold-start test users, or SASRec-ID not in baselines.models"}
    chance = k / n_items
    out: dict = {
        "judged": True,
        "users": result["slices"]["cold_start"]["users"]["cold"],
        "chance_recall@10": round(chance, 4),
        "ratio_target": COLD_TARGET_RATIO,
    }
    for metric in ("ndcg@10", "recall@10"):
        ratio = text[metric] / ids[metric] if ids[metric] > 0 else None
        out[metric] = {
            C.MODEL_NAME: round(text[metric], 4),
            baselines.SASREC: round(ids[metric], 4),
            "ratio": round(ratio, 2) if ratio is not None else None,
        }
    out["sasrec_id_near_zero"] = ids["recall@10"] <= 2 * chance
    out["far_better_met"] = all(
        text[m] > 0 and (out[m]["ratio"] is None or out[m]["ratio"] >= COLD_TARGET_RATIO)
        for m in ("ndcg@10", "recall@10")
    )
    return out


def ablation_run(mode: str, params: dict, root: Path, epochs: int | None, seed: int | None = None) -> dict:
    """Train with another fine-tune mode (and seed) into a side folder and score it on the same test split."""
    p = copy.deepcopy(params)
    p["train"]["finetune"] = mode
    if epochs:
        p["train"]["epochs"] = epochs
    if seed is not None:
        p["seed"] = seed
    out = root / "models" / (f"ablation-{mode}" if seed is None else f"ablation-{mode}-seed{seed}")
    started = time.perf_counter()
    summary = fitting.fit_final(p, root, output_dir=out, checkpoint_dir=None)  # as the train stage: select, refit
    seconds = time.perf_counter() - started
    split_data = load_split(root)
    task = eval_task(split_data, "test")
    k = M.ranking_length(params["evaluate"]["ks"])
    ranked = evaluation.model_ranking(split_data, task, out, k, params["evaluate"]["batch_size"])
    ctx = M.make_context(split_data.n_items, split_data.train.items, params["evaluate"]["head_share"])
    test = M.compute_all(ranked, task.targets, ctx, M.metric_set(params["evaluate"]["ks"]))
    return {
        "epochs": p["train"]["epochs"],
        "best_epoch": summary["best_epoch"],
        "valid_ndcg@10": round(summary["valid_ndcg@10"], 4),
        **headline(test),
        "seconds": round(seconds, 1),
        "sequences_per_s": round(summary["sequences_per_s"], 1),
        "n_params_trainable": summary["n_params_trainable"],
    }


def stored_ablation_run(mode: str, params: dict, root: Path, epochs: int, reuse: bool, seed: int | None = None) -> dict:
    """ablation_run, kept under bench_stages/ so a --reuse run skips what an earlier run trained."""
    suffix = "" if seed is None else f"-seed{seed}"
    stored = root / "bench_stages" / f"ablation-{mode}-{epochs}{suffix}.json"
    if reuse and stored.exists():
        return json.loads(stored.read_text())
    log.info("ablation: finetune=%s%s", mode, "" if seed is None else f", seed {seed}")
    result = ablation_run(mode, params, root, epochs, seed)
    stored.write_text(json.dumps(result))
    return result


def ablation_over_seeds(ablation: dict, params: dict, root: Path, epochs: int, seeds: list[int], reuse: bool) -> dict:
    """Every ablation mode (the trained one included) again with other training seeds: one test
    split of 943 users cannot tell a 2% gain from seed noise, several seeds can show it is steady."""
    runs = {params["seed"]: {mode: r["ndcg@10"] for mode, r in ablation.items()}}
    for seed in seeds:
        runs[seed] = {
            mode: stored_ablation_run(mode, params, root, epochs, reuse, seed)["ndcg@10"] for mode in ablation
        }
    trained = params["train"]["finetune"]
    others = [m for m in ablation if m != trained]
    return {
        "seeds": list(runs),
        "ndcg@10": {mode: [runs[s][mode] for s in runs] for mode in ablation},
        "mean_ndcg@10": {mode: round(sum(runs[s][mode] for s in runs) / len(runs), 4) for mode in ablation},
        f"{trained}_beats_every_other_mode_on_every_seed": all(
            runs[s][trained] > runs[s][m] for s in runs for m in others
        ),
    }


def compare_run(name: str, params: dict, root: Path) -> tuple[dict, np.ndarray]:
    """One COMPARE variant: select on valid, refit on train + valid, rank test; its times and epochs."""
    kind, overrides = COMPARE[name]
    p = copy.deepcopy(params)
    for dotted, value in overrides.items():
        P.set_dotted(p, dotted, value)
    split_data = load_split(root)
    task = eval_task(split_data, "test")
    k = M.ranking_length(params["evaluate"]["ks"])
    wall, cpu = time.perf_counter(), time.process_time()
    if kind == "sasrec":
        best, record = baselines.select_sasrec(root, p)
        ranked = baselines.fit_sasrec_and_rank_test(best, split_data, root, p, k)
        run = {"epochs_run": len(record["grid"]), "best_epoch": best, "valid_ndcg@10": record["valid_ndcg@10"]}
        budget = p["baselines"]["sasrec_epochs"] or p["train"]["epochs"]
    else:
        out = root / "models" / f"compare-{name}"
        summary = fitting.fit_final(p, root, output_dir=out, checkpoint_dir=None)
        ranked = evaluation.model_ranking(split_data, task, out, k, params["evaluate"]["batch_size"])
        run = {
            "epochs_run": summary["epochs"],
            "best_epoch": summary["best_epoch"],
            "valid_ndcg@10": summary["valid_ndcg@10"],
            "items_encoded_at_start": summary["text_cache"].get("encoded"),
        }
        budget = p["train"]["epochs"]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ctx = M.make_context(split_data.n_items, split_data.train.items, params["evaluate"]["head_share"])
    test = M.compute_all(ranked, task.targets, ctx, M.metric_set(params["evaluate"]["ks"]))
    loss = p["train"]["loss"] if p["train"]["loss"] != "auto" else f"auto ({trainer_loss(p, split_data.n_items)})"
    return {
        **headline(test),
        **{key: round(value, 4) if isinstance(value, float) else value for key, value in run.items()},
        "max_epochs": budget,
        "patience": p["baselines"]["sasrec_patience"] if kind == "sasrec" else p["train"]["patience"],
        "loss": loss,
        "finetune": p["train"]["finetune"] if kind == "text" else None,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
    }, ranked


def trainer_loss(params: dict, n_items: int) -> str:
    from pipeline_tasks.model.trainer import resolve_loss

    return resolve_loss(params["train"], n_items)


def compare(names: list[str], params: dict, root: Path, reuse: bool) -> dict:
    """Every named COMPARE variant (kept under bench_stages/), with bootstrap intervals over test
    users, the paired new-minus-old interval of each model with both recipes, and the paired
    interval of each new TextSeqRec against the new SASRec-ID (does the text earn its cost?)."""
    rows, rankings = {}, {}
    for name in names:
        stored = root / "bench_stages" / f"compare-{name}.json"
        if reuse and stored.exists() and stored.with_suffix(".npy").exists():
            rows[name], rankings[name] = json.loads(stored.read_text()), np.load(stored.with_suffix(".npy"))
            continue
        log.info("compare: %s", name)
        rows[name], rankings[name] = compare_run(name, params, root)
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps(rows[name]))
        np.save(stored.with_suffix(".npy"), rankings[name])
    cfg = params["evaluate"]
    targets_ = eval_task(load_split(root), "test").targets
    args = (targets_, cfg["bootstrap_resamples"], cfg["ci_level"], params["seed"])
    intervals = evaluation.bootstrap_intervals(rankings, *args)
    deltas = {}
    for new in [n for n in names if n.endswith("-new")]:
        old = new.removesuffix("-new") + "-old"
        if old in rankings:
            pair = evaluation.bootstrap_intervals({new: rankings[new], old: rankings[old]}, *args, new, old)
            deltas[f"{new} - {old}"] = pair["delta_vs_best_baseline"]
    text_vs_ids = {}
    for text in [n for n in names if n.startswith(C.MODEL_NAME) and n.endswith("-new")]:
        if "SASRec-ID-new" in rankings:
            pair = evaluation.bootstrap_intervals(
                {text: rankings[text], "SASRec-ID-new": rankings["SASRec-ID-new"]}, *args, text, "SASRec-ID-new"
            )
            text_vs_ids[f"{text} - SASRec-ID-new"] = pair["delta_vs_best_baseline"]
    return {
        "variants": rows,
        "intervals": intervals,
        "paired_new_minus_old": deltas,
        "paired_text_minus_ids": text_vs_ids,
    }


def seed_list(text: str) -> list[int]:
    """--ablation-seeds 1,2 -> [1, 2]; argparse turns the ValueError into a usage error naming the flag."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integer seeds (e.g. 1,2)") from err


def targets(models: dict, trained: str) -> dict:
    others = {n: m["ndcg@10"] for n, m in models.items() if n != trained}
    best = max(others, key=others.get)
    ratio = models[trained]["ndcg@10"] / others[best] if others[best] else None
    return {
        "best_other": best,
        "best_other_ndcg@10": round(others[best], 4),
        "ratio": round(ratio, 3) if ratio is not None else None,
        "ratio_target": TARGET_RATIO,
        "ndcg_target": TARGET_NDCG,
        "ratio_met": ratio is not None and ratio >= TARGET_RATIO,
        "ndcg_met": models[trained]["ndcg@10"] >= TARGET_NDCG,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help=f"scratch project root (deleted first; default {DEFAULT_WORK}, with --cold-start-share {COLD_WORK})",
    )
    parser.add_argument(
        "--ablation",
        default=None,
        help="other fine-tune modes to train, comma-separated (default frozen; none with --cold-start-share)",
    )
    parser.add_argument("--ablation-epochs", type=int, default=0, help="epochs of each ablation run (0 = train.epochs)")
    parser.add_argument(
        "--ablation-seeds",
        type=seed_list,
        default=[],
        help="other training seeds, comma-separated: every ablation mode, the trained one "
        "included, is trained again with each (train + ablation only; default none)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"result JSON (default {RESULT.name}, with --cold-start-share {COLD_RESULT.name})",
    )
    parser.add_argument(
        "--cold-start-share",
        type=float,
        default=0.0,
        help="split.cold_start_share: share of test users given a never-seen target item",
    )
    parser.add_argument(
        "--compare",
        default="",
        help=f"only these training variants after split, comma-separated, or 'all' ({', '.join(COMPARE)})",
    )
    parser.add_argument("--note", default="", help="free text stored in the result (how the run was made)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep --work and skip the stages (and baseline models) an earlier run finished",
    )
    args = parser.parse_args(argv)
    cold = args.cold_start_share > 0
    args.work = args.work or (COLD_WORK if cold else DEFAULT_WORK)
    args.out = args.out or (COLD_RESULT if cold else RESULT)
    args.ablation = ("" if cold else "frozen") if args.ablation is None else args.ablation
    if cold:
        args.overrides.append(f"split.cold_start_share={args.cold_start_share}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not (args.data / "u.data").exists():
        print(f"MovieLens-100K not found at {args.data}: pass --data DIR", file=sys.stderr)
        return 2

    names = list(COMPARE) if args.compare == "all" else [n for n in args.compare.split(",") if n]
    unknown = [n for n in names if n not in COMPARE]
    if unknown:
        print(f"--compare: unknown variant(s) {unknown}; choose from {', '.join(COMPARE)}", file=sys.stderr)
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
    if names:
        return write_comparison(args, argv, names, params, root, seconds, split_metrics)
    base = run_baselines(params, root, seconds, reuse)
    trained = timed("train", train, params, root, seconds, reuse)
    result = timed("evaluate", evaluate, params, root, seconds, False)

    ablation = {
        params["train"]["finetune"]: {
            "epochs": params["train"]["epochs"],
            "best_epoch": trained["best_epoch"],
            "valid_ndcg@10": round(trained["valid_ndcg@10"], 4),
            **headline(result["models"][C.MODEL_NAME]),
            "seconds": round(trained["seconds"], 1),
            "sequences_per_s": round(trained["sequences_per_s"], 1),
            "n_params_trainable": trained["n_params_trainable"],
        }
    }
    for mode in [m for m in args.ablation.split(",") if m and m != params["train"]["finetune"]]:
        ablation[mode] = stored_ablation_run(mode, params, root, args.ablation_epochs, reuse)
    by_seed = (
        ablation_over_seeds(ablation, params, root, args.ablation_epochs, args.ablation_seeds, reuse)
        if args.ablation_seeds
        else None
    )

    report = {
        "dataset": str(args.data),
        "command": " ".join(["bench/bench_model.py", *(argv or sys.argv[1:])]),
        "note": args.note,
        "machine": machine("2 shared cores, other engineers' jobs running: wall times are upper bounds"),
        "split": split_metrics,
        "clean_rows_kept": clean_metrics.get("interactions", {}).get("rows_kept"),
        "models": {name: headline(m) for name, m in result["models"].items()},
        "trained_model": C.MODEL_NAME,
        "baselines_selected": {n: {k: v for k, v in s.items() if k != "grid"} for n, s in base["selected"].items()},
        "cold_start": cold_start_slice(result),
        "cold_start_target": cold_start_target(result, split_metrics["items"]),
        "ablation": ablation,
        "ablation_seeds": by_seed,
        "training": {
            "device": trained["device"],
            "epochs": trained["epochs"],
            "seconds": round(trained["seconds"], 1),
            "sequences_per_s": round(trained["sequences_per_s"], 1),
            "n_sequences": trained["n_sequences"],
            "finetune": params["train"]["finetune"],
        },
        "stage_seconds": seconds,
        "targets": targets(result["models"], C.MODEL_NAME),
        "intervals": {
            n: v for n, v in result["intervals"].items() if n in result["models"] or n == "delta_vs_best_baseline"
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {
                "models": report["models"],
                "targets": report["targets"],
                "ablation": ablation,
                "ablation_seeds": by_seed,
                "cold_start": report["cold_start"]["ndcg@10"],
                "cold_start_target": report["cold_start_target"],
            },
            indent=2,
        )
    )
    return 0


def machine(note: str) -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch_threads": __import__("torch").get_num_threads(),
        "note": note,
    }


def write_comparison(args, argv, names: list[str], params: dict, root: Path, seconds: dict, split_metrics: dict) -> int:
    report = {
        "dataset": str(args.data),
        "command": " ".join(["bench/bench_model.py", *(argv or sys.argv[1:])]),
        "note": args.note,
        "machine": machine(
            "2 cores shared with other jobs: wall times are upper bounds; CPU seconds are this process's"
        ),
        "split": split_metrics,
        "stage_seconds": seconds,
        "comparison": compare(names, params, root, args.reuse),
    }
    out = args.out if args.out != RESULT else LOSS_RESULT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report["comparison"].items() if k != "intervals"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

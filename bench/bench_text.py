"""Does the text earn its cost? TextSeqRec against every baseline, over training seeds, on one data set.

    .venv/bin/python bench/bench_text.py --data office|ml-100k|DIR [--seeds 42,43,44]
        [--variants frozen,adaptor,lora] [--work DIR] [--reuse] [--set section.key=value ...] [--out FILE]

Runs the real stages on a scratch project root (the data is read from ../shared/datasets, never
copied): ingest -> clean (Spark) -> split -> baselines (Pop, ItemKNN, EASE, ALS: deterministic, once),
then for every seed SASRec-ID and each TextSeqRec variant, each selected on valid (early stopping) and
refit on train + valid as the train stage does, ranking the same test users. Variants:

    frozen      the encoder frozen, one linear projection of the cached pooled text (the default)
    whitened    frozen, the pooled text whitened first (train.text_whitening true)
    adaptor     the encoder frozen, UniSRec's MoE whitening adaptor (train.adaptor_experts, default 8)
    lora        LoRA adapters on the encoder (params.yaml's default recipe)
    textids     frozen, the item-ID rows started from the text's principal components (train.id_init text)
    idsfromtext no text tower: SASRec-ID whose ID rows start from the text (use_text false, id_init text)

Per model: NDCG@10 / Recall@10 per seed and their mean; a 95% bootstrap interval over test users of
the seed-averaged per-user metric (seed noise averaged, user sampling kept); for each TextSeqRec variant
the paired interval of its gain over the best other model and the issue's ratio target (Office 1.15,
MovieLens 1.10; the gain's interval must exclude 0); each variant after the first, its paired gain over
the first one named (`gain_over_first_variant`: lora over frozen in `--variants frozen,lora`); wall and
CPU seconds of every fit and stage.
Writes bench/results/text_<data>.json. Each fit is kept under <work>/bench_stages/ (--reuse resumes;
a fit made with other train params, from params.yaml or --set, is another file; ingest/clean/split
are reused as they are: give a different --work when --set changes the data).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_model import headline, machine, run_baselines, seed_list, timed  # noqa: E402

from pipeline_tasks import clean, ingest, split  # noqa: E402
from pipeline_tasks.core import constants as C  # noqa: E402
from pipeline_tasks.core import metrics as M  # noqa: E402
from pipeline_tasks.core import params as P  # noqa: E402
from pipeline_tasks.data.dataset import eval_task, load_split  # noqa: E402
from pipeline_tasks.model import baselines, evaluation, fitting  # noqa: E402

log = logging.getLogger("bench_text")
DATASETS = ROOT.parent / "shared" / "datasets"
# Data set -> (folder, ingest overrides, the ratio target for TextSeqRec over the best other).
SOURCES = {
    "office": (
        DATASETS / "amazon-office",
        [
            "ingest.source=generic",
            "ingest.generic.columns.rating=''",
            "ingest.generic.timestamp_unit=s",
            "ingest.generic.text_columns=[description]",
        ],
        1.15,
    ),
    "ml-100k": (DATASETS / "ml-100k", ["ingest.source=movielens"], 1.10),
}
VARIANTS = {
    "frozen": {"train.finetune": "frozen", "train.adaptor_experts": 0},
    "whitened": {"train.finetune": "frozen", "train.adaptor_experts": 0, "train.text_whitening": True},
    "adaptor": {"train.finetune": "frozen", "train.adaptor_experts": 8},
    "lora": {"train.finetune": "lora", "train.adaptor_experts": 0},
    "textids": {"train.finetune": "frozen", "train.adaptor_experts": 0, "train.id_init": "text"},
    "idsfromtext": {"train.use_text": False, "train.id_init": "text"},
}
FIXED_BASELINES = ["Pop", "ItemKNN", "EASE", "ALS"]
METRICS = (("ndcg", 10), ("recall", 10))
NOT_IN_KEY = ("num_threads",)
# Train params an ID-only model (SASRec-ID, use_text false) never reads.
TEXT_ONLY = tuple(
    "encoder finetune lora_r lora_alpha lora_dropout max_text_len text_whitening adaptor_experts encoder_lr"
    " text_grad_items".split()
)


# Read only when IDs start from text (id_init random, as before the option existed, reads neither).
ID_START = ("id_init", "id_init_std")


def bench_params(data: str, overrides: list[str]) -> tuple[dict, Path, float]:
    folder, source, ratio = SOURCES.get(data, (Path(data), ["ingest.source=generic"], 1.15))
    params = P.load(ROOT / C.PARAMS_FILE, [*source, f"ingest.path={folder.resolve()}", *overrides])
    params["train"]["use_best_params"] = False  # no tune stage here: params.yaml's values are measured
    params["baselines"]["models"] = FIXED_BASELINES
    return params, folder, ratio


def fit_and_rank(name: str, params: dict, root: Path, seed: int) -> tuple[dict, np.ndarray]:
    """One trained model (SASRec-ID or a TextSeqRec variant) for one seed: select, refit, rank test."""
    p = variant_params(name, params, seed)
    data = load_split(root)
    k = M.ranking_length(p["evaluate"]["ks"])
    wall, cpu = time.perf_counter(), time.process_time()
    if name == baselines.SASREC:
        best, record = baselines.select_sasrec(root, p)
        ranked = baselines.fit_sasrec_and_rank_test(best, data, root, p, k)
        run = {"epochs_run": len(record["grid"]), "best_epoch": best, "valid_ndcg@10": record["valid_ndcg@10"]}
    else:
        out = root / "models" / f"{name}-seed{seed}"
        summary = fitting.fit_final(p, root, output_dir=out, checkpoint_dir=None)
        ranked = evaluation.model_ranking(data, eval_task(data, "test"), out, k, p["evaluate"]["batch_size"])
        run = {"epochs_run": summary["epochs"], "best_epoch": summary["best_epoch"]}
        run["valid_ndcg@10"] = summary["valid_ndcg@10"]
        shutil.rmtree(out, ignore_errors=True)  # the ranking is what is kept; models are large
    run["wall_seconds"], run["cpu_seconds"] = time.perf_counter() - wall, time.process_time() - cpu
    return {key: round(v, 4) if isinstance(v, float) else v for key, v in run.items()}, ranked


def variant_params(name: str, params: dict, seed: int) -> dict:
    """The params one fit trains with: the bench's, this seed, the variant's settings."""
    p = copy.deepcopy(params)
    p["seed"] = seed
    for dotted, value in VARIANTS.get(name, {}).items():
        P.set_dotted(p, dotted, value)
    return p


def fit_key(name: str, params: dict, seed: int) -> str:
    """A stored fit's file stem: a digest of every train param the fit uses, so a change of params.yaml
    or of --set makes another fit (never a stale reuse). The thread count changes the speed, not the
    model, and an ID-only model reads no text params: neither is part of the key."""
    train = dict(variant_params(name, params, seed)["train"])
    sasrec = name == baselines.SASREC  # select_sasrec turns the text off and starts IDs at random
    id_init = "random" if sasrec else train["id_init"]
    reads_text = not sasrec and (train["use_text"] or id_init == "text")
    ignored = NOT_IN_KEY + (() if reads_text else TEXT_ONLY) + (() if id_init == "text" else ID_START)
    relevant = {key: value for key, value in train.items() if key not in ignored}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"text-{name}-seed{seed}-{digest}"


def stored_fit(name: str, params: dict, root: Path, seed: int, reuse: bool, key: str) -> tuple[dict, np.ndarray]:
    stored = root / "bench_stages" / f"{key}.json"
    if reuse and stored.exists() and stored.with_suffix(".npy").exists():
        return json.loads(stored.read_text()), np.load(stored.with_suffix(".npy"))
    log.info("fit %s, seed %d", name, seed)
    run, ranked = fit_and_rank(name, params, root, seed)
    log.info("fit %s, seed %d: valid NDCG@10 %s in %.0f CPU-s", name, seed, run["valid_ndcg@10"], run["cpu_seconds"])
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(run))
    np.save(stored.with_suffix(".npy"), ranked)
    return run, ranked


def per_user(rankings: list[np.ndarray], targets: np.ndarray) -> dict[str, np.ndarray]:
    """metric -> the per-user value averaged over the given rankings (one per seed)."""
    return {f"{m}@{k}": np.mean([M.PER_USER[m](ranked, targets, k) for ranked in rankings], axis=0) for m, k in METRICS}


def intervals(users: dict[str, dict[str, np.ndarray]], params: dict) -> dict:
    """Bootstrap over test users (one resampling shared by every model, so differences are paired)."""
    cfg = params["evaluate"]
    names, metrics = list(users), [f"{m}@{k}" for m, k in METRICS]
    means = evaluation.bootstrap_means(
        np.stack([users[n][m] for n in names for m in metrics]), cfg["bootstrap_resamples"], params["seed"]
    )
    column = {(n, m): j for j, (n, m) in enumerate((n, m) for n in names for m in metrics)}

    def interval(values: np.ndarray, point: float) -> dict:
        low, high = evaluation.percentile_interval(values, cfg["ci_level"])
        return {"mean": round(point, 4), "low": round(float(low), 4), "high": round(float(high), 4)}

    def gain(model: str, reference: str) -> dict:
        return {
            "reference": reference,
            **{
                m: interval(
                    means[:, column[model, m]] - means[:, column[reference, m]],
                    float(users[model][m].mean() - users[reference][m].mean()),
                )
                for m in metrics
            },
        }

    out: dict = {n: {m: interval(means[:, column[n, m]], float(users[n][m].mean())) for m in metrics} for n in names}
    others = [n for n in names if not n.startswith(C.MODEL_NAME)]
    best = max(others, key=lambda n: users[n]["ndcg@10"].mean())
    texts = [n for n in names if n.startswith(C.MODEL_NAME)]
    for text in texts:
        out[text]["gain_over_best_other"] = gain(text, best)
    for text in texts[1:]:  # each later variant against the first one named (e.g. lora against frozen)
        out[text]["gain_over_first_variant"] = gain(text, texts[0])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="office", help=f"{' | '.join(SOURCES)} | a generic-source folder")
    parser.add_argument("--seeds", type=seed_list, default=[42, 43, 44])
    parser.add_argument("--variants", default="frozen,adaptor", help=f"TextSeqRec variants ({', '.join(VARIANTS)})")
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch project root (default /tmp/recpipe-text-<data>)"
    )
    parser.add_argument("--reuse", action="store_true", help="keep --work and skip what an earlier run finished")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("py4j", "pyspark"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    variants = [v for v in args.variants.split(",") if v]
    if unknown := [v for v in variants if v not in VARIANTS]:
        print(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    params, folder, ratio_target = bench_params(args.data, args.overrides)
    if not folder.exists():
        print(f"data set not found at {folder} (it is read from ../shared/datasets): skipped", file=sys.stderr)
        return 2
    tag = Path(args.data).name
    root = (args.work or Path(f"/tmp/recpipe-text-{tag}")).resolve()
    if not args.reuse:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    for stage in (ingest, clean, split):
        timed(stage.__name__.rsplit(".", 1)[-1], stage, params, root, seconds, args.reuse)
    base = run_baselines(params, root, seconds, args.reuse)
    data = load_split(root)
    task = eval_task(data, "test")
    targets, k = task.targets, M.ranking_length(params["evaluate"]["ks"])
    stored = evaluation.baseline_rankings(data, task, params, root, k)
    users = {name: per_user([ranked], targets) for name, ranked in stored.items()}
    fits: dict[str, dict] = {}
    for name in [baselines.SASREC, *(f"{C.MODEL_NAME}-{v}" for v in variants)]:
        variant = name.removeprefix(f"{C.MODEL_NAME}-")
        runs = {
            seed: stored_fit(variant, params, root, seed, args.reuse, fit_key(variant, params, seed))
            for seed in args.seeds
        }
        users[name] = per_user([ranked for _, ranked in runs.values()], targets)
        fits[name] = {"seeds": {seed: {**run, **headline_of(ranked, targets)} for seed, (run, ranked) in runs.items()}}
    report = {
        "data": str(folder),
        "command": " ".join(["bench/bench_text.py", *(argv or sys.argv[1:])]),
        "note": args.note,
        "machine": machine(
            "2 cores shared with other jobs: wall times are upper bounds; CPU seconds are this process's"
        ),
        "split": {"users": int(len(targets)), "items": int(data.n_items)},
        "stage_seconds": seconds,
        "baselines_selected": {n: {k: v for k, v in s.items() if k != "grid"} for n, s in base["selected"].items()},
        "fits": fits,
        "models": intervals(users, params),
        "ratio_target": ratio_target,
    }
    report["targets"] = targets_met(report["models"], ratio_target)
    out = args.out or ROOT / "bench" / "results" / f"text_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(
        json.dumps(
            {"models": {n: m["ndcg@10"] for n, m in report["models"].items()}, "targets": report["targets"]}, indent=2
        )
    )
    return 0


def headline_of(ranked: np.ndarray, targets: np.ndarray) -> dict:
    return headline({f"{m}@{k}": float(M.PER_USER[m](ranked, targets, k).mean()) for m, k in METRICS})


def targets_met(models: dict, ratio_target: float) -> dict:
    """Each TextSeqRec variant: its seed-mean NDCG@10 over the best other's; does the gain's interval exclude 0?"""
    out = {}
    for name, row in models.items():
        gain = row.get("gain_over_best_other")
        if gain is None:
            continue
        reference = models[gain["reference"]]["ndcg@10"]["mean"]
        ratio = row["ndcg@10"]["mean"] / reference if reference else None
        out[name] = {
            "best_other": gain["reference"],
            "ratio": round(ratio, 3) if ratio is not None else None,
            "ratio_met": ratio is not None and ratio >= ratio_target,
            "interval_excludes_0": gain["ndcg@10"]["low"] > 0,
        }
    return out


if __name__ == "__main__":
    raise SystemExit(main())

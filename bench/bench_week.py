"""A simulated week of nights: what a warm night costs and whether it is as good as retraining cold.

    .venv/bin/python bench/bench_week.py [--nights 7] [--work DIR] [--set section.key=value ...]
        [--no-cold] [--note TEXT]

A scratch copy of the project (git + DVC, its own MLflow store) lives through `--nights` nights of
the default synthetic world, each run the way the nightly DAG runs it: `nightly_overrides` for the
logical date (night 0 is the history's last day, a full load; night n ingests day n), then
`run_pipeline` (`dvc repro` of every stage whose inputs changed, the registry gate included). So
night 0 is the expensive one (cold training, hyperparameter search, every compression variant) and
the nights after it are warm (fine-tuning the champion for train.warm_epochs, the last search's
params, the last chosen variant): the wall time of each night is the cost.

Quality: after each warm night the same night's model is also trained cold (from scratch, the same
tuned params and data, train.warm_start off, in this process) and both are ranked on that night's
test split; NDCG@10 with a paired bootstrap over users (evaluate.bootstrap_resamples). Target: every
warm night at most half of night 0's wall time, and its NDCG@10 inside the cold model's interval.

Writes bench/results/week.json and week.png (NDCG@10 per night, warm vs cold; wall time per night).
One run, each night once (a night is minutes on a shared 2-core CPU): the ratios are of that run.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_tasks.core import constants as C  # noqa: E402
from pipeline_tasks.core import io  # noqa: E402
from pipeline_tasks.core import params as P  # noqa: E402

log = logging.getLogger("bench_week")
DEFAULT_WORK = Path("/tmp/recpipe-bench-week")
RESULT = ROOT / "bench" / "results" / "week.json"
MAX_WARM_SHARE = 0.5  # a warm night may cost at most this share of the first night


def make_project(work: Path, overrides: list[str]) -> Path:
    """A fresh git + DVC checkout of this repo's tracked product files, params.yaml + overrides."""
    shutil.rmtree(work, ignore_errors=True)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(("tests/", "bench/", "docs/", "metrics/", "dvc.lock")):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    P.dump(P.load(work / C.PARAMS_FILE, overrides), work / C.PARAMS_FILE)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench week"]):
        subprocess.run(cmd, cwd=work, check=True, env={**os.environ, **GIT_IDENTITY})
    return work


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}


def run_night(root: Path, night: int, date) -> dict:
    """One nightly run (as the DAG runs it) and what it did."""
    from pipeline_tasks.ops.pipeline import run_pipeline
    from pipeline_tasks.ops.run_params import nightly_overrides

    overrides = nightly_overrides(root, date)
    log.info("night %d (%s): %s", night, date, overrides)
    started = time.perf_counter()
    code = run_pipeline(root, overrides)
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"night {night} ({date}) failed with exit code {code}: see the stage's message above")
    metrics = {s: io.read_json(root / C.METRICS_DIR / f"{s}.json") for s in ("ingest", "tune", "train", "compress")}
    evaluate = io.read_json(root / C.METRICS_DIR / "evaluate.json")
    register = io.read_json(root / C.METRICS_DIR / "register.json")
    return {
        "night": night,
        "date": date.isoformat(),
        "seconds": round(seconds, 1),
        "raw_interactions": metrics["ingest"]["rows"]["interactions"],
        "searched": metrics["tune"].get("searched"),
        "compress_measured": sorted(metrics["compress"]["variants"]),
        "warm": metrics["train"]["warm_start"]["warm"],
        "warm_start": metrics["train"]["warm_start"].get("why"),
        "train_seconds": round(metrics["train"]["seconds"], 1),
        "train_epochs": metrics["train"]["epochs"],
        "ndcg@10": round(evaluate["models"][C.MODEL_NAME]["ndcg@10"], 4),
        "version": register.get("version"),
        "aliases": register.get("aliases"),
        "gate": register.get("decision", {}).get("summary"),
    }


def cold_comparison(root: Path, work: Path, night: int) -> dict:
    """Tonight's data trained from scratch (same tuned params), both models ranked on tonight's test split."""
    from pipeline_tasks.data.dataset import eval_task, load_split
    from pipeline_tasks.model.evaluation import bootstrap_intervals, model_ranking
    from pipeline_tasks.model.fitting import fit_final, with_best_params
    from pipeline_tasks.ops.run_params import load_run_params

    params, _ = with_best_params(load_run_params(root), root)
    params = copy.deepcopy(params)
    params["train"]["warm_start"] = False
    cold_dir = work / "cold" / f"night-{night}"
    started = time.perf_counter()
    fit_final(params, root, output_dir=cold_dir, checkpoint_dir=None)
    cold_seconds = time.perf_counter() - started
    split = load_split(root)
    task = eval_task(split, "test")
    cfg = params["evaluate"]
    rankings = {
        name: model_ranking(split, task, model_dir, 10, cfg["batch_size"])
        for name, model_dir in (("warm", root / C.MODEL_DIR), ("cold", cold_dir))
    }
    ci = bootstrap_intervals(
        rankings, task.targets, cfg["bootstrap_resamples"], cfg["ci_level"], params["seed"], "warm", "cold"
    )
    warm, cold = ci["warm"]["ndcg@10"], ci["cold"]["ndcg@10"]
    return {
        "warm": rounded(warm),
        "cold": rounded(cold),
        "warm_minus_cold": rounded(ci["delta_vs_best_baseline"]["ndcg@10"]),
        "warm_within_cold_interval": cold["low"] <= warm["mean"] <= cold["high"],
        "cold_train_seconds": round(cold_seconds, 1),
    }


def rounded(interval: dict) -> dict:
    return {k: round(v, 4) for k, v in interval.items()}


def summarise(nights: list[dict]) -> dict:
    first = nights[0]["seconds"]
    warm = [n for n in nights[1:] if n["warm"]]
    shares = [round(n["seconds"] / first, 3) for n in warm]
    within = [n["cold"]["warm_within_cold_interval"] for n in warm if "cold" in n]
    return {
        "first_night_seconds": first,
        "warm_night_seconds": [n["seconds"] for n in warm],
        "warm_share_of_first_night": shares,
        "warm_share_median": sorted(shares)[len(shares) // 2] if shares else None,
        "every_warm_night_at_most_half": bool(shares) and max(shares) <= MAX_WARM_SHARE,
        "warm_within_cold_interval": within,
        "every_warm_night_within_cold_interval": bool(within) and all(within),
    }


def plot(nights: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (quality, cost) = plt.subplots(1, 2, figsize=(11, 4))
    compared = [n for n in nights if "cold" in n]
    for offset, arm, colour in ((-0.1, "warm", "tab:blue"), (0.1, "cold", "tab:grey")):
        x = [n["night"] + offset for n in compared]
        mean = [n["cold"][arm]["mean"] for n in compared]
        err = [
            [m - n["cold"][arm]["low"] for m, n in zip(mean, compared)],
            [n["cold"][arm]["high"] - m for m, n in zip(mean, compared)],
        ]
        quality.errorbar(x, mean, yerr=err, fmt="o", color=colour, capsize=3, label=f"{arm} (95% bootstrap)")
    quality.set(xlabel="night", ylabel="test NDCG@10", title="Warm fine-tune vs retraining from scratch")
    quality.legend()
    cost.bar(
        [n["night"] for n in nights],
        [n["seconds"] / 60 for n in nights],
        color=["tab:orange"] + ["tab:blue"] * (len(nights) - 1),
    )
    cost.axhline(nights[0]["seconds"] * MAX_WARM_SHARE / 60, color="red", linestyle="--", label="half of night 0")
    cost.set(xlabel="night", ylabel="wall time (min)", title="Cost per night (night 0: cold + search)")
    cost.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=7, help="night 0 (the history) + this many - 1 increments")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch project (deleted first)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="section.key=value for params.yaml"
    )
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold retraining comparison")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--note", default="", help="free text stored in the result")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from pipeline_tasks.data.synthetic import history_end

    root = make_project(args.work, args.overrides)
    params = P.load(root / C.PARAMS_FILE)
    first = (history_end(params["ingest"]["synthetic"]) - timedelta(days=1)).date()
    nights = []
    for night in range(args.nights):
        result = run_night(root, night, first + timedelta(days=night))
        if args.cold and result["warm"]:
            result["cold"] = cold_comparison(root, args.work, night)
        log.info("night %d: %s", night, json.dumps(result))
        nights.append(result)
    out = {
        "command": " ".join([".venv/bin/python", "bench/bench_week.py", *(argv if argv is not None else sys.argv[1:])]),
        "note": args.note,
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version()},
        "overrides": args.overrides,
        "summary": summarise(nights),
        "nights": nights,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    plot(nights, args.out.with_suffix(".png"))
    print(json.dumps(out["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

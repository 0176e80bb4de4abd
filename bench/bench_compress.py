"""Compression trade-off on a trained model: every variant of the compress stage, measured in one run.

    # once: a model trained on MovieLens-100K in a scratch root (outside the repo: its licence)
    R=/tmp/recpipe-ml100k; S="--root $R --no-mlflow --set ingest.source=movielens \
        --set ingest.path=../shared/datasets/ml-100k --set train.use_best_params=false"
    for stage in ingest clean split train; do .venv/bin/python -m pipeline_tasks.$stage $S; done
    # then (reuses models/model; rebuilds models/compressed)
    .venv/bin/python bench/bench_compress.py --root $R --name ml100k

Writes bench/results/compress_<name>.json: the stage's metrics (metrics/compress.json layout),
each variant's size and item-encoding speed relative to fp32, and the issue's targets for the
int8 variants (size <= 0.35 x fp32, encoding >= 1.5 x fp32, NDCG@10 drop <= 1 %), with the
machine and library versions. Throughput is the median of `compress.timing_rounds` passes and
latency p50 a median of `compress.latency_calls` calls; on a shared CPU compare ratios, and
`paired_encode_speedup` (fp32 and the variant timed in alternating rounds) above all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_tasks import compress  # noqa: E402
from pipeline_tasks.core import params as P  # noqa: E402
from pipeline_tasks.core.stage_cli import quiet_environment  # noqa: E402
from pipeline_tasks.model import measuring  # noqa: E402
from pipeline_tasks.model.recommender import Recommender  # noqa: E402

INT8_VARIANTS = ("int8_dynamic", "onnx_int8")
ENCODER_VARIANTS = ("int8_dynamic", "onnx_fp32", "onnx_int8", "pruned", "distilled")
TARGETS = {"max_size_ratio": 0.35, "min_encode_speedup": 1.5, "max_ndcg_drop_rel": 0.01}


def ratios(result: dict) -> dict[str, dict[str, float]]:
    reference = result["variants"][result["reference"]]
    return {
        name: {
            "size_ratio": m["size_mb"] / reference["size_mb"],
            "encode_speedup": m["encode_items_per_s"] / reference["encode_items_per_s"],
            "latency_p50_ratio": m["latency_p50_ms"] / reference["latency_p50_ms"],
        }
        for name, m in result["variants"].items()
    }


def paired_speedups(root: Path, result: dict, rounds: int, n_items: int) -> dict[str, float]:
    """Item-encoding speed of each re-encoded variant over fp32, timed in alternating rounds.

    The stage times one variant after another, so on a shared CPU a busy minute lands on one
    of them; alternating fp32 / variant passes puts both under the same load. Median of the
    per-round ratios.
    """
    from pipeline_tasks.core import constants as C

    out_dir = Path(root) / C.COMPRESSED_DIR
    reference = Recommender.load(out_dir / result["reference"])
    texts = measuring.load_eval_data(Path(root), reference.item_ids).texts
    speedups = {}
    for name in (n for n in ENCODER_VARIANTS if n in result["variants"]):
        variant = Recommender.load(out_dir / name)
        ratios_ = [
            measuring.encode_items_per_s(variant, texts, n_items)
            / measuring.encode_items_per_s(reference, texts, n_items)
            for _ in range(rounds)
        ]
        speedups[name] = float(np.median(ratios_))
        print(f"paired encode speed-up {name}: {speedups[name]:.2f} (rounds {[round(r, 2) for r in ratios_]})")
    return speedups


def target_check(result: dict, rel: dict) -> dict[str, dict]:
    out = {}
    for name in INT8_VARIANTS:
        if name not in result["variants"]:
            continue
        speedup = rel[name].get("paired_encode_speedup", rel[name]["encode_speedup"])
        checks = {
            "size": rel[name]["size_ratio"] <= TARGETS["max_size_ratio"],
            "encode_speed": speedup >= TARGETS["min_encode_speedup"],
            "ndcg": result["variants"][name]["ndcg_drop_rel"] <= TARGETS["max_ndcg_drop_rel"],
        }
        out[name] = {**checks, "all": all(checks.values())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="a project root with data/split and models/model")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--name", default="ml100k", help="results go to bench/results/compress_<name>.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="compress.KEY=VALUE")
    parser.add_argument("--paired-rounds", type=int, default=5, help="alternating fp32/variant timing rounds")
    parser.add_argument("--paired-items", type=int, default=64, help="items encoded per paired round")
    parser.add_argument(
        "--paired-only",
        action="store_true",
        help="keep the variants of the last results file (same --name), redo the paired timing",
    )
    args = parser.parse_args(argv)
    quiet_environment()
    path = ROOT / "bench" / "results" / f"compress_{args.name}.json"
    command = "python bench/bench_compress.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.paired_only:
        previous = json.loads(path.read_text(encoding="utf-8"))
        result = {key: previous[key] for key in ("variants", "reference", "chosen")}
        params = P.load(args.params, args.overrides)
        params["compress"] = previous["params"]
        command = previous["command"] + "; then " + command
    else:
        params = P.load(args.params, args.overrides)
    started = time.perf_counter()
    if not args.paired_only:
        result = compress.run(params, Path(args.root))
    rel = ratios(result)
    if args.paired_rounds > 0:
        for name, speedup in paired_speedups(Path(args.root), result, args.paired_rounds, args.paired_items).items():
            rel[name]["paired_encode_speedup"] = speedup
    out = {
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": __import__("torch").get_num_threads(),
            "versions": {pkg: version(pkg) for pkg in ("torch", "onnxruntime", "onnx", "transformers")},
        },
        "params": params["compress"],
        "seconds": time.perf_counter() - started,
        **result,
        "relative_to_fp32": rel,
        "targets": TARGETS,
        "target_check": target_check(result, rel),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(
        json.dumps({"chosen": result["chosen"], "relative_to_fp32": rel, "target_check": out["target_check"]}, indent=2)
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

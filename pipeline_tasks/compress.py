"""Stage `compress`: smaller/faster variants of the trained model, measured side by side.

    python -m pipeline_tasks.compress --root DIR

From models/model it writes models/compressed/<variant>/ for each name in
`compress.variants` (fp32 is always built: it is the reference); on the nights between searches
(`tune.every_n_nights`, `compress.between_searches: chosen`) only fp32 and the last choice:

| variant | item tower | item table |
|---|---|---|
| `fp32` | the trained model unchanged | float32 |
| `int8_dynamic` | torch.ao dynamic int8 of the encoder's Linear layers (embeddings stay fp32) | recomputed |
| `onnx_fp32` | the encoder exported to ONNX, run by onnxruntime | recomputed |
| `onnx_int8` | that graph, onnxruntime dynamic int8 of MatMul *and* Gather (word embeddings) | recomputed |
| `pruned` | `prune_amount` of every encoder Linear weight zeroed by magnitude, then a recovery fine-tune | recomputed |
| `distilled` | a student of `student_layers` teacher layers, trained to reproduce its text vectors | recomputed |
| `item_table_fp16` | unchanged | float16 on disk |
| `item_table_int8` | unchanged | int8 + one float32 scale per row on disk |

Each variant is measured in the same run: size on disk; CPU latency p50/p99 of one
recommendation (user tower + top-K over the item table) over `latency_calls` calls and item-encoding
throughput (median of `timing_rounds` passes), both timed with every variant interleaved in
round-robin blocks so a burst of load on a shared CPU hits all of them alike; validation NDCG@10
(full ranking, train items excluded) and its relative drop vs fp32 with a paired bootstrap interval
(`evaluate.bootstrap_resamples`, `evaluate.ci_level`, `seed`; one resampling of the users for all).

A variant is refused when the low end of its drop's interval is above `compress.max_ndcg_drop`
(credibly larger than allowed), or above 0 with the point drop above the bound (real and larger at
its estimate); one hit more or less on a small validation set cannot refuse it (model/measuring.py
says why this end and not the other). `chosen` is the smallest acceptable variant, then the one
with the lowest median latency; its name is also written to models/compressed/chosen.txt. The
register gate reads that variant's median latency.

Loading: `Recommender.load(dir)` loads any of them (model/variants.py reads the int8 / ONNX
encoders and int8 tables). Building: model/compression.py; measuring: model/measuring.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io, tracking
from pipeline_tasks.core.stage_cli import stage_main
from pipeline_tasks.model.compression import build_and_measure, check_params
from pipeline_tasks.model.measuring import choose, report
from pipeline_tasks.model.search_schedule import record_variant, searched_tonight, variant_between_searches
from pipeline_tasks.model.variants import REFERENCE

log = logging.getLogger(__name__)

CHOSEN_FILE = "chosen.txt"
REPORT = Path(C.REPORTS_DIR) / "compress.md"


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    cfg = params["compress"]
    check_params(cfg)
    if cfg["num_threads"] > 0:
        torch.set_num_threads(cfg["num_threads"])
    only, why = variants_tonight(cfg, root)
    log.info("compress: %s", why)
    with io.atomic_dir(root / C.COMPRESSED_DIR) as out:
        variants, how = build_and_measure(params, root, out, only=only)
        chosen = choose(variants)
        (out / CHOSEN_FILE).write_text(chosen + "\n", encoding="utf-8")
    if only is None:
        record_variant(root, chosen)
    report(variants, chosen, how, root / REPORT)
    tracking.log_artifact(root / REPORT, artifact_path="compress")
    log.info("compress: chose %s %s", chosen, json.dumps(variants[chosen]))
    if variants[chosen]["ndcg_drop_rel"] > cfg["max_ndcg_drop"]:
        log.warning(
            "compress: %s is chosen although its point NDCG@10 drop is above the bound: %s",
            chosen,
            variants[chosen]["why"],
        )
    return {"variants": variants, "reference": REFERENCE, "chosen": chosen, "measured": why, "judged": how}


def variants_tonight(cfg: dict, root: Path) -> tuple[str | None, str]:
    """(None, why): measure every variant; (name, why): fp32 and the last search night's choice only.

    Choosing a variant is a search like the hyperparameters' (the same model shape compresses the same
    way), so the nights between searches re-measure the last choice, which still has to be acceptable
    tonight (its drop vs fp32 not credibly above max_ndcg_drop) or fp32 itself serves.
    """
    last = variant_between_searches(root)
    if cfg["between_searches"] == "all":
        return None, "every variant (compress.between_searches=all)"
    if searched_tonight(root) or last is None or last not in cfg["variants"]:
        return None, "every variant (a search night, or no earlier choice to keep)"
    return last, f"fp32 and {last}, the last search night's choice (every variant on the next search night)"


def main(argv: list[str] | None = None) -> int:
    return stage_main("compress", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Stage `evaluate`: the trained model and every baseline, ranked and judged the same way.

Reads data/split, data/baselines/topk/<Model>.parquet and models/model; ranks every
test user's items with the trained model (history = train + valid, those items
excluded, full ranking over the catalogue) and computes, from the top-K lists alone,
for every model:
- the headline metrics (core/metrics.compute_all),
- slices: users by history length, cold-start targets (no training interaction),
  popular vs long-tail targets, and every user attribute with few enough values,
  with worst/best group NDCG@10 ratio as a fairness figure,
- bootstrap confidence intervals of NDCG@10 and Recall@10 (users resampled, seeded),
  and of the trained model's difference to the best baseline.

Writes data/eval/topk/<Model>.parquet, reports/evaluate.md, reports/evaluate_metrics.png
and reports/evaluate_slices.png. The computations are model/evaluation.py, the reports
model/evaluation_report.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import metrics as M
from pipeline_tasks.core import tracking
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.core.stage_cli import stage_main
from pipeline_tasks.data.dataset import eval_task, load_split, ranking_frame, write_ranking
from pipeline_tasks.model.evaluation import baseline_rankings, evaluate_rankings, model_ranking
from pipeline_tasks.model.evaluation_report import write_reports

log = logging.getLogger(__name__)


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    split = load_split(root)
    task = eval_task(split, "test")
    if not len(task):
        raise PipelineError("the split has no test users: lower split.min_user_interactions or ingest more data")
    k = M.ranking_length(params["evaluate"]["ks"])
    rankings = baseline_rankings(split, task, params, root, k)
    rankings[C.MODEL_NAME] = model_ranking(split, task, root / C.MODEL_DIR, k, params["evaluate"]["batch_size"])
    result = evaluate_rankings(split, rankings, params)
    for name, ranked in rankings.items():
        write_ranking(ranking_frame(split, task, ranked), root / C.DATA_EVAL_TOPK / f"{name}.parquet")
    for path in write_reports(result, root / C.REPORTS_DIR):
        tracking.log_artifact(path, artifact_path="reports")
    log.info("evaluate: %s", {n: round(m["ndcg@10"], 4) for n, m in result["models"].items()})
    return result


def main(argv: list[str] | None = None) -> int:
    return stage_main("evaluate", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

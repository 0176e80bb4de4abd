"""Stage `baselines`: the yardstick every gate compares against, on the same split.

Models (params `baselines.models`):
- Pop: rank by interaction count.
- ItemKNN: item-item cosine on the binary matrix, each item's top-n neighbours kept;
  n chosen on validation from `baselines.itemknn_neighbors`.
- EASE (Steck 2019): closed-form linear item-item model; L2 strength chosen on
  validation from `baselines.ease_lambdas`.
- ALS: Spark MLlib implicit-feedback matrix factorisation (Hu, Koren, Volinsky 2008);
  (rank, regParam, alpha) chosen on validation from the product of `baselines.als_*` grids.
- SASRec-ID: the trained model's own sequential architecture with text off (train params,
  use_text=false): what the item text buys, measured. The epoch count is chosen on
  validation (the best epoch, at most `baselines.sasrec_epochs`, stopping early after
  `baselines.sasrec_patience` epochs without improvement).

Protocol: each hyperparameter is chosen by valid NDCG@10 (fit on train, train items
excluded); the chosen version is refit on train+valid and ranks the test items
(train+valid items excluded). Writes data/baselines/topk/<Model>.parquet. The models are
pipeline_tasks/model/baselines.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import metrics as M
from pipeline_tasks.core.errors import PipelineError
from pipeline_tasks.core.stage_cli import stage_main
from pipeline_tasks.data.dataset import eval_task, load_split, ranking_frame, write_ranking
from pipeline_tasks.model.baselines import (
    SASREC,
    check_models,
    fit_and_rank_test,
    fit_sasrec_and_rank_test,
    select,
    select_sasrec,
)

log = logging.getLogger(__name__)


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    check_models(params)
    split = load_split(root)
    if not len(split.test):
        raise PipelineError("the split has no test users: lower split.min_user_interactions or ingest more data")
    k = M.ranking_length(params["evaluate"]["ks"])
    test = eval_task(split, "test")
    ctx = M.make_context(split.n_items, split.train.items, params["evaluate"]["head_share"])
    which = M.metric_set(params["evaluate"]["ks"])
    out = root / C.DATA_BASELINES / "topk"
    out.mkdir(parents=True, exist_ok=True)  # DVC's output, even with `baselines.models: []` (no baselines)
    models, selected = {}, {}
    for name in params["baselines"]["models"]:
        if name == SASREC:
            best, selected[name] = select_sasrec(root, params)
            ranked = fit_sasrec_and_rank_test(best, split, root, params, k)
        else:
            best, selected[name] = select(name, split, params, k)
            ranked = fit_and_rank_test(name, best, split, params, k)
        models[name] = M.compute_all(ranked, test.targets, ctx, which)
        write_ranking(ranking_frame(split, test, ranked), out / f"{name}.parquet")
        log.info("baseline %s: %s test ndcg@10=%.4f", name, selected[name], models[name]["ndcg@10"])
    return {"models": models, "selected": selected}


def main(argv: list[str] | None = None) -> int:
    return stage_main("baselines", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""Train stage: fit TextSeqRec on data/split/train, pick the best epoch on data/split/valid.

    python -m pipeline_tasks.train --root DIR

Applies metrics/tune/best_params.json (when train.use_best_params), trains with resumable
checkpoints under models/checkpoints, picks the best validation epoch and (train.refit, as every
baseline does) fits again on train + valid for that many epochs into models/model. A warm night
(train.warm_start, a champion of the same shape in the registry) starts both phases from the
champion's weights for at most train.warm_epochs (serving/warm_source.py, model/warm_start.py);
metrics/train.json says which it was and why. The training
itself is pipeline_tasks.model (fitting, trainer, training_data, checkpoint, distributed).
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import params as P
from pipeline_tasks.core import tracking
from pipeline_tasks.core.errors import RecpipeError
from pipeline_tasks.core.stage_cli import params_path, parse_args, quiet_environment, stage_main
from pipeline_tasks.model.distributed import process_rank
from pipeline_tasks.model.fitting import fit_final, with_best_params
from pipeline_tasks.serving.warm_source import champion_weights

log = logging.getLogger(__name__)


def run(params: dict, root: Path) -> dict:
    root = Path(root)
    params, applied = with_best_params(params, root)
    if applied:
        tracking.log_params({"tuned": applied})
    with tempfile.TemporaryDirectory(prefix="recpipe-warm-") as tmp:
        start = champion_weights(params, root, Path(tmp))
        log.info("train: %s", start.why)
        tracking.log_params({"warm_start_from": start.version if start.model_dir else "scratch"})
        metrics = fit_final(
            params,
            root,
            output_dir=root / C.MODEL_DIR,
            checkpoint_dir=root / C.CHECKPOINT_DIR,
            warm_from=start.model_dir,
        )
    return {**metrics, "n_tuned_params": len(applied), "warm_start": {**metrics["warm_start"], **start.report()}}


def worker_main(argv: list[str] | None) -> int:
    """Ranks > 0 under torchrun: the same training, but rank 0 alone logs to MLflow and writes metrics."""
    quiet_environment()
    args = parse_args("train", argv)
    root = Path(args.root).resolve()
    try:
        run(P.load(params_path(args.params, root), args.overrides), root)
    except RecpipeError as err:
        print(f"\nrecpipe train (rank {process_rank()}) FAILED: {type(err).__name__}: {err}\n", file=sys.stderr)
        return err.exit_code
    return 0


def main(argv: list[str] | None = None) -> int:
    if process_rank() > 0:
        return worker_main(argv)
    return stage_main("train", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

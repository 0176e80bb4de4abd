"""The shared command line of every stage.

    python -m pipeline_tasks.<stage> [--params FILE] [--set section.key=value ...] [--root DIR]

Loads params (rejecting unknown keys), runs the stage's `run(params, root)` inside an
MLflow run, writes metrics/<stage>.json, and turns a domain error into a one-paragraph
message on stderr and a non-zero exit, with no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io, tracking
from pipeline_tasks.core import params as P
from pipeline_tasks.core.errors import RecpipeError

RunFn = Callable[[dict, Path], dict]


def quiet_environment() -> None:
    """Nothing may phone home, and library chatter stays out of the operator's way."""
    for key, value in {**C.OFFLINE_ENVIRONMENT, "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "alembic", "mlflow", "great_expectations", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_overrides(parser: argparse.ArgumentParser, help: str = "override one parameter (repeatable)") -> None:
    """`--set SECTION.KEY=VALUE`, repeatable, into `args.overrides`: the same flag on every command."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=help)


def parse_args(stage: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m pipeline_tasks.{stage}", description=f"recpipe stage: {stage}")
    parser.add_argument("--params", default=C.PARAMS_FILE, help="params file (default: params.yaml)")
    add_overrides(parser, "override one parameter, e.g. --set train.epochs=2 (repeatable)")
    parser.add_argument("--root", default=".", help="project root holding data/, metrics/, models/ (default: .)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log this stage to MLflow")
    return parser.parse_args(argv)


def params_path(given: str, root: Path) -> Path | None:
    """The params file to read; None when the default params.yaml is absent (defaults apply)."""
    path = Path(given) if Path(given).is_absolute() else root / given
    if given == C.PARAMS_FILE and not path.exists():
        return None
    return path


def run_stage(stage: str, run: RunFn, params: dict, root: Path, use_mlflow: bool = True) -> dict:
    """Run one stage the way every caller should: inside its MLflow run, metrics written."""
    if use_mlflow:
        with tracking.stage_run(stage, params, root):
            metrics = run(params, root)
            tracking.log_metrics(metrics)
    else:
        metrics = run(params, root)
    io.write_json(metrics, root / C.METRICS_DIR / f"{stage}.json")
    return metrics


def stage_main(stage: str, run: RunFn, argv: list[str] | None = None) -> int:
    quiet_environment()
    args = parse_args(stage, argv)
    root = Path(args.root).resolve()
    try:
        params = P.load(params_path(args.params, root), args.overrides)
        run_stage(stage, run, params, root, use_mlflow=not args.no_mlflow)
    except RecpipeError as err:
        print(f"\nrecpipe {stage} FAILED: {type(err).__name__}: {err}\n", file=sys.stderr)
        return err.exit_code
    return 0

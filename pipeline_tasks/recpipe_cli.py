"""`recpipe`: the user-facing command for everything that is not a stage.

    recpipe run [--root DIR]        the whole pipeline through `dvc repro`, then a summary
    recpipe summary                 the last run's metrics table and registered version
    recpipe mlflow-ui [--port P]    the MLflow UI on this project's store

Stages themselves run as `python -m pipeline_tasks.<stage>` (see dvc.yaml).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline_tasks import constants as C
from pipeline_tasks import params as P
from pipeline_tasks.cli import quiet_environment
from pipeline_tasks.errors import RecpipeError


def load_params(root: Path, overrides: list[str]) -> dict:
    path = root / C.PARAMS_FILE
    return P.load(path if path.exists() else None, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline_tasks.pipeline import run_pipeline

    return run_pipeline(load_params(args.root, []), args.root)


def cmd_summary(args: argparse.Namespace) -> int:
    from pipeline_tasks.pipeline import summary

    print(summary(load_params(args.root, []), args.root))
    return 0


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    from pipeline_tasks import tracking

    params = load_params(args.root, [])
    uri = tracking.tracking_uri(params, args.root)
    print(f"MLflow UI on http://{args.host}:{args.port}  (store: {uri}); Ctrl-C to stop")
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    os.execv(mlflow_bin, [mlflow_bin, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)])
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=lambda s: Path(s).resolve(), default=Path(".").resolve(),
                        help="project root (default: the current directory)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the whole pipeline (dvc repro) and print the summary").set_defaults(func=cmd_run)
    sub.add_parser("summary", help="print the last run's summary").set_defaults(func=cmd_summary)
    ui = sub.add_parser("mlflow-ui", help="start the MLflow UI on this project's store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_mlflow_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RecpipeError as err:
        print(f"\nrecpipe {args.command} FAILED: {type(err).__name__}: {err}\n", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    raise SystemExit(main())

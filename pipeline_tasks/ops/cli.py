"""`recpipe`: the user-facing command for everything that is not a stage.

    recpipe run [--root DIR]        the whole pipeline through `dvc repro`, then a summary
    recpipe summary                 the last run's metrics table and registered version
    recpipe mlflow-ui [--port P]    the MLflow UI on this project's store
    recpipe promote VERSION [--reason TEXT]   make VERSION the champion (--reason required past a failed gate)
    recpipe rollback [--reason TEXT]          champion back to previous_champion (after a load check)
    recpipe history                 every audited alias move and A/B change, oldest first
    recpipe ab --share 0.1 [--salt S] [--guardrail M ...] [--planned-exposures N]   the A/B split
                                    (a new experiment), stored in the registry
    recpipe serve [--host H] [--port P] [--workers N]   the A/B recommendation server (FastAPI + uvicorn)
    recpipe events import-jsonl     append the JSON-lines logs of older servers to the event store (once)
    recpipe ab-report [--experiment ID]       one experiment's CTR per variant, significance, and a
                                    promote/keep call once its planned sample size is reached
    recpipe lineage VERSION [--restore-lock FILE]   data md5s, params, git commit and Airflow run of a version

Stages themselves run as `python -m pipeline_tasks.<stage>` (see dvc.yaml).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import params as P
from pipeline_tasks.core.errors import RecpipeError
from pipeline_tasks.core.stage_cli import add_overrides, quiet_environment


def load_params(root: Path, overrides: list[str]) -> dict:
    path = root / C.PARAMS_FILE
    return P.load(path if path.exists() else None, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline_tasks.ops.pipeline import run_pipeline

    return run_pipeline(args.root, args.overrides)


def cmd_summary(args: argparse.Namespace) -> int:
    from pipeline_tasks.ops.pipeline import summary

    print(summary(load_params(args.root, []), args.root))
    return 0


def cmd_mlflow_ui(args: argparse.Namespace) -> int:
    from pipeline_tasks.core import tracking

    params = load_params(args.root, [])
    uri = tracking.tracking_uri(params, args.root)
    print(f"MLflow UI on http://{args.host}:{args.port}  (store: {uri}); Ctrl-C to stop")
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    os.execv(mlflow_bin, [mlflow_bin, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)])
    return 0  # not reached


def registry_client(args: argparse.Namespace) -> tuple[dict, object, str]:
    from pipeline_tasks.serving import registry

    params = load_params(args.root, getattr(args, "overrides", []))
    return params, registry.client_for(params, args.root), params["register"]["model_name"]


def cmd_promote(args: argparse.Namespace) -> int:
    from pipeline_tasks.serving import registry

    _, client, name = registry_client(args)
    event = registry.promote(client, name, args.version, reason=args.reason, who=args.actor)
    print(
        f"{name}: champion v{event['from_version'] or '-'} -> v{event['to_version']} "
        f"({'FORCED: ' if event['forced'] else ''}{event['reason']}) by {event['actor']}"
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from pipeline_tasks.serving import registry

    _, client, name = registry_client(args)
    event = registry.rollback(client, name, reason=args.reason, who=args.actor)
    print(f"{name}: rolled back champion v{event['from_version']} -> v{event['to_version']} by {event['actor']}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from pipeline_tasks.serving import registry

    _, client, name = registry_client(args)
    print(registry.format_history(registry.history(client, name), registry.aliases(client, name)))
    print(f"A/B config: {registry.ab_config(client, name)}")
    return 0


def cmd_ab(args: argparse.Namespace) -> int:
    from pipeline_tasks.serving import ab_report, registry

    params, client, name = registry_client(args)
    guardrails = args.guardrail if args.guardrail else None
    if guardrails is None and not registry.ab_config(client, name).get("guardrails"):
        guardrails = params["register"]["ab_guardrails"]
    cfg = params["register"]
    # The plan is fixed here, with the split, so the report cannot move the goalposts later.
    if args.planned_exposures is not None:
        planned, basis = args.planned_exposures, "recpipe ab --planned-exposures"
    else:
        planned, basis = ab_report.planned_exposures(cfg), ab_report.plan_basis(cfg)
    if planned is None:
        raise registry.RegistryError(
            f"cannot plan the test from {basis}: baseline CTR and baseline*(1+ab_mde) must lie in (0, 1); "
            "fix them in params.yaml or pass --planned-exposures N"
        )
    config = registry.set_ab_config(
        client,
        name,
        args.share,
        salt=args.salt,
        guardrails=guardrails,
        who=args.actor,
        reason=args.reason,
        planned_exposures=planned,
        plan_basis=basis,
    )
    print(f"{name}: A/B config stored in the registry: {config}")
    print(f"experiment now: {registry.current_experiment(client, name)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipeline_tasks.serving.launch import serve

    serve(load_params(args.root, args.overrides), args.root, host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_events_import(args: argparse.Namespace) -> int:
    from pipeline_tasks.serving import event_store

    params = load_params(args.root, args.overrides)
    cfg = params["register"]
    exposure_log = args.exposures or args.root / cfg["exposure_log"]
    feedback_log = args.feedback or args.root / cfg["feedback_log"]
    store = event_store.open_store(params, args.root)
    added = store.import_jsonl(exposure_log, feedback_log)
    print(
        f"imported {added['exposures']} exposures from {exposure_log} and {added['feedback']} feedback events "
        f"from {feedback_log} into {store.where} (lines already there were skipped); the logs can go now"
    )
    store.dispose()
    return 0


def cmd_ab_report(args: argparse.Namespace) -> int:
    from pipeline_tasks.serving import ab_report, registry

    params, client, name = registry_client(args)
    # The guardrails stored with the split (`recpipe ab`) win over params' defaults.
    guardrails = registry.ab_config(client, name).get("guardrails") or params["register"]["ab_guardrails"]
    result = ab_report.run(params, args.root, report_experiment(client, name, args.experiment), guardrails=guardrails)
    print(ab_report.format_report(result))
    return 0


def report_experiment(client, name: str, wanted: str | None) -> dict | None:
    """--experiment ID's record (the running one, else from the audit history), else the one running now.

    None: no id asked for and none running (no champion); ab_report then names the store's ids.
    """
    from pipeline_tasks.serving import registry

    current = registry.current_experiment(client, name)  # None without a champion
    if wanted is None or (current is not None and current["id"] == wanted):
        return current
    try:
        recorded = {e["id"]: e for e in registry.experiments(client, name)}
    except registry.RegistryError:  # no registered model: the id is only known from the event store
        recorded = {}
    return recorded.get(wanted, {"id": wanted})


def cmd_lineage(args: argparse.Namespace) -> int:
    from pipeline_tasks.serving import lineage

    _, client, name = registry_client(args)
    print(lineage.format_lineage(lineage.version_lineage(client, name, args.version)))
    if args.restore_lock:
        path = lineage.restore_lock(client, name, args.version, args.restore_lock)
        print(
            f"dvc.lock of this version written to {path}: copy it over the project's dvc.lock "
            "(at the git commit above) and run `dvc checkout` to restore its data and model"
        )
    return 0


def add_registry_commands(sub) -> None:
    def with_actor(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--actor", default=None, help="who is acting (default: the Airflow DAG run or $USER)")
        return p

    promote = with_actor(sub.add_parser("promote", help="make VERSION the champion (audited)"))
    promote.add_argument("version")
    promote.add_argument("--reason", default=None, help="why; required when VERSION did not pass the gate")
    promote.set_defaults(func=cmd_promote)
    rollback = with_actor(sub.add_parser("rollback", help="champion back to previous_champion (audited)"))
    rollback.add_argument("--reason", default=None)
    rollback.set_defaults(func=cmd_rollback)
    history = sub.add_parser("history", help="the champion's audited history")
    history.set_defaults(func=cmd_history)
    lineage = sub.add_parser("lineage", help="data (DVC md5s), params, git commit and Airflow run of a version")
    lineage.add_argument("version", help="a version number or an alias (champion, challenger)")
    lineage.add_argument(
        "--restore-lock",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the version's dvc.lock to FILE (then `dvc checkout` restores its data)",
    )
    lineage.set_defaults(func=cmd_lineage)
    ab = with_actor(sub.add_parser("ab", help="set the A/B split (stored in the registry)"))
    ab.add_argument("--share", type=float, required=True, help="challenger's share of users, 0..1")
    ab.add_argument("--salt", default=None, help="bucketing salt (default: keep the current one)")
    ab.add_argument("--guardrail", action="append", default=[], help="guardrail metric (repeatable)")
    ab.add_argument("--reason", default=None)
    ab.add_argument(
        "--planned-exposures",
        type=int,
        default=None,
        metavar="N",
        help="exposures per arm before ab-report decides (default: planned from register.ab_baseline_ctr, "
        "ab_mde, ab_alpha, ab_power)",
    )
    ab.set_defaults(func=cmd_ab)
    serve = sub.add_parser("serve", help="serve champion and challenger over HTTP (A/B)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers", type=int, default=1, help="server processes on the port (each loads the models; default 1)"
    )
    serve.set_defaults(func=cmd_serve)
    events = sub.add_parser("events", help="the event store of exposures and feedback")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    importer = events_sub.add_parser("import-jsonl", help="append older servers' JSON-lines logs to the event store")
    importer.add_argument("--exposures", type=Path, default=None, help="default: register.exposure_log")
    importer.add_argument("--feedback", type=Path, default=None, help="default: register.feedback_log")
    importer.set_defaults(func=cmd_events_import)
    report = sub.add_parser("ab-report", help="one experiment's CTR per variant from the event store")
    report.add_argument(
        "--experiment", default=None, metavar="ID", help="the experiment to analyse (default: the one running now)"
    )
    report.set_defaults(func=cmd_ab_report)
    for parser in (promote, rollback, history, lineage, ab, serve, importer, report):
        add_overrides(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recpipe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=lambda s: Path(s).resolve(),
        default=Path(".").resolve(),
        help="project root (default: the current directory)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline (dvc repro) and print the summary")
    add_overrides(run, "override one parameter for this run only (params.yaml is not changed; repeatable)")
    run.set_defaults(func=cmd_run)
    sub.add_parser("summary", help="print the last run's summary").set_defaults(func=cmd_summary)
    ui = sub.add_parser("mlflow-ui", help="start the MLflow UI on this project's store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_mlflow_ui)
    add_registry_commands(sub)
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

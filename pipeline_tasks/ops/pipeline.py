"""Running the whole pipeline: the parent MLflow run around `dvc repro`, and the summary.

`recpipe run` and the Airflow DAG both use these functions, so a run from a shell and a
run from the scheduler are recorded the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io, tracking
from pipeline_tasks.core.errors import PipelineError


def load_project_params(root: Path) -> dict:
    """params.yaml of the project at `root` (defaults if it has none)."""
    from pipeline_tasks.core import params as P

    path = root / C.PARAMS_FILE
    return P.load(path if path.exists() else None)


def stage_env(root: Path, parent_run_id: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for stage subprocesses: this venv first on PATH, offline, nested under the parent run."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for key, value in {**C.OFFLINE_ENVIRONMENT, "PYTHONUNBUFFERED": "1"}.items():
        env.setdefault(key, value)
    if parent_run_id:
        env[C.PARENT_RUN_ENV] = parent_run_id
    env.update(extra or {})
    return env


def dvc(
    root: Path, *args: str, env: dict[str, str] | None = None, capture: bool = False
) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "dvc"), *args]
    return subprocess.run(cmd, cwd=root, env=env or stage_env(root), text=True, capture_output=capture, check=False)


def stale_stages(root: Path) -> list[str]:
    """Stages whose inputs changed since the last run (empty: nothing to do)."""
    result = dvc(root, "status", "--json", capture=True)
    if result.returncode != 0:
        raise PipelineError(
            f"`dvc status` failed in {root}:\n{result.stderr.strip()}\n"
            "Is this a git + DVC checkout? (`git init && dvc init` once, see README)"
        )
    status = json.loads(result.stdout or "{}")
    return [name.split(":")[-1] for name in status]


def start_parent_run(params: dict, root: Path, run_name: str = "pipeline", tags: dict | None = None) -> str:
    from mlflow import MlflowClient

    experiment_id = tracking.setup(params, root)
    # Created, not started: it stays RUNNING while the stage processes nest under it.
    run = MlflowClient().create_run(experiment_id, run_name=run_name, tags={"recpipe.kind": "pipeline", **(tags or {})})
    return run.info.run_id


def end_parent_run(params: dict, root: Path, run_id: str, ok: bool) -> None:
    from mlflow import MlflowClient

    tracking.setup(params, root)
    client = MlflowClient()
    for name in C.STAGES:
        path = root / C.METRICS_DIR / f"{name}.json"
        if path.exists():
            client.log_artifact(run_id, str(path), artifact_path="metrics")
    client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def repro(
    root: Path,
    params: dict,
    stage: str | None = None,
    parent_run_id: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> int:
    """`dvc repro` (the whole pipeline, or one stage) with stage runs nested under the parent."""
    args = ["repro"] + (["--single-item", stage] if stage else [])
    return dvc(root, *args, env=stage_env(root, parent_run_id, extra_env)).returncode


def repro_stage(
    root: Path, stage: str, parent_run_id: str | None = None, extra_env: dict[str, str] | None = None
) -> tuple[int, int | None]:
    """`dvc repro --single-item stage`, its output streamed to ours (the Airflow task log).

    Returns DVC's exit code and, when the stage's command failed, that command's own exit code
    (DVC itself always exits 255): 2 or 3 mean bad input or bad data (errors.py), which a retry
    cannot fix.
    """
    import collections
    import re

    cmd = [str(Path(sys.executable).parent / "dvc"), "repro", "--single-item", stage]
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=stage_env(root, parent_run_id, extra_env),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=1,
    )
    tail: collections.deque[str] = collections.deque(maxlen=40)
    for line in proc.stdout or []:
        sys.stdout.write(line)
        tail.append(line)
    code = proc.wait()
    # DVC's closing line: "ERROR: failed to reproduce '<stage>': failed to run: <cmd>, exited with N"
    found = re.findall(r"failed to run: .*, exited with (-?\d+)", "".join(tail))
    return code, (int(found[-1]) if code and found else None)


def run_pipeline(root: Path, overrides: list[str] | None = None) -> int:
    """Everything `make run` does after the venv exists: this run's params (params.yaml + overrides,
    ops/run_params.py), then `dvc repro`. Returns the exit code."""
    from pipeline_tasks.ops.run_params import write_run_params

    params = write_run_params(root, list(overrides or []))
    stale = stale_stages(root)
    if not stale:
        print("Nothing changed since the last run (dvc status is clean): no stage re-runs.")
        print(summary(params, root))
        return 0
    print(f"Stages to run: {', '.join(s for s in C.STAGES if s in stale) or ', '.join(stale)}")
    run_id = start_parent_run(params, root)
    code = repro(root, params, parent_run_id=run_id)
    end_parent_run(params, root, run_id, ok=code == 0)
    if code != 0:
        print(
            f"\nrecpipe run FAILED (dvc repro exit code {code}); the message of the failing stage is above.\n"
            "No registry alias moved. Fix the cause and run `make run` again: "
            "stages that already succeeded are not recomputed.",
            file=sys.stderr,
        )
        return code
    print(summary(params, root, stage_seconds(params, root, run_id)))
    return 0


def metrics_table(
    evaluate: dict, columns=("ndcg@10", "recall@10", "ndcg@20", "recall@20", "mrr@10", "coverage@10")
) -> str:
    models = evaluate.get("models", {})
    model = evaluate.get("model")
    width = max([len(n) for n in models] + [8]) + 2
    lines = ["model".ljust(width) + "".join(c.rjust(12) for c in columns)]
    for name, values in sorted(models.items(), key=lambda kv: -(kv[1].get("ndcg@10") or 0)):
        mark = " *" if name == model else ""
        lines.append((name + mark).ljust(width) + "".join(f"{values.get(c, float('nan')):12.4f}" for c in columns))
    return "\n".join(lines)


def stage_seconds(params: dict, root: Path, parent_run_id: str) -> dict[str, float]:
    """How long each stage's MLflow run of this pipeline run took (a stage DVC skipped has none; the
    few seconds each stage process needs to start before its run opens are not counted)."""
    from mlflow import MlflowClient

    experiment_id = tracking.setup(params, root)
    runs = MlflowClient().search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    times = {
        run.data.tags["recpipe.stage"]: (run.info.end_time - run.info.start_time) / 1000
        for run in runs
        if "recpipe.stage" in run.data.tags and run.info.end_time
    }
    return {stage: times[stage] for stage in C.STAGES if stage in times}


def summary(params: dict, root: Path, seconds: dict[str, float] | None = None) -> str:
    """The end-of-run report: model vs baselines, the registered version, stage times, where to look."""
    parts = ["", "=" * 72, "recpipe — run summary", "=" * 72]
    evaluate_path = root / C.METRICS_DIR / "evaluate.json"
    if evaluate_path.exists():
        parts += ["Test set, full ranking (* = the trained model):", metrics_table(io.read_json(evaluate_path))]
    register_path = root / C.METRICS_DIR / "register.json"
    if register_path.exists():
        reg = io.read_json(register_path)
        parts += [
            "",
            f"Registered: {reg.get('model_name')} version {reg.get('version')} aliases {reg.get('aliases')}",
            f"Gate: {reg.get('decision', {}).get('summary', '')}",
        ]
    if seconds:
        each = ", ".join(f"{stage} {value:.0f}" for stage, value in seconds.items())
        parts += ["", f"Stage times (s): {each}; {sum(seconds.values()) / 60:.1f} min in all"]
    uri = tracking.tracking_uri(params, root)
    parts += ["", f"MLflow UI:  make mlflow-ui   (or: mlflow ui --backend-store-uri {uri})", "=" * 72]
    return "\n".join(parts)


# The params key naming the increment (batch) ingest adds; its id is the day (recpipe_manual's backfill).
BACKFILL_KEY = "ingest.batch"


def backfill_dates(start: str | None, end: str | None) -> list[str]:
    """Every day from start to end, inclusive, as YYYY-MM-DD (one day when only one end is given)."""
    from datetime import date, timedelta

    try:
        first, last = date.fromisoformat(start or end), date.fromisoformat(end or start)
    except (TypeError, ValueError) as err:
        raise PipelineError(f"backfill dates must look like 2026-01-31, got start={start!r} end={end!r}") from err
    if last < first:
        raise PipelineError(f"backfill range ends ({last}) before it starts ({first}): swap the dates")
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def backfill(
    root: Path,
    start: str | None,
    end: str | None,
    extra_env: dict[str, str] | None = None,
    overrides: list[str] | None = None,
) -> list[str]:
    """Ingest the increments of a date range in order, one `dvc repro ingest` per day.

    Each day's run params are the run's `overrides` + `ingest.batch` = the day and `ingest.cutoff`
    '' (data/raw = the full load and every increment up to the batch just ingested), so data/raw
    ends with the whole range, and the run goes on with the last day's params. Stops at
    the first day whose ingest fails, naming it; the batches before it stay in data/batches, so
    triggering again from that day continues the backfill.
    """
    from pipeline_tasks.core import params as P
    from pipeline_tasks.ops.run_params import write_run_params

    days = backfill_dates(start, end)
    try:
        P.get_dotted(P.DEFAULTS, BACKFILL_KEY)
    except Exception as err:  # noqa: BLE001 - ParamsError: this checkout's ingest has no increments
        raise PipelineError(
            f"backfill needs the params key {BACKFILL_KEY} (the increment ingest reads), "
            "which this version of the ingest stage does not have"
        ) from err
    done: list[str] = []
    for day in days:
        day_params = [*(overrides or []), f"{BACKFILL_KEY}={json.dumps(day)}", 'ingest.cutoff=""']  # JSON: not a date
        code = repro(root, write_run_params(root, day_params), stage="ingest", extra_env=extra_env)
        if code != 0:
            raise PipelineError(
                f"backfill stopped at the increment of {day}: ingest failed (exit code {code}, "
                f"message above). Ingested before it: {', '.join(done) or 'none'}. Fix the "
                f"cause and trigger again with backfill_start={day}."
            )
        done.append(day)
    return done

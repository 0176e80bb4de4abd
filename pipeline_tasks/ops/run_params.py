"""A run's parameters: the committed params.yaml (the nightly configuration) plus this run's overrides.

Every run (`recpipe run`, each Airflow DAG run, each backfill day) writes its effective params to
`params.run.yaml` (git-ignored, written atomically) and the DVC stages read that file (dvc.yaml
lists it as the params file of every stage). So a manual run's `train.epochs=1` or a backfill's
`ingest.batch` apply to that run only, are recorded with it (the file, reports/params_used.json,
the MLflow runs' params and the version's lineage artifact), and no run ever rewrites params.yaml.

Why not `dvc exp run --set-param`: it applies the override by rewriting params.yaml in the
workspace and leaves it rewritten; a run killed half-way would leave a one-off value as every later
night's config, the very thing this module exists to prevent.

A scheduled run also names its night (`nightly_overrides`): the logical date becomes the ingest
batch when the source has increments for it, and a content fingerprint of the files read becomes
`ingest.source_fingerprint`, so new or changed input makes DVC see work, and identical input still
short-circuits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path

import yaml

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core import params as P
from pipeline_tasks.data.synthetic import history_end

DATE_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # <ingest.path>/<YYYY-MM-DD>/: one night's increment


def write_run_params(root: Path, overrides: list[str]) -> dict:
    """params.yaml + overrides, checked against the typed defaults, written to params.run.yaml.

    A bad value fails here, before anything runs. Returns the resolved params.
    """
    source = root / C.PARAMS_FILE
    resolved = P.load(source if source.exists() else None, overrides)
    header = (
        f"# Written by recpipe for one run: {C.PARAMS_FILE} + these overrides, {overrides or 'none'}.\n"
        f"# The DVC stages read this file; edit {C.PARAMS_FILE} (the nightly configuration), not this one.\n"
    )
    target = root / C.RUN_PARAMS_FILE
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(header + yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    os.replace(tmp, target)  # atomic: a reader sees the old run's file or this one, never half
    io.write_json({"overrides": overrides, "params": resolved}, root / C.REPORTS_DIR / "params_used.json")
    return resolved


def load_run_params(root: Path) -> dict:
    """The params of the current (or last) run; params.yaml's when no run has written any yet."""
    for name in (C.RUN_PARAMS_FILE, C.PARAMS_FILE):
        if (root / name).exists():
            return P.load(root / name)
    return P.load(None)


# --- the night a scheduled run ingests ------------------------------------------------------------


def nightly_overrides(root: Path, logical_date: dt.date) -> list[str]:
    """What a scheduled run for `logical_date` ingests, as overrides of params.yaml.

    The night depends on the date and the source alone, never on what earlier runs left behind, so
    re-running a night asks for exactly the same input (and short-circuits):
    - synthetic: the day of that date after the generated history (`ingest.batch` = the date), or the
      history itself (a full load) for a date inside it;
    - files at `ingest.path`, the whole-folder layout (no date folders): every night reads the whole
      folder (a full load);
    - files, the increments layout: the files at `ingest.path` are the history (loaded by the first
      night), `<path>/<YYYY-MM-DD>/` a night's increment; a night ingests the newest such folder up to
      its date (none new: nothing to do). Changing the history's files needs a full load by hand
      (`recpipe run --set ingest.batch=''`, then a backfill of the increments).
    `ingest.source_fingerprint` is the content hash of what will be read, so new or changed files make
    DVC re-run ingest. An increment with no full load before it loads the history first (ingest).
    """
    params = P.load(root / C.PARAMS_FILE if (root / C.PARAMS_FILE).exists() else None)
    cfg, day = params["ingest"], logical_date.isoformat()
    if cfg["source"] == "synthetic":
        # history_end is the first instant after the history: its date is increment day 1 (data/batches.py).
        batch = day if logical_date >= history_end(cfg["synthetic"]).date() else ""
        return [f"ingest.batch={json.dumps(batch)}", 'ingest.cutoff=""']
    folder = Path(cfg["path"]) if Path(cfg["path"]).is_absolute() else root / cfg["path"]
    nights = (
        sorted(p.name for p in folder.iterdir() if p.is_dir() and DATE_FOLDER.match(p.name) and p.name <= day)
        if (folder.is_dir())
        else []
    )
    # The increments layout: the newest night folder by this date (a night without one adds nothing).
    batch, read = (nights[-1], fingerprint(folder / nights[-1])) if nights else ("", fingerprint(folder))
    return [
        f"ingest.batch={json.dumps(batch)}",
        'ingest.cutoff=""',
        f"ingest.source_fingerprint={json.dumps(read)}",
    ]


def fingerprint(folder: Path) -> str:
    """sha256 over every file's relative path and content, increments' date folders left out.

    '' when the folder does not exist (ingest then says what is wrong with ingest.path).
    """
    if not folder.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if DATE_FOLDER.match(relative.parts[0]) and len(relative.parts) > 1:
            continue  # a night's increment: read by its own night, not part of the full load
        digest.update(str(relative).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

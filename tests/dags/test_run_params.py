"""A run's params are its own, and each scheduled night reads its own data (ops/run_params.py).

Real git + DVC + the real ingest stage on a copy of this checkout; no Spark, no training.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import params as P
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.data.synthetic import history_end
from pipeline_tasks.ops.pipeline import stage_env, stale_stages
from pipeline_tasks.ops.run_params import load_run_params, nightly_overrides, write_run_params

DVC = str(Path(sys.executable).parent / "dvc")


def repro_ingest(project: Path) -> str:
    done = subprocess.run(
        [DVC, "repro", "--single-item", "ingest"], cwd=project, env=stage_env(project), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def night(project: Path, date: str) -> list[str]:
    """What the nightly DAG's first task does for that logical date."""
    overrides = nightly_overrides(project, dt.date.fromisoformat(date))
    write_run_params(project, overrides)
    return overrides


@pytest.fixture
def project(tmp_path: Path) -> Path:
    from tests.conftest import make_project

    return make_project(tmp_path / "project", tmp_path / "no-encoder")


def test_a_runs_overrides_are_its_own_and_params_yaml_is_never_rewritten(project: Path):
    nightly_config = (project / C.PARAMS_FILE).read_bytes()
    write_run_params(project, ["train.epochs=1", "tune.n_trials=1"])
    run = load_run_params(project)
    assert run["train"]["epochs"] == 1 and run["tune"]["n_trials"] == 1
    assert json.loads((project / C.REPORTS_DIR / "params_used.json").read_text())["overrides"] == [
        "train.epochs=1",
        "tune.n_trials=1",
    ]
    # A bad value fails before anything is written: the last run's file stays whole.
    before = (project / C.RUN_PARAMS_FILE).read_bytes()
    with pytest.raises(ParamsError, match="unknown key 'train.epochz'"):
        write_run_params(project, ["train.epochz=1"])
    assert (project / C.RUN_PARAMS_FILE).read_bytes() == before
    # The next run without overrides is the nightly configuration again.
    write_run_params(project, [])
    assert load_run_params(project)["train"]["epochs"] == P.load(project / C.PARAMS_FILE)["train"]["epochs"]
    assert (project / C.PARAMS_FILE).read_bytes() == nightly_config
    assert (
        "params.run.yaml"
        not in subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True).stdout
    )  # git-ignored: a run leaves no change to commit


def test_each_synthetic_night_ingests_its_day_and_a_repeated_night_short_circuits(project: Path):
    end = history_end(P.load(project / C.PARAMS_FILE)["ingest"]["synthetic"]).date()
    # `end` is the first instant after the history, so its date is the first increment (day 1).
    inside, first, second = end - dt.timedelta(days=1), end, end + dt.timedelta(days=1)
    assert 'ingest.batch=""' in night(project, inside.isoformat())  # inside the history: the history itself

    assert f'ingest.batch="{first.isoformat()}"' in night(project, first.isoformat())
    repro_ingest(project)  # no full load yet: the history, then the first day
    rows_first = len(pd.read_parquet(project / C.DATA_RAW / "interactions"))
    assert sorted(p.name for p in (project / "data/batches").iterdir()) == sorted(["base", first.isoformat()])

    night(project, first.isoformat())  # the same night again (a cleared run)
    assert "ingest" not in stale_stages(project)

    night(project, second.isoformat())
    assert "ingest" in stale_stages(project)
    repro_ingest(project)
    assert len(pd.read_parquet(project / C.DATA_RAW / "interactions")) > rows_first  # raw rows grow


def write_generic(folder: Path, users: list[str], items: list[str], start: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"{u},{i},4,{start + n * 60}" for n, (u, i) in enumerate((u, i) for u in users for i in items)]
    (folder / "interactions.csv").write_text("user_id,item_id,rating,timestamp\n" + "\n".join(rows) + "\n")
    (folder / "items.csv").write_text(
        "item_id,title,description\n" + "\n".join(f"{i},Title {i},About {i}" for i in items) + "\n"
    )


def test_new_and_changed_files_make_the_night_do_work_unchanged_files_short_circuit(project: Path, tmp_path: Path):
    shop = tmp_path / "shop"
    write_generic(shop, [f"u{n}" for n in range(5)], [f"i{n}" for n in range(6)], start=1_750_000_000)
    config = P.load(project / C.PARAMS_FILE, ["ingest.source=generic", f"ingest.path={json.dumps(str(shop))}"])
    P.dump(config, project / C.PARAMS_FILE)  # the site's nightly configuration: a generic source

    # The whole-folder layout: each night reads the folder; unchanged files are nothing to do.
    night(project, "2026-07-01")
    repro_ingest(project)
    night(project, "2026-07-02")
    assert "ingest" not in stale_stages(project)
    (shop / "items.csv").write_text((shop / "items.csv").read_text().replace("About i2", "All about i2 now"))
    night(project, "2026-07-03")  # a changed file: work
    assert "ingest" in stale_stages(project)
    repro_ingest(project)
    items = pd.read_parquet(project / C.DATA_RAW / "items")
    assert items.astype(str).apply(lambda col: col.str.contains("now")).any().any()

    # The increments layout: a new night folder <path>/<YYYY-MM-DD>/ is that night's data.
    write_generic(shop / "2026-07-05", ["u0", "u9"], ["i1", "i7"], start=1_760_000_000)
    assert 'ingest.batch="2026-07-05"' in night(project, "2026-07-05")
    assert "ingest" in stale_stages(project)
    repro_ingest(project)
    assert sorted(p.name for p in (project / "data/batches").iterdir()) == ["2026-07-05", "base"]
    assert "u9" in set(pd.read_parquet(project / C.DATA_RAW / "interactions")[C.USER_ID])
    night(project, "2026-07-06")  # no new folder: nothing to do
    assert "ingest" not in stale_stages(project)
    (shop / "2026-07-05" / "interactions.csv").write_text(
        (shop / "2026-07-05" / "interactions.csv").read_text() + "u9,i1,5,1760009999\n"
    )
    night(project, "2026-07-07")  # the increment changed (a late event): work again
    assert "ingest" in stale_stages(project)

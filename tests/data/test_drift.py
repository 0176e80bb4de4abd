"""The drift gate of validate_clean: real Spark, real GX, a real MLflow SQLite store.

A version is compared with the previous one that passed the gate (kept in `validated/`);
a drifted version stops the run with the numbers, thresholds and the Data Docs page in
the message, and does not become the baseline. The arithmetic (PSI, id shares, id
sampling, pruning) is checked on pandas alone.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline_tasks import validate_clean
from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core.errors import DataValidationError, PipelineError
from pipeline_tasks.core.stage_cli import run_stage
from pipeline_tasks.data import drift

N_USERS, N_POPULAR, N_TAIL = 40, 3, 9
T0 = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def interactions(users: range = range(N_USERS), rating_shift: float = 0.0) -> pd.DataFrame:
    """Every user rates the 3 popular items and 3 of the 9 tail items (k-core 5/3 holds)."""
    rows = []
    for u in users:
        tail = [N_POPULAR + (u + k) % N_TAIL for k in range(3)]
        for n, i in enumerate([0, 1, 2, *tail]):
            rows.append(
                {
                    C.USER_ID: f"u{u:03d}",
                    C.ITEM_ID: f"i{i:02d}",
                    C.RATING: min(5.0, 1.0 + (u + i) % 5 + rating_shift),
                    C.TIMESTAMP: pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(hours=u, minutes=n),
                    C.EVENT: "rating",
                }
            )
    frame = pd.DataFrame(rows)
    frame[C.TIMESTAMP] = frame[C.TIMESTAMP].astype("datetime64[us, UTC]")
    return frame


def write_version(root: Path, frame: pd.DataFrame) -> Path:
    """data/clean (+ raw, + an empty quarantine) as the clean stage would leave them."""
    n_items = N_POPULAR + N_TAIL
    items = pd.DataFrame(
        {
            C.ITEM_ID: [f"i{i:02d}" for i in range(n_items)],
            C.TITLE: [f"Item {i}" for i in range(n_items)],
            C.TEXT: [f"Item {i}: a story." for i in range(n_items)],
        }
    )
    users = pd.DataFrame({C.USER_ID: sorted(frame[C.USER_ID].unique())})
    for table, data in (("interactions", frame), ("items", items), ("users", users)):
        io.write_table(data, root / C.DATA_RAW / table)
        io.write_table(data, root / C.DATA_CLEAN / table)
    io.write_table(frame.head(0).assign(**{C.REASON: pd.Series(dtype=str)}), root / C.DATA_QUARANTINE / "interactions")
    return root


def latest_version(root: Path) -> str:
    return json.loads((root / "validated" / drift.LATEST_FILE).read_text())["version"]


def blocking(message: str) -> set[str]:
    return set(re.findall(r"^  - (\w+) \[", message.split("warnings (not blocking):")[0], flags=re.MULTILINE))


# --- the gate, end to end (Spark + GX) ------------------------------------------------


@pytest.mark.spark
def test_drift_gate_compares_with_the_last_passing_version_only(spark, params, tmp_path, capsys):
    root = write_version(tmp_path, interactions())

    first = validate_clean.run(params, root, now=T0)
    assert first["success"] and first["drift"]["status"] == "no baseline yet" and first["drift"]["checks"] == {}
    assert latest_version(root) == first["drift"]["saved_as"]
    assert "No baseline yet" in (root / "reports/drift.md").read_text()

    # Same data the next night: every drift check runs, passes and is logged with its numbers.
    second = validate_clean.run(params, root, now=T0 + dt.timedelta(days=1))
    checks = second["drift"]["checks"]
    assert set(checks) == set(params["validate_clean"]["drift"]["severity"])
    assert all(c["success"] and c["value"] == pytest.approx(0.0, abs=1e-9) for c in checks.values()), checks
    assert checks["row_count_change"]["limit"] == 0.3 and checks["row_count_change"]["severity"] == "fail"
    assert "max_row_count_change" in checks["row_count_change"]["threshold"]
    table_view = second["checks"]["row_count_change"]  # the same check among the gate's checks
    assert table_view["table"] == "drift" and table_view["observed"].startswith("+0.0% (240 rows, previously 240)")
    assert second["n_expectations"] == len(params["validate_clean"]["severity"]) + len(checks)
    assert second["drift"]["previous"]["version"] == first["drift"]["saved_as"]
    baseline = latest_version(root)

    # Half the users vanish: the stage (as DVC and Airflow run it) stops with exit 3 and a message
    # naming each failed check's numbers, threshold and Data Docs page, and no traceback.
    write_version(root, interactions(users=range(N_USERS // 2)))
    assert validate_clean.main(["--root", str(root), "--no-mlflow"]) == 3
    message = capsys.readouterr().err
    assert "Traceback" not in message and "DataValidationError" in message
    assert blocking(message) == {"row_count_change", "lost_user_share"}
    assert "row_count_change [drift vs version" in message
    assert "observed -50.0% (120 rows, previously 240); threshold: within ±30%" in message
    assert "observed 50.0% (20 of 40 users lost, e.g. 'u020', 'u021', 'u022'); threshold: <= 30%" in message
    page = re.search(r"Data Docs: (\S+\.html)", message).group(1)
    assert Path(page).is_file() and "validate_clean_drift" in page
    assert "--set validate_clean.drift.severity.row_count_change=warn" in message
    assert latest_version(root) == baseline  # a failing version never becomes the previous one

    # Accepting the change (warn) lets it pass, reports the warnings, and makes it the baseline.
    for name in ("row_count_change", "lost_user_share"):
        params["validate_clean"]["drift"]["severity"][name] = "warn"
    accepted = validate_clean.run(params, root)
    assert accepted["success"] and set(accepted["warned"]) == {"row_count_change", "lost_user_share"}
    assert accepted["drift"]["previous"]["version"] == baseline  # compared with the last *passing* version
    assert latest_version(root) == accepted["drift"]["saved_as"] != baseline


@pytest.mark.spark
def test_rating_shift_fails_and_every_page_reaches_mlflow(spark, params, tmp_path, monkeypatch):
    """Through the stage runner with a real MLflow SQLite store: Data Docs of both gates are artifacts."""
    import mlflow

    from pipeline_tasks import validate_raw

    monkeypatch.setenv(C.TRACKING_URI_ENV, f"sqlite:///{tmp_path / 'mlflow.db'}")
    params["mlflow"]["artifact_root"] = str(tmp_path / "artifacts")
    root = write_version(tmp_path / "project", interactions())
    run_stage("validate_raw", validate_raw.run, params, root)
    run_stage("validate_clean", validate_clean.run, params, root)  # the baseline
    write_version(root, interactions(rating_shift=1.0))
    with pytest.raises(DataValidationError) as caught:
        run_stage("validate_clean", validate_clean.run, params, root)
    assert blocking(str(caught.value)) == {"rating_mean_shift"}
    assert re.search(
        r"rating_mean_shift .*observed \+0\.\d+ \(\d\.\d+, previously \d\.\d+\); "
        r"threshold: <= 0.3 stars",
        str(caught.value),
    )

    client = mlflow.tracking.MlflowClient()
    runs = client.search_runs(
        [mlflow.get_experiment_by_name(params["mlflow"]["experiment"]).experiment_id],
        order_by=["attributes.start_time ASC"],
    )
    assert [r.info.run_name for r in runs] == ["validate_raw", "validate_clean", "validate_clean"]

    def artifacts(run, path=""):
        found = []
        for entry in client.list_artifacts(run.info.run_id, path):
            found += artifacts(run, entry.path) if entry.is_dir else [entry.path]
        return found

    raw_run, _, failed_run = runs
    assert "gx_docs/index.html" in artifacts(raw_run)
    assert {p.split("/")[1] for p in artifacts(raw_run) if p.endswith(".html") and p.count("/") == 2} == set(C.TABLES)
    logged = artifacts(failed_run)
    pages = {p.split("/")[1] for p in logged if p.endswith(".html") and p.count("/") == 2}
    assert pages == {*C.TABLES, "quarantine", "drift"}  # the failed run's pages too, drift included
    assert "drift/drift.md" in logged
    assert failed_run.data.metrics["n_failed"] == 1  # the failed run still records its numbers


# --- the arithmetic (pandas only) -----------------------------------------------------


def counts(values: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame({C.ITEM_ID: list(values), drift.COUNT: list(values.values())})


def test_psi_is_zero_for_the_same_popularity_and_large_when_it_flips():
    before = counts({f"i{i}": 100 // (i + 1) for i in range(20)})
    flipped = counts({f"i{i}": 100 // (20 - i) for i in range(20)})

    same = drift.popularity_psi(drift.popularity_bins(before, before, 10), 0.25, 10)
    moved = drift.popularity_psi(drift.popularity_bins(before, flipped, 10), 0.25, 10)

    assert same.value == pytest.approx(0.0) and same.success
    assert moved.value > 1.0 and not moved.success
    assert "largest move: popularity bin" in moved.observed


def test_no_interaction_on_any_previous_item_fails_the_psi():
    bins = drift.popularity_bins(counts({"a": 5, "b": 3}), counts({"z": 9}), 10)
    check = drift.popularity_psi(bins, 0.25, 10)
    assert check.value == float("inf") and not check.success


def test_id_shares_and_the_consistent_hash_sample():
    check = drift.id_share("new_user_share", {"a", "b", "c", "d"}, {"a", "b"}, 0.3, "users", new=True)
    assert check.value == 0.5 and check.observed == "50.0% (2 of 4 users new, e.g. 'c', 'd')" and not check.success
    assert drift.sample_buckets(500, 1000) == drift.ID_HASH_MODULUS
    assert drift.sample_buckets(4_000_000, 1_000_000) == drift.ID_HASH_MODULUS // 4


def test_rating_mean_shift_handles_implicit_feedback():
    stats = lambda mean: drift.VersionStats("v", "t", 1, 1, 1, mean, 1, pd.DataFrame(), pd.DataFrame())  # noqa: E731
    assert drift.rating_mean_shift(stats(None), stats(None), 0.3).value is None  # both implicit: nothing to compare
    switched = drift.rating_mean_shift(stats(None), stats(3.5), 0.3)
    assert switched.value == float("inf") and not switched.success and switched.observed == "no rating now (1 rows)"


def version(name: str, n_users: int = 3) -> drift.VersionStats:
    ids = pd.DataFrame({C.USER_ID: [f"u{u}" for u in range(n_users)], drift.BUCKET: list(range(n_users))})
    return drift.VersionStats(name, name, 10, n_users, 2, 3.0, drift.ID_HASH_MODULUS, ids, counts({"i1": 6, "i2": 4}))


def test_saved_versions_round_trip_and_old_ones_are_pruned(tmp_path):
    for day in range(1, 5):
        drift.save_version(version(f"2024010{day}T000000000000Z"), tmp_path, keep=2)

    kept = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert kept == ["20240103T000000000000Z", "20240104T000000000000Z"]
    loaded = drift.load_previous(tmp_path)
    assert loaded.version == "20240104T000000000000Z" and loaded.rows == 10
    pd.testing.assert_frame_equal(loaded.item_counts, counts({"i1": 6, "i2": 4}))


def test_an_unreadable_baseline_names_the_fix(tmp_path):
    drift.save_version(version("20240101T000000000000Z"), tmp_path, keep=3)
    (tmp_path / "20240101T000000000000Z" / drift.STATS_FILE).unlink()
    with pytest.raises(PipelineError, match=r"unreadable .*delete .* to start again with no baseline"):
        drift.load_previous(tmp_path)

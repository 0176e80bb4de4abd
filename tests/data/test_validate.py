"""The two Great Expectations gates on tiny real tables, with a real SparkSession and GX.

One good project passes both gates; bad projects fail the right gate and the message
names exactly the broken checks. GX on Spark costs about a second per suite, so the
tables are a few dozen rows and each test runs each gate once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline_tasks import validate_clean, validate_raw
from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core.errors import DataValidationError, ParamsError
from pipeline_tasks.data import validate

pytestmark = pytest.mark.spark

N_USERS, N_ITEMS = 4, 5  # every user rates every item: 5 per user, 4 per item (k-core 5/3 holds)


def good_interactions() -> pd.DataFrame:
    rows = []
    for u in range(N_USERS):
        for i in range(N_ITEMS):
            rating = None if (u + i) % 7 == 0 else float(1 + (u + i) % 5)  # a few null ratings are fine
            rows.append(
                {
                    C.USER_ID: f"u{u}",
                    C.ITEM_ID: f"i{i}",
                    C.RATING: rating,
                    C.TIMESTAMP: pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(hours=10 * u + i),
                    C.EVENT: "rating",
                }
            )
    frame = pd.DataFrame(rows)
    frame[C.TIMESTAMP] = frame[C.TIMESTAMP].astype("datetime64[us, UTC]")
    return frame


def good_items() -> pd.DataFrame:
    return pd.DataFrame(
        {
            C.ITEM_ID: [f"i{i}" for i in range(N_ITEMS)],
            C.TITLE: [f"Item {i}" for i in range(N_ITEMS)],
            C.TEXT: [f"Item {i}. A story about topic {i}." for i in range(N_ITEMS)],
        }
    )


def good_users() -> pd.DataFrame:
    return pd.DataFrame({C.USER_ID: [f"u{u}" for u in range(N_USERS)], "gender": ["F", "M", "F", "M"]})


def dirty_rows(n: int) -> pd.DataFrame:
    """Raw interactions the cleaner quarantines (a null user id)."""
    return good_interactions().head(n).assign(**{C.USER_ID: None})


def write_project(root: Path, raw: dict | None = None, clean: dict | None = None, quarantined: int = 1) -> Path:
    """raw/clean tables (defaults: the good ones; raw interactions also hold the quarantined rows)."""
    good = {"interactions": good_interactions(), "items": good_items(), "users": good_users()}
    raw = {**good, "interactions": pd.concat([good_interactions(), dirty_rows(quarantined)]), **(raw or {})}
    clean = {**good, **(clean or {})}
    for table in C.TABLES:
        io.write_table(raw[table], root / C.DATA_RAW / table)
        io.write_table(clean[table], root / C.DATA_CLEAN / table)
    io.write_table(dirty_rows(quarantined).assign(**{C.REASON: "null_id"}), root / C.DATA_QUARANTINE / "interactions")
    return root


def failed_checks(message: str) -> set[str]:
    """Names of the blocking checks listed in a DataValidationError message."""
    blocking = message.split("warnings (not blocking):")[0]
    return set(re.findall(r"^  - (\w+) \[", blocking, flags=re.MULTILINE))


def test_good_project_passes_both_gates_and_writes_data_docs(spark, params, tmp_path):
    root = write_project(tmp_path)

    raw = validate_raw.run(params, root)
    clean = validate_clean.run(params, root)

    assert raw["success"] and raw["n_failed"] == 0 and raw["n_warned"] == 0, raw["checks"]
    assert raw["n_expectations"] == len(params["validate_raw"]["severity"])
    assert clean["success"] and clean["n_failed"] == 0, clean["checks"]
    assert clean["n_expectations"] == len(params["validate_clean"]["severity"])
    assert (root / clean["docs"]).is_file() and clean["docs"] == "reports/gx/index.html"
    index = (root / "reports/gx/index.html").read_text()
    assert "validate_clean_interactions" in index and "validate_raw_items" in index
    # Both gates' assets stay registered side by side in the one GX project under root/gx.
    assets = validate.open_context(root).data_sources.get(validate.DATASOURCE).assets
    assert len(assets) == len(C.TABLES) * 2 + 1  # raw + clean tables + the quarantine

    # A second run on the same GX project (add_or_update everywhere), through the CLI.
    assert validate_raw.main(["--root", str(root), "--no-mlflow"]) == 0
    written = json.loads((root / C.METRICS_DIR / "validate_raw.json").read_text())
    assert written["success"] is True and written["n_expectations"] == raw["n_expectations"]


def test_raw_gate_fails_on_a_renamed_column_and_a_broken_id_column(spark, params, tmp_path, capsys):
    items = good_items()
    items.loc[0, C.ITEM_ID] = None  # 20% null ids: far above max_null_id_share
    renamed = pd.concat([good_interactions(), dirty_rows(1)]).rename(columns={C.ITEM_ID: "movie_id"})
    renamed[C.TIMESTAMP] = renamed[C.TIMESTAMP].astype(str)  # a text source: most stamps parse ...
    renamed.iloc[:3, renamed.columns.get_loc(C.TIMESTAMP)] = "yesterday"  # ... 3 of 21 do not
    root = write_project(tmp_path, raw={"interactions": renamed, "items": items})

    assert validate_raw.main(["--root", str(root), "--no-mlflow"]) == 3
    message = capsys.readouterr().err

    assert failed_checks(message) == {
        "interactions_columns_present",
        "items_item_id_not_null",
        "interactions_timestamp_parseable",
    }
    assert "missing columns ['item_id']" in message
    assert "1 of 5 rows (20.00%)" in message and "at most 5.00% of item_id null" in message
    assert "3 of 21 rows" in message
    page = re.search(r"Data Docs: (\S+\.html)", message).group(1)
    assert Path(page).is_file() and str(root / "reports" / "gx") in page
    assert not (root / C.METRICS_DIR / "validate_raw.json").exists()


def test_clean_gate_names_each_broken_promise(spark, params, tmp_path):
    interactions = good_interactions()
    interactions[C.RATING] = interactions[C.RATING] * 10  # a unit bug: every rating x10
    interactions = pd.concat([interactions, interactions.head(1)])  # one duplicated (user, item, ts)
    items = good_items()
    items = items[items[C.ITEM_ID] != "i4"]  # i4's interactions become orphans
    items.loc[items[C.ITEM_ID] == "i0", C.TEXT] = "   "  # blank text
    items.loc[items[C.ITEM_ID] == "i1", C.TEXT] = "x" * (params["clean"]["text_max_chars"] + 1)
    interactions.iloc[5, interactions.columns.get_loc(C.TIMESTAMP)] = pd.Timestamp("2100-01-01", tz="UTC")
    lonely_user = good_interactions().head(1).assign(**{C.USER_ID: "u_once"})  # 1 interaction < kcore_users
    interactions = pd.concat([interactions, lonely_user])
    root = write_project(tmp_path, clean={"interactions": interactions, "items": items}, quarantined=10)

    with pytest.raises(DataValidationError) as caught:
        validate_clean.run(params, root)
    message = str(caught.value)

    assert failed_checks(message) == {
        "interactions_rating_in_range",
        "interactions_unique_user_item_timestamp",
        "interactions_item_in_catalogue",
        "items_text_not_empty",
        "quarantine_share",
        "items_text_max_chars",
        "interactions_timestamp_in_range",
        "interactions_user_kcore",
    }
    assert f"rating in [{params['clean']['rating_min']}, {params['clean']['rating_max']}] or null" in message
    assert "e.g. 20.0, 30.0, 40.0" in message  # the offending values are shown
    assert re.search(r"quarantine_share .* observed 10; threshold: <= 9 quarantined", message)


def test_warn_severity_reports_without_stopping(spark, params, tmp_path):
    raw_interactions = pd.concat([good_interactions(), dirty_rows(1)], ignore_index=True)
    raw_interactions.iloc[:8, raw_interactions.columns.get_loc(C.USER_ID)] = None  # 9 of 21 null with the dirty row
    root = write_project(tmp_path, raw={"interactions": raw_interactions})
    params["validate_raw"]["severity"]["interactions_user_id_not_null"] = "warn"
    params["validate_raw"]["severity"]["users_columns_present"] = "off"

    metrics = validate_raw.run(params, root)

    assert metrics["success"] is True and metrics["n_failed"] == 0
    assert metrics["warned"] == ["interactions_user_id_not_null"] and metrics["n_warned"] == 1
    assert "users_columns_present" not in metrics["checks"]
    assert metrics["n_expectations"] == len(params["validate_raw"]["severity"]) - 1
    assert metrics["checks"]["interactions_user_id_not_null"]["observed"].startswith("9 of 21 rows (42.86%)")


def test_unknown_severity_is_a_params_error():
    with pytest.raises(ParamsError, match="validate_raw.severity.items_min_rows"):
        validate.severities_of({"severity": {"items_min_rows": "panic"}}, "validate_raw")


@pytest.mark.slow
def test_movielens_100k_passes_every_gate(spark, params, tmp_path, ml100k_path):
    """The real thing: ingest -> validate_raw -> clean -> validate_clean (twice: the drift gate too)."""
    from pipeline_tasks import clean, ingest

    params["ingest"].update(source="movielens", path=str(ml100k_path))
    ingest.run(params, tmp_path)

    raw = validate_raw.run(params, tmp_path)
    cleaned = clean.run(params, tmp_path)
    first = validate_clean.run(params, tmp_path)
    again = validate_clean.run(params, tmp_path)  # the next night, same data: compared with the first

    assert raw["success"] and raw["n_failed"] == raw["n_warned"] == raw["n_skipped"] == 0, raw["checks"]
    assert cleaned["interactions"]["rows_in"] == 100_000
    for gate in (first, again):
        assert gate["success"] and gate["n_failed"] == gate["n_warned"] == gate["n_skipped"] == 0, gate["checks"]
    assert first["drift"]["status"] == "no baseline yet"
    drift_checks = again["drift"]["checks"]
    assert set(drift_checks) == set(params["validate_clean"]["drift"]["severity"])
    assert all(c["success"] and c["value"] == pytest.approx(0.0, abs=1e-9) for c in drift_checks.values())
    assert again["drift"]["current"]["rows"] == cleaned["interactions"]["rows_kept"]


def test_a_broken_night_is_caught_even_when_the_history_hides_it(spark, tmp_path, params):
    """Tonight's increment arrives with 30% of its user ids missing: a fraction of a percent of months
    of history, so the whole table passes; validate_raw checks the batch just ingested on its own and
    stops the run, naming it."""
    from pipeline_tasks import ingest

    ingest.run(params, tmp_path)  # the history
    params["ingest"]["batch"] = "2026-07-01"
    ingest.run(params, tmp_path)
    tonight = tmp_path / C.DATA_RAW / "interactions" / "part-2026-07-01.parquet"
    broken = pd.read_parquet(tonight)
    broken.loc[broken.sample(frac=0.3, random_state=0).index, C.USER_ID] = None
    tonight.unlink()  # a hard link to data/batches: replace it, do not write through it
    broken.to_parquet(tonight, index=False)
    whole = pd.read_parquet(tmp_path / C.DATA_RAW / "interactions")
    assert whole[C.USER_ID].isna().mean() < params["validate_raw"]["max_null_id_share"]  # the history hides it

    with pytest.raises(DataValidationError, match=r"interactions_user_id_not_null.*interactions_of_the_batch"):
        validate_raw.run(params, tmp_path)
    params["ingest"]["batch"] = ""  # the same data judged as a whole only: it passes
    assert validate_raw.run(params, tmp_path)["success"]

"""The checks of the validate_clean gate (Great Expectations via data/validate.py): what clean data must hold,
as the validate_clean stage's docstring says, and the tables they run on."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import ParamsError
from pipeline_tasks.data.spark import get_spark
from pipeline_tasks.data.validate import (
    Check,
    TableBatch,
    columns_present,
    import_gx,
    not_null,
    read_spark_table,
)

GATE = "validate_clean"
# Derived columns (added to the interactions DataFrame for validation only).
ITEM_IN_CATALOGUE = "item_in_catalogue"
USER_INTERACTIONS = "user_interactions"
ITEM_INTERACTIONS = "item_interactions"


def timestamp_bounds(clean: dict, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    try:
        floor = dt.datetime.fromisoformat(clean["timestamp_floor"])
    except ValueError as err:
        raise ParamsError(
            f"clean.timestamp_floor {clean['timestamp_floor']!r} is not an ISO date (e.g. 1990-01-01): {err}"
        ) from err
    floor = floor if floor.tzinfo else floor.replace(tzinfo=dt.UTC)
    return floor, now + dt.timedelta(hours=clean["future_slack_hours"])


def interaction_checks(clean: dict, now: dt.datetime) -> list[Check]:
    E = import_gx().expectations
    low, high = clean["rating_min"], clean["rating_max"]
    floor, ceiling = timestamp_bounds(clean, now)
    key = [C.USER_ID, C.ITEM_ID, C.TIMESTAMP]
    return [
        columns_present("interactions", C.INTERACTION_COLUMNS),
        not_null("interactions", C.USER_ID),
        not_null("interactions", C.ITEM_ID),
        not_null("interactions", C.TIMESTAMP),
        Check(
            name="interactions_unique_user_item_timestamp",
            expectation=E.ExpectCompoundColumnsToBeUnique(column_list=key),
            threshold="no two rows share (user_id, item_id, timestamp)",
            columns=tuple(key),
        ),
        Check(
            name="interactions_rating_in_range",
            expectation=E.ExpectColumnValuesToBeBetween(column=C.RATING, min_value=low, max_value=high),
            threshold=f"rating in [{low}, {high}] or null (clean.rating_min/rating_max)",
            columns=(C.RATING,),
        ),
        Check(
            name="interactions_timestamp_in_range",
            expectation=E.ExpectColumnValuesToBeBetween(column=C.TIMESTAMP, min_value=floor, max_value=ceiling),
            threshold=f"timestamp in [{floor:%Y-%m-%d}, {ceiling:%Y-%m-%d %H:%M}] UTC "
            f"(clean.timestamp_floor, now + clean.future_slack_hours)",
            columns=(C.TIMESTAMP,),
        ),
        Check(
            name="interactions_item_in_catalogue",
            expectation=E.ExpectColumnValuesToBeInSet(column=ITEM_IN_CATALOGUE, value_set=[True]),
            threshold="every interaction's item_id is in clean/items",
            columns=(ITEM_IN_CATALOGUE,),
        ),
        Check(
            name="interactions_user_kcore",
            expectation=E.ExpectColumnMinToBeBetween(column=USER_INTERACTIONS, min_value=clean["kcore_users"]),
            threshold=f"every user has >= {clean['kcore_users']} interactions (clean.kcore_users)",
            columns=(USER_INTERACTIONS,),
        ),
        Check(
            name="interactions_item_kcore",
            expectation=E.ExpectColumnMinToBeBetween(column=ITEM_INTERACTIONS, min_value=clean["kcore_items"]),
            threshold=f"every item has >= {clean['kcore_items']} interactions (clean.kcore_items)",
            columns=(ITEM_INTERACTIONS,),
        ),
    ]


def item_checks(clean: dict) -> list[Check]:
    E = import_gx().expectations
    max_chars = clean["text_max_chars"]
    return [
        columns_present("items", C.ITEM_COLUMNS),
        not_null("items", C.ITEM_ID),
        Check(
            name="items_item_id_unique",
            expectation=E.ExpectColumnValuesToBeUnique(column=C.ITEM_ID),
            threshold="one row per item_id",
            columns=(C.ITEM_ID,),
        ),
        not_null("items", C.TEXT),
        Check(
            name="items_text_not_empty",
            expectation=E.ExpectColumnValuesToMatchRegex(column=C.TEXT, regex=r"\S"),
            threshold="text has at least one non-blank character",
            columns=(C.TEXT,),
        ),
        Check(
            name="items_text_max_chars",
            expectation=E.ExpectColumnValueLengthsToBeBetween(column=C.TEXT, max_value=max_chars),
            threshold=f"text at most {max_chars} characters (clean.text_max_chars)",
            columns=(C.TEXT,),
        ),
    ]


def user_checks() -> list[Check]:
    return [columns_present("users", [C.USER_ID]), not_null("users", C.USER_ID)]


def quarantine_checks(raw_rows: int, max_share: float) -> list[Check]:
    E = import_gx().expectations
    max_rows = math.floor(max_share * raw_rows)
    return [
        Check(
            name="quarantine_share",
            expectation=E.ExpectTableRowCountToBeBetween(max_value=max_rows),
            threshold=f"<= {max_rows} quarantined interactions "
            f"(validate_clean.max_quarantine_share {max_share} x {raw_rows} raw rows)",
        )
    ]


def with_derived_columns(interactions, items):
    """Add ITEM_IN_CATALOGUE and the per-user / per-item interaction counts.

    Joins and group counts are no single GX expectation; as columns they become one each.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    frame = interactions
    if C.ITEM_ID in frame.columns and C.ITEM_ID in items.columns:
        catalogue = items.select(F.col(C.ITEM_ID).alias("_catalogue_id")).distinct()
        frame = (
            frame.join(catalogue, frame[C.ITEM_ID] == catalogue["_catalogue_id"], "left")
            .withColumn(ITEM_IN_CATALOGUE, F.col("_catalogue_id").isNotNull())
            .drop("_catalogue_id")
        )
    for column, derived in ((C.USER_ID, USER_INTERACTIONS), (C.ITEM_ID, ITEM_INTERACTIONS)):
        if column in frame.columns:
            frame = frame.withColumn(derived, F.count(F.lit(1)).over(Window.partitionBy(column)))
    return frame


def clean_batches(params: dict, root: Path, now: dt.datetime | None = None) -> list[TableBatch]:
    spark = get_spark(params)
    clean = params["clean"]
    now = now or dt.datetime.now(dt.UTC)
    tables = {t: read_spark_table(spark, root / C.DATA_CLEAN / t, stage_hint="clean") for t in C.TABLES}
    quarantine = read_spark_table(spark, root / C.DATA_QUARANTINE / "interactions", stage_hint="clean")
    raw_rows = read_spark_table(spark, root / C.DATA_RAW / "interactions", stage_hint="ingest").count()
    interactions = with_derived_columns(tables["interactions"], tables["items"])
    return [
        TableBatch("interactions", interactions, interaction_checks(clean, now)),
        TableBatch("items", tables["items"], item_checks(clean)),
        TableBatch("users", tables["users"], user_checks()),
        TableBatch("quarantine", quarantine, quarantine_checks(raw_rows, params[GATE]["max_quarantine_share"])),
    ]

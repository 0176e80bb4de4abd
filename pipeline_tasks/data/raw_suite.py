"""The checks of the validate_raw gate (Great Expectations via data/validate.py): what raw data must hold,
as the validate_raw stage's docstring says, and the tables they run on."""

from __future__ import annotations

from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.data.spark import get_spark
from pipeline_tasks.data.validate import (
    Check,
    TableBatch,
    columns_present,
    import_gx,
    not_null,
    read_spark_table,
)

GATE = "validate_raw"
TIMESTAMP_PARSED = "timestamp_parsed"  # derived: the timestamp as Spark reads it, null if unparseable
USER_COLUMNS = [C.USER_ID]
TONIGHT = "interactions_of_the_batch"  # the increment just ingested (ingest.batch), checked on its own


def interaction_checks(gate_params: dict) -> list[Check]:
    E = import_gx().expectations
    max_null = gate_params["max_null_id_share"]
    max_bad_ts = gate_params["max_bad_timestamp_share"]
    return [
        columns_present("interactions", C.INTERACTION_COLUMNS),
        Check(
            name="interactions_min_rows",
            expectation=E.ExpectTableRowCountToBeBetween(min_value=gate_params["min_rows"]),
            threshold=f">= {gate_params['min_rows']} rows",
        ),
        not_null("interactions", C.USER_ID, max_null),
        not_null("interactions", C.ITEM_ID, max_null),
        Check(
            name="interactions_timestamp_parseable",
            expectation=E.ExpectColumnValuesToNotBeNull(column=TIMESTAMP_PARSED, mostly=1.0 - max_bad_ts),
            threshold=f"at most {max_bad_ts:.2%} of timestamps null or unparseable",
            columns=(TIMESTAMP_PARSED,),
        ),
    ]


def item_checks(gate_params: dict) -> list[Check]:
    E = import_gx().expectations
    return [
        columns_present("items", C.ITEM_COLUMNS),
        Check(
            name="items_min_rows",
            expectation=E.ExpectTableRowCountToBeBetween(min_value=1),
            threshold=">= 1 item",
        ),
        not_null("items", C.ITEM_ID, gate_params["max_null_id_share"]),
    ]


def user_checks(gate_params: dict) -> list[Check]:
    return [
        columns_present("users", USER_COLUMNS),
        not_null("users", C.USER_ID, gate_params["max_null_id_share"]),
    ]


def with_parsed_timestamp(interactions):
    """Add TIMESTAMP_PARSED: null where the timestamp is missing or does not parse.

    ingest writes real timestamps, but a generic source may hand over strings;
    try_cast turns an unparseable one into null instead of failing the query.
    """
    from pyspark.sql import functions as F

    if C.TIMESTAMP not in interactions.columns:
        return interactions
    return interactions.withColumn(TIMESTAMP_PARSED, F.col(C.TIMESTAMP).try_cast("timestamp"))


def raw_batches(params: dict, root: Path) -> list[TableBatch]:
    spark = get_spark(params)
    gate_params = params[GATE]
    tables = {t: read_spark_table(spark, root / C.DATA_RAW / t, stage_hint="ingest") for t in C.TABLES}
    batches = [
        TableBatch("interactions", with_parsed_timestamp(tables["interactions"]), interaction_checks(gate_params)),
        TableBatch("items", tables["items"], item_checks(gate_params)),
        TableBatch("users", tables["users"], user_checks(gate_params)),
    ]
    # Tonight's increment on its own too: a broken night is a small share of months of history, so the
    # whole table's shares would let it through (the same checks, on the rows of that batch only).
    batch = params["ingest"]["batch"]
    tonight = root / C.DATA_RAW / "interactions" / f"part-{batch}.parquet"
    if batch and tonight.exists():
        frame = with_parsed_timestamp(spark.read.parquet(str(tonight)))
        batches.append(TableBatch(TONIGHT, frame, interaction_checks(gate_params)))
    return batches

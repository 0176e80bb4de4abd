"""One SparkSession per process, configured from params.yaml's `spark` section."""
from __future__ import annotations

import os
from typing import Any


def get_spark(params: dict[str, Any]):
    """Return the process's SparkSession, creating it from `params['spark']` if needed."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = params["spark"]
    os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
    builder = (
        SparkSession.builder.appName("recpipe")
        .master(conf["master"])
        .config("spark.driver.memory", conf["driver_memory"])
        .config("spark.sql.shuffle.partitions", str(conf["shuffle_partitions"]))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.parquet.datetimeRebaseModeInWrite", "CORRECTED")
        # Microsecond timestamps marked UTC (not Spark's INT96 default): pandas reads them as datetime64[us, UTC].
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(conf["log_level"])
    return spark

"""One SparkSession per process, configured from params.yaml's `spark` section."""

from __future__ import annotations

import os
from typing import Any


def spark_conf(conf: dict[str, Any]) -> dict[str, str]:
    """Spark settings for params `spark`: the same for `local[*]` and for a cluster master."""
    settings = {
        "spark.master": conf["master"],
        "spark.driver.memory": conf["driver_memory"],  # read only when the JVM starts: set before the first session
        "spark.sql.shuffle.partitions": str(conf["shuffle_partitions"]),
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.parquet.datetimeRebaseModeInWrite": "CORRECTED",
        # Microsecond timestamps marked UTC (not Spark's INT96 default): pandas reads them as datetime64[us, UTC].
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    if conf["master"].startswith("local"):
        # Loopback only: no firewall prompt, no hostname lookups. A cluster's executors must reach the driver,
        # so for spark://, yarn or k8s:// the driver address is left to Spark (or spark-defaults.conf).
        settings["spark.driver.bindAddress"] = "127.0.0.1"
        settings["spark.driver.host"] = "127.0.0.1"
    return settings


def get_spark(params: dict[str, Any]):
    """Return the process's SparkSession, creating it from `params['spark']` if needed."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = params["spark"]
    os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
    builder = SparkSession.builder.appName("recpipe")
    for key, value in spark_conf(conf).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(conf["log_level"])
    return spark

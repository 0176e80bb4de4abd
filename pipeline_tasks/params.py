"""The one source of every number: params.yaml, checked against typed defaults.

`load(path, overrides)` reads params.yaml, applies `section.key=value` overrides
(from `--set` or the Airflow form), rejects unknown keys and wrong types with a
message naming the key, and returns a plain nested dict.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from pipeline_tasks.errors import ParamsError

# Typed defaults. The type of each default is the type a value must have
# (an int is accepted where a float is expected; None means "any").
DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "spark": {
        "master": "local[*]",
        "driver_memory": "2g",
        "shuffle_partitions": 4,
        "log_level": "ERROR",
    },
    "mlflow": {
        "tracking_uri": "sqlite:///mlflow/mlflow.db",
        "artifact_root": "mlflow/artifacts",
        "experiment": "recpipe",
    },
    "airflow": {
        "schedule": "0 2 * * *",  # cron, UTC: the nightly run
    },
    "ingest": {
        "source": "synthetic",  # synthetic | movielens
        "path": "",  # folder of the source files (movielens)
        "max_bad_line_share": 0.01,  # unparseable lines tolerated (skipped) before ingest fails
        "max_tags_per_item": 5,  # MovieLens tags.csv: most frequent tags appended to an item's text
        "synthetic": {
            "n_users": 300,
            "n_items": 400,
            "n_topics": 8,
            "mean_interactions_per_user": 30,
            "days": 180,
            "start_date": "2026-01-01",
            "cold_item_share": 0.05,
            "popularity_exponent": 1.0,
            "topic_affinity": 0.85,
            "drift": 0.15,
            "messy_text_share": 0.1,  # good items with harmless markup/spacing/NFD text that clean fixes
            "dirt": {
                "duplicate_rate": 0.01,
                "null_id_rate": 0.003,
                "bad_rating_rate": 0.003,
                "future_timestamp_rate": 0.003,
                "orphan_item_rate": 0.003,
                "broken_text_rate": 0.02,
                "bot_users": 1,
                "bot_events": 400,
            },
        },
    },
    "validate_raw": {
        "min_rows": 1,
        "max_null_id_share": 0.05,
        "max_bad_timestamp_share": 0.01,  # null or unparseable timestamps
        # Per check: fail (stops the run) | warn (only reported) | off (not run).
        "severity": {
            "interactions_columns_present": "fail",
            "interactions_min_rows": "fail",
            "interactions_user_id_not_null": "fail",
            "interactions_item_id_not_null": "fail",
            "interactions_timestamp_parseable": "fail",
            "items_columns_present": "fail",
            "items_min_rows": "fail",
            "items_item_id_not_null": "fail",
            "users_columns_present": "fail",
            "users_user_id_not_null": "fail",
        },
    },
    "clean": {
        "rating_min": 0.5,  # MovieLens latest/20M/25M use half stars from 0.5
        "rating_max": 5.0,
        "timestamp_floor": "1990-01-01",
        "future_slack_hours": 24,
        # MovieLens users rate in bursts (up to 30 a minute in 100K): above 60 a minute is a machine.
        "bot_max_events_per_minute": 60,
        # 0 = off: activity is heavy-tailed (ML-1M's busiest real user has z ~ 11), so a z-score flags people.
        "bot_max_events_zscore": 0.0,
        "orphan_policy": "drop",  # drop | placeholder
        "placeholder_text": "Unknown item",  # text of catalogue rows added by orphan_policy=placeholder
        "kcore_users": 5,
        "kcore_items": 3,
        "kcore_max_iterations": 20,
        "text_max_chars": 400,
        "implicit_min_rating": 0.0,  # 0 = every interaction is a positive
    },
    "validate_clean": {
        "max_quarantine_share": 0.3,
        # Per check: fail (stops the run) | warn (only reported) | off (not run).
        "severity": {
            "interactions_columns_present": "fail",
            "interactions_user_id_not_null": "fail",
            "interactions_item_id_not_null": "fail",
            "interactions_timestamp_not_null": "fail",
            "interactions_unique_user_item_timestamp": "fail",
            "interactions_rating_in_range": "fail",
            "interactions_timestamp_in_range": "fail",
            "interactions_item_in_catalogue": "fail",
            "interactions_user_kcore": "fail",
            "interactions_item_kcore": "fail",
            "items_columns_present": "fail",
            "items_item_id_not_null": "fail",
            "items_item_id_unique": "fail",
            "items_text_not_null": "fail",
            "items_text_not_empty": "fail",
            "items_text_max_chars": "fail",
            "users_columns_present": "fail",
            "users_user_id_not_null": "fail",
            "quarantine_share": "fail",
        },
    },
    "split": {
        "min_user_interactions": 3,
    },
    "baselines": {
        "models": ["Pop", "ItemKNN", "EASE"],
        "ease_lambdas": [10.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
        "itemknn_neighbors": [20, 50, 100],
        "batch_size": 1024,  # users scored per block
        "max_dense_items": 20000,  # EASE and ItemKNN hold item x item matrices: refuse larger catalogues
    },
    "train": {
        "encoder": "all-MiniLM-L6-v2",  # or a local Hugging Face model directory
        "finetune": "lora",  # lora | full | top_layers | frozen
        "lora_r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.05,
        "max_text_len": 32,
        "dim": 64,
        "user_layers": 2,
        "user_heads": 2,
        "max_seq_len": 50,
        "use_id_embedding": True,
        "use_text": True,
        "dropout": 0.2,
        "epochs": 6,
        "batch_size": 64,
        "lr": 0.002,
        "encoder_lr": 0.0005,
        "weight_decay": 0.0,
        "warmup_share": 0.1,  # share of all steps with a linear learning-rate warm-up (then cosine to 10%)
        "grad_clip_norm": 1.0,
        "temperature": 0.1,
        "n_negatives": 256,
        "text_grad_items": 16,  # candidates per step encoded WITH gradient (the rest read a cached table)
        "checkpoint_every": 50,
        "device": "auto",  # auto | cpu | cuda
        "use_best_params": True,
        "num_threads": 0,  # 0 = torch's default
    },
    "tune": {
        "n_trials": 3,
        "timeout_s": 900,
        "epochs": 3,
        "sampler_seed": 42,
        "pruner": "median",  # median | hyperband | none
        "pruner_startup_trials": 2,  # median: trials that finish before any is pruned
        "pruner_warmup_epochs": 1,  # median: epochs a trial always completes before it can be pruned
        "storage": "",  # "" = optuna/study.db (SQLite); or a postgresql:// URL
        "study_name": "recpipe",
        "search_space": {
            "train.lr": {"type": "float", "low": 0.0005, "high": 0.005, "log": True},
            "train.temperature": {"type": "float", "low": 0.05, "high": 0.3, "log": True},
            "train.dropout": {"type": "float", "low": 0.0, "high": 0.4},
        },
    },
    "compress": {
        "variants": ["fp32", "int8_dynamic", "item_table_fp16"],  # fp32 is always measured (the reference)
        "max_ndcg_drop": 0.01,  # largest relative valid NDCG@10 drop vs fp32 a chosen variant may have
        "latency_calls": 200,  # timed single-user recommendations per variant (after warm-up)
        "warmup_calls": 10,
        "throughput_items": 256,  # items encoded to time the item tower (capped at the catalogue)
        "num_threads": 0,  # torch CPU threads while measuring; 0 = torch's default
    },
    "evaluate": {
        "ks": [10, 20],
        "batch_size": 256,
        "head_share": 0.2,  # popular items = top share by training count; the rest is the long tail
        "history_bins": [20, 100],  # user slices by history length (train+valid): <20, 20-99, >=100
        "bootstrap_resamples": 1000,
        "ci_level": 0.95,
        "max_attribute_groups": 25,  # user attributes with more distinct values are not sliced (e.g. zip)
        "min_group_users": 20,  # groups smaller than this are reported but left out of fairness ratios
    },
    "register": {
        "model_name": "recpipe",
        "min_improvement": 0.0,
        "min_ndcg": 0.0,
        "auto_promote": True,
    },
}

# Dicts whose keys are the user's own (no unknown-key check below them).
OPEN_KEYS = {"tune.search_space"}


def defaults() -> dict[str, Any]:
    return copy.deepcopy(DEFAULTS)


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, then the params file (if one is given), then `section.key=value` overrides."""
    params = defaults()
    if path is not None:
        if not Path(path).exists():
            raise ParamsError(f"params file {path} does not exist: pass --params FILE or run from the project root")
        with open(path, encoding="utf-8") as fh:
            from_file = yaml.safe_load(fh) or {}
        if not isinstance(from_file, dict):
            raise ParamsError(f"{path} must hold a mapping of sections, got {type(from_file).__name__}")
        merge(params, from_file, DEFAULTS, prefix="")
    for item in overrides:
        apply_override(params, item)
    return params


def merge(target: dict, source: dict, schema: dict, prefix: str) -> None:
    """Merge `source` into `target`, checking keys and types against `schema`."""
    for key, value in source.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(map(str, schema)))
            raise ParamsError(f"unknown key '{dotted}' in params (known keys here: {known}); fix the spelling or remove it")
        default = schema[key]
        if isinstance(default, dict) and dotted not in OPEN_KEYS:
            if not isinstance(value, dict):
                raise ParamsError(f"'{dotted}' must be a mapping of keys, got {value!r}")
            merge(target[key], value, default, prefix=f"{dotted}.")
        else:
            target[key] = check_type(dotted, value, default)


def check_type(dotted: str, value: Any, default: Any) -> Any:
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParamsError(f"'{dotted}' must be true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"'{dotted}' must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"'{dotted}' must be an integer, got {value!r}")
        return value
    if isinstance(default, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--set ingest.path=2024` means the string
        if not isinstance(value, str):
            raise ParamsError(f"'{dotted}' must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ParamsError(f"'{dotted}' must be a list, got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ParamsError(f"'{dotted}' must be a mapping, got {value!r}")
        return value
    return value


def apply_override(params: dict, item: str) -> None:
    """Apply one `section.key=value` override; the value is parsed as YAML."""
    if "=" not in item:
        raise ParamsError(f"override {item!r} must look like section.key=value (e.g. train.epochs=2)")
    dotted, raw = item.split("=", 1)
    set_dotted(params, dotted.strip(), parse_value(raw))


def parse_value(raw: str) -> Any:
    """YAML, except that `1e-3` is a number (YAML 1.1 would read it as a string)."""
    if raw == "":
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def set_dotted(params: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in params (checked against the defaults like params.yaml is)."""
    parts = dotted.split(".")
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    merge(params, nested, DEFAULTS, prefix="")


def get_dotted(params: dict, dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"no parameter '{dotted}' (no key '{part}')")
        node = node[part]
    return node


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`, for MLflow params and tags."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def dump(params: dict, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(params, fh, sort_keys=False)

"""The Airflow trigger form, generated from params.yaml.

Each field is a params.yaml key with a title, help text and JSON-schema bounds; its default
is the current value in params.yaml, its type the type of the key's default. Field names
use `__` for `.` (`train__epochs` is `train.epochs`) because the form's JavaScript treats
dots specially. Submitted values reach the stages as overrides written into params.yaml,
so DVC sees them and re-runs exactly the stages they affect.
"""

from __future__ import annotations

from typing import Any

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import params as P

# dotted key -> (title, description, extra JSON-schema keywords)
FIELDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ingest.source": (
        "Data source",
        "synthetic: the built-in generator; movielens: MovieLens files at the data "
        "path; amazon: Amazon reviews JSON Lines (2018 or 2023 layout); generic: CSV or Parquet "
        "mapped by ingest.generic.",
        {"enum": list(C.INGEST_SOURCES)},
    ),
    "ingest.path": (
        "Data path",
        "Folder of the source files (for movielens: the folder holding u.data, "
        "ratings.dat or ratings.csv). Ignored for synthetic.",
        {},
    ),
    "train.epochs": (
        "Training epochs (at most)",
        "Passes over the training sequences; stops earlier once validation has not improved for train.patience epochs.",
        {"minimum": 1, "maximum": 200},
    ),
    "train.finetune": (
        "Fine-tune mode",
        "How the text encoder is trained: LoRA adapters, all weights, the top layer only, or frozen.",
        {"enum": ["lora", "full", "top_layers", "frozen"]},
    ),
    "train.device": ("Device", "auto uses CUDA when present.", {"enum": ["auto", "cpu", "cuda"]}),
    "tune.n_trials": (
        "Optuna trials",
        "Trials of the hyperparameter search in this run.",
        {"minimum": 1, "maximum": 500},
    ),
    "register.auto_promote": (
        "Auto-promote",
        "Move the champion alias when the challenger passes the gate; off leaves promotion to a person.",
        {},
    ),
}
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}


def field_name(dotted: str) -> str:
    return dotted.replace(".", "__")


def dotted_name(field: str) -> str:
    return field.replace("__", ".")


def form_schema(params: dict) -> dict[str, dict[str, Any]]:
    """{field: {default, type, title, description, ...bounds}}: one typed Param per field."""
    schema = {}
    for dotted, (title, description, extra) in FIELDS.items():
        default, value = P.get_dotted(P.DEFAULTS, dotted), P.get_dotted(params, dotted)
        json_type: str | list[str] = JSON_TYPES[type(default)]
        if json_type == "string" and "enum" not in extra:
            # The form marks a non-null field required and refuses it empty; an empty string is a valid value here.
            json_type, value = ["null", "string"], value or None
        schema[field_name(dotted)] = {
            "default": value,
            "type": json_type,
            "title": title,
            "description": f"{description} (params.yaml: {dotted})",
            **extra,
        }
    return schema


def overrides_from_form(values: dict[str, Any], params: dict) -> list[str]:
    """`section.key=value` for each form field whose value differs from params.yaml."""
    import json

    overrides = []
    for field, value in values.items():
        dotted = dotted_name(field)
        if dotted not in FIELDS:
            continue
        if value is None and isinstance(P.get_dotted(P.DEFAULTS, dotted), str):
            value = ""  # an emptied text field
        if P.get_dotted(params, dotted) != value:
            overrides.append(f"{dotted}={json.dumps(value)}")
    return overrides


# recpipe_manual's operator actions: not params.yaml keys, read by the tasks themselves.
OPERATOR_FIELDS: dict[str, dict[str, Any]] = {
    "skip_search": {
        "default": False,
        "type": "boolean",
        "title": "Skip the search",
        "description": "Reuse the last metrics/tune/best_params.json instead of running Optuna "
        "(the search runs anyway when there is none yet).",
    },
    "data_rev": {
        "default": None,
        "type": ["null", "string"],
        "maxLength": 200,
        "title": "Data version (DVC revision)",
        "description": "Retrain on the data recorded in the dvc.lock at this git revision (a commit of "
        "the recpipe-runs branch, a tag, ...); ingest is skipped. Empty: the current data.",
    },
    "backfill_start": {
        "default": None,
        "type": ["null", "string"],
        "format": "date",
        "title": "Backfill from",
        "description": "First day of a range of increments to ingest in order, one day at a time "
        "(params.yaml: ingest.batch). Empty: no backfill.",
    },
    "backfill_end": {
        "default": None,
        "type": ["null", "string"],
        "format": "date",
        "title": "Backfill to",
        "description": "Last day of the backfill range (inclusive).",
    },
    "ab_share": {
        "default": None,
        "type": ["null", "number"],
        "minimum": 0,
        "maximum": 1,
        "title": "A/B share after the run",
        "description": "Challenger's share of users once this run succeeded (0..1), stored in the "
        "registry's A/B config. Empty: keep the current split.",
    },
}

# recpipe_promote's form; the registry functions check the rest (a forced promotion needs a reason).
PROMOTE_FIELDS: dict[str, dict[str, Any]] = {
    "action": {
        "default": "promote",
        "type": "string",
        "enum": ["promote", "rollback", "set_ab_share"],
        "values_display": {
            "promote": "Promote a version to champion",
            "rollback": "Roll back to the previous champion",
            "set_ab_share": "Set the A/B share of the challenger",
        },
        "title": "Action",
        "description": "What to do in the MLflow registry (every action is audited).",
    },
    "version": {
        "default": None,
        "type": ["null", "integer"],
        "minimum": 1,
        "title": "Model version",
        "description": "The version to promote (promote only); see `recpipe history` or the MLflow UI.",
    },
    "reason": {
        "default": None,
        "type": ["null", "string"],
        "maxLength": 5000,
        "title": "Reason",
        "description": "Why. Required to force a promotion past a failed gate; recorded with every action.",
    },
    "share": {
        "default": None,
        "type": ["null", "number"],
        "minimum": 0,
        "maximum": 1,
        "title": "A/B share",
        "description": "Challenger's share of users, 0..1 (set_ab_share only).",
    },
}

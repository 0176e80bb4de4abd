"""The Airflow trigger form, generated from params.yaml.

Each field is a params.yaml key with a title, help text and JSON-schema bounds; its default
is the current value in params.yaml, its type the type of the key's default. Field names
use `__` for `.` (`train__epochs` is `train.epochs`) because the form's JavaScript treats
dots specially. Submitted values reach the stages as overrides written into params.yaml,
so DVC sees them and re-runs exactly the stages they affect.
"""
from __future__ import annotations

from typing import Any

from pipeline_tasks import params as P

# dotted key -> (title, description, extra JSON-schema keywords)
FIELDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ingest.source": ("Data source", "synthetic: the built-in generator; movielens: MovieLens files at the data path.",
                      {"enum": ["synthetic", "movielens"]}),
    "ingest.path": ("Data path", "Folder of the source files (for movielens: the folder holding u.data, "
                                 "ratings.dat or ratings.csv). Ignored for synthetic.", {}),
    "train.epochs": ("Training epochs", "Passes over the training sequences.", {"minimum": 1, "maximum": 200}),
    "train.finetune": ("Fine-tune mode", "How the text encoder is trained: LoRA adapters, all weights, "
                                         "the top layer only, or frozen.",
                       {"enum": ["lora", "full", "top_layers", "frozen"]}),
    "train.device": ("Device", "auto uses CUDA when present.", {"enum": ["auto", "cpu", "cuda"]}),
    "tune.n_trials": ("Optuna trials", "Trials of the hyperparameter search in this run.",
                      {"minimum": 1, "maximum": 500}),
    "register.auto_promote": ("Auto-promote", "Move the champion alias when the challenger passes the gate; "
                                              "off leaves promotion to a person.", {}),
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
        default = P.get_dotted(P.DEFAULTS, dotted)
        schema[field_name(dotted)] = {"default": P.get_dotted(params, dotted), "type": JSON_TYPES[type(default)],
                                      "title": title, "description": f"{description} (params.yaml: {dotted})",
                                      **extra}
    return schema


def overrides_from_form(values: dict[str, Any], params: dict) -> list[str]:
    """`section.key=value` for each form field whose value differs from params.yaml."""
    import json

    overrides = []
    for field, value in values.items():
        dotted = dotted_name(field)
        if dotted in FIELDS and P.get_dotted(params, dotted) != value:
            overrides.append(f"{dotted}={json.dumps(value)}")
    return overrides

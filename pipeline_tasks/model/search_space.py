"""The search space of the tune stage (`tune.search_space`): checked before any trial trains,
mapped onto Optuna's `trial.suggest_*`, and the run's own values of the searched keys (a new
study's configured trial, model/tuning.py).

An entry: dotted param -> {type: float|int|categorical, low, high, log, step, choices, condition}.
A `condition: {param: value}` entry is searched only when every named param equals the value (or
is one of them, when the value is a list).
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from pipeline_tasks.core import params as P
from pipeline_tasks.core.errors import ParamsError

log = logging.getLogger(__name__)

SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "condition"}


def suggest_params(trial: optuna.trial.BaseTrial, space: dict[str, dict], base: dict) -> dict[str, Any]:
    """Map `tune.search_space` onto `trial.suggest_*`; returns {dotted name: value}.

    Entries are read in order; a `condition: {param: value}` entry is suggested only when
    every named param (suggested earlier in this trial, or else taken from `base` params)
    equals the value (or is one of them, when the value is a list).
    """
    chosen: dict[str, Any] = {}

    def current(key: str) -> Any:
        return chosen[key] if key in chosen else P.get_dotted(base, key)

    for name, spec in space.items():
        check_spec(name, spec)
        if not all(matches(current(key), want) for key, want in spec.get("condition", {}).items()):
            continue
        kind = spec["type"]
        if kind == "float":
            chosen[name] = trial.suggest_float(
                name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step")
            )
        elif kind == "int":
            chosen[name] = trial.suggest_int(
                name, spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1)
            )
        else:
            chosen[name] = trial.suggest_categorical(name, spec["choices"])
    return chosen


def matches(value: Any, want: Any) -> bool:
    return value in want if isinstance(want, list) else value == want


def check_spec(name: str, spec: Any) -> None:
    """A misspelt search-space entry fails before any trial trains."""
    where = f"tune.search_space['{name}']"
    if not isinstance(spec, dict):
        raise ParamsError(f"{where} must be a mapping like {{type: float, low: 0.001, high: 0.01}}, got {spec!r}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ParamsError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    kind = spec.get("type")
    if kind in ("float", "int"):
        if "low" not in spec or "high" not in spec:
            raise ParamsError(f"{where} (type {kind}) needs `low` and `high`")
    elif kind == "categorical":
        if not spec.get("choices"):
            raise ParamsError(f"{where} (type categorical) needs a non-empty `choices` list")
    else:
        raise ParamsError(f"{where} has type {kind!r}; use float, int or categorical")
    if not isinstance(spec.get("condition", {}), dict):
        raise ParamsError(f"{where}: `condition` must be a mapping {{param: value}}, got {spec['condition']!r}")


def check_space(params: dict) -> dict[str, dict]:
    """Every searched key must be a real parameter, and every entry well formed."""
    space = params["tune"]["search_space"]
    if not space:
        raise ParamsError(
            "tune.search_space is empty: add at least one entry, e.g. "
            "'train.lr: {type: float, low: 0.0005, high: 0.005, log: true}'"
        )
    for name, spec in space.items():
        P.get_dotted(params, name)  # raises ParamsError naming an unknown key
        check_spec(name, spec)
    if params["tune"]["every_n_nights"] < 1:
        raise ParamsError(
            f"tune.every_n_nights={params['tune']['every_n_nights']} must be at least 1 "
            "(1 = search on every run, 7 = on the first night and then weekly)"
        )
    return space


def fits(spec: dict, value: Any) -> bool:
    if "choices" in spec:
        return value in spec["choices"]
    return spec["low"] <= value <= spec["high"]


def configured_values(space: dict[str, dict], params: dict) -> dict[str, Any] | None:
    """{searched key: the run's value} for the keys active under those values; None if one lies outside."""
    values = {}
    for name, spec in space.items():
        if not all(matches(P.get_dotted(params, key), want) for key, want in spec.get("condition", {}).items()):
            continue
        value = P.get_dotted(params, name)
        if not fits(spec, value):
            log.info("tune: configured %s=%r is outside the search space: not queued as a trial", name, value)
            return None
        values[name] = value
    return values

"""params.yaml is the one source of every number: typed, complete, and strict about keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_tasks.core import params as P
from pipeline_tasks.core.errors import ParamsError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_params_yaml_holds_every_knob_with_the_default_types():
    from_file = P.load(PROJECT_ROOT / "params.yaml")
    assert set(P.flatten(from_file)) == set(P.flatten(P.DEFAULTS))


def test_unknown_key_is_rejected_with_its_name_and_the_known_keys(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epohcs: 3\n")
    with pytest.raises(ParamsError, match=r"unknown key 'train.epohcs'.*epochs"):
        P.load(bad)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=abc", "must be an integer"),
        ("train.use_text=maybe", "must be true or false"),
        ("train.lr=fast", "must be a number"),
        ("nosuchsection.x=1", "unknown key 'nosuchsection'"),
        ("train.epochs", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ParamsError, match=message):
        P.load(None, [override])


def test_overrides_are_typed_and_nested():
    params = P.load(
        None, ["train.epochs=3", "train.lr=1e-3", "baselines.models=[Pop, EASE]", "ingest.synthetic.dirt.bot_users=2"]
    )
    assert params["train"]["epochs"] == 3
    assert params["train"]["lr"] == pytest.approx(0.001)
    assert params["baselines"]["models"] == ["Pop", "EASE"]
    assert params["ingest"]["synthetic"]["dirt"]["bot_users"] == 2
    # The defaults themselves are never mutated by a load.
    assert (
        P.defaults()["ingest"]["synthetic"]["dirt"]["bot_users"]
        == P.DEFAULTS["ingest"]["synthetic"]["dirt"]["bot_users"]
    )


def test_search_space_is_open_for_any_dotted_param():
    params = P.load(None, ['tune.search_space={"train.dim": {"type": "categorical", "choices": [32, 64]}}'])
    assert params["tune"]["search_space"] == {"train.dim": {"type": "categorical", "choices": [32, 64]}}


def test_stage_cli_rejects_an_unknown_key_without_a_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline_tasks.split",
            "--root",
            str(tmp_path),
            "--no-mlflow",
            "--set",
            "split.min_user_interactionz=3",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "unknown key 'split.min_user_interactionz'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_date_like_override_is_text_where_text_is_expected():
    # YAML reads 2026-07-01 as a date; a batch id (a string knob) must still accept it.
    params = P.load(overrides=["ingest.batch=2026-07-01"])
    assert params["ingest"]["batch"] == "2026-07-01"


@pytest.mark.parametrize("guards", [["history_length", "cold_start", "popularity"], ["user.gender"], []])
def test_known_guarded_slices_load(guards):
    assert P.load(None, [f"register.guarded_slices={guards}"])["register"]["guarded_slices"] == guards


@pytest.mark.parametrize("bad", ["cold_strat", "user.", "gender", 3])
def test_a_misspelled_guarded_slice_is_refused_with_the_valid_names(bad):
    with pytest.raises(ParamsError, match=rf"guarded_slices: unknown slice {bad!r}; valid: history_length, cold_start"):
        P.load(None, [f"register.guarded_slices=[popularity, {bad}]"])


def test_the_old_latency_budget_name_still_loads_as_the_median_budget(tmp_path, caplog):
    """register.max_latency_p99_ms (before issue 18) is read as register.max_latency_p50_ms, with a warning:
    an old params.yaml or a run's params.run.yaml keeps loading; both names at once are refused."""
    old = tmp_path / "params.yaml"
    old.write_text("register:\n  max_latency_p99_ms: 75.0\n")
    with caplog.at_level("WARNING", logger="pipeline_tasks.core.params"):
        params = P.load(old)
    assert params["register"]["max_latency_p50_ms"] == 75.0
    assert "max_latency_p99_ms" not in params["register"]
    assert "old name of 'register.max_latency_p50_ms'" in caplog.text
    assert P.load(None, ["register.max_latency_p99_ms=100000"])["register"]["max_latency_p50_ms"] == 100000.0
    both = tmp_path / "both.yaml"
    both.write_text("register:\n  max_latency_p99_ms: 75.0\n  max_latency_p50_ms: 20.0\n")
    with pytest.raises(ParamsError, match=r"both set.*keep only 'register.max_latency_p50_ms'"):
        P.load(both)

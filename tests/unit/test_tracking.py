"""The MLflow store is chosen by params unless the user sets MLFLOW_TRACKING_URI."""

from __future__ import annotations

from pipeline_tasks.core import params as P
from pipeline_tasks.core import tracking


def params_with_store(path) -> dict:
    p = P.defaults()
    p["mlflow"]["tracking_uri"] = f"sqlite:///{path}"
    return p


def test_a_second_store_in_one_process_is_not_mistaken_for_the_users_override(tmp_path, monkeypatch):
    # mlflow.set_tracking_uri() writes MLFLOW_TRACKING_URI into os.environ: our own echo must not win.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = params_with_store(tmp_path / "a.db"), params_with_store(tmp_path / "b.db")
    tracking.setup(first, tmp_path)
    assert tracking.tracking_uri(second, tmp_path).endswith("/b.db")


def test_the_users_environment_variable_wins_and_keeps_winning(tmp_path, monkeypatch):
    user = f"sqlite:///{tmp_path / 'user.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", user)
    tracking.setup(params_with_store(tmp_path / "a.db"), tmp_path)
    assert tracking.tracking_uri(params_with_store(tmp_path / "b.db"), tmp_path) == user

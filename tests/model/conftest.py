"""Model-test fixtures: a tiny split on disk (the tiny encoder is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io

N_TOPICS = 4
ITEMS_PER_TOPIC = 6
TOPIC_WORDS = ["jazz piano", "space rocket", "garden flower", "football goal"]


def item_table() -> pd.DataFrame:
    """N_TOPICS x ITEMS_PER_TOPIC items; the text names the topic, so text predicts the next item's topic."""
    rows = []
    for topic, words in enumerate(TOPIC_WORDS):
        for j in range(ITEMS_PER_TOPIC):
            rows.append({C.ITEM_ID: f"i{topic}{j}", C.TITLE: f"{words} {j}", C.TEXT: f"all about {words}"})
    return pd.DataFrame(rows)


def topic_histories(n_users: int, length: int, seed: int = 0) -> dict[str, list[str]]:
    """Each user stays within one topic: the next item's text always shares the user's topic words."""
    rng = np.random.default_rng(seed)
    return {
        f"u{u:03d}": [f"i{u % N_TOPICS}{j}" for j in rng.integers(0, ITEMS_PER_TOPIC, size=length)]
        for u in range(n_users)
    }


def write_split(root: Path, n_users: int = 24, length: int = 8) -> Path:
    """data/split/{train,valid,test,items,users}: leave-one-out by time of topic_histories."""
    start = pd.Timestamp("2026-01-01", tz="UTC")
    parts: dict[str, list[dict]] = {name: [] for name in C.SPLITS}
    for user, items in topic_histories(n_users, length).items():
        for t, item in enumerate(items):
            name = "test" if t == length - 1 else "valid" if t == length - 2 else "train"
            parts[name].append(
                {
                    C.USER_ID: user,
                    C.ITEM_ID: item,
                    C.RATING: 4.0,
                    C.TIMESTAMP: start + pd.Timedelta(hours=t),
                    C.EVENT: "rating",
                }
            )
    base = root / C.DATA_SPLIT
    for name, rows in parts.items():
        frame = pd.DataFrame(rows)
        frame[C.TIMESTAMP] = frame[C.TIMESTAMP].astype("datetime64[us, UTC]")
        io.write_table(frame, base / name)
    io.write_table(item_table(), base / "items")
    io.write_table(pd.DataFrame({C.USER_ID: sorted({r[C.USER_ID] for r in parts["train"]})}), base / "users")
    return root


@pytest.fixture
def tiny_split(tmp_path) -> Path:
    return write_split(tmp_path / "project")


@pytest.fixture
def tiny_params(params, tiny_encoder_dir, monkeypatch) -> dict:
    """Train params sized for the tiny encoder and split: a few seconds per fit.

    Each test's MLflow store is its own (sqlite under its root): an earlier test's
    mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would win, and a champion left in
    that store would make the train stage warm-start from it."""
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    t = params["train"]
    t.update(
        encoder=str(tiny_encoder_dir),
        finetune="lora",  # these tests exercise the encoder-training path; the frozen one sets it
        adaptor_experts=0,
        dim=16,
        user_layers=1,
        user_heads=2,
        max_seq_len=8,
        max_text_len=12,
        epochs=2,
        batch_size=8,
        n_negatives=8,
        text_grad_items=4,
        checkpoint_every=0,
        device="cpu",
        dropout=0.0,
        lr=0.01,
        encoder_lr=0.001,
    )
    return params


@pytest.fixture
def tiny_items() -> pd.DataFrame:
    return item_table()


@pytest.fixture
def split_writer():
    """write_split, for tests that need more than one project root."""
    return write_split

"""Leave-one-out by time on a hand-made table, and the index view (dataset.load_split) of its output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_tasks import split
from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core.errors import ParamsError, PipelineError
from pipeline_tasks.data import splitting
from pipeline_tasks.data.dataset import binary_matrix, eval_task, load_split


def ts(day: int) -> pd.Timestamp:
    return pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=day)


# (user, item, day). u1: a tie on day 3 between items b and c (broken by item id: c is later);
# u2: 2 interactions (< min 3) -> all train; u3: exactly 3; u4: items z and cold seen only in valid/test.
ROWS = [
    ("u1", "a", 1),
    ("u1", "c", 3),
    ("u1", "b", 3),
    ("u1", "d", 0),
    ("u1", "e", 2),
    ("u2", "a", 5),
    ("u2", "b", 6),
    ("u3", "b", 9),
    ("u3", "a", 7),
    ("u3", "d", 8),
    ("u4", "a", 1),
    ("u4", "b", 2),
    ("u4", "z", 4),
    ("u4", "cold", 5),
]


def write_clean(root: Path, rows=ROWS, items=None) -> None:
    df = pd.DataFrame(rows, columns=[C.USER_ID, C.ITEM_ID, "day"])
    inter = pd.DataFrame(
        {
            C.USER_ID: df[C.USER_ID],
            C.ITEM_ID: df[C.ITEM_ID],
            C.RATING: 4.0,
            C.TIMESTAMP: df["day"].map(ts).astype("datetime64[us, UTC]"),
            C.EVENT: "rating",
        }
    )
    items = items if items is not None else sorted(set(df[C.ITEM_ID]) | {"unused"})
    io.write_table(inter, root / C.DATA_CLEAN / "interactions")
    io.write_table(
        pd.DataFrame({C.ITEM_ID: items, C.TITLE: items, C.TEXT: [f"text of {i}" for i in items]}),
        root / C.DATA_CLEAN / "items",
    )
    io.write_table(
        pd.DataFrame({C.USER_ID: ["u1", "u2", "u3", "u4"], "gender": ["F", "M", "F", None]}),
        root / C.DATA_CLEAN / "users",
    )


@pytest.fixture
def split_root(tmp_path: Path, params: dict) -> tuple[Path, dict]:
    write_clean(tmp_path)
    metrics = split.run(params, tmp_path)
    return tmp_path, metrics


def read(root: Path, name: str) -> pd.DataFrame:
    return io.read_table(root / C.DATA_SPLIT / name)


def pairs(df: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df[C.USER_ID], df[C.ITEM_ID]))


def test_last_interaction_is_test_and_the_one_before_is_valid(split_root):
    root, _ = split_root
    assert pairs(read(root, "test")) == {("u1", "c"), ("u3", "b"), ("u4", "cold")}
    assert pairs(read(root, "valid")) == {("u1", "b"), ("u3", "d"), ("u4", "z")}


def test_every_user_test_row_is_their_latest_interaction(split_root):
    root, _ = split_root
    everything = pd.concat([read(root, s) for s in C.SPLITS])
    test = read(root, "test").set_index(C.USER_ID)
    for user, rows in everything.groupby(C.USER_ID):
        if user in test.index:
            assert test.loc[user, C.TIMESTAMP] == rows[C.TIMESTAMP].max()


def test_short_users_go_entirely_to_train(split_root):
    root, _ = split_root
    train = read(root, "train")
    assert pairs(train[train[C.USER_ID] == "u2"]) == {("u2", "a"), ("u2", "b")}
    assert "u2" not in set(read(root, "valid")[C.USER_ID]) | set(read(root, "test")[C.USER_ID])


def test_no_row_is_lost_or_duplicated(split_root):
    root, _ = split_root
    sizes = [len(read(root, s)) for s in C.SPLITS]
    assert sum(sizes) == len(ROWS)
    assert len(pairs(pd.concat([read(root, s) for s in C.SPLITS]))) == len(ROWS)


def test_metrics_count_rows_and_cold_start_targets(split_root):
    _, metrics = split_root
    # items: a b c d e z cold + unused; cold targets: "cold" and "c" (u1's only c is its test row)
    assert metrics == {
        "users": 4,
        "items": 8,
        "train_rows": 8,
        "valid_rows": 3,
        "test_rows": 3,
        "cold_start_test_items": 2,
        "cold_start_test_rows": 2,
        "cold_start_items": 0,
        "withheld_rows": 0,
    }


def test_min_user_interactions_is_a_param(tmp_path, params):
    write_clean(tmp_path)
    params["split"]["min_user_interactions"] = 4
    metrics = split.run(params, tmp_path)
    assert set(read(tmp_path, "test")[C.USER_ID]) == {"u1", "u4"}  # u3's 3 interactions are now too few
    assert metrics["test_rows"] == 2


def test_interactions_with_unknown_items_are_refused(tmp_path, params):
    write_clean(tmp_path, items=["a", "b"])
    with pytest.raises(PipelineError, match="re-run the clean stage"):
        split.run(params, tmp_path)


def test_load_split_indexes_items_in_sorted_order_and_orders_histories_by_time(split_root):
    root, _ = split_root
    data = load_split(root)
    assert data.item_ids == sorted(data.item_ids) and "unused" in data.item_ids
    assert data.user_ids == ["u1", "u2", "u3", "u4"]
    u1 = data.user_index["u1"]
    assert [data.item_ids[i] for i in data.histories(("train", "valid", "test"))[u1]] == ["d", "a", "e", "b", "c"]
    assert data.history_ids(("train",), [u1]) == [["d", "a", "e"]]
    assert data.item_texts[data.item_index["cold"]] == "text of cold"
    assert data.users.loc["u2", "gender"] == "M"


def test_eval_task_excludes_the_right_history(split_root):
    root, _ = split_root
    data = load_split(root)
    test = eval_task(data, "test")
    u1 = int(np.flatnonzero(test.users == data.user_index["u1"])[0])
    assert data.item_ids[test.targets[u1]] == "c"
    assert [data.item_ids[i] for i in test.seen[u1]] == ["d", "a", "e", "b"]
    valid = eval_task(data, "valid")
    assert [data.item_ids[i] for i in valid.seen[u1]] == ["d", "a", "e"]


def test_binary_matrix_counts_repeats_once():
    from pipeline_tasks.data.dataset import Interactions

    inter = Interactions(np.array([0, 0, 1]), np.array([2, 2, 0]), np.zeros(3, "datetime64[us]"))
    assert binary_matrix(inter, 2, 3).toarray().tolist() == [[0, 0, 1], [1, 0, 0]]


def test_same_second_ties_follow_the_source_order(tmp_path: Path, params: dict):
    """Ingest records each row's source position: of two events in the same second, the one later in
    the source is the later event (the item id only decides when no position was recorded)."""
    write_clean(tmp_path, rows=[("u1", "a", 1), ("u1", "c", 2), ("u1", "b", 3), ("u1", "z", 3)])
    inter = io.read_table(tmp_path / C.DATA_CLEAN / "interactions")
    inter[C.SOURCE_ROW] = [0, 1, 3, 2]  # 'z' came before 'b' in the source, with the same second
    io.write_table(inter, tmp_path / C.DATA_CLEAN / "interactions")
    split.run(params, tmp_path)
    assert pairs(read(tmp_path, "test")) == {("u1", "b")}
    assert pairs(read(tmp_path, "valid")) == {("u1", "z")}
    assert list(read(tmp_path, "train")[C.ITEM_ID]) == ["a", "c"]


# --- the cold-start protocol (split.cold_start_share) ------------------------------------------


def many_users(n_users: int = 60, n_items: int = 40, per_user: int = 8, seed: int = 3) -> list[tuple[str, str, int]]:
    """Random distinct histories: many test targets, most items also seen in train and valid."""
    rng = np.random.default_rng(seed)
    return [
        (f"u{u:02d}", f"i{j:02d}", day)
        for u in range(n_users)
        for day, j in enumerate(rng.choice(n_items, size=per_user, replace=False))
    ]


@pytest.fixture
def cold_root(tmp_path: Path, params: dict) -> tuple[Path, dict, dict]:
    write_clean(tmp_path, rows=many_users())
    params["split"]["cold_start_share"] = 0.25
    return tmp_path, params, split.run(params, tmp_path)


def row_keys(df: pd.DataFrame) -> list[tuple]:
    return sorted(zip(df[C.USER_ID], df[C.ITEM_ID], df[C.TIMESTAMP]))


def test_cold_start_parts_add_up_to_the_clean_interactions(cold_root):
    root, _, metrics = cold_root
    clean = io.read_table(root / C.DATA_CLEAN / "interactions")
    parts = [read(root, name) for name in (*C.SPLITS, split.WITHHELD)]
    assert row_keys(pd.concat(parts)) == row_keys(clean)  # every row once: nothing lost, nothing doubled
    assert list(parts[-1].columns) == list(clean.columns)
    assert metrics["withheld_rows"] == len(parts[-1]) > 0
    assert sum(len(p) for p in parts[:3]) + metrics["withheld_rows"] == len(clean)


def test_chosen_items_are_cold_test_targets_and_reach_the_share(cold_root):
    root, params, metrics = cold_root
    train, valid, test, withheld = (read(root, name) for name in (*C.SPLITS, split.WITHHELD))
    chosen = set(withheld[C.ITEM_ID])
    assert len(chosen) == metrics["cold_start_items"] > 1
    assert not chosen & (set(train[C.ITEM_ID]) | set(valid[C.ITEM_ID]))  # no model can learn them
    cold_rows = test[C.ITEM_ID].isin(chosen)
    assert metrics["cold_start_test_rows"] == int(cold_rows.sum())  # (the toy data has no other cold target)
    # Items are added until the share is reached, and not one more: without the last one it was short.
    share = params["split"]["cold_start_share"]
    assert cold_rows.sum() >= share * len(test)
    last = splitting.choose_cold_items(test, share, params["seed"])[-1]
    assert (cold_rows & (test[C.ITEM_ID] != last)).sum() < share * len(test)
    assert set(read(root, "items")[C.ITEM_ID]) >= chosen  # still candidates: every model ranks them


def test_cold_items_depend_on_the_seed_only(tmp_path, params):
    test = pd.DataFrame({C.ITEM_ID: [f"i{j % 17}" for j in range(100)]})
    first = splitting.choose_cold_items(test, 0.2, seed=1)
    assert splitting.choose_cold_items(test.sample(frac=1.0, random_state=5), 0.2, seed=1) == first  # not row order
    assert splitting.choose_cold_items(test, 0.2, seed=2) != first
    assert splitting.choose_cold_items(test, 0.0, seed=1) == []


def test_users_whose_valid_item_was_withheld_still_load_and_validate(cold_root):
    root, _, _ = cold_root
    withheld = read(root, split.WITHHELD)
    data = load_split(root)
    valid, test = eval_task(data, "valid"), eval_task(data, "test")
    lost_valid = set(withheld[C.USER_ID]) - set(read(root, "valid")[C.USER_ID])
    assert lost_valid  # the case under test exists: test users without a valid row
    assert len(test) == 60 and len(valid) == 60 - len(lost_valid)
    assert {data.user_ids[u] for u in test.users} >= lost_valid
    chosen = {data.item_index[i] for i in set(withheld[C.ITEM_ID])}
    assert not chosen & set(np.concatenate(test.seen))  # a withheld interaction is nobody's history


def test_cold_start_share_outside_its_range_is_refused(tmp_path, params):
    write_clean(tmp_path)
    for bad in (1.0, -0.1):
        params["split"]["cold_start_share"] = bad
        with pytest.raises(ParamsError, match=r"split.cold_start_share must be in \[0, 1\)"):
            split.run(params, tmp_path)

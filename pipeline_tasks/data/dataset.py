"""The split tables as index arrays: what baselines, train and evaluate all read.

    split = load_split(root)
    split.item_ids[i]               # item index -> id (sorted ids, the candidate set)
    split.train.users, .items       # interactions as index arrays, in (user, time) order
    split.histories(("train", "valid"))   # per-user item indices ordered by time
    binary_matrix(split.train, split.n_users, split.n_items)   # scipy CSR, 1 = interacted

Item index i is the position of the id in the sorted item list of data/split/items,
and user index u the position in the sorted ids of every user with an interaction;
both orders are deterministic, so two stages reading the same split agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core.errors import PipelineError


@dataclass(frozen=True)
class Interactions:
    """One split as parallel arrays (user index, item index, timestamp), sorted by user then time
    (ties in the split table's row order)."""

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class SplitData:
    item_ids: list[str]
    item_index: dict[str, int]
    user_ids: list[str]
    user_index: dict[str, int]
    train: Interactions
    valid: Interactions
    test: Interactions
    item_texts: list[str]  # in item index order
    items: pd.DataFrame  # data/split/items, rows in item index order
    users: pd.DataFrame  # attributes, one row per user index (NaN where the users table lacks one)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def part(self, name: str) -> Interactions:
        if name not in C.SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {C.SPLITS}")
        return getattr(self, name)

    def combined(self, names: Sequence[str]) -> Interactions:
        return concat([self.part(n) for n in names])

    def histories(self, names: Sequence[str] = ("train",)) -> list[np.ndarray]:
        """Per user index: item indices of the named splits, oldest first."""
        return user_histories(self.combined(names), self.n_users)

    def history_ids(self, names: Sequence[str], users: Iterable[int]) -> list[list[str]]:
        """The same histories as item id strings, for the given user indices."""
        per_user = self.histories(names)
        return [[self.item_ids[i] for i in per_user[u]] for u in users]


def concat(parts: Sequence[Interactions]) -> Interactions:
    """Concatenate splits and re-sort by (user, time), the order histories rely on.

    The sort is stable, so interactions with equal timestamps keep the order of `parts`
    (train before valid before test), as the split decided them; re-breaking such ties by
    item index would put a valid item before train items of the same second.
    """
    users = np.concatenate([p.users for p in parts])
    items = np.concatenate([p.items for p in parts])
    stamps = np.concatenate([p.timestamps for p in parts])
    order = np.lexsort((stamps, users))  # lexsort is stable
    return Interactions(users[order], items[order], stamps[order])


def index_interactions(
    df: pd.DataFrame, user_index: dict[str, int], item_index: dict[str, int], table: str = "interactions"
) -> Interactions:
    """Map id columns to indices; an id outside the maps is a broken split, not a row to drop."""
    users = df[C.USER_ID].astype(str).map(user_index)
    items = df[C.ITEM_ID].astype(str).map(item_index)
    unknown = int(items.isna().sum())
    if unknown:
        raise PipelineError(
            f"{unknown} rows of {table} name items missing from the item catalogue: "
            "re-run the clean and split stages so every interaction's item is in items"
        )
    if users.isna().any():
        raise PipelineError(f"{table} names users missing from the user index: re-run the split stage")
    if C.TIMESTAMP in df:
        stamps = df[C.TIMESTAMP].to_numpy(dtype="datetime64[us]")
    else:
        stamps = np.zeros(len(df), "datetime64[us]")
    users_arr = users.to_numpy(dtype=np.int64)
    items_arr = items.to_numpy(dtype=np.int64)
    # Stable by (user, time): ties keep the split table's row order, i.e. the split stage's
    # tie-break, the one place that decides which of two same-second interactions came last.
    order = np.lexsort((stamps, users_arr))
    return Interactions(users_arr[order], items_arr[order], stamps[order])


def user_histories(inter: Interactions, n_users: int) -> list[np.ndarray]:
    """Split the (user-sorted) item array into one array per user index."""
    bounds = np.searchsorted(inter.users, np.arange(n_users + 1))
    return [inter.items[bounds[u] : bounds[u + 1]] for u in range(n_users)]


def binary_matrix(inter: Interactions, n_users: int, n_items: int) -> sp.csr_matrix:
    """Implicit feedback: 1 where a user interacted with an item (repeats count once)."""
    data = np.ones(len(inter), dtype=np.float32)
    matrix = sp.csr_matrix((data, (inter.users, inter.items)), shape=(n_users, n_items))
    matrix.data[:] = 1.0  # duplicates were summed by the constructor
    return matrix


def read_split_tables(root: Path) -> dict[str, pd.DataFrame]:
    base = Path(root) / C.DATA_SPLIT
    return {name: io.read_table(base / name) for name in (*C.SPLITS, "items", "users")}


def load_split(root: str | Path) -> SplitData:
    """Read data/split and index it (see the module docstring for the index orders)."""
    tables = read_split_tables(Path(root))
    items = tables["items"].astype({C.ITEM_ID: str}).drop_duplicates(C.ITEM_ID)
    items = items.sort_values(C.ITEM_ID, kind="stable").reset_index(drop=True)
    item_ids = items[C.ITEM_ID].astype(str).tolist()
    item_index = {item: i for i, item in enumerate(item_ids)}
    user_ids = sorted(set().union(*(tables[s][C.USER_ID].astype(str) for s in C.SPLITS)))
    user_index = {user: u for u, user in enumerate(user_ids)}
    parts = {s: index_interactions(tables[s], user_index, item_index, table=f"data/split/{s}") for s in C.SPLITS}
    texts = items[C.TEXT].fillna("").astype(str).tolist() if C.TEXT in items else [""] * len(items)
    users = tables["users"].astype({C.USER_ID: str}).drop_duplicates(C.USER_ID).set_index(C.USER_ID).reindex(user_ids)
    return SplitData(
        item_ids=item_ids,
        item_index=item_index,
        user_ids=user_ids,
        user_index=user_index,
        train=parts["train"],
        valid=parts["valid"],
        test=parts["test"],
        item_texts=texts,
        items=items,
        users=users,
    )


# --- Evaluation tasks: who is ranked, against which target, with which items excluded ---


@dataclass(frozen=True)
class EvalTask:
    """Leave-one-out ranking task for one held-out split ('valid' or 'test')."""

    target_split: str
    history_splits: tuple[str, ...]  # what counts as the user's past (and is excluded from ranking)
    users: np.ndarray  # user indices with a held-out item, ascending
    targets: np.ndarray  # their held-out item index
    seen: list[np.ndarray]  # per task user: history item indices, oldest first

    def __len__(self) -> int:
        return len(self.users)


HISTORY_OF = {"valid": ("train",), "test": ("train", "valid")}


def eval_task(split: SplitData, target_split: str) -> EvalTask:
    """Valid: history = train. Test: history = train + valid (what a model has seen by then)."""
    if target_split not in HISTORY_OF:
        raise ValueError(f"target_split must be one of {sorted(HISTORY_OF)}, got {target_split!r}")
    held_out = split.part(target_split)
    assert len(np.unique(held_out.users)) == len(held_out), "leave-one-out holds one item per user"
    history = split.histories(HISTORY_OF[target_split])
    return EvalTask(
        target_split=target_split,
        history_splits=HISTORY_OF[target_split],
        users=held_out.users,
        targets=held_out.items,
        seen=[history[u] for u in held_out.users],
    )


def rank_in_batches(
    score_users: Callable[[np.ndarray], np.ndarray], task: EvalTask, k: int, batch_size: int, desc: str = "ranking"
) -> np.ndarray:
    """(len(task), k) item indices, best first, seen items excluded.

    score_users(user_indices) -> (len(user_indices), n_items) scores in item index order.
    """
    from tqdm.auto import tqdm

    from pipeline_tasks.core.metrics import top_k

    blocks = []
    starts = range(0, len(task), batch_size)
    for start in tqdm(starts, desc=desc, disable=len(starts) < 2, leave=False):
        rows = slice(start, start + batch_size)
        scores = score_users(task.users[rows])
        blocks.append(top_k(scores, task.seen[rows], k))
    return np.concatenate(blocks) if blocks else np.zeros((0, k), dtype=np.int64)


def ranking_frame(split: SplitData, task: EvalTask, ranked: np.ndarray) -> pd.DataFrame:
    """The top-K table of the contract: user_id, target_item_id, item_ids (ranked id strings)."""
    ids = np.asarray(split.item_ids, dtype=object)
    return pd.DataFrame(
        {
            C.USER_ID: [split.user_ids[u] for u in task.users],
            C.TARGET_ITEM_ID: [split.item_ids[i] for i in task.targets],
            C.ITEM_IDS: [list(ids[row]) for row in ranked],
        }
    )


def ranked_from_frame(split: SplitData, task: EvalTask, frame: pd.DataFrame, k: int, source: str) -> np.ndarray:
    """Read a top-K table back into (len(task), k) item indices aligned with the task's users."""
    if C.USER_ID not in frame or C.ITEM_IDS not in frame:
        raise PipelineError(f"{source} lacks the columns {C.USER_ID}, {C.ITEM_IDS}: re-run the stage that wrote it")
    by_user = frame.astype({C.USER_ID: str}).drop_duplicates(C.USER_ID).set_index(C.USER_ID)
    wanted = [split.user_ids[u] for u in task.users]
    missing = [u for u in wanted if u not in by_user.index]
    if missing:
        raise PipelineError(
            f"{source} has no ranking for {len(missing)} test users (e.g. {missing[:3]}): "
            "it was made from another split; re-run the stage that wrote it"
        )
    lists = by_user.loc[wanted, C.ITEM_IDS].tolist()
    short = sum(len(items) < k for items in lists)
    if short:
        raise PipelineError(
            f"{source} holds {short} rankings shorter than {k}: re-run the stage that wrote it "
            "with the current evaluate.ks"
        )
    try:
        ranked = np.array([[split.item_index[str(i)] for i in items[:k]] for items in lists], dtype=np.int64)
    except KeyError as err:
        raise PipelineError(
            f"{source} ranks item {err} which is not in data/split/items: re-run the stage that wrote it"
        ) from None
    return ranked.reshape(len(wanted), k)


def write_ranking(frame: pd.DataFrame, path: Path) -> None:
    """One Parquet file per model (the contract names files, not directories), replaced atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)


def read_ranking(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"missing ranking {path}: run the stage that writes it first (e.g. `dvc repro baselines`)")
    return pd.read_parquet(path)

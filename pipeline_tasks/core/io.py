"""Reading and writing tables and JSON, atomically.

Tables are Parquet directories. A write goes to a temporary sibling first and is
swapped in only when complete, so a failed run leaves the previous output intact.
A killed writer cannot clean up: its siblings (`.<name>.tmp-<pid>-<id>`) are removed by the
next atomic write to the same target once that pid is no longer running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline_tasks.core.errors import PipelineError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(final)
    tmp = sibling(final, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = sibling(final, "old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def sibling(final: Path, kind: str) -> Path:
    """A hidden sibling of `final` that names its writer's pid, so a later writer can tell a dead one's leftovers."""
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_siblings(final: Path) -> None:
    """Remove the temp folders of writers of `final` that were killed (never those of a running writer).

    An `.old-` sibling is removed only while `final` exists: a writer killed between its two renames
    leaves the previous output there and nowhere else. Siblings named before pids were recorded
    (`.<name>.tmp-<id>`) are left alone: nothing tells whose they are.
    """
    pattern = re.compile(rf"\.{re.escape(final.name)}\.(tmp|old)-(\d+)-[0-9a-f]{{8}}")
    for path in final.parent.iterdir():
        found = pattern.fullmatch(path.name)
        if not found or not path.is_dir() or pid_running(int(found[2])):
            continue
        if found[1] == "old" and not final.exists():
            continue
        size = dir_size_mb(path)
        shutil.rmtree(path, ignore_errors=True)
        log.warning("removed %s (%.1f MB): left by writer pid %s, which is no longer running", path, size, found[2])


def pid_running(pid: int) -> bool:
    """Is a process with this pid running on this machine? When unsure, yes (keeping a folder is harmless)."""
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a pid we cannot ask about)
    return True


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write one pandas table as a Parquet directory (one file), atomically."""
    with atomic_dir(path) as tmp:
        df.to_parquet(tmp / "part-0.parquet", index=False)


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"missing table {path}: run the stage that writes it first (e.g. `dvc repro`)")
    return pd.read_parquet(path, columns=columns)


def write_json(data: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"missing {path}: run the stage that writes it first (e.g. `dvc repro`)")
    return json.loads(path.read_text(encoding="utf-8"))


def to_jsonable(value: Any) -> Any:
    """numpy scalars and NaN to plain JSON values (NaN becomes null)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dir_size_mb(path: str | Path) -> float:
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6

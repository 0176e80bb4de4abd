"""core/io.py atomic writes: a killed writer's temp folders are cleaned up, a running writer's are not."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from pipeline_tasks.core import io


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leftover(parent: Path, name: str) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"x" * 2_000_000)
    return folder


def test_the_next_write_removes_a_killed_writers_temp_folder_but_not_a_running_ones(tmp_path: Path, caplog):
    target = tmp_path / "data" / "clean"
    target.mkdir(parents=True)
    stale = leftover(target.parent, f".clean.tmp-{dead_pid()}-0badc0de")
    live = leftover(target.parent, f".clean.tmp-{os.getpid()}-0000beef")
    unknown_owner = leftover(target.parent, ".clean.tmp-1234abcd")  # named before pids were recorded
    other_target = leftover(target.parent, f".cleaner.tmp-{dead_pid()}-0badc0de")

    with caplog.at_level(logging.WARNING, logger="pipeline_tasks.core.io"), io.atomic_dir(target) as tmp:
        (tmp / "part-0.parquet").write_bytes(b"new")

    assert not stale.exists()
    assert live.exists() and unknown_owner.exists() and other_target.exists()
    assert (target / "part-0.parquet").read_bytes() == b"new"
    assert f"removed {stale} (2.0 MB)" in caplog.text and "no longer running" in caplog.text


def test_a_previous_output_left_aside_is_kept_while_the_target_is_missing(tmp_path: Path):
    target = tmp_path / "model"
    aside = leftover(tmp_path, f".model.old-{dead_pid()}-0badc0de")  # killed between its two renames

    io.remove_stale_siblings(target)

    assert aside.exists()

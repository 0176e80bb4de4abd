"""Every finished run versioned: its data and models pushed to the DVC remote, its dvc.lock kept.

Where a run's dvc.lock is kept (both, so losing one store does not lose the lineage):
- a commit on the branch `airflow.runs_branch` (default `recpipe-runs`), made with git plumbing
  (a temporary index, `commit-tree`, `update-ref`): the user's working tree, index and current
  branch are never touched. Its tree is HEAD's tree with this run's dvc.yaml, dvc.lock and
  params.yaml; its parents are the branch's previous tip and HEAD (the code that ran). So
  `git checkout <commit> && dvc pull` restores that run's dataset and model.
- the artifact `dvc/dvc.lock` of the run's MLflow parent run, tagged `recpipe.runs_commit`.

`restore_data_version(root, rev)` goes the other way: it puts back the raw data that the
dvc.lock at a git revision records, for a retrain on an older data version. The revision comes
from a person (the trigger form), so `verify_revision` checks it before git sees it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from pipeline_tasks.core import constants as C
from pipeline_tasks.core.errors import PipelineError

LOCK_FILE = "dvc.lock"
RUN_FILES = ("dvc.yaml", LOCK_FILE, C.PARAMS_FILE)  # what defines a run, besides the code
# A machine commit: it must not depend on (or borrow) the user's git identity.
BOT_IDENTITY = {
    "GIT_AUTHOR_NAME": "recpipe",
    "GIT_AUTHOR_EMAIL": "recpipe@localhost",
    "GIT_COMMITTER_NAME": "recpipe",
    "GIT_COMMITTER_EMAIL": "recpipe@localhost",
}


def git(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, check=False)


def git_out(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = git(root, *args, env=env)
    if result.returncode != 0:
        raise PipelineError(f"`git {' '.join(args)}` failed in {root}: {result.stderr.strip()}")
    return result.stdout.strip()


def is_git_repo(root: Path) -> bool:
    return git(root, "rev-parse", "--is-inside-work-tree").stdout.strip() == "true"


def dvc_push(root: Path) -> str:
    """`dvc push`: every output in dvc.lock to the default remote. Returns DVC's closing line."""
    from pipeline_tasks.ops.pipeline import dvc

    result = dvc(root, "push", capture=True)
    if result.returncode != 0:
        raise PipelineError(
            f"`dvc push` failed in {root}:\n{(result.stderr or result.stdout).strip()[-2000:]}\n"
            "Check the remote (`dvc remote list`; a local folder by default, S3/GCS/SSH by "
            "`dvc remote add -d ...`); the run's outputs are still in the local DVC cache."
        )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else "pushed"


def data_versions(root: Path) -> dict[str, str]:
    """{output path: md5} of every DVC-tracked output in dvc.lock."""
    path = root / LOCK_FILE
    lock = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {
        out["path"]: out["md5"]
        for stage in (lock or {}).get("stages", {}).values()
        for out in stage.get("outs", [])
        if "md5" in out
    }


def keep_lock_on_branch(root: Path, branch: str, message: str) -> str | None:
    """Commit this run's dvc.yaml/dvc.lock/params.yaml on `branch` without touching the checkout.

    Returns the new commit, or None (with a printed reason) when `root` is not in a git repo.
    """
    if not is_git_repo(root):
        print(f"not a git checkout: {root}; dvc.lock is kept only as an MLflow artifact")
        return None
    prefix = git_out(root, "rev-parse", "--show-prefix")  # project folder inside the repo ('' at the top)
    head = git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}").stdout.strip()
    tip = git(root, "rev-parse", "--verify", "-q", f"refs/heads/{branch}").stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        # A private index: the user's staged changes stay as they are.
        env = {**os.environ, **BOT_IDENTITY, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git_out(root, "read-tree", *([head] if head else ["--empty"]), env=env)
        for name in RUN_FILES:
            if (root / name).exists():
                blob = git_out(root, "hash-object", "-w", name, env=env)
                git_out(root, "update-index", "--add", "--cacheinfo", f"100644,{blob},{prefix}{name}", env=env)
        tree = git_out(root, "write-tree", env=env)
        parents = [p for p in dict.fromkeys([tip, head]) if p]
        args = [arg for parent in parents for arg in ("-p", parent)]
        commit = git_out(root, "commit-tree", tree, *args, "-m", message, env=env)
        # Compare-and-swap on the old tip: two runs finishing together cannot lose a commit silently.
        git_out(root, "update-ref", f"refs/heads/{branch}", commit, tip or "0" * 40, env=env)
    return commit


REVISION_HINT = (
    "a commit hash, branch or tag of the project's repository (`git log recpipe-runs --oneline` lists every run)"
)


def verify_revision(root: Path, rev: str) -> str:
    """The commit that `rev` names in the project's repository; a PipelineError naming the bad value otherwise.

    `rev` is typed by a person and ends up in git's arguments: a leading '-' would be read as an option
    (`--output=...`), so it is refused before git runs; anything else must name an existing commit.
    """
    rev = (rev or "").strip()
    if not rev or rev.startswith("-"):
        raise PipelineError(
            f"data version {rev!r} is not a git revision (empty or starting with '-'); give {REVISION_HINT}"
        )
    commit = git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").stdout.strip()
    if not commit:
        raise PipelineError(f"data version {rev!r} names no commit in {root}; give {REVISION_HINT}")
    return commit


def restore_data_version(root: Path, rev: str) -> dict[str, str]:
    """Put back the ingest outputs (data/raw, ...) recorded in the dvc.lock at git revision `rev`.

    The ingest entry of that lock replaces the current one and `dvc pull ingest` restores its
    files from the cache or the remote; the stages after ingest then see changed data and re-run.
    The lock of this run records the older ingest entry as it was (honest lineage), so the next
    nightly run ingests the current data again if its params differ.
    """
    from pipeline_tasks.ops.pipeline import dvc

    commit = verify_revision(root, rev)
    prefix = git_out(root, "rev-parse", "--show-prefix")
    shown = git(root, "show", f"{commit}:{prefix}{LOCK_FILE}")
    if shown.returncode != 0:
        raise PipelineError(
            f"no {LOCK_FILE} at git revision {rev!r} ({shown.stderr.strip()}); pick a commit that "
            "has one: `git log recpipe-runs` lists the lock of every run"
        )
    entry = ((yaml.safe_load(shown.stdout) or {}).get("stages") or {}).get("ingest")
    if not entry:
        raise PipelineError(f"the {LOCK_FILE} at {rev!r} has no ingest stage: that revision has no data version")
    lock_path = root / LOCK_FILE
    before = lock_path.read_text(encoding="utf-8") if lock_path.exists() else None
    lock = (yaml.safe_load(before) if before else None) or {"schema": "2.0", "stages": {}}
    lock.setdefault("stages", {})["ingest"] = entry
    lock_path.write_text(yaml.safe_dump(lock, sort_keys=False), encoding="utf-8")
    pulled = dvc(root, "pull", "--force", "ingest", capture=True)
    if pulled.returncode != 0:
        if before is None:
            lock_path.unlink()
        else:
            lock_path.write_text(before, encoding="utf-8")
        raise PipelineError(
            f"the data of revision {rev!r} is neither in the DVC cache nor in the remote "
            f"(`dvc pull ingest` failed: {(pulled.stderr or pulled.stdout).strip()[-1000:]}); "
            "check `dvc remote list`. Nothing was changed."
        )
    return {out["path"]: out["md5"] for out in entry.get("outs", []) if "md5" in out}

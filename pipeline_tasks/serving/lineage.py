"""Where a registered version came from: data, params, code and the Airflow run.

Everything is read back from the registry (version tags written by register) and from the
version's MLflow run (artifacts lineage/dvc.lock and lineage/params.yaml), so it works on
any machine that can reach the store. `restore_lock` writes the run's dvc.lock out: put it
in the project (at the recorded git commit) and `dvc checkout` brings back exactly that
data and model from the DVC cache/remote.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml

from pipeline_tasks.core import constants as C
from pipeline_tasks.serving.registry import RegistryError, aliases, require_model, require_version


def resolve_version(client, name: str, version: str) -> str:
    """A version number, or an alias (`champion`, `@challenger`)."""
    version = str(version).lstrip("@")
    if version.isdigit():
        return version
    found = aliases(client, name).get(version)
    if found is None:
        raise RegistryError(f"{name} has no version or alias {version!r}; aliases now: {aliases(client, name)}")
    return found


def version_lineage(client, name: str, version: str) -> dict:
    """{version, run_id, git_commit, data{...}, airflow{...}, params{...}} of one version."""
    require_model(client, name)
    mv = require_version(client, name, resolve_version(client, name, version))
    tags = mv.tags
    return {
        "model": name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "source": mv.source,
        "git_commit": tags.get("git_commit", "unknown"),
        "data": {
            "dataset": tags.get("dvc.dataset", "unknown"),
            "checkpoint": tags.get("dvc.checkpoint", "unknown"),
            **{
                k[len("dvc.") :]: v
                for k, v in sorted(tags.items())
                if k.startswith("dvc.") and k not in ("dvc.dataset", "dvc.checkpoint")
            },
        },
        "airflow": {"dag_id": tags.get("airflow.dag_id", "none"), "dag_run_id": tags.get("airflow.dag_run_id", "none")},
        "params": {k[len("params.") :]: v for k, v in sorted(tags.items()) if k.startswith("params.")},
        "compression_variant": tags.get("compression_variant"),
    }


def run_artifact(run_id: str, path: str, dest: Path) -> Path:
    """Download one artifact of a run to dest (a clear error when the run did not keep it)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
        except Exception as err:  # noqa: BLE001 - MlflowException / OSError: the artifact is not there
            raise RegistryError(
                f"run {run_id} has no artifact {path!r} ({type(err).__name__}); versions "
                "registered before lineage was recorded cannot be restored this way"
            ) from err
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dest)
    return dest


def restore_lock(client, name: str, version: str, dest: str | Path) -> Path:
    """Write the version's dvc.lock to dest."""
    info = version_lineage(client, name, version)
    return run_artifact(info["run_id"], f"{C.LINEAGE_DIR}/dvc.lock", Path(dest))


def full_params(client, name: str, version: str) -> dict:
    info = version_lineage(client, name, version)
    with tempfile.TemporaryDirectory() as tmp:
        path = run_artifact(info["run_id"], f"{C.LINEAGE_DIR}/params.yaml", Path(tmp) / "params.yaml")
        return yaml.safe_load(path.read_text(encoding="utf-8"))


def format_lineage(info: dict) -> str:
    lines = [
        f"{info['model']} v{info['version']} (MLflow run {info['run_id']})",
        f"  code:    git commit {info['git_commit']}",
        f"  data:    dataset (DVC md5 of data/split) {info['data']['dataset']}",
        f"           checkpoint (DVC md5 of models/model) {info['data']['checkpoint']}",
        *[f"           {path}: {md5}" for path, md5 in info["data"].items() if path not in ("dataset", "checkpoint")],
        f"  airflow: dag_id {info['airflow']['dag_id']}, run_id {info['airflow']['dag_run_id']}",
        f"  variant: {info['compression_variant']}",
        f"  params ({len(info['params'])} tagged; all of them: lineage/params.yaml in the run):",
        *[f"           {k} = {v}" for k, v in info["params"].items()],
    ]
    return "\n".join(lines)

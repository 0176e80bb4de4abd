"""Where a warm night starts: the champion's trained weights, fetched from the registry.

The train stage asks for them when `train.warm_start` is on. The registered version carries its
serving variant as the artifact `model`; when that variant is a compressed copy (int8, ONNX,
pruned, distilled) it also carries the trained fp32 model as `weights` (serving/publish.py). A
champion of another shape, or none yet, means a cold night, said in the log and in
metrics/train.json. A registry that does not answer fails the stage (retried), as every registry
read does: training cold by accident would silently make the night slower and different.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.model import warm_start
from pipeline_tasks.model.towers import CONFIG_FILE
from pipeline_tasks.serving import registry
from pipeline_tasks.serving.registry import RegistryError, registered_artifact

log = logging.getLogger(__name__)


@dataclass
class WarmSource:
    """The model a night starts from: `model_dir` None means from scratch, `why` says which and why."""

    model_dir: Path | None
    version: str | None
    why: str

    def report(self) -> dict:
        return {**asdict(self), "model_dir": None, "warm": self.model_dir is not None}


def champion_weights(params: dict, root: Path, dest: Path) -> WarmSource:
    """The champion's trained weights downloaded under dest, if it can seed tonight's model."""
    if not params["train"]["warm_start"]:
        return WarmSource(None, None, "train.warm_start is off: training from scratch")
    name = params["register"]["model_name"]
    version = registry.aliases(registry.client_for(params, root), name).get(C.ALIAS_CHAMPION)
    if version is None:
        return WarmSource(None, None, f"{name} has no champion yet: the first night trains from scratch")
    model_dir = download(name, version, dest)
    why_not = warm_start.mismatch(warm_start.saved_config(model_dir), params["train"])
    if why_not:
        log.warning("cold night: champion v%s cannot seed this model (%s)", version, why_not)
        return WarmSource(None, version, f"champion v{version} differs ({why_not}): training from scratch")
    return WarmSource(model_dir, version, f"fine-tuning champion v{version} for at most train.warm_epochs")


def download(name: str, version: str, dest: Path) -> Path:
    """The version's trained weights: its `weights` artifact, else its serving `model` (already fp32)."""
    model_dir = registered_artifact(name, version, C.WEIGHTS_ARTIFACT, dest) or registered_artifact(
        name, version, C.MODEL_ARTIFACT, dest
    )
    if model_dir is None or not (model_dir / CONFIG_FILE).exists():
        raise RegistryError(
            f"v{version} of {name} has no model directory as artifact {C.WEIGHTS_ARTIFACT!r} or "
            f"{C.MODEL_ARTIFACT!r} (its layout is not one recpipe wrote): set train.warm_start=false for this "
            "run, or promote a version this recpipe registered"
        )
    return model_dir

"""Serving a model: the MLflow pyfunc, registry moves, the gate, the A/B server and its report,
model cards and lineage.

`RecpipePyfunc` is re-exported here because every registered version pickles its class as
`pipeline_tasks.serving.RecpipePyfunc` (the module before the package layout), and those versions
must keep loading. The import is lazy so that `pipeline_tasks.serving.registry` does not pull in
torch.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "RecpipePyfunc":
        from pipeline_tasks.serving.pyfunc import RecpipePyfunc

        return RecpipePyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

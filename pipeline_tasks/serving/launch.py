"""`recpipe serve`: the A/B server (server.py) as one process, or as N uvicorn workers on one port.

- `--workers 1`: the app is built in this process, then served (the banner names what is served).
- `--workers N`: uvicorn's supervisor starts N worker processes (multiprocessing spawn) on one
  socket and restarts any that dies; each builds its app with `app_from_environment` (params and
  root come from the parent through the environment), loads the models and polls the aliases
  itself. They share the event store, so feedback may reach another worker than its exposure did.
- The parent migrates the event store and checks for a champion first (one clear error, not N),
  and gives the workers a fresh private PROMETHEUS_MULTIPROC_DIR so their metrics add up.
- Every process keeps torch at one thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline_tasks.core import constants as C
from pipeline_tasks.serving import api_guard, event_store, registry
from pipeline_tasks.serving.server import create_app, no_champion

log = logging.getLogger("recpipe.serve")

# How the parent of `serve --workers N` hands params and root to the workers' app factory.
PARAMS_ENV, ROOT_ENV = "RECPIPE_SERVE_PARAMS", "RECPIPE_SERVE_ROOT"
APP_FACTORY = "pipeline_tasks.serving.launch:app_from_environment"


def serve(params: dict, root: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve until stopped; workers > 1: that many uvicorn processes (restarted by uvicorn if one dies)."""
    import uvicorn

    if workers < 1:
        raise registry.RegistryError(f"--workers must be at least 1, not {workers}")
    warning = api_guard.check_bind(host, api_guard.ApiAuth.from_env())  # raises on a reachable bind without a key
    store = event_store.open_store(params, root)  # migrate once, before any worker writes
    where = store.where
    store.dispose()
    if workers == 1:
        limit_torch_threads()
        app = create_app(params, root)
        print_banner(app.state.router.health(), where, host, port, workers, warning)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        return
    champion_or_refuse(params, root)  # fail here with the message, not in N workers' logs
    os.environ[PARAMS_ENV], os.environ[ROOT_ENV] = json.dumps(params), str(Path(root).resolve())
    with multiprocess_metrics_dir():
        print_banner(None, where, host, port, workers, warning)
        uvicorn.run(
            APP_FACTORY, factory=True, workers=workers, host=host, port=port, log_level="warning", access_log=False
        )


def app_from_environment():
    """uvicorn's app factory in each worker of `serve --workers N`: params and root from the parent."""
    limit_torch_threads()
    app = create_app(json.loads(os.environ[PARAMS_ENV]), os.environ[ROOT_ENV])
    log.warning("worker %d serving %s", os.getpid(), app.state.router.health()["versions"])
    return app


def worker_pids(server_pid: int) -> set[int]:
    """The live workers of a `serve --workers N` parent: its children started by multiprocessing's
    spawn (not its resource tracker). For load tests and operators checking a restart."""
    import psutil

    pids = set()
    for child in psutil.Process(server_pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:  # a killed worker, a zombie until uvicorn reaps it
            continue
    return pids


def limit_torch_threads() -> None:
    import torch

    # One request is one small user-tower pass and a top-K: intra-op threads only fight each
    # other (and the request threads) for the cores. Measured on 2 shared cores: p50 147 ms with
    # torch's default 2 threads vs 5 ms with 1. Scale out with more worker processes instead.
    torch.set_num_threads(1)


def champion_or_refuse(params: dict, root: str | Path) -> None:
    name = params["register"]["model_name"]
    if C.ALIAS_CHAMPION not in registry.aliases(registry.client_for(params, root), name):
        raise no_champion(name)


@contextmanager
def multiprocess_metrics_dir() -> Iterator[Path]:
    """A fresh private PROMETHEUS_MULTIPROC_DIR for the workers' metric files, removed at exit.

    Set before the workers start (prometheus-client reads it at import); a stale folder would add
    the counts of an earlier server's workers to this one's.
    """
    path = Path(tempfile.mkdtemp(prefix="recpipe-metrics-"))
    previous = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous
        shutil.rmtree(path, ignore_errors=True)


def print_banner(health: dict | None, store: str, host: str, port: int, workers: int, warning: str | None) -> None:
    what = (
        f"{health['model']} {health['versions']} A/B share {health['ab']['share']:g} "
        f"experiment {health['experiment']['id']}"
        if health
        else f"{workers} workers (each logs what it serves)"
    )
    print(
        f"recpipe serve: {what} on http://{host}:{port} (events -> {store}); Ctrl-C to stop",
        flush=True,
    )
    if warning:
        log.warning(warning)
        print(f"recpipe serve: WARNING {warning}", flush=True)

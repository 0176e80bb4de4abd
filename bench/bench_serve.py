"""Latency and throughput of `recpipe serve` /recommend (top-10) on the MovieLens-100K catalogue.

    .venv/bin/python bench/bench_serve.py [--data ../shared/datasets/ml-100k] [--work DIR]
        [--rate 100] [--seconds 30] [--rebuild]

Builds (once; --rebuild to redo) a scratch project in --work: ingest (movielens) -> split ->
train (1 epoch, encoder frozen: serving a known user runs only the user tower and a top-K over
the precomputed item table, so training quality does not change what is measured) -> two
registered versions in a SQLite MLflow store (v1 champion, v2 challenger, A/B share 0.1, so
the router, both models and the event store are all on the request path). The raw tables
stand in for data/clean: MovieLens-100K has nothing to clean, and Spark is not what is measured.

Then starts `recpipe serve` as one process and, from a second process on loopback, sends
GET /recommend?user_id=U&k=10 at a steady --rate (open loop: each request leaves at its
scheduled time, whatever the previous ones did, and latency counts from that time, so a
slow server cannot hide its queueing) for --seconds, users drawn from the catalogue's users
plus 5% unknown ones (cold start). Then a closed-loop run (8 concurrent clients, 10 s) for
the most requests/s. Writes bench/results/serve.json; the target is p99 < 20 ms at 100 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_serve")
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "ml-100k"
RESULT = ROOT / "bench" / "results" / "serve.json"
TARGET_P99_MS, TARGET_RATE = 20.0, 100.0
UNKNOWN_SHARE = 0.05


# --- the project: data, a trained model, two registered versions -------------------------------


def build_project(work: Path, data: Path) -> dict:
    import mlflow

    from pipeline_tasks import ingest, split, train
    from pipeline_tasks.core import constants as C
    from pipeline_tasks.core import params as P
    from pipeline_tasks.core import tracking
    from pipeline_tasks.serving import publish, registry

    params = P.load(
        ROOT / C.PARAMS_FILE,
        [
            "ingest.source=movielens",
            f"ingest.path={data}",
            "train.epochs=1",
            "train.finetune=frozen",
            "train.checkpoint_every=0",
        ],
    )
    params["train"]["use_best_params"] = False
    params["mlflow"]["tracking_uri"] = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
    params["register"]["serve_poll_s"] = 5.0
    P.dump(params, work / C.PARAMS_FILE)
    ingest.run(params, work)
    shutil.copytree(work / C.DATA_RAW, work / C.DATA_CLEAN, dirs_exist_ok=True)
    split.run(params, work)
    train.run(params, work)
    tracking.setup(params, work)
    client = registry.client_for(params, work)
    with mlflow.start_run(run_name="bench_serve"):
        info = publish.log_model(params, work, work / C.MODEL_DIR, "fp32", {})
    for reason in ("bench: champion", "bench: challenger"):
        version = str(mlflow.register_model(info.model_uri, params["register"]["model_name"]).version)
        registry.set_challenger(client, params["register"]["model_name"], version, reason=reason, who="bench")
        if version == "1":
            registry.promote(client, params["register"]["model_name"], version, reason=reason, who="bench")
    registry.set_ab_config(client, params["register"]["model_name"], 0.1, salt="bench", who="bench")
    return params


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(work: Path, port: int, workers: int = 1) -> subprocess.Popen:
    """`recpipe serve` on the project, once it answers /healthz with all its workers up."""
    import httpx

    from pipeline_tasks.serving.launch import worker_pids

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RECPIPE_EVENT_STORE_URL")}
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline_tasks.ops.cli", "--root", str(work), "serve", "--port", str(port)]
        + ["--workers", str(workers)],
        cwd=str(ROOT),
        env=env,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"recpipe serve exited with {server.returncode}")
        try:
            up = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            if up and (workers == 1 or len(worker_pids(server.pid)) == workers):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit("recpipe serve did not answer /healthz within 300 s")


# --- the load generator (runs in its own process) ---------------------------------------------


def percentiles(values: list[float]) -> dict:
    import numpy as np

    if not values:
        return {}
    arr = np.asarray(values)
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
        "mean_ms": float(arr.mean()),
    }


async def open_loop(url: str, users: list[str], rate: float, seconds: float) -> dict:
    """Requests scheduled every 1/rate s; latency from the scheduled time (no coordinated omission)."""
    import aiohttp

    n = int(rate * seconds)
    latencies, service, errors, variants = [], [], 0, {}
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=64)) as http:
        start = time.perf_counter() + 0.2

        async def one(i: int) -> None:
            nonlocal errors
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            sent = time.perf_counter()
            try:
                async with http.get("/recommend", params={"user_id": users[i % len(users)], "k": "10"}) as answer:
                    body = await answer.json()
                done = time.perf_counter()
                if answer.status != 200 or len(body["items"]) != 10:
                    errors += 1
                    return
                variants[body["variant"]] = variants.get(body["variant"], 0) + 1
                latencies.append((done - scheduled) * 1000)
                service.append((done - sent) * 1000)
            except aiohttp.ClientError:
                errors += 1

        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - start
    return {
        "requests": n,
        "errors": errors,
        "seconds": elapsed,
        "achieved_rps": (n - errors) / elapsed,
        "latency_from_schedule": percentiles(latencies),
        "latency_from_send": percentiles(service),
        "variants": variants,
    }


async def closed_loop(url: str, users: list[str], concurrency: int, seconds: float) -> dict:
    import aiohttp

    done, errors = 0, 0
    latencies: list[float] = []
    async with aiohttp.ClientSession(url) as http:
        stop = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal done, errors
            i = w
            while time.perf_counter() < stop:
                sent = time.perf_counter()
                async with http.get("/recommend", params={"user_id": users[i % len(users)], "k": "10"}) as answer:
                    await answer.read()
                latencies.append((time.perf_counter() - sent) * 1000)
                done, errors = done + (answer.status == 200), errors + (answer.status != 200)
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": done,
        "errors": errors,
        "rps": done / elapsed,
        "latency": percentiles(latencies),
    }


def client_main(args: argparse.Namespace) -> None:
    users = json.loads(Path(args.users).read_text())
    random.Random(0).shuffle(users)
    asyncio.run(open_loop(args.client, users, 50, 4))  # warm-up: allocator, caches, connections
    steady = asyncio.run(open_loop(args.client, users, args.rate, args.seconds))
    flat_out = asyncio.run(closed_loop(args.client, users, 8, 10))
    print(json.dumps({"steady": steady, "max_throughput": flat_out}))


# --- the whole benchmark ---------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recpipe-bench-serve"))
    parser.add_argument("--rate", type=float, default=TARGET_RATE)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run as the load generator
    parser.add_argument("--users", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return client_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (args.data / "u.data").exists():
        raise SystemExit(f"MovieLens-100K not found at {args.data}: pass --data (it is never copied into the repo)")
    from pipeline_tasks.core import constants as C
    from pipeline_tasks.core import io

    work = args.work.resolve()
    if args.rebuild or not (work / "mlflow" / "mlflow.db").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        started = time.perf_counter()
        build_project(work, args.data)
        log.info("project built in %.0f s", time.perf_counter() - started)
    shutil.rmtree(work / "logs", ignore_errors=True)
    known = sorted(io.read_table(work / C.DATA_SPLIT / "train", columns=[C.USER_ID])[C.USER_ID].unique())
    n_items = len(io.read_table(work / C.DATA_SPLIT / "items", columns=[C.ITEM_ID]))
    unknown = [f"visitor{i}" for i in range(int(len(known) * UNKNOWN_SHARE / (1 - UNKNOWN_SHARE)))]
    users_file = work / "bench_users.json"
    users_file.write_text(json.dumps([*known, *unknown]))

    port = free_port()
    server = start_server(work, port)
    try:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--client",
                f"http://127.0.0.1:{port}",
                "--users",
                str(users_file),
                "--rate",
                str(args.rate),
                "--seconds",
                str(args.seconds),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    from pipeline_tasks.serving.event_store import EventStore

    store = EventStore(f"sqlite:///{work / 'logs' / 'events.db'}")  # register.event_store's default
    server_side = store.frames()[0]["latency_ms"].tolist()
    store.dispose()
    steady = measured["steady"]
    result = {
        "what": "GET /recommend?k=10, recpipe serve (uvicorn, 1 process) on loopback, load from a second process",
        "catalogue": {
            "dataset": "MovieLens-100K",
            "items": n_items,
            "known_users": len(known),
            "unknown_user_share": UNKNOWN_SHARE,
        },
        "ab": {"champion": "v1", "challenger": "v2", "share": 0.1},
        "steady": steady,
        "max_throughput": measured["max_throughput"],
        "server_side_latency_all_requests": percentiles(server_side),
        "target": {
            "p99_ms": TARGET_P99_MS,
            "rate": args.rate,
            "met": steady["errors"] == 0 and steady["latency_from_schedule"]["p99_ms"] < TARGET_P99_MS,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "command": "python bench/bench_serve.py " + " ".join(sys.argv[1:]),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    s = steady["latency_from_schedule"]
    print(
        f"steady {steady['achieved_rps']:.1f} req/s: p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms "
        f"(target < {TARGET_P99_MS} ms: {'met' if result['target']['met'] else 'NOT met'}); max throughput "
        f"{measured['max_throughput']['rps']:.0f} req/s; written to {RESULT}"
    )


if __name__ == "__main__":
    main()

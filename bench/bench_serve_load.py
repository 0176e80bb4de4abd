"""`recpipe serve --workers 2` under steady load, with a worker killed: latency, errors, and no lost event.

    .venv/bin/python bench/bench_serve_load.py [--rates 20,50,100] [--seconds 60] [--workers 2]
        [--feedback-share 0.3] [--work DIR] [--rebuild]

Builds (once; --rebuild to redo) the tests' small registry project in --work: a tiny encoder,
two trained versions in a SQLite MLflow store, v1 champion and v2 challenger at A/B share 0.5.
What is measured is the serving path (router, model, event store), not model quality. The
event store is the default SQLite file (WAL, synchronous=FULL), emptied before the run.

Starts `recpipe serve --workers N` and, from this process, drives each rate open-loop for
--seconds (each /recommend leaves at its scheduled time, latency counted from then), users drawn
from the project's users plus 5% unknown ones; --feedback-share of the answers get a click on
one of their items right away (POST /feedback with the exposure_id). After every rate the store
must hold exactly the acknowledged exposures and feedback (same ids, same count).

Then one more phase at the middle rate kills one worker with SIGKILL halfway through (a child of
the server process; uvicorn starts a replacement). Requests in flight to it may fail; every
acknowledged event must still be in the store, and the store may hold at most as many
unacknowledged ones as requests failed. Writes bench/results/serve_load_<seconds>s.json; exits
non-zero when a check fails.
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
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_serve import percentiles, start_server  # noqa: E402 - a sibling script: one way to start and wait for the server

from pipeline_tasks.serving.launch import worker_pids  # noqa: E402 - after the path above

log = logging.getLogger("bench_serve_load")
UNKNOWN_SHARE = 0.05
K = 10


# --- the project and the server ---------------------------------------------------------------


def build_project(work: Path) -> dict:
    """The tests' registry project (tests/unit/test_registry.py): two tiny trained versions."""
    import importlib.util

    from tests.conftest import build_tiny_encoder

    spec = importlib.util.spec_from_file_location("registry_fixtures", ROOT / "tests" / "unit" / "test_registry.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    encoder = build_tiny_encoder(work / "tiny-encoder")
    _, params, _ = fixtures.build_registry_project(work / "project", encoder)
    return params


def prepare(work: Path, rebuild: bool, workers: int) -> Path:
    from pipeline_tasks.core import constants as C
    from pipeline_tasks.core import params as P
    from pipeline_tasks.serving import registry

    project = work / "project"
    if rebuild or not (project / "mlflow" / "mlflow.db").exists():
        shutil.rmtree(work, ignore_errors=True)
        (work / "project").mkdir(parents=True)
        started = time.perf_counter()
        params = build_project(work)
        log.info("project built in %.0f s", time.perf_counter() - started)
    else:
        params = P.load(project / C.PARAMS_FILE)
    params["register"]["serve_poll_s"] = 5.0
    P.dump(params, project / C.PARAMS_FILE)
    client = registry.client_for(params, project)
    client.set_registered_model_alias("recpipe", C.ALIAS_CHAMPION, "1")
    client.set_registered_model_alias("recpipe", C.ALIAS_CHALLENGER, "2")
    registry.set_ab_config(client, "recpipe", 0.5, salt="bench", who="bench")
    for name in ("events.db", "events.db-wal", "events.db-shm"):
        (project / "logs" / name).unlink(missing_ok=True)
    return project


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the load ---------------------------------------------------------------------------------


class Acks:
    """What the server acknowledged (200) and what failed, over the whole run."""

    def __init__(self):
        self.exposures: set[str] = set()
        self.feedback: set[tuple[str, str]] = set()  # (exposure_id, item_id): one click per exposure at most


async def open_loop(
    url: str, users: list[str], rate: float, seconds: float, share: float, acks: Acks, kill_at=None
) -> dict:
    """One phase; kill_at: a coroutine started at half time (the kill) whose result is returned too."""
    import aiohttp

    n = int(rate * seconds)
    rng = random.Random(int(rate * 1000 + seconds))
    out = {"recommend": [], "feedback": [], "recommend_errors": 0, "feedback_errors": 0, "statuses": {}}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=128), timeout=timeout) as http:
        start = time.perf_counter() + 0.2

        async def one(i: int) -> None:
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            user = users[i % len(users)]
            try:
                async with http.get("/recommend", params={"user_id": user, "k": str(K)}) as answer:
                    body = await answer.json(content_type=None)
                    status = answer.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                out["recommend_errors"] += 1
                out["statuses"][type(exc).__name__] = out["statuses"].get(type(exc).__name__, 0) + 1
                return
            if status != 200:
                out["recommend_errors"] += 1
                out["statuses"][str(status)] = out["statuses"].get(str(status), 0) + 1
                return
            out["recommend"].append((time.perf_counter() - scheduled) * 1000)
            acks.exposures.add(body["exposure_id"])
            if rng.random() < share:
                await click(http, user, body)

        async def click(http, user: str, body: dict) -> None:
            item = body["items"][rng.randrange(len(body["items"]))]["item_id"]
            event = {"user_id": user, "item_id": item, "event": "click", "exposure_id": body["exposure_id"]}
            sent = time.perf_counter()
            try:
                async with http.post("/feedback", json=event) as answer:
                    await answer.read()
                    status = answer.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                out["feedback_errors"] += 1
                kind = f"feedback {type(exc).__name__}"
                out["statuses"][kind] = out["statuses"].get(kind, 0) + 1
                return
            if status != 200:
                out["feedback_errors"] += 1
                out["statuses"][f"feedback {status}"] = out["statuses"].get(f"feedback {status}", 0) + 1
                return
            out["feedback"].append((time.perf_counter() - sent) * 1000)
            acks.feedback.add((body["exposure_id"], item))

        async def killer():
            await asyncio.sleep(max(0.0, start + seconds / 2 - time.perf_counter()))
            return await asyncio.to_thread(kill_at)

        tasks = [one(i) for i in range(n)]
        results = await asyncio.gather(*tasks, *([killer()] if kill_at else []))
        elapsed = time.perf_counter() - start
    return {
        "rate": rate,
        "seconds": round(elapsed, 2),
        "requests": n,
        "recommend_ok": len(out["recommend"]),
        "recommend_errors": out["recommend_errors"],
        "feedback_ok": len(out["feedback"]),
        "feedback_errors": out["feedback_errors"],
        "errors_by_kind": out["statuses"],
        "achieved_rps": round(len(out["recommend"]) / elapsed, 2),
        "recommend_latency_from_schedule": percentiles(out["recommend"]),
        "feedback_latency": percentiles(out["feedback"]),
        **({"kill": results[-1]} if kill_at else {}),
    }


def stored(project: Path) -> tuple[set[str], set[tuple[str, str]]]:
    from pipeline_tasks.serving.event_store import EventStore

    store = EventStore(f"sqlite:///{project / 'logs' / 'events.db'}")
    try:
        exposures, feedback = store.frames()
    finally:
        store.dispose()
    assert exposures["exposure_id"].is_unique
    return set(exposures["exposure_id"]), set(zip(feedback["exposure_id"], feedback["item_id"]))


def exact_check(project: Path, acks: Acks) -> dict:
    exposures, feedback = stored(project)
    return {
        "exposures_stored": len(exposures),
        "exposures_acknowledged": len(acks.exposures),
        "feedback_stored": len(feedback),
        "feedback_acknowledged": len(acks.feedback),
        "passed": exposures == acks.exposures and feedback == acks.feedback,
    }


def after_kill_check(project: Path, acks: Acks, failed: int) -> dict:
    exposures, feedback = stored(project)
    return {
        "acknowledged_exposures_lost": len(acks.exposures - exposures),
        "acknowledged_feedback_lost": len(acks.feedback - feedback),
        "stored_but_unacknowledged_exposures": len(exposures - acks.exposures),
        "stored_but_unacknowledged_feedback": len(feedback - acks.feedback),
        "failed_requests": failed,
        "passed": acks.exposures <= exposures
        and acks.feedback <= feedback
        and len(exposures - acks.exposures) + len(feedback - acks.feedback) <= failed,
    }


def kill_one_worker(server: subprocess.Popen):
    def kill() -> dict:
        before = worker_pids(server.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        killed = time.perf_counter()
        while len(worker_pids(server.pid) - before) < 1 and time.perf_counter() - killed < 120:
            time.sleep(0.2)
        replaced = worker_pids(server.pid) - before
        return {
            "killed_pid": victim,
            "replacement_pid": min(replaced) if replaced else None,
            "replacement_started_s": round(time.perf_counter() - killed, 2) if replaced else None,
        }

    return kill


# --- the whole benchmark ----------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="20,50,100", help="requests/s of /recommend, one phase each")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--feedback-share", type=float, default=0.3, help="answers that get a click")
    parser.add_argument("--work", type=Path, default=Path("/tmp/recpipe-bench-serve-load"))
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.pop("RECPIPE_EVENT_STORE_URL", None)  # the project's own SQLite store is measured
    rates = [float(r) for r in args.rates.split(",")]
    project = prepare(args.work.resolve(), args.rebuild, args.workers)

    from pipeline_tasks.core import constants as C
    from pipeline_tasks.core import io

    known = sorted(io.read_table(project / C.DATA_SPLIT / "train", columns=[C.USER_ID])[C.USER_ID].unique())
    users = known + [f"visitor{i}" for i in range(max(1, int(len(known) * UNKNOWN_SHARE)))]
    random.Random(0).shuffle(users)
    url = f"http://127.0.0.1:{free_port()}"
    server = start_server(project, int(url.rsplit(":", 1)[1]), args.workers)
    acks, phases = Acks(), []
    try:
        asyncio.run(open_loop(url, users, 20, 3, args.feedback_share, acks))  # warm-up: connections, caches
        for rate in rates:
            phase = asyncio.run(open_loop(url, users, rate, args.seconds, args.feedback_share, acks))
            phase["store_check"] = exact_check(project, acks)
            phases.append(phase)
            log.info("%s", json.dumps({k: phase[k] for k in ("rate", "achieved_rps", "recommend_errors")}))
        kill_rate = rates[len(rates) // 2]
        killed = asyncio.run(
            open_loop(url, users, kill_rate, args.seconds, args.feedback_share, acks, kill_one_worker(server))
        )
        killed["store_check"] = after_kill_check(project, acks, killed["recommend_errors"] + killed["feedback_errors"])
    finally:
        server.terminate()
        server.wait(timeout=60)
    passed = all(p["store_check"]["passed"] for p in phases) and killed["store_check"]["passed"]
    result = {
        "what": f"recpipe serve --workers {args.workers} (uvicorn) on loopback, SQLite event store (WAL, "
        f"synchronous=FULL); open-loop GET /recommend?k={K} + POST /feedback on {args.feedback_share:.0%} of answers",
        "project": "tests' registry project (tiny encoder, 80 users x 90 items), A/B share 0.5",
        "phases": phases,
        "kill_phase": killed,
        "all_checks_passed": passed,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "command": "python bench/bench_serve_load.py " + " ".join(sys.argv[1:]),
    }
    path = ROOT / "bench" / "results" / f"serve_load_{args.seconds:g}s.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    for phase in [*phases, killed]:
        lat = phase["recommend_latency_from_schedule"]
        print(
            f"{phase['rate']:>5g} req/s{' (kill -9 one worker)' if 'kill' in phase else '':<22} "
            f"achieved {phase['achieved_rps']:6.1f}: /recommend p50 {lat.get('p50_ms', float('nan')):6.2f} ms "
            f"p99 {lat.get('p99_ms', float('nan')):7.2f} ms, errors {phase['recommend_errors']}; "
            f"/feedback ok {phase['feedback_ok']} errors {phase['feedback_errors']}; store check "
            f"{'passed' if phase['store_check']['passed'] else 'FAILED'}"
        )
    print(f"written to {path}; all checks {'passed' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())

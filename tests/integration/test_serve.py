"""`recpipe serve` on a real registry: two trained tiny models (v1 champion, v2 challenger) in SQLite.

In-process through FastAPI's TestClient (every endpoint, the A/B split, the event store,
feedback checked against its exposure, reload), then once as a real `recpipe serve` process on
a loopback port. Several processes on one store: test_event_store.py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import io
from pipeline_tasks.core import params as P
from pipeline_tasks.serving import event_store, registry
from pipeline_tasks.serving.launch import worker_pids
from pipeline_tasks.serving.server import assign, bucket

TESTS = Path(__file__).resolve().parents[1]
PROJECT_ROOT = TESTS.parent


def registry_helpers():
    spec = importlib.util.spec_from_file_location("registry_fixtures", TESTS / "unit" / "test_registry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served_project(tmp_path_factory, tiny_encoder_dir):
    root, params, _ = registry_helpers().build_registry_project(
        tmp_path_factory.mktemp("serve") / "project", tiny_encoder_dir
    )
    return root, params


@pytest.fixture
def project(served_project, tmp_path, monkeypatch):
    """A private copy of the store; the event store (default: tmp_path/logs/events.db) too."""
    root, params = served_project
    monkeypatch.delenv(C.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(event_store.URL_ENV, raising=False)
    shutil.copy(root / "mlflow" / "mlflow.db", tmp_path / "mlflow.db")
    params = {
        **params,
        "mlflow": {**params["mlflow"], "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "register": {**params["register"], "serve_poll_s": 0.2},
    }
    client = registry.client_for(params, root)
    client.set_registered_model_alias("recpipe", C.ALIAS_CHAMPION, "1")
    client.set_registered_model_alias("recpipe", C.ALIAS_CHALLENGER, "2")
    return tmp_path, params, client, root


@pytest.fixture
def api(project):
    from fastapi.testclient import TestClient

    from pipeline_tasks.serving.server import create_app

    tmp, params, client, _ = project
    with TestClient(create_app(params, tmp, client=client, poll=False)) as http:
        yield http, client, tmp, params


def stored(tmp: Path, table: str) -> list[dict]:
    """The rows of the project's event store (`exposures` or `feedback`), oldest first."""
    store = event_store.EventStore(f"sqlite:///{tmp / 'logs' / 'events.db'}")
    try:
        exposures, feedback = store.frames()
    finally:
        store.dispose()
    return (exposures if table == "exposures" else feedback).to_dict(orient="records")


def known_history(root: Path, user: str) -> set[str]:
    frames = [io.read_table(root / C.DATA_SPLIT / s) for s in C.SPLITS]
    return {i for f in frames for i in f.loc[f[C.USER_ID] == user, C.ITEM_ID]}


def test_recommend_answers_a_known_user_without_seen_items(api, project):
    http, _, tmp, _ = api
    root = project[3]
    answer = http.get("/recommend", params={"user_id": "u005", "k": 5})
    assert answer.status_code == 200
    body = answer.json()
    assert body["user_id"] == "u005" and body["variant"] == "champion" and body["model_version"] == "1"
    assert len(body["items"]) == 5 and not body["cold_start"]
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    seen = known_history(root, "u005")
    assert seen and not seen & {item["item_id"] for item in body["items"]}
    exposure = stored(tmp, "exposures")[-1]
    assert exposure["exposure_id"] == body["exposure_id"] and exposure["items"] == [i["item_id"] for i in body["items"]]
    assert exposure["variant"] == "champion" and exposure["latency_ms"] > 0
    assert (
        exposure["fallback"] is False and exposure["experiment_id"] == http.get("/healthz").json()["experiment"]["id"]
    )


def test_unknown_user_gets_cold_start_popular_and_fresh_items(api):
    http, _, _, _ = api
    body = http.get("/recommend", params={"user_id": "never-seen-before", "k": 10}).json()
    model = http.app.state.router.served.models["champion"][1]
    items = [i["item_id"] for i in body["items"]]
    assert body["cold_start"] and len(items) == len(set(items)) == 10
    assert set(items) & set(model.popular) and set(items) & set(model.fresh)
    # A new user with an explicit history gets personal recommendations that exclude it.
    body = http.get("/recommend", params={"user_id": "new-user", "history": "i00,i01", "k": 5}).json()
    assert not body["cold_start"] and not {"i00", "i01"} & {i["item_id"] for i in body["items"]}


@pytest.mark.parametrize(
    "query, hint",
    [
        ({"user_id": "u001", "k": 0}, "k must be a positive integer"),
        ({"user_id": "u001", "k": -3}, "k must be a positive integer"),
        ({"user_id": "u001", "k": "ten"}, "k must be a positive integer"),
        ({"user_id": "u001", "k": 2.5}, "k must be a positive integer"),
        ({"k": 10}, "user_id is required"),
        ({"user_id": "", "k": 10}, "user_id is required"),
    ],
)
def test_invalid_requests_get_422_with_a_clear_message(api, query, hint):
    http, _, tmp, _ = api
    answer = http.get("/recommend", params=query)
    assert answer.status_code == 422 and hint in answer.json()["error"]
    assert not stored(tmp, "exposures")  # nothing was served, nothing exposed


def test_ab_split_is_stable_follows_the_share_and_reloads_when_aliases_move(api):
    http, client, tmp, _ = api
    router = http.app.state.router
    registry.set_ab_config(client, "recpipe", 0.5, salt="s1", who="test")
    assert router.refresh()
    experiments = [registry.experiment(client, "recpipe")["id"]]
    users = [f"u{u:03d}" for u in range(24)] + [f"visitor{v}" for v in range(40)]
    first = {u: http.get("/recommend", params={"user_id": u}).json() for u in users}
    again = {u: http.get("/recommend", params={"user_id": u}).json()["variant"] for u in users}
    assert {u: a["variant"] for u, a in first.items()} == again  # sticky
    assert {u: a["variant"] for u, a in first.items()} == {u: assign(u, 0.5, "s1") for u in users}
    versions = {a["variant"]: a["model_version"] for a in first.values()}
    assert versions == {"champion": "1", "challenger": "2"}
    share = sum(a["variant"] == "challenger" for a in first.values()) / len(users)
    assert 0.3 < share < 0.7
    # Raising the share only moves users to the challenger.
    registry.set_ab_config(client, "recpipe", 0.8)
    router.refresh()
    experiments.append(registry.experiment(client, "recpipe")["id"])
    moved = {u: http.get("/recommend", params={"user_id": u}).json()["variant"] for u in users}
    assert all(moved[u] == "challenger" for u in users if again[u] == "challenger")
    # Promotion moves the aliases; the next refresh serves v2 as champion, and v2 == challenger means no split.
    registry.promote(client, "recpipe", "2", reason="test promotion", who="test")
    assert router.refresh()
    health = http.get("/healthz").json()
    assert health["versions"] == {"champion": "2"} and health["ab"]["share"] == 0.0
    experiments.append(registry.experiment(client, "recpipe")["id"])
    assert health["experiment"]["id"] == experiments[-1] and health["experiment"]["recorded"]
    assert {http.get("/recommend", params={"user_id": u}).json()["model_version"] for u in users[:10]} == {"2"}
    exposures = stored(tmp, "exposures")
    assert len(exposures) == 3 * len(users) + 10 and len({e["exposure_id"] for e in exposures}) == len(exposures)
    # Each split change started an experiment, and every exposure names the one it was served in.
    assert len(set(experiments)) == 3
    phases = [experiments[0]] * 2 * len(users) + [experiments[1]] * len(users) + [experiments[2]] * 10
    assert [e["experiment_id"] for e in exposures] == phases


def test_feedback_is_appended_and_validated(api):
    http, _, tmp, _ = api
    exposure = http.get("/recommend", params={"user_id": "u003", "k": 3}).json()
    item = exposure["items"][0]["item_id"]
    for event in ("click", "purchase"):
        answer = http.post(
            "/feedback",
            json={"user_id": "u003", "item_id": item, "event": event, "exposure_id": exposure["exposure_id"]},
        )
        assert answer.status_code == 200 and answer.json()["variant"] == exposure["variant"]
    bad = http.post("/feedback", json={"user_id": "u003", "item_id": item, "event": "like"})
    assert bad.status_code == 422 and "event must be 'click' or 'purchase'" in bad.json()["error"]
    assert http.post("/feedback", json={"item_id": item, "event": "click"}).status_code == 422
    logged = stored(tmp, "feedback")
    assert [e["event"] for e in logged] == ["click", "purchase"]
    assert all(e["exposure_id"] == exposure["exposure_id"] and e["item_id"] == item for e in logged)
    served_in = stored(tmp, "exposures")[-1]["experiment_id"]
    assert all(e["experiment_id"] == served_in for e in logged)


def test_feedback_that_does_not_match_a_stored_exposure_is_refused_and_not_stored(api):
    http, _, tmp, _ = api
    exposure = http.get("/recommend", params={"user_id": "u006", "k": 3}).json()
    shown = {i["item_id"] for i in exposure["items"]}
    not_shown = next(f"i{n:02d}" for n in range(90) if f"i{n:02d}" not in shown)
    item = exposure["items"][0]["item_id"]
    refusals = [
        ({"user_id": "u006", "item_id": item, "exposure_id": "no-such-exposure"}, 404, "unknown exposure_id"),
        ({"user_id": "u007", "item_id": item, "exposure_id": exposure["exposure_id"]}, 409, "another user"),
        ({"user_id": "u006", "item_id": not_shown, "exposure_id": exposure["exposure_id"]}, 409, "not among"),
        ({"user_id": "u006", "item_id": not_shown}, 404, "no exposure of user 'u006' showed item"),
        ({"user_id": "never-served", "item_id": item}, 404, "no exposure of user 'never-served'"),
    ]
    for body, status, message in refusals:
        answer = http.post("/feedback", json={**body, "event": "click"})
        assert answer.status_code == status and message in answer.json()["error"], (body, answer.json())
    assert stored(tmp, "feedback") == []
    # The same click on the item it was shown, by the user it was shown to, is stored.
    ok = http.post("/feedback", json={"user_id": "u006", "item_id": item, "event": "click"})
    assert ok.status_code == 200 and ok.json()["exposure_id"] == exposure["exposure_id"]
    assert [(f["user_id"], f["item_id"]) for f in stored(tmp, "feedback")] == [("u006", item)]


def test_feedback_names_the_experiment_of_its_exposure_across_a_restart(api):
    http, client, tmp, _ = api
    exposure = http.get("/recommend", params={"user_id": "u004", "k": 3}).json()
    before = http.get("/healthz").json()["experiment"]["id"]
    registry.set_ab_config(client, "recpipe", 0.3, salt="s9", who="test")  # a new experiment starts
    http.app.state.router.refresh()
    now_running = http.get("/healthz").json()["experiment"]["id"]
    assert now_running != before
    item = exposure["items"][0]["item_id"]
    late = {"user_id": "u004", "item_id": item, "event": "click", "exposure_id": exposure["exposure_id"]}
    assert http.post("/feedback", json=late).json()["experiment_id"] == before
    # No exposure id: the user's latest exposure that showed the item, so still the experiment it was shown in.
    loose = {"user_id": "u004", "item_id": item, "event": "click"}
    answer = http.post("/feedback", json=loose).json()
    assert answer["experiment_id"] == before and answer["exposure_id"] == exposure["exposure_id"]
    assert [e["experiment_id"] for e in stored(tmp, "feedback")] == [before, before]


def test_an_alias_moved_by_hand_is_served_under_a_derived_experiment_id(api, caplog):
    http, client, tmp, _ = api
    router = http.app.state.router
    registry.set_ab_config(client, "recpipe", 0.5, salt="s1", who="test")
    router.refresh()
    recorded = registry.experiment(client, "recpipe")
    client.set_registered_model_alias("recpipe", C.ALIAS_CHAMPION, "2")  # the MLflow UI, not recpipe
    client.set_registered_model_alias("recpipe", C.ALIAS_CHALLENGER, "1")
    with caplog.at_level("WARNING", logger="recpipe.serve"):
        assert router.refresh()
    health = http.get("/healthz").json()["experiment"]
    assert health["id"].startswith("unrecorded-") and not health["recorded"] and health["stored_id"] == recorded["id"]
    assert (health["champion"], health["challenger"]) == ("2", "1")
    assert "was moved outside recpipe" in caplog.text and health["id"] in caplog.text
    http.get("/recommend", params={"user_id": "u001"})
    assert stored(tmp, "exposures")[-1]["experiment_id"] == health["id"]
    # A record that names what is served again (`recpipe ab`) ends the unrecorded period.
    registry.set_ab_config(client, "recpipe", 0.5, who="test")
    router.refresh()
    assert http.get("/healthz").json()["experiment"]["id"] == registry.experiment(client, "recpipe")["id"]


def test_a_model_error_falls_back_to_cold_start_instead_of_a_500(api):
    http, _, tmp, _ = api
    model = http.app.state.router.served.models["champion"][1]
    # Real failure: the model's item table loses its rows (a corrupted artifact), so scoring raises.
    table = model.recommender.item_table
    model.recommender.item_table = table[:, :1]
    try:
        answer = http.get("/recommend", params={"user_id": "u002", "k": 4})
    finally:
        model.recommender.item_table = table
    assert answer.status_code == 200 and answer.json()["cold_start"] and len(answer.json()["items"]) == 4
    # Logged as a fallback, so ab-report does not credit the fallback list's clicks to the model.
    exposure = stored(tmp, "exposures")[-1]
    assert exposure["exposure_id"] == answer.json()["exposure_id"] and exposure["fallback"] is True


def test_serve_refuses_to_start_without_a_champion(project):
    from pipeline_tasks.serving.server import create_app

    tmp, params, client, _ = project
    client.delete_registered_model_alias("recpipe", C.ALIAS_CHAMPION)
    with pytest.raises(registry.RegistryError, match="no champion to serve"):
        create_app(params, tmp, client=client, poll=False)


def test_bucket_is_uniform_and_salted():
    values = [bucket(f"user{i}", "salt") for i in range(20000)]
    assert all(0 <= v < 1 for v in values)
    assert abs(sum(v < 0.1 for v in values) / len(values) - 0.1) < 0.01
    assert [assign(f"user{i}", 0.5, "a") for i in range(200)] != [assign(f"user{i}", 0.5, "b") for i in range(200)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_recpipe_serve_process_answers_and_reloads_on_alias_move(project):
    import httpx

    tmp, params, client, _ = project
    P.dump(params, tmp / "params.yaml")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != C.TRACKING_URI_ENV}
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline_tasks.ops.cli", "--root", str(tmp), "serve", "--port", str(port)],
        cwd="/",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start in 120 s"
            time.sleep(0.5)
        assert httpx.get(f"{url}/healthz").json()["versions"] == {"champion": "1", "challenger": "2"}
        body = httpx.get(f"{url}/recommend", params={"user_id": "u001", "k": 3}).json()
        assert body["model_version"] == "1" and len(body["items"]) == 3
        assert httpx.get(f"{url}/recommend", params={"user_id": "u001", "k": "x"}).status_code == 422
        registry.promote(client, "recpipe", "2", reason="test promotion", who="test")
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/healthz").json()["versions"].get("champion") != "2":
            assert time.monotonic() < deadline, "the server did not pick up the alias move"
            time.sleep(0.2)
        assert httpx.get(f"{url}/recommend", params={"user_id": "u001"}).json()["model_version"] == "2"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(stored(tmp, "exposures")) >= 2


def start_server(tmp: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`recpipe serve ARGS` on a free loopback port, once /healthz answers."""
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in (C.TRACKING_URI_ENV, event_store.URL_ENV)}
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline_tasks.ops.cli", "--root", str(tmp), "serve", "--port", str(port), *args],
        cwd="/",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, server.stdout.read().decode()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not start in 120 s"
        time.sleep(0.5)


class Traffic:
    """Clients in threads: /recommend, and a click on a third of the answers; records what was acknowledged."""

    def __init__(self, url: str, clients: int = 4):
        import httpx

        self.http = [httpx.Client(base_url=url, timeout=10) for _ in range(clients)]
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.exposures: set[str] = set()
        self.clicks: set[tuple[str, str]] = set()
        self.failed = 0
        self.threads = [threading.Thread(target=self.loop, args=(i,)) for i in range(clients)]

    def loop(self, client: int) -> None:
        import httpx

        n = 0
        while not self.stop.is_set():
            n += 1
            user = f"u{(client * 7 + n) % 60:03d}"
            try:
                answer = self.http[client].get("/recommend", params={"user_id": user, "k": 3})
                if answer.status_code != 200:
                    raise httpx.HTTPError(f"status {answer.status_code}")
                body = answer.json()
                with self.lock:
                    self.exposures.add(body["exposure_id"])
                if n % 3 == 0:
                    click = {"user_id": user, "item_id": body["items"][0]["item_id"], "event": "click"}
                    fed = self.http[client].post("/feedback", json={**click, "exposure_id": body["exposure_id"]})
                    if fed.status_code != 200:
                        raise httpx.HTTPError(f"status {fed.status_code}")
                    with self.lock:
                        self.clicks.add((body["exposure_id"], click["item_id"]))
            except httpx.HTTPError:  # in flight to the killed worker: failed, so never acknowledged
                with self.lock:
                    self.failed += 1

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()
        for http in self.http:
            http.close()


@pytest.mark.slow
def test_two_workers_share_the_store_and_a_killed_worker_loses_nothing_acknowledged(project):
    """`serve --workers 2` under load; kill -9 one worker; ab-report then counts every acknowledged event."""
    tmp, params, client, _ = project
    registry.set_ab_config(client, "recpipe", 0.5, salt="w", who="test")
    P.dump(params, tmp / "params.yaml")
    server, url = start_server(tmp, "--workers", "2")
    try:
        workers = worker_pids(server.pid)
        assert len(workers) == 2, workers
        # Their metrics can add up: one fresh PROMETHEUS_MULTIPROC_DIR for all of them, removed at exit.
        import psutil

        metrics_dirs = {psutil.Process(pid).environ().get("PROMETHEUS_MULTIPROC_DIR") for pid in workers}
        assert len(metrics_dirs) == 1 and Path(next(iter(metrics_dirs))).is_dir(), metrics_dirs
        with Traffic(url) as traffic:
            time.sleep(4)
            victim = sorted(workers)[0]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 90
            while len(worker_pids(server.pid) - {victim}) < 2:  # uvicorn replaces the dead worker
                assert time.monotonic() < deadline, "uvicorn did not restart the killed worker"
                time.sleep(0.5)
            time.sleep(4)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not Path(next(iter(metrics_dirs))).exists()
    exposures, clicks = stored(tmp, "exposures"), stored(tmp, "feedback")
    stored_ids = {e["exposure_id"] for e in exposures}
    assert len(stored_ids) == len(exposures) and len(traffic.exposures) > 20
    # Acknowledged means stored; a request that died with the worker may or may not have been stored.
    assert traffic.exposures <= stored_ids
    assert len(stored_ids - traffic.exposures) <= traffic.failed
    stored_clicks = {(f["exposure_id"], f["item_id"]) for f in clicks}
    assert traffic.clicks <= stored_clicks and len(stored_clicks - traffic.clicks) <= traffic.failed
    # Both workers' events are one experiment's, read back by ab-report from the one store.
    from pipeline_tasks.serving import ab_report

    report = ab_report.run(params, tmp, registry.current_experiment(client, "recpipe"), guardrails=[])
    assert sum(v["exposures"] for v in report["variants"].values()) == len(exposures)
    assert sum(v["clicks"] for v in report["variants"].values()) == len(stored_clicks)


def test_a_store_that_cannot_write_answers_503_not_an_unrecorded_200(api):
    http, _, _, _ = api
    with http.app.state.store.engine.begin() as conn:  # a broken store: its table is gone
        conn.exec_driver_sql("DROP TABLE exposures")
    answer = http.get("/recommend", params={"user_id": "u001", "k": 3})
    assert answer.status_code == 503 and "did not record the exposures row" in answer.json()["error"]
    assert "retry" in answer.json()["error"]

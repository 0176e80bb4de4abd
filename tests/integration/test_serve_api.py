"""The guards of `recpipe serve` on a real registry (v1 champion, v2 challenger in SQLite), and a fuzz.

Limits, the body limit (also chunked, on a live uvicorn), API-key auth, the startup bind check,
/metrics in one process and across two real `recpipe serve` processes, then a property-based fuzz
generated from the app's own OpenAPI schema (schemathesis) that asserts no 5xx and schema-true answers.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline_tasks.core import constants as C
from pipeline_tasks.core import params as P
from pipeline_tasks.serving import api_guard

TESTS = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
# The fuzz's size: examples per (operation, positive|negative); the README quotes the total it sends.
FUZZ_EXAMPLES = int(os.environ.get("RECPIPE_FUZZ_EXAMPLES", "300"))


def serve_helpers():
    spec = importlib.util.spec_from_file_location("serve_fixtures", TESTS / "integration" / "test_serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = serve_helpers()
served_project = helpers.served_project
project = helpers.project
free_port = helpers.free_port


def make_client(project, monkeypatch, key: str | None = KEY, mode: str = "writes"):
    from fastapi.testclient import TestClient

    from pipeline_tasks.serving.server import create_app

    if key is None:
        monkeypatch.delenv(api_guard.API_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(api_guard.API_KEY_ENV, key)
    monkeypatch.setenv(api_guard.API_AUTH_ENV, mode)
    tmp, params, client, _ = project
    return TestClient(create_app(params, tmp, client=client, poll=False))


@pytest.fixture
def api(project, monkeypatch):
    with make_client(project, monkeypatch) as http:
        yield http


def feedback_for(http, user="u003", **extra) -> dict:
    exposure = http.get("/recommend", params={"user_id": user, "k": 3}).json()
    return {"user_id": user, "item_id": exposure["items"][0]["item_id"], "event": "click", **extra}


# --- bounds -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, field",
    [
        ({"user_id": "u" * (api_guard.MAX_ID_CHARS + 1)}, "user_id"),
        ({"user_id": "u001\x00"}, "user_id"),
        ({"user_id": "u001\n"}, "user_id"),
        ({"user_id": "u001", "history": ",".join(f"i{n}" for n in range(api_guard.MAX_HISTORY_ITEMS + 1))}, "history"),
        ({"user_id": "u001", "history": "i00," + "x" * (api_guard.MAX_ID_CHARS + 1)}, "history"),
        ({"user_id": "u001", "k": 1001}, "k"),
    ],
)
def test_out_of_bounds_recommend_inputs_get_422_naming_the_field(api, query, field):
    stored = api.app.state.store.counts()
    answer = api.get("/recommend", params=query)
    body = answer.json()
    assert answer.status_code == 422, body
    assert body["error"].startswith("invalid request: ") and field in body["error"]
    assert body["detail"] and all(len(json.dumps(e)) < 2000 for e in body["detail"])  # echoes are cut short
    assert api.app.state.store.counts() == stored  # nothing served, nothing exposed


def test_inputs_at_the_bounds_are_served(api):
    longest = "u" * api_guard.MAX_ID_CHARS
    history = ",".join(f"i{n:02d}" for n in range(api_guard.MAX_HISTORY_ITEMS))
    answer = api.get("/recommend", params={"user_id": longest, "history": history, "k": 1000})
    assert answer.status_code == 200 and answer.json()["user_id"] == longest


@pytest.mark.parametrize(
    "change, field",
    [
        ({"user_id": "u" * 129}, "user_id"),
        ({"item_id": "i\x07"}, "item_id"),
        ({"exposure_id": "e" * 129}, "exposure_id"),
        ({"user_id": "\ud800"}, "user_id"),  # valid JSON, not valid UTF-8: once a 500 in the error echo
    ],
)
def test_out_of_bounds_feedback_gets_422(api, change, field):
    body = json.dumps({**feedback_for(api), **change}).encode()  # json.dumps escapes the surrogate
    answer = api.post("/feedback", content=body, headers={**AUTH, "content-type": "application/json"})
    assert answer.status_code == 422 and field in answer.json()["error"], answer.text


def test_a_body_over_the_limit_gets_413_before_it_is_parsed(api):
    stored = api.app.state.store.counts()
    oversize = b'{"user_id": "' + b"u" * api_guard.MAX_BODY_BYTES + b'"}'
    answer = api.post("/feedback", content=oversize, headers={**AUTH, "content-type": "application/json"})
    assert answer.status_code == 413 and "request body too large" in answer.json()["error"]
    assert answer.json()["detail"]["limit_bytes"] == api_guard.MAX_BODY_BYTES
    assert api.app.state.store.counts() == stored


@pytest.fixture
def live(project, monkeypatch):
    """The app on a real uvicorn in a thread (a TestClient does not send chunked bodies)."""
    import uvicorn

    with make_client(project, monkeypatch) as http:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(http.app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def test_a_chunked_body_without_content_length_is_cut_at_the_limit(live):
    import httpx

    sent = []

    def chunks():  # 64 KiB in 1 KiB chunks; the server must refuse after ~16
        for _ in range(64):
            sent.append(1)
            yield b"x" * 1024

    answer = httpx.post(f"{live}/feedback", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["detail"]["limit_bytes"] == api_guard.MAX_BODY_BYTES
    small = httpx.post(f"{live}/feedback", content=iter([b'{"user_id": "u1",', b' "item_id": "i1", "event": "click"}']))
    assert small.status_code == 401  # a small chunked body reaches the app (here: the auth check)


# --- authentication ---------------------------------------------------------------------------------


def test_feedback_needs_the_key_and_reads_do_not_by_default(api):
    event = feedback_for(api)
    missing = api.post("/feedback", json=event)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    error = missing.json()["error"]
    assert "missing API key" in error and "Authorization: Bearer" in error and "X-API-Key" in error
    assert api_guard.API_KEY_ENV in error
    wrong = api.post("/feedback", json=event, headers={"X-API-Key": KEY + "x"})
    assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]
    assert api.post("/feedback", json=event, headers={"Authorization": "Basic abc"}).status_code == 401
    assert api.post("/feedback", json=event, headers=AUTH).status_code == 200
    assert api.post("/feedback", json=event, headers={"X-API-Key": KEY}).status_code == 200
    assert api.get("/recommend", params={"user_id": "u001"}).status_code == 200
    assert api.get("/metrics").status_code == 200


def test_auth_all_guards_reads_but_never_healthz(project, monkeypatch):
    with make_client(project, monkeypatch, mode="all") as http:
        assert http.get("/recommend", params={"user_id": "u001"}).status_code == 401
        assert http.get("/metrics").status_code == 401
        assert http.get("/recommend", params={"user_id": "u001"}, headers=AUTH).status_code == 200
        assert http.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
        assert http.get("/healthz").status_code == 200


def test_without_a_key_loopback_is_open_and_a_reachable_bind_is_refused(project, monkeypatch):
    with make_client(project, monkeypatch, key=None) as http:
        assert http.post("/feedback", json=feedback_for(http)).status_code == 200
    no_key = api_guard.ApiAuth.from_env({})
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert api_guard.API_KEY_ENV in api_guard.check_bind(host, no_key)
    for host in ("0.0.0.0", "::", "10.1.2.3", "serving.example.com"):
        with pytest.raises(api_guard.ApiConfigError, match=f"without an API key.*Set {api_guard.API_KEY_ENV}"):
            api_guard.check_bind(host, no_key)
    assert api_guard.check_bind("0.0.0.0", api_guard.ApiAuth.from_env({api_guard.API_KEY_ENV: KEY})) is None
    with pytest.raises(api_guard.ApiConfigError, match="writes, all"):
        api_guard.ApiAuth.from_env({api_guard.API_AUTH_ENV: "everything"})


def test_recpipe_serve_refuses_a_public_bind_without_a_key(project):
    tmp, params, _, _ = project
    P.dump(params, tmp / "params.yaml")
    env = {k: v for k, v in os.environ.items() if k not in (C.TRACKING_URI_ENV, api_guard.API_KEY_ENV)}
    cmd = [sys.executable, "-m", "pipeline_tasks.ops.cli", "--root", str(tmp), "serve", "--host", "0.0.0.0"]
    done = subprocess.run(cmd, cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "refusing to serve on 0.0.0.0 without an API key" in done.stderr + done.stdout


# --- /metrics ---------------------------------------------------------------------------------------


def samples(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {series(name, **labels): value}; a multi-process `pid` label is dropped."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
            pairs.pop("pid", None)
            out[key(name, **pairs)] = out.get(key(name, **pairs), 0.0) + float(value)
    return out


def key(name: str, **labels: str) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def test_metrics_count_requests_latency_fallbacks_feedback_and_served_versions(api):
    for user in ("u001", "u002", "u003"):
        assert api.get("/recommend", params={"user_id": user, "k": 2}).status_code == 200
    api.get("/recommend", params={"user_id": ""})  # 422
    api.post("/feedback", json=feedback_for(api, user="u004"), headers=AUTH)  # +1 recommend, +1 feedback
    api.post("/feedback", json={"user_id": "u004"})  # 401
    model = api.app.state.router.served.models["champion"][1]
    table = model.recommender.item_table
    model.recommender.item_table = table[:, :1]  # a corrupted artifact: scoring raises, fallback answers
    try:
        assert api.get("/recommend", params={"user_id": "u002", "k": 2}).json()["cold_start"]
    finally:
        model.recommender.item_table = table
    answer = api.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain")
    got = samples(answer.text)
    versions = {u: api.app.state.router.recommend(u, 1)["variant"] for u in ("u001", "u002", "u003", "u004")}
    assert set(versions.values()) == {"champion"}  # share 0: every user on v1
    assert got[key("recpipe_http_requests_total", endpoint="/recommend", method="GET", status="200")] == 5
    assert got[key("recpipe_http_requests_total", endpoint="/recommend", method="GET", status="422")] == 1
    assert got[key("recpipe_http_requests_total", endpoint="/feedback", method="POST", status="200")] == 1
    assert got[key("recpipe_http_requests_total", endpoint="/feedback", method="POST", status="401")] == 1
    assert got[key("recpipe_recommend_latency_seconds_count", variant="champion", model_version="1")] == 5
    assert got[key("recpipe_recommend_latency_seconds_bucket", variant="champion", model_version="1", le="5.0")] == 5
    assert got[key("recpipe_recommend_fallbacks_total", variant="champion", model_version="1")] == 1
    assert got[key("recpipe_feedback_events_total", event="click", variant="champion")] == 1
    assert got[key("recpipe_served_model", alias="champion", version="1")] == 1
    assert got[key("recpipe_served_model", alias="challenger", version="2")] == 1


def start_serve(tmp: Path, port: int, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline_tasks.ops.cli", "--root", str(tmp), "serve", "--port", str(port)]
    return subprocess.Popen(cmd, cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_healthy(httpx, url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, server.stdout.read().decode()
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server did not start in 120 s"
        time.sleep(0.3)


@pytest.mark.slow
def test_metrics_add_up_across_two_server_processes_sharing_a_multiprocess_dir(project, tmp_path):
    import httpx

    tmp, params, client, _ = project
    P.dump(params, tmp / "params.yaml")
    shared = tmp_path / "prom"
    shared.mkdir()
    env = {k: v for k, v in os.environ.items() if k != C.TRACKING_URI_ENV}
    env.update({"PROMETHEUS_MULTIPROC_DIR": str(shared), api_guard.API_KEY_ENV: KEY})
    ports = [free_port(), free_port()]
    servers = [start_serve(tmp, port, env) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, server in zip(urls, servers):
            wait_healthy(httpx, url, server)
        shown = {}
        for n, url in enumerate(urls):  # 3 answers from the first process, 4 from the second
            for user in range(3 + n):
                answer = httpx.get(f"{url}/recommend", params={"user_id": f"u{user:03d}"})
                assert answer.status_code == 200
                shown[f"u{user:03d}"] = answer.json()["items"][0]["item_id"]
        # Feedback must name an item the user was shown (else 404): the model's pick, whatever it is.
        event = {"user_id": "u001", "item_id": shown["u001"], "event": "purchase"}
        assert httpx.post(f"{urls[1]}/feedback", json=event, headers=AUTH).status_code == 200
        got = samples(httpx.get(f"{urls[0]}/metrics").text)  # either process answers for both
        assert got[key("recpipe_http_requests_total", endpoint="/recommend", method="GET", status="200")] == 7
        assert got[key("recpipe_recommend_latency_seconds_count", variant="champion", model_version="1")] == 7
        assert got[key("recpipe_feedback_events_total", event="purchase", variant="champion")] == 1
        served = [line for line in httpx.get(f"{urls[1]}/metrics").text.splitlines() if "recpipe_served_model{" in line]
        pids = {re.search(r'pid="(\d+)"', line).group(1) for line in served}
        assert pids == {str(s.pid) for s in servers}  # one live series per process
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)


# --- the fuzz ---------------------------------------------------------------------------------------


def test_fuzz_the_api_from_its_openapi_schema(project, monkeypatch, record_property):
    """Positive and negative cases for every operation, with every schemathesis check: no 5xx,
    status codes, content types and bodies as the schema declares them, auth not ignored."""
    import schemathesis

    with make_client(project, monkeypatch, mode="all") as http:
        # The key as configured auth: positive cases carry it (and schemathesis probes each guarded
        # operation without it and with a wrong one); negative cases may also break the auth headers.
        keys = {"APIKeyHeader": {"api_key": KEY}, "HTTPBearer": {"bearer": KEY}}
        config = schemathesis.Config.from_dict({"auth": {"openapi": keys}})
        schema = schemathesis.openapi.from_asgi("/openapi.json", http.app, config=config)
        tried: collections.Counter = collections.Counter()
        for result in schema.get_all_operations():
            operation = result.ok()
            takes_input = any(operation.iter_parameters()) or len(operation.body.items) > 0
            # Negative cases need an input to break: /healthz and /metrics take none.
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)[: 1 + takes_input]:
                fuzz_operation(operation, mode, tried)
        metrics = samples(http.get("/metrics", headers=AUTH).text)
    # What the app itself counted (its own request counter): checks may re-send a case (e.g. without auth).
    received = {k: v for k, v in metrics.items() if k.startswith("recpipe_http_requests_total")}
    sent = int(sum(received.values())) - 1  # less schemathesis' read of /openapi.json
    report = {
        "cases": dict(tried),
        "cases_total": sum(tried.values()),
        "requests_received": sent,
        "by_status": received,
    }
    print("fuzz:", json.dumps(report, indent=1))
    record_property("fuzz_requests", sent)
    assert not any('status="5' in k for k in received), received
    assert sum(tried.values()) >= 1000 and sent >= sum(tried.values())


def fuzz_operation(operation, mode, tried: collections.Counter) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    label = f"{operation.label} {mode.value}"

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        tried[label] += 1
        case.call_and_validate()

    fuzz()

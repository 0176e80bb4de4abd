"""In a real browser: log in to a live Airflow, fill recpipe_manual's trigger form, see the run succeed.

A live Airflow (api-server, scheduler, dag-processor; LocalExecutor, SQLite) runs on loopback
on a tiny project; headless Chromium (Debian's chromium + chromedriver) is driven by Selenium.
The screenshot of the filled form is saved as reports/browser/trigger_form.png of this checkout.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SCREENSHOTS = PROJECT_ROOT / "reports" / "browser"
USER, PASSWORD = "admin", secrets.token_urlsafe(12)
# On top of the tiny project: the run through the scheduler does the least work that still runs every stage.
SMALLEST_RUN = [
    "tune.n_trials=1",
    "baselines.models=[Pop]",
    "compress.variants=[fp32]",
    "evaluate.bootstrap_resamples=50",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver: "
        "apt-get install -y chromium chromium-driver (.ci/run does it)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_env(home: Path, project: Path, port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RECPIPE_PARENT_RUN_ID")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(project / "dags"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),  # the same for every component
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "RECPIPE_PROJECT_DIR": str(project),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        }
    )
    return env


def wait_for(check, timeout: float, what: str, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_json(url: str, token: str | None = None, data: dict | None = None, method: str | None = None) -> dict | None:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(
        url,
        data=json.dumps(data).encode() if data is not None else None,
        headers=headers,
        method=method or ("POST" if data is not None else "GET"),
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")
    except OSError:
        return None


@pytest.fixture
def live_airflow(tiny_project: Path, tmp_path: Path):
    """api-server + scheduler + dag-processor on a free loopback port; stopped (by pid) at the end."""
    from pipeline_tasks.core import params as P

    P.dump(P.load(tiny_project / "params.yaml", SMALLEST_RUN), tiny_project / "params.yaml")
    home = tmp_path / "airflow"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps({USER: PASSWORD}))
    port = free_port()
    env = airflow_env(home, tiny_project, port)
    migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    procs = []
    for component in ("api-server", "scheduler", "dag-processor"):
        log = open(home / f"{component}.log", "w")
        procs.append(
            subprocess.Popen(
                [str(BIN / "airflow"), component],
                env=env,
                cwd=tiny_project,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_json(f"{url}/api/v2/monitor/health"), 180, "the api-server")
        token = http_json(f"{url}/auth/token", data={"username": USER, "password": PASSWORD})["access_token"]
        wait_for(
            lambda: (http_json(f"{url}/api/v2/dags/recpipe_manual", token) or {}).get("dag_id"),
            240,
            "the dag-processor to parse recpipe_manual",
        )
        # DAGs start paused: only recpipe_manual runs here (a nightly run in the same checkout would
        # compete for DVC's repository lock).
        assert http_json(f"{url}/api/v2/dags/recpipe_manual", token, {"is_paused": False}, "PATCH")
        yield {"url": url, "token": token, "project": tiny_project, "home": home}
    finally:
        for proc in procs:  # each component leads its own process group (its workers included)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1800",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def log_in(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/")  # anonymous: sent to the login page
    WebDriverWait(driver, 60).until(EC.presence_of_element_located((By.NAME, "username")))
    assert "/auth/login" in driver.current_url, "Airflow let an anonymous browser in"
    driver.find_element(By.NAME, "username").send_keys(USER)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.XPATH, "//button[@type='submit']").click()
    WebDriverWait(driver, 60).until(lambda d: "/auth/login" not in d.current_url)


def open_trigger_form(driver, url: str, dag_id: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/dags/{dag_id}")
    WebDriverWait(driver, 60).until(
        EC.element_to_be_clickable((By.CSS_SELECTOR, "button[aria-label='Trigger Dag']"))
    ).click()
    return WebDriverWait(driver, 60).until(
        lambda d: next(
            (e for e in d.find_elements(By.CSS_SELECTOR, "[role='dialog']") if f"Trigger Dag - {dag_id}" in e.text),
            None,
        )
    )


def field(form, name: str):
    """A form field's input: the UI names each one `element_<param>`."""
    from selenium.webdriver.common.by import By

    return form.find_element(By.CSS_SELECTOR, f"input[name='element_{name}']")


def test_trigger_form_in_a_browser_runs_the_pipeline(live_airflow: dict, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from pipeline_tasks.core import params as P
    from pipeline_tasks.ops.form import FIELDS, OPERATOR_FIELDS, field_name

    url, project = live_airflow["url"], live_airflow["project"]
    params = P.load(project / "params.yaml")
    log_in(browser, url)
    form = open_trigger_form(browser, url, "recpipe_manual")

    # Every field generated from params.yaml is there, showing params.yaml's value; so are the operator actions.
    for dotted, (title, _, _) in FIELDS.items():
        assert title in form.text, f"form has no field {title!r} ({dotted})"
        value = P.get_dotted(params, dotted)
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            assert field(form, field_name(dotted)).get_attribute("value") == str(value), dotted
    for name, spec in OPERATOR_FIELDS.items():
        assert spec["title"] in form.text and field(form, name) is not None
    assert params["train"]["epochs"] == 2  # the tiny project

    # Change one field (train.epochs 2 -> 1) and trigger.
    epochs = field(form, "train__epochs")
    epochs.send_keys(Keys.CONTROL, "a")
    epochs.send_keys("1", Keys.TAB)
    assert epochs.get_attribute("value") == "1"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "trigger_form.png"))
    trigger = [b for b in form.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"][-1]
    assert trigger.is_enabled(), "the form refused valid values"
    trigger.click()

    runs_url = f"{url}/api/v2/dags/recpipe_manual/dagRuns"
    token = live_airflow["token"]
    run = wait_for(
        lambda: next(iter((http_json(runs_url, token) or {}).get("dag_runs", [])), None), 60, "the triggered run"
    )
    assert run["conf"]["train__epochs"] == 1, run["conf"]
    run_url = f"{runs_url}/{urllib.parse.quote(run['dag_run_id'])}"
    state = wait_for(
        lambda: (lambda r: r["state"] if r and r["state"] in ("success", "failed") else None)(
            http_json(run_url, token)
        ),
        2700,
        "the triggered run to finish",
        every=10,
    )
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in live_airflow["home"].rglob("*.log"))
    assert state == "success", logs[-12000:]

    # The changed value reached the stages through the run's params (params.yaml, the nightly
    # configuration, is unchanged), and the run registered a model.
    assert P.load(project / "params.run.yaml")["train"]["epochs"] == 1
    assert P.load(project / "params.yaml")["train"]["epochs"] == 2
    assert "train.epochs=1" in json.loads((project / "reports" / "params_used.json").read_text())["overrides"]
    assert json.loads((project / "metrics" / "train.json").read_text())["epochs"] == 1
    assert (project / "metrics" / "register.json").exists()

    # The run page in the browser says so too.
    browser.get(f"{url}/dags/recpipe_manual/runs/{urllib.parse.quote(run['dag_run_id'])}")
    wait_for(lambda: "success" in browser.page_source.lower(), 60, "the run page")
    browser.save_screenshot(str(SCREENSHOTS / "run_succeeded.png"))

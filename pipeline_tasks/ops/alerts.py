"""Alerts an on-call engineer reads: a failed run, or a model trained but not promoted.

Every alert is appended to reports/alerts.jsonl and logged. When an Airflow connection
named `recpipe_alerts` exists (an HTTP connection: host = the webhook URL), the alert is
also POSTed there as JSON. A webhook that fails never fails the pipeline.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from pipeline_tasks.core import constants as C

log = logging.getLogger("recpipe.alerts")
WEBHOOK_CONNECTION = "recpipe_alerts"


def record(kind: str, message: str, root: Path, **details) -> dict:
    """Append one alert to reports/alerts.jsonl, log it, and send it to the webhook if configured."""
    alert = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "kind": kind, "message": message, **details}
    path = Path(root) / C.REPORTS_DIR / "alerts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(alert, default=str) + "\n")
    log.error("ALERT [%s] %s", kind, message)
    send_webhook(alert)
    return alert


def recorded(root: Path, kind: str, run_id: str | None) -> bool:
    """Is there already an alert of this kind for this DAG run? (one alert per failure, not two)"""
    path = Path(root) / C.REPORTS_DIR / "alerts.jsonl"
    if run_id is None or not path.exists():
        return False
    for line in path.read_text(encoding="utf-8").splitlines():
        alert = json.loads(line) if line.strip() else {}
        if alert.get("kind") == kind and alert.get("run_id") == run_id:
            return True
    return False


def webhook_url() -> str | None:
    try:
        from airflow.sdk import BaseHook

        connection = BaseHook.get_connection(WEBHOOK_CONNECTION)
    except Exception:  # noqa: BLE001 - no Airflow, or no such connection: alerts stay local
        return None
    host = connection.host or ""
    return host if host.startswith("http") else f"{connection.schema or 'https'}://{host}"


def send_webhook(alert: dict, url: str | None = None) -> None:
    url = url or webhook_url()
    if not url:
        return
    # urlopen also opens file: and ftp: URLs; a webhook is HTTP(S) or a misconfiguration.
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        log.warning(
            "alert webhook %s is not an http(s) URL: not sent (set the host of Airflow connection %s to one); "
            "the alert is in reports/alerts.jsonl",
            url,
            WEBHOOK_CONNECTION,
        )
        return
    request = urllib.request.Request(
        url, data=json.dumps(alert, default=str).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()  # nosec B310 # scheme checked above: http(s) only
    except OSError as err:
        log.warning("alert webhook %s did not answer (%s); the alert is in reports/alerts.jsonl", url, err)


def not_promoted(root: Path) -> dict | None:
    """Why this run's registered model is not the champion: the failing gate checks and their numbers.

    None when metrics/register.json is missing or the version is the champion. Reads the gate's
    decision as register writes it (checks: [{name, passed, detail}], challenger/champion NDCG@10).
    """
    path = Path(root) / C.METRICS_DIR / "register.json"
    if not path.exists():
        return None
    register = json.loads(path.read_text(encoding="utf-8"))
    if C.ALIAS_CHAMPION in register.get("aliases", []):
        return None
    decision = register.get("decision", {})
    failed = {c["name"]: c.get("detail", "") for c in decision.get("checks", []) if not c.get("passed")}
    if failed:
        reason = "gate FAILED: " + "; ".join(f"{name}: {detail}" for name, detail in failed.items())
    elif decision.get("passed"):
        reason = (
            "passed the gate but register.auto_promote is false: promote it with the recpipe_promote DAG "
            f"or `recpipe promote {register.get('version')}`"
        )
    else:
        reason = decision.get("summary") or "the gate did not promote it"
    return {
        "reason": reason,
        "model_name": register.get("model_name"),
        "version": register.get("version"),
        "failed_checks": failed,
        "challenger_ndcg": decision.get("challenger_ndcg"),
        "champion_ndcg": decision.get("champion_ndcg"),
        "champion_version": decision.get("champion_version"),
    }

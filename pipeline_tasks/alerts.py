"""Alerts an on-call engineer reads: a failed run, or a model trained but not promoted.

Every alert is appended to reports/alerts.jsonl and logged. When an Airflow connection
named `recpipe_alerts` exists (an HTTP connection: host = the webhook URL), the alert is
also POSTed there as JSON. A webhook that fails never fails the pipeline.
"""
from __future__ import annotations

import json
import logging
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from pipeline_tasks import constants as C

log = logging.getLogger("recpipe.alerts")
WEBHOOK_CONNECTION = "recpipe_alerts"


def record(kind: str, message: str, root: Path, **details) -> dict:
    """Append one alert to reports/alerts.jsonl, log it, and send it to the webhook if configured."""
    alert = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kind": kind,
             "message": message, **details}
    path = Path(root) / C.REPORTS_DIR / "alerts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(alert, default=str) + "\n")
    log.error("ALERT [%s] %s", kind, message)
    send_webhook(alert)
    return alert


def webhook_url() -> str | None:
    try:
        from airflow.sdk import BaseHook

        connection = BaseHook.get_connection(WEBHOOK_CONNECTION)
    except Exception:  # noqa: BLE001 - no Airflow, or no such connection: alerts stay local
        return None
    host = connection.host or ""
    return host if host.startswith("http") else f"{connection.schema or 'https'}://{host}"


def send_webhook(alert: dict) -> None:
    url = webhook_url()
    if not url:
        return
    request = urllib.request.Request(url, data=json.dumps(alert, default=str).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except OSError as err:
        log.warning("alert webhook %s did not answer (%s); the alert is in reports/alerts.jsonl", url, err)


def not_promoted_reason(root: Path) -> str | None:
    """The gate's reason when this run's model was registered but not made champion."""
    path = Path(root) / C.METRICS_DIR / "register.json"
    if not path.exists():
        return None
    register = json.loads(path.read_text(encoding="utf-8"))
    if C.ALIAS_CHAMPION in register.get("aliases", []):
        return None
    decision = register.get("decision", {})
    return decision.get("summary") or "the gate did not promote it"

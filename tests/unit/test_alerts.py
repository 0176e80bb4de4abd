"""The alert webhook: POSTs JSON to an http(s) URL, refuses any other scheme (urlopen would open it)."""

from __future__ import annotations

import http.server
import json
import logging
import threading

from pipeline_tasks.ops import alerts


def test_webhook_posts_json_to_http_and_refuses_other_schemes(tmp_path, caplog):
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        alerts.send_webhook({"kind": "run_failed"}, f"http://127.0.0.1:{server.server_port}/hook")
    finally:
        server.shutdown()
    assert received == [{"kind": "run_failed"}]

    local_file = tmp_path / "not-a-webhook.json"
    local_file.write_text("{}")
    with caplog.at_level(logging.WARNING, logger="recpipe.alerts"):
        alerts.send_webhook({"kind": "run_failed"}, local_file.as_uri())
    assert "is not an http(s) URL: not sent" in caplog.text and alerts.WEBHOOK_CONNECTION in caplog.text

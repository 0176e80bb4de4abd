"""Prometheus metrics of `recpipe serve` (GET /metrics), correct with one process or several.

- One process: the metrics live in the app's own CollectorRegistry (not the global one, so two
  apps in one process, e.g. tests, do not collide).
- Several worker processes: when `PROMETHEUS_MULTIPROC_DIR` names a directory before
  prometheus_client is imported, every worker writes its values to files there, and /metrics
  (answered by whichever worker) aggregates all of them with a MultiProcessCollector:
  counters and histograms summed over workers, the served-model gauge one series per live
  worker (`pid` label: workers poll aliases independently, so during a reload they may differ).
  The process manager should call `mark_worker_dead(pid)` when a worker exits, so its gauge goes.

Series (labels bounded: endpoints and methods outside the API count as "other"):
  recpipe_http_requests_total{endpoint, method, status}
  recpipe_recommend_latency_seconds{variant, model_version}   (histogram)
  recpipe_recommend_fallbacks_total{variant, model_version}   (model error -> cold-start list)
  recpipe_served_model{alias, version}                        (1 = served now, 0 = served earlier)
  recpipe_feedback_events_total{event, variant}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from starlette.responses import Response

log = logging.getLogger("recpipe.serve")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ENDPOINTS = ("/recommend", "/feedback", "/healthz", "/metrics")
METHODS = ("GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE")
# One request is ~5 ms on a quiet CPU (one user-tower pass + top-K); the tail reaches seconds
# when cores are contended, so the buckets span 1 ms .. 5 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# The format generate_latest writes (prometheus_client's CONTENT_TYPE_PLAIN_0_0_4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENAPI_200 = {
    200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
}


class MetricsResponse(Response):
    """The /metrics answer. Its class has no media type on purpose: FastAPI then documents the route's
    error answers as the JSON they are (with text/plain it listed them as text); 200 is OPENAPI_200."""

    def __init__(self, content: bytes = b"", status_code: int = 200):
        super().__init__(content, status_code=status_code, media_type=CONTENT_TYPE)


def multiprocess_dir() -> str | None:
    """The shared metrics directory when multi-process mode is on for this process, else None."""
    from prometheus_client import values

    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if not os.path.isdir(path):
        raise ValueError(f"{MULTIPROC_ENV}={path!r} is not a directory: create it (empty) before the workers start")
    if not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client picks its value store at import: it was imported before the variable was set.
        log.warning("%s set after prometheus_client was imported: /metrics shows this process only", MULTIPROC_ENV)
        return None
    return path


class ServingMetrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.shared_dir = multiprocess_dir()
        self.registry = CollectorRegistry()
        reg = {"registry": self.registry}
        labels = ["endpoint", "method", "status"]
        self.requests = Counter("recpipe_http_requests", "HTTP requests by endpoint, method, status", labels, **reg)
        self.latency = Histogram(
            "recpipe_recommend_latency_seconds",
            "Time to answer /recommend (routing, model, exposure log)",
            ["variant", "model_version"],
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.fallbacks = Counter(
            "recpipe_recommend_fallbacks",
            "/recommend answers served by the cold-start list after a model error",
            ["variant", "model_version"],
            **reg,
        )
        self.served = Gauge(
            "recpipe_served_model",
            "1 for each alias and the version this process serves now; 0 for versions it served before",
            ["alias", "version"],
            multiprocess_mode="liveall",
            **reg,
        )
        self.feedback = Counter("recpipe_feedback_events", "Feedback events accepted", ["event", "variant"], **reg)
        self.last_served: object = None
        self.shown: set[tuple[str, str]] = set()

    def observe_recommendation(self, variant: str, version: str, seconds: float, fallback: bool) -> None:
        self.latency.labels(variant, version).observe(seconds)
        if fallback:
            self.fallbacks.labels(variant, version).inc()

    def observe_served(self, served) -> None:
        """Update the served-model gauge when the router's snapshot changed (cheap identity check)."""
        if served is None or served is self.last_served:
            return
        now = {(variant, version) for variant, (version, _) in served.models.items()}
        for alias, version in self.shown - now:
            self.served.labels(alias, version).set(0)
        for alias, version in now:
            self.served.labels(alias, version).set(1)
        self.shown |= now
        self.last_served = served

    def exposition(self) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        if self.shared_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.shared_dir)
        return generate_latest(merged)


def mark_worker_dead(pid: int) -> None:
    """For the process manager: drop a dead worker's live gauges from the shared directory."""
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


class RequestMetrics:
    """ASGI middleware: counts every request by endpoint, method and final status (413s and 401s too)."""

    def __init__(self, app, metrics: ServingMetrics, served: Callable[[], object]):
        self.app, self.metrics, self.served = app, metrics, served

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.metrics.observe_served(self.served())
        status = {"code": 500}  # an exception escaping the app is what the server answers 500 for

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(endpoint, method, str(status["code"])).inc()


def install(app, served: Callable[[], object], dependencies: list, responses: dict) -> ServingMetrics:
    """The counting middleware (added after the body limit, so outermost: it sees the 413s too) and
    GET /metrics, guarded by `dependencies` (the read auth); returns the metrics to record into."""
    metrics = ServingMetrics()
    app.add_middleware(RequestMetrics, metrics=metrics, served=served)

    @app.get(
        "/metrics",
        response_class=MetricsResponse,
        dependencies=dependencies,
        responses={**OPENAPI_200, **responses},
        summary="Prometheus metrics (text exposition format)",
    )
    def prometheus():  # no return annotation: FastAPI would resolve it from module globals
        return MetricsResponse(metrics.exposition())

    return metrics

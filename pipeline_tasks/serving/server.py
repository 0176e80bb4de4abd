"""`recpipe serve`: the A/B recommendation server (FastAPI + uvicorn).

- Loads `champion` and `challenger` from the registry by alias, the A/B config (challenger
  share, bucketing salt) stored next to them (`recpipe ab`), and the experiment they form
  (registry.py). An experiment record that does not name the aliased versions (an alias moved
  by hand) is replaced by an `unrecorded-` id derived from what is served, with a warning.
- Assigns each user to a variant by a stable hash of salt + user id: a user sees the same
  variant on every request and on every server, and raising the share only moves users
  from champion to challenger, never back.
- `GET /recommend?user_id=U&k=10[&history=i1,i2]` -> user_id, variant, model_version, items
  [{item_id, score}], exposure_id, cold_start. Unknown users get the cold-start list (popular
  and fresh items); a model error falls back to the same list (logged), never a 500.
- Every answer of /recommend is an exposure in the event store (event_store.py: SQLite by
  default, PostgreSQL via $RECPIPE_EVENT_STORE_URL), committed before the answer is sent: an
  answered request is a stored exposure, and a store that cannot write is a 503, never a silent
  loss. Exposures carry experiment_id and `fallback` (answered by the cold-start list after a
  model error).
- `POST /feedback` {user_id, item_id, event: click|purchase, exposure_id?} is stored only when it
  matches a stored exposure: 404 for an unknown exposure_id, 409 when that exposure was another
  user's or did not show item_id. Without exposure_id it goes to the user's latest exposure that
  showed the item (404 if none). It carries its exposure's variant and experiment_id.
- `GET /healthz`: the versions being served, the A/B config and the experiment.
- `GET /metrics`: Prometheus (metrics.py). Bounded inputs, body limit, API key, startup bind check:
  api_guard.py; every bad input is a 4xx `{"error", "detail"}`; answer shapes: api_models.py.
- Every `register.serve_poll_s` a background thread re-reads aliases, the A/B config and the
  experiment and swaps in newly aliased versions (loaded first, then switched in one assignment).
- How it runs (one process, or N uvicorn workers sharing the event store): launch.py.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from pipeline_tasks.core import constants as C
from pipeline_tasks.serving import api_guard, event_store, registry
from pipeline_tasks.serving import metrics as serving_metrics
from pipeline_tasks.serving.api_guard import ID_PATTERN, MAX_HISTORY_CHARS, MAX_HISTORY_ITEMS, MAX_ID_CHARS
from pipeline_tasks.serving.api_models import FeedbackLogged, Health, IdField, Recommendation

log = logging.getLogger("recpipe.serve")

CHAMPION, CHALLENGER = "champion", "challenger"
MAX_K = 1000
FEEDBACK_ERRORS = {
    404: {"description": "no such exposure (or, without exposure_id, none of the user's showed the item)"},
    409: {"description": "the exposure was another user's, or did not show item_id: not recorded"},
    503: {"description": "the event store cannot record it now: not acknowledged, retry"},
}
# Shown for a field that fails validation (FastAPI's own message is kept in `detail`).
ID_RULE = f"1..{MAX_ID_CHARS} characters, no control characters"
FIELD_HINTS = {
    "k": f"k must be a positive integer (1..{MAX_K})",
    "user_id": f"user_id is required: a string of {ID_RULE} (an unknown id gets cold-start recommendations)",
    "event": "event must be 'click' or 'purchase'",
    "item_id": f"item_id is required: the recommended item the user acted on ({ID_RULE})",
    "exposure_id": f"exposure_id: the exposure_id of a /recommend answer ({ID_RULE})",
    "history": f"history: at most {MAX_HISTORY_ITEMS} comma-separated item ids of at most {MAX_ID_CHARS} characters",
}


class Feedback(BaseModel):
    """POST /feedback body (module level: FastAPI resolves the annotation from module globals)."""

    user_id: str = IdField()
    item_id: str = IdField()
    event: Literal["click", "purchase"]
    # From the /recommend answer; without it, the user's latest exposure that showed item_id.
    exposure_id: str | None = IdField(default=None)


def bucket(user_id: str, salt: str) -> float:
    """A stable number in [0, 1) for (salt, user): the same on every server and every run."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(user_id: str, share: float, salt: str) -> str:
    return CHALLENGER if bucket(user_id, salt) < share else CHAMPION


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class Served:
    """What the server answers with right now; replaced as a whole on reload, never mutated."""

    models: dict[str, tuple[str, object]]  # variant -> (version, RecpipePyfunc)
    share: float
    salt: str
    ab: dict = field(default_factory=dict)
    experiment: dict = field(default_factory=dict)  # registry.served_experiment: at least "id"


def load_version(name: str, version: str):
    """The registered pyfunc's Python object (load_context done): what predict() calls."""
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()


def no_champion(name: str) -> registry.RegistryError:
    return registry.RegistryError(
        f"{name} has no champion to serve: run the pipeline (`make run`) or `recpipe promote VERSION --reason TEXT`"
    )


class Router:
    """Champion/challenger models by alias, the A/B split, and the reload loop."""

    def __init__(self, client, name: str, loader: Callable = load_version):
        self.client, self.name, self.loader = client, name, loader
        self.cache: dict[str, object] = {}
        self.served: Served | None = None

    def model(self, version: str):
        if version not in self.cache:
            self.cache[version] = self.loader(self.name, version)
        return self.cache[version]

    def refresh(self) -> bool:
        """Re-read aliases and the A/B config; True when what is served changed."""
        current = registry.aliases(self.client, self.name)
        champion, challenger = current.get(C.ALIAS_CHAMPION), current.get(C.ALIAS_CHALLENGER)
        if champion is None:
            if self.served is None:
                raise no_champion(self.name)
            log.error(
                "alias champion disappeared from %s; still serving v%s", self.name, self.served.models[CHAMPION][0]
            )
            return False
        models = {CHAMPION: (champion, self.model(champion))}
        if challenger and challenger != champion:  # the same version on both sides is no experiment
            try:
                models[CHALLENGER] = (challenger, self.model(challenger))
            except Exception:  # noqa: BLE001 - a broken challenger must not stop the champion serving
                log.exception("challenger v%s does not load; serving champion only", challenger)
        ab = registry.ab_config(self.client, self.name)
        experiment = registry.served_experiment(registry.experiment(self.client, self.name), champion, challenger, ab)
        share = float(ab.get("share", 0.0)) if CHALLENGER in models else 0.0
        new = Served(models, share, str(ab.get("salt", "")), ab, experiment)
        changed = self.served is None or (
            {k: v[0] for k, v in new.models.items()} != {k: v[0] for k, v in self.served.models.items()}
            or (new.share, new.salt, experiment["id"])
            != (self.served.share, self.served.salt, self.served.experiment["id"])
        )
        if changed and not experiment["recorded"]:
            warn_unrecorded(experiment)
        self.served = new  # one assignment: a request sees the old state or the new one
        keep = {version for version, _ in new.models.values()}
        self.cache = {v: m for v, m in self.cache.items() if v in keep}
        return changed

    def recommend(self, user_id: str, k: int, history: list[str] | None = None) -> dict:
        served = self.served  # one snapshot: variant, version and experiment always agree
        variant = assign(user_id, served.share, served.salt)
        version, model = served.models[variant]
        try:
            result = {**model.for_user(user_id, k, history), "fallback": False}
        except Exception:  # noqa: BLE001 - never a 500: the cold-start list is always answerable
            log.exception("v%s failed for user %r; answering the cold-start list", version, user_id)
            result = {**model.recommend([], k), "fallback": True}
        return {"variant": variant, "model_version": version, "experiment_id": served.experiment["id"], **result}

    def health(self) -> dict:
        served = self.served
        return {
            "status": "ok",
            "model": self.name,
            "versions": {variant: version for variant, (version, _) in served.models.items()},
            "ab": {"share": served.share, "salt": served.salt, "guardrails": served.ab.get("guardrails", [])},
            "experiment": served.experiment,
        }


def warn_unrecorded(experiment: dict) -> None:
    log.warning(
        "the registry's experiment %s does not name the aliased versions (champion v%s, challenger v%s, "
        "share %g, salt %r): an alias was moved outside recpipe (or a registry action is midway: the next "
        "poll settles it). Logging exposures as %s; `recpipe ab --share S` records a new experiment",
        experiment["stored_id"],
        experiment["champion"],
        experiment["challenger"],
        experiment["share"],
        experiment["salt"],
        experiment["id"],
    )


class Poller:
    """Calls router.refresh every `period` seconds in a daemon thread until stopped."""

    def __init__(self, router: Router, period: float):
        self.router, self.period = router, period
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="recpipe-alias-poller", daemon=True)

    def loop(self) -> None:
        while not self.stop_event.wait(self.period):
            try:
                if self.router.refresh():
                    log.warning("now serving %s", self.router.health())
            except Exception:  # noqa: BLE001 - a registry hiccup: keep serving what we have
                log.exception("alias refresh failed; still serving %s", self.router.health())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


def validation_message(errors: list[dict]) -> str:
    fields = []
    for err in errors:
        name = str(err.get("loc", ["?"])[-1])
        fields.append(FIELD_HINTS.get(name, f"{name}: {err.get('msg')}"))
    return "invalid request: " + "; ".join(dict.fromkeys(fields))


def create_app(params: dict, root: str | Path, client=None, poll: bool = True):
    """The FastAPI app; the router loads its models before the app is returned."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    cfg = params["register"]
    root = Path(root)
    client = client or registry.client_for(params, root)
    router = Router(client, cfg["model_name"])
    router.refresh()
    store = event_store.open_store(params, root)
    poller = Poller(router, float(cfg["serve_poll_s"])) if poll else None

    @asynccontextmanager
    async def lifespan(app):
        if poller:
            poller.start()
        yield
        if poller:
            poller.stop()
        store.dispose()

    auth = api_guard.ApiAuth.from_env()
    app = FastAPI(title="recpipe", lifespan=lifespan)
    app.state.router = router
    app.state.store = store
    api_guard.install(app, auth)
    reads, writes = auth.dependencies(write=False), auth.dependencies(write=True)
    read_errors = api_guard.error_responses(*([401] if reads else []))
    metrics = serving_metrics.install(app, lambda: router.served, dependencies=reads, responses=read_errors)

    @app.exception_handler(event_store.StoreUnavailable)
    async def store_unavailable(request: Request, exc: event_store.StoreUnavailable):
        # Not acknowledged, so the client can retry: an answer is only sent once its event is stored.
        return JSONResponse(status_code=503, content={"error": str(exc)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        return JSONResponse(
            status_code=422,
            content={"error": validation_message(errors), "detail": api_guard.safe_detail(errors)},
        )

    @app.get("/healthz", response_model=Health)
    def healthz() -> dict:
        return router.health()

    @app.get(
        "/recommend",
        response_model=Recommendation,
        dependencies=reads,
        responses={**read_errors, **api_guard.error_responses(422)},
    )
    def recommend(
        user_id: str = Query(..., min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN),
        k: int = Query(10, gt=0, le=MAX_K),
        history: str | None = Query(
            None,
            max_length=MAX_HISTORY_CHARS,
            description=f"comma-separated item ids (a new user), at most {MAX_HISTORY_ITEMS}",
        ),
    ) -> dict:
        started = time.perf_counter()
        items = api_guard.history_items(history)  # a RequestValidationError (422) past the bounds
        result = router.recommend(user_id, k, items)
        exposure_id = uuid.uuid4().hex
        latency_ms = (time.perf_counter() - started) * 1000
        store.add_exposure(
            {
                "ts": now(),
                "exposure_id": exposure_id,
                "user_id": user_id,
                "variant": result["variant"],
                "model_version": result["model_version"],
                "k": k,
                "items": result["item_ids"],
                "cold_start": result["cold_start"],
                "fallback": result["fallback"],
                "experiment_id": result["experiment_id"],
                "latency_ms": round(latency_ms, 3),
            }
        )
        metrics.observe_recommendation(
            result["variant"], result["model_version"], latency_ms / 1000, fallback=result["fallback"]
        )
        return {
            "user_id": user_id,
            "variant": result["variant"],
            "model_version": result["model_version"],
            "items": [{"item_id": i, "score": s} for i, s in zip(result["item_ids"], result["scores"])],
            "exposure_id": exposure_id,
            "cold_start": result["cold_start"],
        }

    @app.post(
        "/feedback",
        response_model=FeedbackLogged,
        dependencies=writes,
        responses={**api_guard.error_responses(400, *([401] if writes else []), 413, 422), **FEEDBACK_ERRORS},
    )
    def feedback(event: Feedback):
        try:
            exposure = event_store.resolve_exposure(store, event.user_id, event.item_id, event.exposure_id)
        except event_store.FeedbackRejected as exc:
            return JSONResponse(status_code=exc.status, content={"error": str(exc)})
        record = {
            "ts": now(),
            **event.model_dump(),
            "exposure_id": exposure["exposure_id"],
            # What the user saw decides the arm, not what the split says now (it may have moved since).
            "variant": exposure["variant"],
            "experiment_id": exposure["experiment_id"],
        }
        store.add_feedback(record)
        metrics.feedback.labels(event.event, record["variant"]).inc()
        return {"status": "logged", **record}

    return app

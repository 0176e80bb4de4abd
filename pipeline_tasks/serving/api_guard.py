"""What `recpipe serve` accepts: input bounds, the request body limit, API-key auth, safe error bodies.

- Limits are module constants, not params: they protect the process (memory, log size, the
  user tower's input), not a modelling choice an operator tunes per night.
- Auth: `RECPIPE_API_KEY` holds the key; clients send `Authorization: Bearer <key>` or
  `X-API-Key: <key>`; compared in constant time. `RECPIPE_API_AUTH=writes` (default) guards
  POST /feedback, `all` also /recommend and /metrics; /healthz is always open (load balancers).
- No key set: allowed on a loopback bind only (a developer's laptop, a sidecar), with a warning;
  a non-loopback bind without a key refuses to start (`check_bind`).
- Every error answer is JSON `{"error": <one readable line>, "detail": <machine-readable>}`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

# A user or item id: an opaque key, never prose. 128 characters covers UUIDs, hashes and
# namespaced ids ("shop:sku:...") with room to spare; control characters have no business in an
# id and would corrupt the line-oriented logs and terminals that show it.
MAX_ID_CHARS = 128
ID_PATTERN = r"^[^\x00-\x1F\x7F]+$"
# The user tower reads at most max_seq_len (50 by default) recent items; 200 leaves room for
# longer models while bounding the work and the exposure log line one request can cause.
MAX_HISTORY_ITEMS = 200
MAX_HISTORY_CHARS = MAX_HISTORY_ITEMS * (MAX_ID_CHARS + 1)  # the comma-separated query value
# A feedback event is ~200 bytes of JSON; 16 KiB is generous and stops memory abuse early.
MAX_BODY_BYTES = 16 * 1024
# An error echoes at most this much of the offending input (a 16 KiB value is not worth repeating).
MAX_ECHO_CHARS = 200

API_KEY_ENV = "RECPIPE_API_KEY"
API_AUTH_ENV = "RECPIPE_API_AUTH"
AUTH_MODES = ("writes", "all")
API_KEY_HEADER = "X-API-Key"
# Module level: FastAPI resolves the dependency annotations below from these globals. auto_error=False:
# a missing header reaches the check, which answers our own 401 body.
API_KEY_SCHEME = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)
BEARER_SCHEME = HTTPBearer(auto_error=False)


class ApiConfigError(ValueError):
    """The server's auth settings are unusable; the message names the variable to set."""


class ErrorResponse(BaseModel):
    """Every 4xx answer of the API (declared in the OpenAPI schema, so clients and the fuzz know it)."""

    model_config = ConfigDict(extra="allow")
    error: str
    detail: Any = None


def error_body(error: str, detail: Any = None) -> dict:
    return {"error": error, "detail": detail}


# --- input echoes -------------------------------------------------------------------------------


def printable(value: Any) -> Any:
    """A JSON-safe, bounded echo of a rejected input: lone surrogates escaped, long strings cut."""
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + f"... ({len(text)} chars)"
    if isinstance(value, (bytes, bytearray)):
        return printable(bytes(value).decode("utf-8", "backslashreplace"))
    if isinstance(value, dict):
        return {printable(str(k)): printable(v) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in list(value)[:50]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return printable(str(value))


def safe_detail(errors: list[dict]) -> list[dict]:
    """Pydantic's errors as JSON that always encodes: a body with a lone surrogate (valid JSON,
    invalid UTF-8) made the echoed `input` crash the response renderer, a 500 found by the fuzz."""
    return json.loads(json.dumps(printable(list(errors)), default=str))


def history_items(history: str | None) -> list[str] | None:
    """The comma-separated history as a list; past its bounds a RequestValidationError (the 422 handler)."""
    from fastapi.exceptions import RequestValidationError

    items = [i for i in (history or "").split(",") if i]
    long = next((i for i in items if len(i) > MAX_ID_CHARS), None)
    problem = (
        f"history has {len(items)} items; at most {MAX_HISTORY_ITEMS} are read"
        if len(items) > MAX_HISTORY_ITEMS
        else f"history item {printable(long)!r} is longer than {MAX_ID_CHARS} characters"
        if long is not None
        else None
    )
    if problem:
        raise RequestValidationError([{"type": "value_error", "loc": ("query", "history"), "msg": problem}])
    return items or None


# --- request body limit -------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 before the app (and its JSON parser) sees it.

    Content-Length is checked first; a chunked body (no Content-Length) is read up to the limit
    and refused as soon as it crosses it, so a client cannot stream megabytes into memory.
    """

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self.refuse(send, int(declared))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                return await self.app(scope, replay([], message, receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self.refuse(send, size)
            if not message.get("more_body", False):
                break
        return await self.app(scope, replay(chunks, None, receive), send)

    async def refuse(self, send, size: int) -> None:
        body = error_body(
            f"request body too large: over {self.limit} bytes (a feedback event is a few hundred bytes)",
            {"limit_bytes": self.limit, "received_bytes_at_least": size},
        )
        await send_json(send, 413, body)


def replay(chunks: list[bytes], pending: dict | None, receive):
    """A `receive` that hands the app the buffered body as one message, then the real channel."""
    queue = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}] if pending is None else [pending]

    async def replayed():
        return queue.pop(0) if queue else await receive()

    return replayed


async def send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


# --- authentication -----------------------------------------------------------------------------


class Unauthorized(Exception):
    """Raised by the auth dependency; answered 401 with the {"error", "detail"} body."""


@dataclass(frozen=True)
class ApiAuth:
    key: str  # "" = no key configured: nothing is checked (loopback only, see check_bind)
    mode: str = "writes"

    @classmethod
    def from_env(cls, environ=None) -> ApiAuth:
        environ = os.environ if environ is None else environ
        mode = environ.get(API_AUTH_ENV, "writes").strip().lower() or "writes"
        if mode not in AUTH_MODES:
            raise ApiConfigError(
                f"{API_AUTH_ENV}={environ.get(API_AUTH_ENV)!r} is not one of {', '.join(AUTH_MODES)}: "
                "'writes' guards POST /feedback, 'all' also /recommend and /metrics"
            )
        return cls(environ.get(API_KEY_ENV, "").strip(), mode)

    def guards(self, write: bool) -> bool:
        return bool(self.key) and (write or self.mode == "all")

    def dependencies(self, write: bool) -> list:
        """FastAPI route dependencies: the key check when this route is guarded, else none."""
        if not self.guards(write):
            return []

        def require_key(
            request: Request,
            # Declared for the OpenAPI schema; the check reads the raw headers (see presented_keys).
            _api_key: Annotated[str | None, Security(API_KEY_SCHEME)],
            _token: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)],
        ) -> None:
            presented = presented_keys(request.headers)
            if not presented:
                raise Unauthorized("missing API key")
            # Every credential sent must match: a wrong X-API-Key next to a right bearer token is refused,
            # so no header is ever silently ignored.
            matches = [hmac.compare_digest(key.encode("utf-8", "replace"), self.key.encode()) for key in presented]
            if not all(matches):
                raise Unauthorized("wrong API key")

        return [Depends(require_key)]

    def unauthorized_body(self, reason: str) -> dict:
        return error_body(
            f"{reason}: send 'Authorization: Bearer <key>' or '{API_KEY_HEADER}: <key>' "
            f"with the key the server was started with (environment variable {API_KEY_ENV})",
            {"reason": reason, "headers": ["Authorization", API_KEY_HEADER], "auth_mode": self.mode},
        )


def presented_keys(headers) -> list[str]:
    """The keys a request presents: X-API-Key as sent (even empty), a bearer token; another
    Authorization scheme counts as a wrong key (it is a credential, just not ours)."""
    keys = []
    if API_KEY_HEADER in headers:
        keys.append(headers[API_KEY_HEADER].strip())
    if "authorization" in headers:
        scheme, _, token = headers["authorization"].partition(" ")
        keys.append(token.strip() if scheme.lower() == "bearer" else "\0not-a-bearer-token")
    return keys


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, auth: ApiAuth) -> str | None:
    """Refuse a reachable bind without a key; on loopback return the warning to show instead."""
    if auth.key:
        return None
    if not is_loopback(host):
        raise ApiConfigError(
            f"refusing to serve on {host} without an API key: anyone who can reach it could write "
            f"feedback. Set {API_KEY_ENV} (e.g. `export {API_KEY_ENV}=$(openssl rand -hex 32)`) "
            "or bind to 127.0.0.1"
        )
    return (
        f"no {API_KEY_ENV} set: POST /feedback{' and reads' if auth.mode == 'all' else ''} accept "
        "unauthenticated requests (allowed on loopback only)"
    )


def install(app, auth: ApiAuth) -> None:
    """The body limit middleware and the 401 / HTTP-error handlers, all answering {"error", "detail"}."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    app.add_middleware(BodyLimit)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request, exc: Unauthorized):
        return JSONResponse(
            status_code=401, content=auth.unauthorized_body(str(exc)), headers={"WWW-Authenticate": "Bearer"}
        )

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        # 404 / 405 and friends: the same body shape as every other error (405 keeps its Allow header).
        # FastAPI answers 400 for a body it cannot decode (not UTF-8): say what to send instead.
        hint = "; send a UTF-8 JSON object" if exc.status_code == 400 else ""
        return JSONResponse(
            status_code=exc.status_code,
            content=error_body(f"{exc.status_code} {exc.detail}: {request.method} {request.url.path}{hint}"),
            headers=exc.headers,
        )


ERROR_DESCRIPTIONS = {
    400: "the body is not readable (not UTF-8 JSON)",
    401: f"missing or wrong API key ('Authorization: Bearer <key>' or '{API_KEY_HEADER}'; see {API_KEY_ENV})",
    413: f"request body over {MAX_BODY_BYTES} bytes",
    422: "invalid input: `error` names the field and its bounds, `detail` lists pydantic's errors",
}


def error_responses(*codes: int) -> dict:
    """OpenAPI `responses` for these error statuses, so the schema tells clients (and the fuzz) the truth."""
    return {code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code]} for code in codes}

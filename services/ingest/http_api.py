"""HTTP edge of ingest: Segment's tracking API (`/v1/track`, `/v1/batch`…) over the same `Collector` as gRPC.

The edge reads and bounds the body, authenticates the write key, converts JSON to the messages the collector
takes, and maps outcomes and errors to HTTP statuses here, in one place. There are no collection rules here.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from cdp import errors
from cdp.faults import failure_fields
from cdp.runtime.auth import Access, Authenticator, Principal, credential_from_metadata
from cdp.runtime.errors import classify, is_outage, retry_after_of
from cdp.runtime.readiness import Readiness
from services.ingest.application import Collector
from services.ingest.domain.messages import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, MAX_MESSAGE_BYTES
from services.ingest.domain.outcomes import Outcome, Reason, Status

log = structlog.get_logger("cdp.ingest.http")

# Long and short (analytics.js) paths of the single-message endpoints → the message type they imply.
SINGLE_PATHS: Mapping[str, str] = {
    **{kind: kind for kind in ("identify", "track", "page", "screen", "group", "alias")},
    "i": "identify",
    "t": "track",
    "p": "page",
    "s": "screen",
    "g": "group",
    "a": "alias",
}
BATCH_PATHS = ("batch", "b", "import")
ALLOWED_HEADERS = "Authorization, Content-Type, Content-Encoding"
# Parsed as JSON: what SDKs send, plus the types curl and beacon senders default to; other types get 415.
_JSON_TYPES = frozenset(
    ("", "application/json", "text/plain", "application/octet-stream", "application/x-www-form-urlencoded")
)
# A JSON escape of a lone UTF-16 surrogate parses into a str that cannot be encoded as UTF-8 later.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# What the canonical log line reports about a request, filled in by its handler.
_COUNT = web.RequestKey("message_count", int)
_SOURCE = web.RequestKey("source_id", str)


@dataclass(frozen=True)
class HttpLimits:
    """How much the HTTP edge takes on at once before it sheds load with 429."""

    max_in_flight_requests: int = 128
    """POST requests being read or collected at once (each may hold up to 500 KB of body)."""

    max_in_flight_events: int = 25_000
    """Messages being collected at once; a request that would pass it waits outside (429), not in a queue."""

    retry_after_seconds: int = 1
    """The `Retry-After` a shed request is told."""

    cors_origins: frozenset[str] | None = None
    """Origins allowed to call from a browser; None echoes any origin (Segment's behaviour)."""


class Refusal(Exception):
    """A request the edge answers with a 4xx/5xx JSON body: `{"success": false, "code", "message", "errors"}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Sequence[Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details)
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """The JSON response for this refusal."""
        body: dict[str, Any] = {"success": False, "code": self.code, "message": self.message}
        if self.details:
            body["errors"] = self.details
        return json_response(body, status=self.status, headers=self.headers)


# Domain errors → HTTP statuses, in one place (gRPC's table is `cdp.runtime.errors`). Outages and timeouts are
# both 503 with Retry-After: Segment's SDKs retry 5xx and 429, and give up on other 4xx.
_STATUS: list[tuple[type[errors.DomainError], int, str]] = [
    (errors.InvalidInput, 400, "invalid_request"),
    (errors.Unauthenticated, 401, "unauthorized"),
    (errors.PermissionDenied, 403, "forbidden"),
    (errors.NotFound, 404, "not_found"),
    (errors.AlreadyExists, 409, "conflict"),
    (errors.Conflict, 409, "conflict"),
    (errors.ResourceExhausted, 429, "too_many_requests"),
    (errors.NotBuiltYet, 501, "not_implemented"),
    (errors.Unavailable, 503, "unavailable"),
    (errors.DeadlineExceeded, 503, "timeout"),
]


def refusal_of(error: errors.DomainError) -> Refusal:
    """The HTTP answer to a domain error: its status and code, field details, `Retry-After` for 429 and 503."""
    status, code = next(((s, c) for kind, s, c in _STATUS if isinstance(error, kind)), (500, "internal"))
    violations = error.violations if isinstance(error, errors.InvalidInput) else []
    details = [
        {"field": v.field, "reason": "invalid_field", "description": v.description} for v in violations
    ]
    retry_after = retry_after_of(error)
    if retry_after is None and status == 503:
        retry_after = errors.RETRY_AFTER_SECONDS
    headers = {"Retry-After": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return Refusal(status, code, str(error), details, headers)


def bad_field(field: str, description: str) -> Refusal:
    """400 naming one field of the request."""
    detail = {"field": field, "reason": "invalid_field", "description": description}
    return Refusal(400, "invalid_request", f"{field}: {description}", [detail])


def json_response(body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A compact JSON response."""
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


class HttpApi:
    """Segment's HTTP tracking API; run it with `await api()` as a `ServiceApp.background` job.

    `port` holds the bound port once `started()` returns (so port 0 picks a free one in tests).
    """

    def __init__(
        self,
        collector: Collector,
        authenticator: Authenticator,
        *,
        host: str,
        port: int,
        limits: HttpLimits | None = None,
        grace_seconds: float = 5.0,
        readiness: Readiness | None = None,
    ) -> None:
        self._collector = collector
        self._readiness = readiness or Readiness()
        self._authenticator = authenticator
        self._host = host
        self._requested_port = port
        self.limits = limits or HttpLimits()
        self._grace_seconds = grace_seconds
        self.port = 0
        self._started = asyncio.Event()
        self._serving = False
        self._requests = 0
        self._events = 0

    async def __call__(self) -> None:
        """Serve until cancelled; then stop accepting, give in-flight requests the grace period, and close."""
        runner = web.AppRunner(
            self.application(),
            access_log=None,  # the middleware writes one canonical line per request
            auto_decompress=False,  # decompression is ours, to cap the inflated size while streaming
            shutdown_timeout=self._grace_seconds,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._serving = True
            self._started.set()
            log.info("http_started", address=f"{self._host}:{self.port}")
            await asyncio.Event().wait()
        finally:
            self._serving = False
            await runner.cleanup()
            log.info("http_stopped")

    async def started(self) -> int:
        """Wait until the server listens; its port."""
        await self._started.wait()
        return self.port

    def application(self) -> web.Application:
        """The aiohttp application: routes and the edge middleware."""
        app = web.Application(middlewares=[self._edge], client_max_size=MAX_BATCH_BYTES)
        posts = {f"/v1/{name}": self._single_handler(kind) for name, kind in SINGLE_PATHS.items()}
        posts.update({f"/v1/{name}": self._batch for name in BATCH_PATHS})
        gets = {"/v1/projects/{writeKey}/settings": self._settings, "/health": self._health}
        for path, handler in posts.items():
            app.router.add_post(path, handler)
        for path, handler in gets.items():
            app.router.add_get(path, handler)
        for path in [*posts, *gets]:
            # Per path, not a catch-all: an unknown path must stay a 404, not become a 405.
            app.router.add_route("OPTIONS", path, self._preflight)
        return app

    @web.middleware
    async def _edge(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Error mapping, CORS headers and the canonical log line, for every request."""
        started = time.perf_counter()
        request[_COUNT] = 0
        try:
            response = await handler(request)
        except Refusal as refusal:
            response = refusal.response()
        except web.HTTPException as error:  # routing: 404 unknown path, 405 wrong method
            response = Refusal(error.status, _slug(error.reason), error.reason).response()
        except Exception as error:
            response = self._failed(request, error).response()
        self._cors(request, response)
        log.info(
            "http_request",
            method=request.method,
            path=_route(request),  # the route template: the settings path carries a write key
            status=response.status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            count=request[_COUNT],
            source=request.get(_SOURCE, ""),
        )
        return response

    def _failed(self, request: web.Request, error: Exception) -> Refusal:
        """What any other failure gets: the domain error it stands for (`classify`, as on gRPC), or a 500."""
        failure = classify(error)
        if failure is None:
            log.exception("http_request_failed", method=request.method, path=_route(request))
            return Refusal(500, "internal", "internal error; the request may be retried")
        if is_outage(failure):
            fields = failure_fields(error) if failure is not error else {}
            log.warning("http_dependency_failed", path=_route(request), error=str(failure), **fields)
        return refusal_of(failure)

    def _single_handler(self, kind: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self._collect_request(request, kind)

        return handle

    async def _batch(self, request: web.Request) -> web.Response:
        return await self._collect_request(request, None)

    async def _collect_request(self, request: web.Request, kind: str | None) -> web.Response:
        """Shed, read, authenticate, collect, answer: the whole life of a POST."""
        if self._requests >= self.limits.max_in_flight_requests:
            raise self._shed("too many requests in flight")
        self._requests += 1
        try:
            principal = self._header_principal(request)
            limit = MAX_MESSAGE_BYTES if kind else MAX_BATCH_BYTES
            document = parse_json(await read_body(request, limit))
            principal = principal or self._body_principal(document)
            request[_SOURCE] = principal.source_id
            if kind is None:
                raws, defaults = batch_messages(document)
            else:
                raws, defaults = [message_object(document)], None
            request[_COUNT] = len(raws)
            outcomes = await self._collect_bounded(principal.source_id, raws, kind, defaults)
        finally:
            self._requests -= 1
        return outcome_response(outcomes, indexed=kind is None)

    async def _collect_bounded(
        self, source_id: str, raws: list[Any], kind: str | None, defaults: Mapping[str, Any] | None
    ) -> list[Outcome]:
        """Collect unless that would pass the in-flight event bound (one oversized request may run alone)."""
        if self._events and self._events + len(raws) > self.limits.max_in_flight_events:
            raise self._shed("too many events in flight")
        self._events += len(raws)
        try:
            # An outage (log or read model) fails the whole request with 503 in the edge middleware: nothing was
            # acknowledged, and a retry stores what is missing and dedupes what got in.
            if kind is None:
                return await self._collector.collect(source_id, raws, defaults=defaults, path="batch")
            return await self._collector.collect(source_id, raws, default_type=kind, path="", indexed=False)
        except RecursionError:
            raise bad_field("body", "is nested too deeply") from None
        finally:
            self._events -= len(raws)

    def _header_principal(self, request: web.Request) -> Principal | None:
        """The caller named by `Authorization` (Basic with the key as user name, or Bearer), if sent."""
        header = request.headers.get("Authorization", "")
        if not header.strip():
            return None
        if credential_from_metadata({"authorization": header}) is None:
            raise _unauthorized("the Authorization header is neither 'Basic <key:>' nor 'Bearer <key>'")
        return self._authorize(header)

    def _body_principal(self, document: Any) -> Principal:
        """The caller named by the body's `writeKey` (analytics.js may send it there instead of a header)."""
        key = document.get("writeKey") if isinstance(document, dict) else None
        if not isinstance(key, str) or not key:
            raise _unauthorized("missing write key: send 'Authorization: Basic <key:>' or a body 'writeKey'")
        return self._authorize(f"Bearer {key}")

    def _authorize(self, header: str) -> Principal:
        try:
            return self._authenticator.authorize(Access.WRITE_KEY, {"authorization": header})
        except errors.DomainError:
            raise _unauthorized("unknown write key") from None

    def _shed(self, why: str) -> Refusal:
        return Refusal(429, "too_many_requests", f"{why}; retry later", headers=self._retry())

    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.limits.retry_after_seconds)}

    async def _settings(self, request: web.Request) -> web.Response:
        """Enough of Segment's CDN settings for analytics.js to boot and send to this server."""
        key = request.match_info["writeKey"]
        principal = self._authenticator.principal_for(key)
        if principal is None or principal.kind is not Access.WRITE_KEY:
            raise Refusal(404, "not_found", "no source has this write key")
        request[_SOURCE] = principal.source_id
        return json_response(source_settings(key, f"{request.host}/v1", request.scheme))

    async def _health(self, request: web.Request) -> web.Response:
        """200 while the service can serve; 503 with the reasons while shutting down or a dependency is down."""
        if not self._serving:
            raise Refusal(503, "not_serving", "shutting down")
        if not self._readiness.serving:
            reasons = "; ".join(f"{what}: {why}" for what, why in self._readiness.reasons().items())
            raise Refusal(503, "not_serving", f"not serving ({reasons})", headers=self._retry())
        return json_response({"status": "serving"})

    async def _preflight(self, request: web.Request) -> web.Response:
        """CORS preflight: browsers ask before a POST with JSON or an Authorization header."""
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": "86400",
            },
        )

    def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        allowed = self.limits.cors_origins
        if origin and (allowed is None or origin in allowed):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"


def http_edge(app: Any) -> HttpApi:
    """The HTTP edge among a `ServiceApp`'s background jobs."""
    for job in app.background:
        if isinstance(job, HttpApi):
            return job
    raise LookupError(f"{app.name} has no HTTP edge")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, decompressed, at most `limit` bytes either way (413 past it: zip bombs stop early)."""
    media = request.content_type.lower() if request.headers.get("Content-Type") else ""
    if media not in _JSON_TYPES and not media.endswith("+json"):
        raise Refusal(
            415, "unsupported_media_type", f"Content-Type {media!r}: send application/json or text/plain"
        )
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    inflater = _inflater(encoding)
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    raw = await _read_capped(request, limit)
    return raw if inflater is None else _inflate(inflater, raw, limit)


def _inflater(encoding: str) -> Any:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib-wrapped (what HTTP means) or gzip, detected
    raise Refusal(415, "unsupported_media_type", f"Content-Encoding {encoding!r}: send gzip, deflate or none")


async def _read_capped(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _inflate(inflater: Any, data: bytes, limit: int) -> bytes:
    """Inflate without ever holding more than `limit` + 1 bytes of output."""
    try:
        out: bytes = inflater.decompress(data, limit + 1)
    except zlib.error as error:
        raise bad_field("body", f"is not valid compressed data ({error})") from None
    if len(out) > limit:
        raise _too_large(limit)
    if not inflater.eof or inflater.unused_data:
        raise bad_field("body", "the compressed data is truncated or followed by extra bytes")
    return out


def parse_json(body: bytes) -> Any:
    """The body as JSON; 400 naming the problem when it is not (UTF-8, no NaN, no lone surrogates)."""
    if not body.strip():
        raise bad_field("body", "is empty; send a JSON object")
    try:
        # Strictly: json.loads would decode bytes with "surrogatepass", letting ED A0 80 through as a lone surrogate.
        document = json.loads(body.decode("utf-8-sig"), parse_constant=_no_constant)
        if _SURROGATE_ESCAPE.search(body):
            json.dumps(document, ensure_ascii=False).encode()
    except RecursionError:
        raise bad_field("body", "is nested too deeply") from None
    except UnicodeError as error:
        raise bad_field("body", f"is not UTF-8 text ({error})") from None
    except ValueError as error:
        raise bad_field("body", f"is not valid JSON ({error})") from None
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def message_object(document: Any) -> dict[str, Any]:
    """The body of a single-message endpoint: one JSON object."""
    if not isinstance(document, dict):
        raise bad_field("body", "must be a JSON object (one Segment message)")
    return document


def batch_messages(document: Any) -> tuple[list[Any], dict[str, Any]]:
    """The messages of a batch body and its shared fields (context, integrations, sentAt)."""
    if not isinstance(document, dict):
        raise bad_field("body", 'must be a JSON object: {"batch": [...]}')
    batch = document.get("batch")
    if not isinstance(batch, list) or not batch:
        raise bad_field("batch", "must be a non-empty array of messages")
    if len(batch) > MAX_BATCH_MESSAGES:
        raise bad_field("batch", f"has {len(batch)} messages; a batch may have at most {MAX_BATCH_MESSAGES}")
    return batch, {key: document.get(key) for key in ("context", "integrations", "sentAt")}


def outcome_response(outcomes: Sequence[Outcome], *, indexed: bool) -> web.Response:
    """200 when every message is stored (now or before); otherwise 400 listing the rejected ones."""
    # A suppressed subject's messages are dropped on purpose; telling the sender would reveal an erasure.
    rejected = [o for o in outcomes if o.status is Status.REJECTED and o.reason is not Reason.SUPPRESSED]
    if not rejected:
        return json_response({"success": True})
    details = [detail for outcome in rejected for detail in rejection_details(outcome, indexed=indexed)]
    if not indexed and rejected[0].reason is Reason.MESSAGE_TOO_LARGE:
        raise Refusal(413, "payload_too_large", details[0]["description"], details)
    stored = len(outcomes) - len(rejected)
    message = f"{len(rejected)} of {len(outcomes)} messages rejected; {stored} stored"
    raise Refusal(400, "invalid_request", message, details)


def rejection_details(outcome: Outcome, *, indexed: bool) -> Iterable[dict[str, Any]]:
    """One entry per problem of a rejected message: where (`batch[1].event`), why, and the reason code."""
    reason = outcome.reason.value if outcome.reason else "invalid_field"
    where: dict[str, Any] = {"index": outcome.index} if indexed else {}
    if outcome.message_id:
        where["messageId"] = outcome.message_id
    prefix = f"batch[{outcome.index}]." if indexed else ""
    problems = [(v.field, v.description) for v in outcome.violations] or [
        (prefix + (v.field or "event"), v.description or v.reason.value) for v in outcome.plan_violations
    ]
    for field, description in problems or [(prefix.rstrip(".") or "body", reason)]:
        yield {**where, "field": field, "reason": reason, "description": description}


def source_settings(write_key: str, api_host: str, protocol: str) -> dict[str, Any]:
    """What analytics.js fetches from `cdn.segment.com/v1/projects/<key>/settings`, pointing at this server."""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": api_host,
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": True,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0.0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


def _unauthorized(message: str) -> Refusal:
    # No WWW-Authenticate: browsers would answer a challenge to analytics.js's fetch with a login prompt.
    return Refusal(401, "unauthorized", message)


def _too_large(limit: int) -> Refusal:
    return Refusal(413, "payload_too_large", f"the body is over {limit} bytes (after decompression)")


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


def _slug(text: str) -> str:
    return text.lower().replace(" ", "_")

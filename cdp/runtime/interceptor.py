"""The one interceptor every server runs: request context for logs, authentication, validation, error mapping.

Every request message of every RPC (each message of a client stream too) passes `validate_request` before the
servicer sees it, so a new method is checked without asking; health and reflection (public) are not.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from cdp.errors import InvalidInput
from cdp.faults import failure_fields
from cdp.runtime.auth import Access, Authenticator, current_principal
from cdp.runtime.errors import classify, is_outage, status_code_of, to_grpc_status
from cdp.runtime.validation import validate_request

log = structlog.get_logger("cdp.rpc")

# Infrastructure every client may call without credentials.
PUBLIC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.")


class EdgeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Binds service, method and request id to every log line, authorises, validates, maps errors to statuses."""

    def __init__(self, service: str, authenticator: Authenticator, access: Mapping[str, Access]) -> None:
        self._service = service
        self._authenticator = authenticator
        self._access = access

    def required_access(self, method: str) -> Access:
        """What a full method path (`/pkg.Service/Method`) requires; unknown methods need the admin token."""
        if method.lstrip("/").startswith(PUBLIC_SERVICES):
            return Access.PUBLIC
        return self._access.get(method, Access.ADMIN)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        metadata = {
            key: value
            for key, value in (handler_call_details.invocation_metadata or ())
            if isinstance(value, str)
        }
        call = _Call(self, method, metadata)
        decode = _tolerant(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary), decode, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                call.unary(handler.stream_unary, streamed=True), decode, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                call.streaming(handler.unary_stream), decode, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            call.streaming(handler.stream_stream, streamed=True), decode, handler.response_serializer
        )


@dataclass(frozen=True)
class Undecodable:
    """Request bytes the method's message type could not parse; the edge answers INVALID_ARGUMENT for them."""

    reason: str

    def refusal(self, path: str = "") -> InvalidInput:
        """The error naming the request (or the stream's message at `path`)."""
        return InvalidInput.field(
            path or "request", f"is not a valid protobuf message of this method ({self.reason})"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The method's deserializer, returning `Undecodable` instead of raising.

    grpcio calls it before any handler code and answers a failure with a bare INTERNAL/UNKNOWN; corrupt bytes are
    the client's fault, so they must reach the edge and be answered INVALID_ARGUMENT like any other bad input.
    """
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError, RecursionError (nesting past protobuf's limit), …
            return Undecodable(f"{type(error).__name__}: {str(error)[:200]}")

    return decode


class _Call:
    """The context of one call: who, what, and the canonical log line written when it ends."""

    def __init__(self, edge: EdgeInterceptor, method: str, metadata: Mapping[str, str]) -> None:
        self.edge = edge
        self.method = method
        self.metadata = metadata
        self.request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        # Health and reflection: no credentials, no validation (their messages are not ours), no log line.
        self.public = edge.required_access(method) is Access.PUBLIC

    def unary(
        self, behavior: Callable[..., Awaitable[Any]], *, streamed: bool = False
    ) -> Callable[..., Awaitable[Any]]:
        """Wrap a handler that returns one response (to one request, or to a stream of them if `streamed`)."""

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._enter()
            started = time.perf_counter()
            try:
                response = await behavior(self._admit(request, streamed), context)
            except BaseException as error:
                await self._fail(error, context, started)
                raise
            self._finish(context, started)
            return response

        return handle

    def streaming(
        self, behavior: Callable[..., AsyncIterator[Any]], *, streamed: bool = False
    ) -> Callable[..., AsyncIterator[Any]]:
        """Wrap a handler that streams responses (to one request, or to a stream of them if `streamed`)."""

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            self._enter()
            started = time.perf_counter()
            try:
                async for response in behavior(self._admit(request, streamed), context):
                    yield response
            except BaseException as error:
                await self._fail(error, context, started)
                raise
            self._finish(context, started)

        return handle

    def _enter(self) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            service=self.edge._service, method=self.method, request_id=self.request_id
        )

    def _admit(self, request: Any, streamed: bool) -> Any:
        """Authorise the caller, then validate the request (a stream: each message as the servicer reads it)."""
        principal = self.edge._authenticator.authorize(self.edge.required_access(self.method), self.metadata)
        current_principal.set(principal)
        if isinstance(request, Undecodable):
            raise request.refusal()
        if self.public:
            return request
        if streamed:
            return _validated_stream(request)
        validate_request(request)
        return request

    def _finish(self, context: grpc.aio.ServicerContext[Any, Any], started: float) -> None:
        context.set_trailing_metadata((("x-request-id", self.request_id),))
        if not self.public:
            log.info("rpc_finished", code="OK", duration_ms=round((time.perf_counter() - started) * 1000, 3))

    async def _fail(
        self, error: BaseException, context: grpc.aio.ServicerContext[Any, Any], started: float
    ) -> None:
        """Turn a domain error, an outage or a timeout into its status; hide the details of anything else."""
        if isinstance(error, grpc.aio.AbortError) or not isinstance(error, Exception):
            return  # the servicer aborted on its own, or the call was cancelled: nothing left to answer
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        failure = classify(error)
        if failure is None:
            log.exception("rpc_failed", code="INTERNAL", duration_ms=duration_ms)
            await self._abort(
                context, grpc.StatusCode.INTERNAL, f"internal error (request id {self.request_id})"
            )
            return
        status = to_grpc_status(failure)
        code = status_code_of(failure).name
        if is_outage(failure):
            # Not a bug of ours and not the caller's: a warning naming what failed, without a traceback.
            fields = failure_fields(error) if failure is not error else {}
            log.warning("rpc_finished", code=code, duration_ms=duration_ms, error=str(failure), **fields)
        else:
            log.info("rpc_finished", code=code, duration_ms=duration_ms, error=str(failure))
        await self._abort(context, status.code, status.details, status.trailing_metadata)

    async def _abort(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        code: grpc.StatusCode,
        details: str,
        metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        await context.abort(code, details, (*metadata, ("x-request-id", self.request_id)))


async def _validated_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The client's messages, each validated before the servicer gets it; a violation names its index."""
    index = 0
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.refusal(f"stream[{index}]")
        validate_request(request, f"stream[{index}]")
        yield request
        index += 1

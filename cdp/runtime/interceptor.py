"""The one interceptor every server runs: request context for logs, authentication, error mapping."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
import structlog

from cdp import errors
from cdp.runtime.auth import Access, Authenticator, current_principal
from cdp.runtime.errors import status_code_of, to_grpc_status

log = structlog.get_logger("cdp.rpc")

# Infrastructure every client may call without credentials.
PUBLIC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.")


class EdgeInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Binds service, method and request id to every log line, authorises, maps domain errors to statuses."""

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
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                call.unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                call.streaming(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            call.streaming(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )


class _Call:
    """The context of one call: who, what, and the canonical log line written when it ends."""

    def __init__(self, edge: EdgeInterceptor, method: str, metadata: Mapping[str, str]) -> None:
        self.edge = edge
        self.method = method
        self.metadata = metadata
        self.request_id = metadata.get("x-request-id") or uuid.uuid4().hex
        self.quiet = edge.required_access(method) is Access.PUBLIC

    def unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Wrap a handler that returns one response."""

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._enter()
            started = time.perf_counter()
            try:
                self._authorize()
                response = await behavior(request, context)
            except BaseException as error:
                await self._fail(error, context, started)
                raise
            self._finish(context, started)
            return response

        return handle

    def streaming(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        """Wrap a handler that streams responses."""

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            self._enter()
            started = time.perf_counter()
            try:
                self._authorize()
                async for response in behavior(request, context):
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

    def _authorize(self) -> None:
        principal = self.edge._authenticator.authorize(self.edge.required_access(self.method), self.metadata)
        current_principal.set(principal)

    def _finish(self, context: grpc.aio.ServicerContext[Any, Any], started: float) -> None:
        context.set_trailing_metadata((("x-request-id", self.request_id),))
        if not self.quiet:
            log.info("rpc_finished", code="OK", duration_ms=round((time.perf_counter() - started) * 1000, 3))

    async def _fail(
        self, error: BaseException, context: grpc.aio.ServicerContext[Any, Any], started: float
    ) -> None:
        """Turn a domain error into its status; hide the details of anything unexpected."""
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        if isinstance(error, errors.DomainError):
            status = to_grpc_status(error)
            log.info(
                "rpc_finished", code=status_code_of(error).name, duration_ms=duration_ms, error=str(error)
            )
            await context.abort(
                status.code,
                status.details,
                (*status.trailing_metadata, ("x-request-id", self.request_id)),
            )
        if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
            log.exception("rpc_failed", code="INTERNAL", duration_ms=duration_ms)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error (request id {self.request_id})",
                (("x-request-id", self.request_id),),
            )

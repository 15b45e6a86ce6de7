"""Servicers for capabilities a later issue builds: they answer UNIMPLEMENTED (the edge validated the request).

This is the one placeholder the project allows. Each answer names the capability, and each issue that builds a
capability replaces the placeholder methods it covers with real ones (a real method defined on a subclass wins).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from cdp.errors import NotBuiltYet

T = TypeVar("T")


def with_placeholders(base: type[T], service: ServiceDescriptor, capabilities: Mapping[str, str]) -> type[T]:
    """A subclass of `base` whose every method not defined by `base` answers UNIMPLEMENTED naming its capability."""
    missing = set(capabilities) ^ {method.name for method in service.methods}
    if missing:
        raise ValueError(
            f"capabilities must name exactly the methods of {service.full_name}: {sorted(missing)}"
        )
    namespace = {
        method.name: _placeholder(method, capabilities[method.name])
        for method in service.methods
        if _inherited_from_generated(base, method.name)
    }
    return type(base.__name__, (base,), namespace)


def _inherited_from_generated(base: type[Any], name: str) -> bool:
    """Generated base classes define every method; ours override some. Only the generated ones get replaced."""
    owner = next(cls for cls in base.__mro__ if name in vars(cls))
    return owner.__module__.endswith("_pb2_grpc")


def _placeholder(method: MethodDescriptor, capability: str) -> Callable[..., Any]:
    if method.server_streaming:

        async def streaming(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            raise NotBuiltYet(capability)
            yield  # pragma: no cover - makes this an async generator, as gRPC expects of a streaming method

        return streaming

    async def unary(self: Any, request: Any, context: Any) -> Any:
        raise NotBuiltYet(capability)

    return unary

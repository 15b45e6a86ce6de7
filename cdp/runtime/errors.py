"""Errors at the edge, in one place: infrastructure failures → domain errors (`classify`), domain errors → gRPC
status (`to_grpc_status`). The HTTP edge uses the same `classify`, so both edges agree on what an outage is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from cdp import errors
from cdp.faults import TIMED_OUT, classify_fault

_CODES: list[tuple[type[errors.DomainError], grpc.StatusCode]] = [
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Conflict, grpc.StatusCode.ABORTED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.NotBuiltYet, grpc.StatusCode.UNIMPLEMENTED),
]


def classify(error: BaseException) -> errors.DomainError | None:
    """The domain error an exception stands for (`cdp.faults.classify_fault`), or a call to another of our
    services that failed for want of that service; None for a bug."""
    if isinstance(error, grpc.aio.AioRpcError):  # a call to another service of ours
        return _classify_upstream(error)
    return classify_fault(error)


def _classify_upstream(error: grpc.aio.AioRpcError) -> errors.DomainError | None:
    """Another service that is down or slow makes this one down or slow; any other failure is ours to fix."""
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return errors.Unavailable(f"a service this one depends on is unavailable: {error.details()}")
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(TIMED_OUT)
    return None


@contextlib.contextmanager
def refusals_passed_on(field: str) -> Iterator[None]:
    """Around a call to another service of ours: its refusal of what this one's caller sent (`field`: where it
    was in this one's request) becomes this service's own answer. NOT_FOUND stays NOT_FOUND, INVALID_ARGUMENT
    names `field`; anything else goes on as it was (an outage `classify` recognises, or a bug)."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        details = error.details() or ""
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise errors.NotFound(details or f"{field}: not found") from error
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise errors.InvalidInput.field(field, details or "was refused") from error
        raise


def is_outage(error: errors.DomainError) -> bool:
    """Whether the failure is a dependency being down or slow (logged as a warning), not the caller's doing."""
    return isinstance(error, errors.Unavailable | errors.DeadlineExceeded)


def retry_after_of(error: errors.DomainError) -> float | None:
    """Seconds the caller is told to wait before retrying, if the error says."""
    return error.retry_after if isinstance(error, errors.Unavailable | errors.ResourceExhausted) else None


def status_code_of(error: errors.DomainError) -> grpc.StatusCode:
    """The gRPC status code a domain error travels as."""
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.UNKNOWN


def to_grpc_status(error: errors.DomainError) -> grpc.Status:
    """A rich status: code, message and, for invalid input, `google.rpc.BadRequest` field violations."""
    code = status_code_of(error)
    details: list[any_pb2.Any] = []
    if isinstance(error, errors.InvalidInput):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
        if error.reason:
            info = any_pb2.Any()
            info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain="cdp"))
            details.append(info)
    retry_after = retry_after_of(error)
    if retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(retry_after * 1e9))
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    # code.value is (number, name); google.rpc.code_pb2 is avoided: kurrentdbclient registers its own copy.
    status = status_pb2.Status(code=code.value[0], message=str(error), details=details)
    return rpc_status.to_status(status)


def field_violations(call_error: grpc.aio.AioRpcError | grpc.RpcError) -> list[tuple[str, str]]:
    """The `(field, description)` pairs a client finds in a rich INVALID_ARGUMENT status."""
    status = rpc_status.from_call(call_error)  # type: ignore[arg-type]
    found: list[tuple[str, str]] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            found.extend((v.field, v.description) for v in bad_request.field_violations)
    return found

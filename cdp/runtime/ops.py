"""`cdp.ops.v1.OpsService`, which every server offers: its process, and the state of each of its reactors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from cdp.ops.v1 import ops_service_pb2 as pb
from cdp.ops.v1 import ops_service_pb2_grpc
from cdp.reactor import Reactor, ReactorStatus

SERVICE = pb.DESCRIPTOR.services_by_name["OpsService"]
_STATES = {
    "idle": pb.REACTOR_STATE_IDLE,
    "catching_up": pb.REACTOR_STATE_CATCHING_UP,
    "live": pb.REACTOR_STATE_LIVE,
    "retrying": pb.REACTOR_STATE_RETRYING,
    "stopped": pb.REACTOR_STATE_STOPPED,
    "failed": pb.REACTOR_STATE_FAILED,
}


class OpsServicer(ops_service_pb2_grpc.OpsServiceServicer):
    """Answers for one server: its service name, pid, start time and reactors."""

    def __init__(self, service: str, reactors: Sequence[Reactor], started: datetime) -> None:
        self._service, self._reactors, self._started = service, reactors, started

    async def GetServerStatus(
        self, request: pb.GetServerStatusRequest, context: Any
    ) -> pb.GetServerStatusResponse:
        """This process and every reactor's status."""
        start = Timestamp()
        start.FromDatetime(self._started)
        statuses = [reactor_message(await reactor.status()) for reactor in self._reactors]
        return pb.GetServerStatusResponse(
            service=self._service, pid=os.getpid(), start_time=start, reactors=statuses
        )


def reactor_message(status: ReactorStatus) -> pb.ReactorStatus:
    """A reactor's status as the contract carries it."""
    return pb.ReactorStatus(
        name=status.name,
        state=_STATES.get(status.state, pb.REACTOR_STATE_UNSPECIFIED),
        position=status.position,
        head=status.head,
        lag=status.lag,
        events_per_second=status.events_per_second,
        retries=status.retries,
        parked=status.parked,
        last_error=status.last_error or "",
    )

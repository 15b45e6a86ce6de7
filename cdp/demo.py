"""`cdp demo`: one person's journey through a running cluster, shown as the platform sees it.

Sends Segment-spec messages to ingest's HTTP API (as any SDK would), then asks identity for the unified profile
and the decisions that made it. Everything goes through the public interfaces; nothing is faked.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from typing import Any

import grpc
from google.protobuf import json_format

from cdp.common.v1 import identity_pb2
from cdp.identity.v1 import identity_service_pb2 as pb
from cdp.identity.v1 import identity_service_pb2_grpc
from cdp.runtime.settings import Settings

JOURNEY_STEPS = (
    "a phone opens the app (anonymous)",
    "a laptop visits the pricing page (anonymous)",
    "the person signs in on the phone (identify)",
    "the laptop's anonymous id is aliased to the user id",
)


def journey(user_id: str, phone: str, laptop: str) -> list[dict[str, Any]]:
    """The messages an app and a website would send for one person."""
    return [
        {"type": "track", "anonymousId": phone, "event": "App Opened", "context": {"device": {"id": phone}}},
        {"type": "page", "anonymousId": laptop, "name": "Pricing", "properties": {"path": "/pricing"}},
        {
            "type": "identify",
            "userId": user_id,
            "anonymousId": phone,
            "traits": {"email": f"{user_id}@example.com", "plan": "pro", "name": "Demo Person"},
        },
        {"type": "alias", "previousId": laptop, "userId": user_id},
    ]


def run(settings: Settings, write_key: str, timeout: float = 20.0) -> int:
    """Send the journey, wait for identity to resolve it, print the profile and its history."""
    suffix = uuid.uuid4().hex[:6]
    user_id, phone, laptop = f"demo-{suffix}", f"phone-{suffix}", f"laptop-{suffix}"
    messages = journey(user_id, phone, laptop)
    for step, message in zip(JOURNEY_STEPS, messages, strict=True):
        print(f"→ {step}")
        _post(settings, write_key, message)
    print(f"\nwaiting for identity to resolve {user_id} …")
    with grpc.insecure_channel(f"{settings.host}:{settings.identity_port}") as channel:
        identity = identity_service_pb2_grpc.IdentityServiceStub(channel)
        admin = (("authorization", f"Bearer {settings.admin_token}"),)
        ref = identity_pb2.ProfileRef(
            identifier=identity_pb2.Identifier(type=identity_pb2.IDENTIFIER_TYPE_USER_ID, value=user_id)
        )
        profile = _resolved(identity, admin, ref, {user_id, phone, laptop}, timeout)
        if profile is None:
            print("identity did not resolve the journey in time; see `make logs`")
            return 1
        print(json.dumps(json_format.MessageToDict(profile), indent=2))
        history = identity.GetMergeHistory(pb.GetMergeHistoryRequest(profile=ref), metadata=admin)
        print("\nwhy these identifiers share a profile:")
        for decision in history.decisions:
            print(f"  - {pb.DecisionKind.Name(decision.kind)}: {decision.explanation}")
    return 0


def _post(settings: Settings, write_key: str, message: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"http://{settings.host}:{settings.http_port}/v1/{message['type']}",
        data=json.dumps(message).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode(),
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        reply.read()


def _resolved(
    identity: Any, admin: Any, ref: identity_pb2.ProfileRef, wanted: set[str], timeout: float
) -> pb.Profile | None:
    """The profile once it holds every identifier of the journey (the resolver follows the log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = identity.GetProfile(pb.GetProfileRequest(profile=ref), metadata=admin)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            if wanted <= {i.identifier.value for i in reply.profile.identifiers}:
                return reply.profile  # type: ignore[no-any-return]
        time.sleep(0.2)
    return None

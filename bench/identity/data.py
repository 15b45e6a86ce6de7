"""Synthetic people and their messages: anonymous browsing on several devices, identify, alias, tracks."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.identity.domain.identifiers import e164

T0 = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Message:
    """One message as ingest would collect it: type, personal fields, event name, source, event time."""

    type: str
    personal: dict[str, Any]
    event: str | None
    source: str
    at: datetime


def phone_pool(size: int, rng: random.Random) -> list[str]:
    """Valid phone numbers (checked with phonenumbers), some shared between people on purpose."""
    pool: list[str] = []
    while len(pool) < size:
        candidate = f"+1 {rng.choice(['212', '415', '646', '312'])} {rng.randint(200, 999)} {rng.randint(0, 9999):04d}"
        if e164(candidate) is not None:
            pool.append(candidate)
    return pool


def person(index: int, rng: random.Random, phones: list[str]) -> Iterator[Message]:
    """About ten messages of one person (1 to 3 devices), in event-time order."""
    user, email = f"user-{index}", f"Person.{index}@Example.com"
    devices = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(rng.randint(1, 3))]
    at = T0 + timedelta(seconds=rng.randint(0, 86_400 * 30))
    traits: dict[str, Any] = {"email": email, "name": f"Person {index}", "plan": rng.choice(["free", "pro"])}
    if rng.random() < 0.3:
        traits["phone"] = rng.choice(phones)
    context = {"device": {"id": f"dev-{devices[0]}"}}
    for n in range(rng.randint(1, 3)):
        yield Message(
            "page" if n % 2 else "track", {"anonymousId": devices[0], "context": context}, "Viewed", "web", at
        )
        at += timedelta(minutes=1)
    yield Message("identify", {"anonymousId": devices[0], "userId": user, "traits": traits}, None, "web", at)
    for _ in range(rng.randint(3, 7)):
        at += timedelta(minutes=2)
        yield Message("track", {"anonymousId": devices[0], "userId": user}, "Order Completed", "web", at)
    for device in devices[1:]:
        at += timedelta(hours=3)
        yield Message("screen", {"anonymousId": device}, "Home", "ios", at)
        at += timedelta(minutes=1)
        if rng.random() < 0.5:
            yield Message("alias", {"previousId": device, "userId": user}, None, "ios", at)
        else:
            yield Message(
                "identify",
                {"anonymousId": device, "userId": user, "traits": {"plan": "pro"}},
                None,
                "ios",
                at,
            )

"""Events the activation service appends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cdp.events.envelope import DomainEvent, JsonObject


@dataclass(frozen=True, kw_only=True)
class DestinationConfigured(DomainEvent, type_name="DestinationConfigured"):
    """A destination (webhook, ad list, warehouse, broker) and its settings; `destination-<id>`.

    Settings hold no credentials in the clear: secrets are referenced by name, resolved at delivery.
    """

    destination_id: str
    kind: str
    name: str
    settings: JsonObject


@dataclass(frozen=True, kw_only=True)
class DestinationDisabled(DomainEvent, type_name="DestinationDisabled"):
    """Deliveries to the destination stop."""

    destination_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class ConnectionCreated(DomainEvent, type_name="ConnectionCreated"):
    """An audience and/or events flow to a destination; stream `connection-<connection_id>`."""

    connection_id: str
    destination_id: str
    audience_id: str | None = None
    event_names: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class DeliverySucceeded(DomainEvent, type_name="DeliverySucceeded"):
    """A batch reached the destination; stream `delivery-<connection_id>`."""

    delivery_id: str
    connection_id: str
    destination_id: str
    message_ids: tuple[str, ...]
    attempts: int
    delivered_at: datetime


@dataclass(frozen=True, kw_only=True)
class DeliveryFailed(DomainEvent, type_name="DeliveryFailed"):
    """A batch was not delivered; `error_code` is ours or the HTTP status, never the remote body."""

    delivery_id: str
    connection_id: str
    destination_id: str
    message_ids: tuple[str, ...]
    attempts: int
    error_code: str
    retryable: bool
    failed_at: datetime

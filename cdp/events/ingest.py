"""Events the ingest service appends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cdp.events.envelope import DomainEvent, JsonObject
from cdp.keyring import Keyring

PAYLOAD_CONTEXT = "MessageCollected#payload"
"""Associated data of the payload ciphertext: binds it to this event field, so it cannot be moved elsewhere."""


@dataclass(frozen=True, kw_only=True)
class MessageCollected(DomainEvent, type_name="MessageCollected"):
    """A Segment-spec message accepted from a source; stream `subject-<subject_id>`.

    `payload` is ciphertext (keyring `encrypt_value`, context "MessageCollected#payload") of the JSON
    message minus the clear fields below: userId, anonymousId, traits, properties, context, integrations.
    `identifiers` maps identifier type → subject id (keyed hash) of each identifier the message carried.
    """

    message_id: str
    message_type: str
    source_id: str
    subject_id: str
    event_name: str | None = None
    timestamp: datetime
    received_at: datetime
    sent_at: datetime | None = None
    identifiers: Mapping[str, str]
    payload: str
    plan_violations: tuple[str, ...] = ()
    """Tracking-plan violations of a message stored under a plan in `flag` mode (`event.property: reason`)."""

    def open_payload(self, keyring: Keyring) -> dict[str, Any]:
        """The personal fields (camelCase, as Segment names them); raises `SubjectErased` once shredded."""
        payload: dict[str, Any] = keyring.decrypt_value(
            self.subject_id, self.payload, context=PAYLOAD_CONTEXT
        )
        return payload


def seal_payload(keyring: Keyring, subject_id: str, personal: Mapping[str, Any]) -> str:
    """Encrypt a message's personal fields with the subject's data key, for `MessageCollected.payload`."""
    return keyring.encrypt_value(subject_id, dict(personal), context=PAYLOAD_CONTEXT)


@dataclass(frozen=True, kw_only=True)
class TrackingPlanPublished(DomainEvent, type_name="TrackingPlanPublished"):
    """A new version of a tracking plan (event names and property schemas); `trackingplan-<plan_id>`.

    `rules` holds the whole plan: display_name, common_json_schema, events (message_type, event, json_schema,
    description) and sources (source_id, unplanned_events, schema_violations: allow|flag|block,
    omit_unplanned_properties).
    """

    plan_id: str
    plan_version: int
    source_ids: tuple[str, ...]
    rules: JsonObject
    published_at: datetime | None = None
    """When the version was published (None in events written before this field existed)."""


@dataclass(frozen=True, kw_only=True)
class AttributeDefined(DomainEvent, type_name="AttributeDefined"):
    """An attribute of the catalog; `personal` ones are always encrypted; stream `config-ingest`."""

    name: str
    entity: str
    data_type: str
    personal: bool
    description: str = ""
    attribute_id: str = ""
    """The catalog's stable id (`name` is the trait key as messages carry it)."""
    bands: tuple[JsonObject, ...] = ()
    """Banding rules: `{"label", "lower_bound"?, "upper_bound"?}`, ascending and contiguous."""
    attribute_version: int = 0
    """1 for the first definition of `attribute_id`, incremented by each redefinition."""
    defined_at: datetime | None = None
    """When this version was defined."""


@dataclass(frozen=True, kw_only=True)
class CsvImportCompleted(DomainEvent, type_name="CsvImportCompleted"):
    """A CSV file finished importing (its rows became MessageCollected events); `csvimport-<import_id>`."""

    import_id: str
    source_id: str
    rows_accepted: int
    rows_rejected: int
    completed_at: datetime
    rows_read: int = 0
    """Data rows read (header excluded); read - accepted - rejected were duplicates of earlier imports."""

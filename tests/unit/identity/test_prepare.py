"""The worker's opener: a page's messages opened through the catalog, as the resolver would open them."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

from cdp.eventlog.port import RecordedEvent
from cdp.events import EventMetadata, MessageCollected, from_recorded
from cdp.events.ingest import PAYLOAD_CONTEXT, seal_payload
from cdp.keyring import InMemoryKeyStore, Keyring, MasterKeys, parse_master_key
from services.identity.domain.rules import default_rules
from services.identity.prepare import IdentitiesCache, Opened, Opener, opened_from, page_task
from tests.unit.identity.helpers import HASH, T0

KEYRING = Keyring(InMemoryKeyStore(), MasterKeys(parse_master_key("ab" * 32)))
KNOWN, STRANGER = HASH("user_id", "u1"), HASH("user_id", "u2")


def collected(
    subject: str, body_changes: dict[str, object] | None = None, version: str = "1"
) -> RecordedEvent:
    """An identify as ingest records it, its body optionally changed."""
    message = MessageCollected(
        message_id=str(uuid.uuid4()),
        message_type="identify",
        source_id="web",
        subject_id=subject,
        timestamp=T0,
        received_at=T0,
        identifiers={"user_id": subject},
        payload=seal_payload(
            KEYRING, subject, {"userId": "u1", "traits": {"email": "p@x.io", "plan": "pro"}}
        ),
    )
    new = message.to_new_event(EventMetadata(actor="source:web"))
    data = json.dumps({**json.loads(new.data), **body_changes}).encode() if body_changes else new.data
    meta = {**new.metadata, "schema_version": version}
    return RecordedEvent(new.id, f"subject-{subject}", 0, 0, new.type, data, meta, T0)


def resolver_opens(recorded: RecordedEvent) -> Opened:
    """What the resolver makes of a message it opens itself."""
    event = from_recorded(recorded)
    assert isinstance(event, MessageCollected)
    payload = KEYRING.decrypt_value(event.subject_id, event.payload, context=PAYLOAD_CONTEXT)
    return opened_from(event, payload, default_rules(), IdentitiesCache(), HASH)


def test_the_worker_opens_messages_as_the_resolver_and_leaves_it_the_rest() -> None:
    plain = collected(KNOWN)
    long_number = collected(KNOWN, {"added_later": 12345678901234567890123})  # the standard library parses it
    page = [
        plain,
        long_number,
        collected(STRANGER),  # no keys given for this subject
        replace(plain, data=b'{"message_id": "m"}'),  # a body the catalog refuses
        collected(KNOWN, version="9"),  # newer than this code
    ]
    task = page_task(page, 1, default_rules(), KEYRING.data_keys([KNOWN]))
    opened = Opener(HASH).open_page(task)
    assert opened == [resolver_opens(plain), resolver_opens(long_number), None, None, None]
    assert opened[0] is not None and opened[0].traits == {"email": "p@x.io", "plan": "pro"}

"""Stream names, in one place: `category-id`, where ids are opaque (subject ids, UUIDs, slugs), never personal.

Categories are fixed here; a name is built only through these helpers, which refuse anything that does not
look like an opaque id (an e-mail address, a space, a raw name).
"""

from __future__ import annotations

import re

from cdp.keyring.subjects import check_subject_id

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

SUBJECT = "subject"
"""Messages collected about one subject (`subject-<subject id>`): deleted on erasure."""
CONSENT = "consent"
"""Consent and suppression of one subject (`consent-<subject id>`)."""
PROFILE = "profile"
"""Identity decisions about one profile (`profile-<profile id>`)."""
MEMBERSHIP = "membership"
"""Audience memberships of one profile (`membership-<profile id>`), so erasure can delete them."""
AUDIENCE = "audience"
TRAIT = "trait"
TRACKING_PLAN = "trackingplan"
CSV_IMPORT = "csvimport"
DESTINATION = "destination"
CONNECTION = "connection"
DELIVERY = "delivery"
"""Delivery outcomes of one connection (`delivery-<connection id>`); message ids only, no personal data."""
REQUEST = "dsr"
"""A data subject request and its outcome (`dsr-<request id>`); outlives the subject's own streams."""
RETENTION = "retention"
CONFIG = "config"
"""Per-service configuration (`config-ingest`, `config-identity`, …)."""
ATTRIBUTION = "attribution"
"""The profile stream (`attribution-identity`): which profile each collected message landed on, per batch."""
PARKED = "parked"
"""Events a reactor gave up on (`parked-<reactor name>`), one `EventParked` each."""

SERVICES = ("ingest", "identity", "segments", "activation", "governance")


def stream_name(category: str, id: str) -> str:
    """`category-id`, refusing ids that are not opaque."""
    if not _ID.match(id) or "@" in id:
        raise ValueError(f"stream ids are opaque (letters, digits, _.-; at most 128): {category} id refused")
    return f"{category}-{id}"


def subject_stream(subject_id: str) -> str:
    """`subject-<subject id>`: the messages collected about one subject."""
    return stream_name(SUBJECT, check_subject_id(subject_id))


def consent_stream(subject_id: str) -> str:
    """`consent-<subject id>`: consent changes and suppressions of one subject."""
    return stream_name(CONSENT, check_subject_id(subject_id))


def profile_stream(profile_id: str) -> str:
    """`profile-<profile id>`: links, merges and splits of one profile."""
    return stream_name(PROFILE, profile_id)


def membership_stream(profile_id: str) -> str:
    """`membership-<profile id>`: audience entries and exits of one profile."""
    return stream_name(MEMBERSHIP, profile_id)


def audience_stream(audience_id: str) -> str:
    """`audience-<id>`: an audience's definition and archival."""
    return stream_name(AUDIENCE, audience_id)


def trait_stream(trait_id: str) -> str:
    """`trait-<id>`: a computed trait's definition."""
    return stream_name(TRAIT, trait_id)


def tracking_plan_stream(plan_id: str) -> str:
    """`trackingplan-<id>`: the published versions of one tracking plan."""
    return stream_name(TRACKING_PLAN, plan_id)


def csv_import_stream(import_id: str) -> str:
    """`csvimport-<id>`: the outcome of one CSV import."""
    return stream_name(CSV_IMPORT, import_id)


def destination_stream(destination_id: str) -> str:
    """`destination-<id>`: a destination's configuration and state."""
    return stream_name(DESTINATION, destination_id)


def connection_stream(connection_id: str) -> str:
    """`connection-<id>`: what a connection sends to which destination."""
    return stream_name(CONNECTION, connection_id)


def delivery_stream(connection_id: str) -> str:
    """`delivery-<connection id>`: delivery outcomes of one connection."""
    return stream_name(DELIVERY, connection_id)


def request_stream(request_id: str) -> str:
    """`dsr-<request id>`: one access or erasure request."""
    return stream_name(REQUEST, request_id)


def retention_stream(policy_id: str) -> str:
    """`retention-<policy id>`: a retention policy and its runs."""
    return stream_name(RETENTION, policy_id)


def attribution_stream(resolver: str = "identity") -> str:
    """`attribution-identity`: the profile stream, one `MessagesAttributed` per resolved batch."""
    return stream_name(ATTRIBUTION, resolver)


def parked_stream(reactor: str) -> str:
    """`parked-<reactor name>`: the events one reactor parked."""
    return stream_name(PARKED, reactor)


def config_stream(service: str) -> str:
    """`config-<service>`: a service's own configuration events."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    return stream_name(CONFIG, service)

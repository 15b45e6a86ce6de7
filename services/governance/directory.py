"""Who a person is, asked of identity: every identifier of the profile a reference names, as subject ids.

Governance never re-implements the identity graph: a request names the person by profile id or by any
identifier, identity answers with the profile (its identifiers in the clear and the profiles merged into it),
and governance hashes each identifier into the subject id the log and the keyring know it by. An identifier
identity has never linked (consent given before the first message, a person already erased) still names one
subject: its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc

from cdp import errors
from cdp.common.v1 import identity_pb2
from cdp.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from cdp.keyring import SubjectIds
from services.identity.domain.identifiers import EXTERNAL_PREFIX, normalise

TYPE_NAMES = {
    identity_pb2.IDENTIFIER_TYPE_USER_ID: "user_id",
    identity_pb2.IDENTIFIER_TYPE_ANONYMOUS_ID: "anonymous_id",
    identity_pb2.IDENTIFIER_TYPE_EMAIL: "email",
    identity_pb2.IDENTIFIER_TYPE_PHONE: "phone",
    identity_pb2.IDENTIFIER_TYPE_DEVICE_ID: "device_id",
    identity_pb2.IDENTIFIER_TYPE_ADVERTISING_ID: "advertising_id",
}


@dataclass(frozen=True, slots=True)
class PersonIdentifier:
    """One identifier of a person: its type (`email`, `external:crm_id`), clear value and subject id."""

    type: str
    value: str
    subject_id: str


@dataclass(frozen=True)
class Person:
    """Everything that names one person: the live profile, the profiles merged into it, every identifier."""

    profile_id: str
    """"" when identity knows no profile for the reference (then `identifiers` holds just the reference)."""
    profile_ids: tuple[str, ...]
    """The live profile first, then every profile merged into it."""
    identifiers: tuple[PersonIdentifier, ...]
    """The reference's own identifier first (when the request named one), then the profile's; one per subject."""

    @property
    def subject_ids(self) -> tuple[str, ...]:
        """Every subject id of the person, in `identifiers` order."""
        return tuple(i.subject_id for i in self.identifiers)

    @property
    def identifier_types(self) -> tuple[str, ...]:
        """The type of each identifier (parallel to `subject_ids`)."""
        return tuple(i.type for i in self.identifiers)

    @property
    def primary_subject(self) -> str:
        """The subject the person's records are filed under: the first identifier's."""
        return self.identifiers[0].subject_id


def type_name(identifier: identity_pb2.Identifier, path: str) -> str:
    """`email`, `external:crm_id`…: the type as subject ids are hashed with it."""
    if identifier.type == identity_pb2.IDENTIFIER_TYPE_EXTERNAL:
        namespace = identifier.namespace.strip()
        if not namespace or namespace != namespace.lower() or " " in namespace:
            raise errors.InvalidInput.field(
                f"{path}.namespace", "is required for EXTERNAL (lower_snake_case)"
            )
        return EXTERNAL_PREFIX + namespace
    if identifier.namespace:
        raise errors.InvalidInput.field(f"{path}.namespace", "is only for EXTERNAL identifiers")
    if identifier.type not in TYPE_NAMES:
        raise errors.InvalidInput.field(f"{path}.type", "is not a known identifier type")
    return TYPE_NAMES[identifier.type]


ProfileLookup = Callable[[identity_pb2.ProfileRef], Awaitable[identity_service_pb2.Profile | None]]
"""A profile reference → identity's profile, or None when identity does not know it."""


class Directory:
    """Resolves a reference to a `Person` through identity, hashing identifiers like every other service."""

    def __init__(self, lookup: ProfileLookup, hasher: SubjectIds) -> None:
        self._lookup, self._hasher = lookup, hasher

    def own_identifier(self, ref: identity_pb2.ProfileRef, path: str = "subject") -> PersonIdentifier | None:
        """The reference's identifier, normalised and hashed (None for a reference by profile id)."""
        if ref.WhichOneof("ref") != "identifier":
            return None
        kind = type_name(ref.identifier, f"{path}.identifier")
        value = normalise(kind, ref.identifier.value)
        if value is None:
            raise errors.InvalidInput.field(f"{path}.identifier.value", "cannot identify anyone")
        return PersonIdentifier(kind, value, self._hasher(kind, value))

    async def find(self, ref: identity_pb2.ProfileRef, path: str = "subject") -> Person | None:
        """The person a reference names; None for a profile id identity does not know."""
        which = ref.WhichOneof("ref")
        if which is None:
            raise errors.InvalidInput.field(path, "is required (a profile_id or an identifier)")
        if which == "profile_id" and not ref.profile_id.strip():
            raise errors.InvalidInput.field(f"{path}.profile_id", "must not be empty")
        own = self.own_identifier(ref, path)
        profile = await self._lookup(ref)
        if profile is None:
            return None if own is None else Person("", (), (own,))
        found = [own] if own is not None else []
        for item in profile.identifiers:
            kind = type_name(item.identifier, f"{path}.identifier")
            found.append(
                PersonIdentifier(kind, item.identifier.value, self._hasher(kind, item.identifier.value))
            )
        unique = tuple({i.subject_id: i for i in found}.values())
        profiles = tuple(dict.fromkeys([profile.profile_id, *profile.merged_profile_ids]))
        return Person(profile.profile_id, profiles, unique)


WHO = ("profile_id", "identifiers", "merged_profile_ids")
"""The fields of a profile that say who the person is (all a request needs to find them)."""


def identity_lookup(
    channel: grpc.aio.Channel, token: str, timeout: float, fields: Sequence[str] = WHO
) -> ProfileLookup:
    """Ask identity's GetProfile for these fields (none: the whole profile); NOT_FOUND → None."""
    stub = identity_service_pb2_grpc.IdentityServiceStub(channel)

    async def lookup(ref: identity_pb2.ProfileRef) -> identity_service_pb2.Profile | None:
        request = identity_service_pb2.GetProfileRequest(profile=ref)
        request.read_mask.paths.extend(fields)
        try:
            reply = await stub.GetProfile(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=max(timeout, 5.0)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise errors.InvalidInput.field("subject", error.details() or "was refused") from error
            raise
        profile: identity_service_pb2.Profile = reply.profile
        return profile

    return lookup

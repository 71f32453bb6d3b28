"""Plain domain values shared by every layer. No IO, no framework types."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Permission(enum.StrEnum):
    """What a DICOM node may do with the archive."""

    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"
    MOVE_DESTINATION = "move-destination"


@dataclass(frozen=True, slots=True)
class Facility:
    """A member site of the territory (a tenant)."""

    id: int
    slug: str
    name: str
    issuer: str
    #: its nodes are admitted only over DICOM TLS with a certificate bound to them
    require_tls: bool = False


@dataclass(frozen=True, slots=True)
class Node:
    """A DICOM application entity of a facility (modality, PACS, workstation)."""

    id: int
    ae_title: str
    host: str
    port: int
    facility_id: int
    permissions: frozenset[Permission]
    description: str = ""
    #: SHA-256 (hex) of the DER client certificate bound to the node; "" = none (PS3.15 B.9)
    tls_fingerprint: str = ""

    def may(self, permission: Permission) -> bool:
        return permission in self.permissions


class Role(enum.StrEnum):
    """What a user does in the territory (docs/security.md has the policy table)."""

    RADIOLOGIST = "radiologist"
    CLINICIAN = "clinician"
    TECHNOLOGIST = "technologist"
    FACILITY_ADMIN = "facility-admin"
    IDENTITY_MANAGER = "identity-manager"
    AUDITOR = "auditor"
    TERRITORY_ADMIN = "territory-admin"


class ActorKind(enum.StrEnum):
    NODE = "node"
    #: an HTTP client holding a facility's API token
    CLIENT = "client"
    USER = "user"
    #: the holder of a share link who proved its access code (a GP, a patient)
    RECIPIENT = "recipient"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is asking. Built once per request or association by the adapter."""

    kind: ActorKind
    name: str
    #: the facility the actor acts for (a node's facility; an importer's target)
    facility: Facility | None
    address: str = ""
    node: Node | None = None
    #: what a node or client may do (the system actor is not limited by this)
    permissions: frozenset[Permission] = frozenset()
    #: a user's roles (in every facility it belongs to)
    roles: frozenset[Role] = frozenset()
    #: every facility a user belongs to (``facility`` is the one it acts for)
    facilities: tuple[Facility, ...] = ()
    #: a user's stable identifier: built-in user name, or "<issuer>#<sub>" for OIDC
    subject: str = ""
    #: the identifier of the access token (its "jti"), for revocation and audit
    token_id: str = ""
    #: admitted over DICOM TLS with the node's bound client certificate
    tls: bool = False
    #: a share link's recipient: the link id and the studies (index ids) it opens
    share_id: int | None = None
    share_studies: frozenset[int] = frozenset()

    @property
    def facility_id(self) -> int | None:
        return self.facility.id if self.facility else None

    @property
    def facility_ids(self) -> frozenset[int]:
        """Every facility whose own data the actor reaches by role or permission."""
        ids = {f.id for f in self.facilities}
        if self.facility is not None:
            ids.add(self.facility.id)
        return frozenset(ids)

    def has(self, role: Role) -> bool:
        return role in self.roles

    @staticmethod
    def system(name: str = "coffre", facility: Facility | None = None) -> Actor:
        return Actor(kind=ActorKind.SYSTEM, name=name, facility=facility)

    @staticmethod
    def for_node(node: Node, facility: Facility, address: str) -> Actor:
        return Actor(
            kind=ActorKind.NODE,
            name=node.ae_title,
            facility=facility,
            address=address,
            node=node,
            permissions=node.permissions,
        )

    @staticmethod
    def for_client(name: str, facility: Facility, permissions: frozenset[Permission], address: str) -> Actor:
        return Actor(kind=ActorKind.CLIENT, name=name, facility=facility, address=address,
                     permissions=permissions)

    @staticmethod
    def for_recipient(share_id: int, studies: frozenset[int], address: str) -> Actor:
        """The holder of share link ``share_id``: read-only access to exactly ``studies``."""
        return Actor(kind=ActorKind.RECIPIENT, name=f"share:{share_id}", facility=None, address=address,
                     share_id=share_id, share_studies=studies)

    @staticmethod
    def for_user(
        subject: str,
        name: str,
        roles: frozenset[Role],
        facilities: tuple[Facility, ...],
        address: str,
        token_id: str = "",
    ) -> Actor:
        """A user acting for the first of its facilities (all of them are its own)."""
        return Actor(kind=ActorKind.USER, name=name, facility=facilities[0] if facilities else None,
                     address=address, roles=roles, facilities=facilities, subject=subject,
                     token_id=token_id)

    def describe(self) -> str:
        """A short, patient-free label for logs and audit."""
        where = f"@{self.address}" if self.address else ""
        return f"{self.kind.value}:{self.name}{where}"


class IngestStatus(enum.StrEnum):
    STORED = "stored"
    #: identical bytes were already archived: idempotent success, no second blob
    DUPLICATE = "duplicate"
    #: same SOP Instance UID, different content: a new version became current
    NEW_VERSION = "new-version"


@dataclass(frozen=True, slots=True)
class IngestResult:
    status: IngestStatus
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sha256: str
    size: int
    instance_id: int
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two different objects received under one (facility, SOP Instance UID)."""

    id: int
    facility_slug: str
    sop_instance_uid: str
    previous_sha256: str
    new_sha256: str
    detected_at: datetime
    source: str

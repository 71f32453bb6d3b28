"""The one authorization function (DESIGN rule 3), table-driven, default deny.

``authorize(actor, action, resource, grants)`` answers every question of the form
"may this actor do this to that": DIMSE, DICOMweb, the REST API, the portal and share
links all reach it through the services. The rules, in order:

1. The system actor (the archive's operator at the command line) may do anything.
2. The action must be in the actor's table: a user's roles (:data:`ROLE_ACTIONS`), a
   DICOM node's or API client's registered permissions (:data:`PERMISSION_ACTIONS`).
3. Data and objects of one of the actor's own facilities: allowed.
4. Another facility's patient data (QUERY, RETRIEVE): only through a grant
   (:class:`Grants`): break-the-glass for that person (always wins); else a person's
   opposition to sharing denies; else a care relationship with the person, a reading
   assignment of the study, or the territory policy ``shared``.
5. Administration of another facility: only the territory admin.
6. A share link's recipient reads exactly the studies of its link, nothing else.

Queries do not call :func:`authorize` row by row: :func:`scope` turns the same rules
into one predicate (:class:`~coffre.index.query.Scope`) that the SQL compiler adds, so
denied data is indistinguishable from absent data, counts included.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from coffre.errors import NotAuthorized
from coffre.index.query import Scope
from coffre.model import Actor, ActorKind, Permission, Role


class Action(enum.StrEnum):
    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"
    ECHO = "echo"
    #: record a care relationship with a person for one's facility
    RECORD_CARE = "record-care"
    #: assign a study of one's facility to a reader (a user or facility)
    ASSIGN_READING = "assign-reading"
    BREAK_GLASS = "break-glass"
    RECORD_OPPOSITION = "record-opposition"
    REVIEW_BREAK_GLASS = "review-break-glass"
    #: link, unlink, merge, split persons; work the reconciliation queue
    MANAGE_IDENTITY = "manage-identity"
    MANAGE_USERS = "manage-users"
    #: a facility's nodes and settings
    MANAGE_FACILITY = "manage-facility"
    #: facilities themselves, territory-wide settings
    MANAGE_TERRITORY = "manage-territory"
    READ_AUDIT = "read-audit"
    #: create share links for a GP or a patient
    SHARE = "share"


#: actions that read patient data, subject to grants across facilities
DATA_READS = frozenset({Action.QUERY, Action.RETRIEVE})

_CARE = frozenset({Action.QUERY, Action.RETRIEVE, Action.BREAK_GLASS, Action.RECORD_OPPOSITION, Action.SHARE})

#: what each role may do in its own facilities (docs/security.md shows this table)
ROLE_ACTIONS: dict[Role, frozenset[Action]] = {
    Role.RADIOLOGIST: _CARE,
    Role.CLINICIAN: _CARE | {Action.RECORD_CARE},
    Role.TECHNOLOGIST: frozenset({Action.STORE, Action.QUERY, Action.RETRIEVE}),
    Role.FACILITY_ADMIN: frozenset(
        {Action.MANAGE_FACILITY, Action.MANAGE_USERS, Action.REVIEW_BREAK_GLASS, Action.ASSIGN_READING}
    ),
    Role.IDENTITY_MANAGER: frozenset({Action.MANAGE_IDENTITY}),
    Role.AUDITOR: frozenset({Action.READ_AUDIT}),
    Role.TERRITORY_ADMIN: frozenset({Action.MANAGE_TERRITORY, Action.MANAGE_FACILITY, Action.MANAGE_USERS}),
}

#: what a DICOM node's or an API client's registered permissions let it do
PERMISSION_ACTIONS: dict[Permission, frozenset[Action]] = {
    Permission.STORE: frozenset({Action.STORE}),
    Permission.QUERY: frozenset({Action.QUERY}),
    Permission.RETRIEVE: frozenset({Action.RETRIEVE}),
    Permission.MOVE_DESTINATION: frozenset(),
}

#: roles whose holders act territory-wide for their actions
_TERRITORY_WIDE = frozenset({Role.TERRITORY_ADMIN})


@dataclass(frozen=True, slots=True)
class Resource:
    """What an action is about: the owning facility and, for patient data, who and which study."""

    facility_id: int | None
    person_id: int | None = None
    study_pk: int | None = None


@dataclass(frozen=True, slots=True)
class Grants:
    """The grants in force for one actor at one instant (loaded by ``services.grants``)."""

    #: persons with an active care relationship for one of the actor's facilities
    care: frozenset[int] = frozenset()
    #: studies assigned to the actor (or its facility) for reading
    reading: frozenset[int] = frozenset()
    #: persons the actor broke the glass for (still within the time limit)
    break_glass: frozenset[int] = frozenset()
    #: persons who oppose sharing between facilities
    opposed: frozenset[int] = frozenset()
    #: persons behind the ``reading`` studies (oppositions apply to them too)
    reading_persons: dict[int, int | None] | None = None
    #: the territory policy is "shared"
    shared: bool = False


NO_GRANTS = Grants()


def actions_of(actor: Actor) -> frozenset[Action]:
    """Every action the actor's roles or permissions name (before resource rules)."""
    if actor.kind is ActorKind.SYSTEM:
        return frozenset(Action)
    if actor.kind is ActorKind.USER:
        found: set[Action] = set()
        for role in actor.roles:
            found |= ROLE_ACTIONS.get(role, frozenset())
        return frozenset(found)
    if actor.kind is ActorKind.RECIPIENT:
        return DATA_READS
    if actor.kind in (ActorKind.NODE, ActorKind.CLIENT) and actor.facility is not None:
        found = {Action.ECHO}
        for permission in actor.permissions:
            found |= PERMISSION_ACTIONS[permission]
        return frozenset(found)
    return frozenset()


def _territory_wide(actor: Actor, action: Action) -> bool:
    return any(action in ROLE_ACTIONS[r] for r in actor.roles & _TERRITORY_WIDE)


def cross_facility_reason(grants: Grants, resource: Resource) -> str | None:
    """Why patient data of another facility may be read, or None (PS: rule 4 above)."""
    person = resource.person_id
    if person is not None and person in grants.break_glass:
        return "break-glass"
    if person is not None and person in grants.opposed:
        return None
    if person is not None and person in grants.care:
        return "care"
    if resource.study_pk is not None and resource.study_pk in grants.reading:
        return "reading"
    if grants.shared and person is not None:
        return "shared"
    return None


def is_allowed(actor: Actor, action: Action, resource: Resource, grants: Grants = NO_GRANTS) -> bool:
    """True when ``actor`` may perform ``action`` on ``resource`` given its ``grants``."""
    if actor.kind is ActorKind.SYSTEM:
        return True
    if action not in actions_of(actor):
        return False
    if actor.kind is ActorKind.RECIPIENT:  # a search (scoped) or one of its studies
        if resource.study_pk is None:
            return resource.facility_id is None and resource.person_id is None
        return resource.study_pk in actor.share_studies
    if resource.facility_id is None or resource.facility_id in actor.facility_ids:
        return True
    if _territory_wide(actor, action):
        return True
    if action in DATA_READS:
        return cross_facility_reason(grants, resource) is not None
    return False


def authorize(actor: Actor, action: Action, resource: Resource, grants: Grants = NO_GRANTS) -> None:
    """Raise ``NotAuthorized`` unless :func:`is_allowed`."""
    if not is_allowed(actor, action, resource, grants):
        raise NotAuthorized(f"{actor.describe()} may not {action.value} here")


def scope(actor: Actor, action: Action, grants: Grants = NO_GRANTS) -> Scope:
    """The rows ``actor`` may reach with ``action`` (QUERY or RETRIEVE), as one predicate.

    The same rules as :func:`is_allowed`, for every row at once: own facilities, the
    persons of care relationships minus oppositions, break-the-glass persons, reading
    assignments whose person does not oppose, and under the ``shared`` policy every
    person but the opposed ones.
    """
    if actor.kind is ActorKind.SYSTEM and actor.facility is None:
        return Scope.everything()
    if action not in actions_of(actor):
        return Scope.nothing()
    if actor.kind is ActorKind.SYSTEM:
        return Scope(facility_ids=actor.facility_ids)
    if actor.kind is ActorKind.RECIPIENT:  # exactly the studies of the share link
        return Scope(facility_ids=frozenset(), study_pks=actor.share_studies)
    persons = (grants.care - grants.opposed) | grants.break_glass
    studies = frozenset(
        s for s in grants.reading
        if grants.reading_persons is None
        or grants.reading_persons.get(s) not in grants.opposed
        or grants.reading_persons.get(s) in grants.break_glass
    )
    except_ = (grants.opposed - grants.break_glass) if grants.shared else None
    return Scope(facility_ids=actor.facility_ids, person_ids=persons, study_pks=studies,
                 persons_except=except_)


def policy_table() -> str:
    """The role x action table of :data:`ROLE_ACTIONS` in Markdown (docs/security.md shows it)."""
    actions = [a for a in Action if a is not Action.ECHO]
    lines = ["| role | " + " | ".join(a.value for a in actions) + " |",
             "| --- |" + " :-: |" * len(actions)]
    for role in Role:
        marks = ["✔" if a in ROLE_ACTIONS[role] else "" for a in actions]
        lines.append(f"| {role.value} | " + " | ".join(marks) + " |")
    return "\n".join(lines) + "\n"

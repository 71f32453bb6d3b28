"""Person linking at ingest, in the ingest's own transaction (DESIGN 5, rule 2).

Only a *new* local identity (a ``patient`` row just inserted) is matched:

1. a qualified INS (``dicom/ins.py``) held by exactly one current person → the identity
   is linked to that person (event ``link``, evidence: the INS);
2. otherwise a new person is created (with the INS, if one was sent and no person holds
   it; event ``create``), and persons whose identities resemble the new one
   (:func:`resemblance`) — or that hold the same INS, when several do — are queued as
   reconciliation candidates. Nothing merges silently.

An identity already known costs nothing more than a substring test on its DICOM JSON
(:func:`coffre.dicom.ins.may_carry_ins`) unless the object carries an INS qualifier;
then (:func:`note_ins`) a person lacking an INS gets it (event ``ins``), and an INS
held by another person queues a candidate instead of linking.

Resemblance (all on normalised, folded demographics; the birth date must be equal
and known, and the sexes must not contradict):

=========================  =====
family name equal          50
family name prefix         30  (one is a prefix of the other, or the first 4 letters agree)
first given name equal     40
given name initial equal   15
sex equal (both known)     10
=========================  =====

A candidate needs :data:`THRESHOLD` (65): equal names and birth date score 90 to 100;
twins (same family name and birth date, other given name) score 60 and are not queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from coffre.dicom.ins import (
    Demographics,
    InsExtraction,
    QualifiedIns,
    demographics_from_attributes,
    ins_from_json,
    may_carry_ins,
    split_name,
)
from coffre.dicom.instance import ParsedInstance
from coffre.index import persons
from coffre.index.schema import facility, patient, person

THRESHOLD = 65
#: candidates queued for one new identity, best first
MAX_CANDIDATES = 10
#: rows read for the resemblance search (same birth date and family prefix)
MAX_ROWS = 500


@dataclass(frozen=True, slots=True)
class IdentityOutcome:
    """What the ingest did to identities, for its audit event (ids only, no demographics)."""

    #: the person of the identity, when known
    person_id: int | None
    #: new-person, ins-link, ins-set, ins-held-elsewhere, ins-mismatch, none
    action: str
    candidates: int = 0
    #: why identifiers qualified as INS were ignored
    ins_ignored: tuple[str, ...] = field(default_factory=tuple)

    def audit_detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"identity": self.action}
        if self.person_id is not None:
            detail["person"] = self.person_id
        if self.candidates:
            detail["candidates"] = self.candidates
        if self.ins_ignored:
            detail["ins_ignored"] = list(self.ins_ignored)
        return detail


@dataclass(frozen=True, slots=True)
class Resemblance:
    score: int
    evidence: dict[str, str]


def resemblance(a: Demographics, b: Demographics) -> Resemblance | None:
    """How much two identities' demographics suggest one human (module table), or None."""
    if not a.birth_date or a.birth_date != b.birth_date:
        return None
    if a.sex in ("M", "F") and b.sex in ("M", "F") and a.sex != b.sex:
        return None
    if not a.family or not b.family:
        return None
    if a.family == b.family:
        family, score = "equal", 50
    elif (a.family.startswith(b.family) or b.family.startswith(a.family)
          or (len(a.family) >= 4 and a.family[:4] == b.family[:4])):
        family, score = "prefix", 30
    else:
        return None
    if a.first_given and a.first_given == b.first_given:
        given = "equal"
        score += 40
    elif a.given and b.given and a.given[0] == b.given[0]:
        given = "initial"
        score += 15
    else:
        given = "different"
    sex = "equal" if a.sex and a.sex == b.sex else "unknown"
    if sex == "equal":
        score += 10
    return Resemblance(score, {"rule": "demographics", "family": family, "given": given,
                               "birth_date": "equal", "sex": sex})


def _prefix_condition(conn: Connection, prefix: str) -> Any:
    """Names starting with ``prefix``, in a form the (facility_id, patient_name_norm)
    index serves: a binary range on SQLite, LIKE on PostgreSQL (ranges depend on the
    collation there; LIKE uses the index under the C collation)."""
    column = patient.c.patient_name_norm
    if conn.dialect.name == "sqlite":
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return (column >= prefix) & (column < upper)
    return column.like(prefix + "%")


def similar_persons(
    conn: Connection, demo: Demographics, *, exclude_person: int, ins: QualifiedIns | None
) -> list[tuple[int, Resemblance]]:
    """Current persons with an identity resembling ``demo``, best first, at most
    :data:`MAX_CANDIDATES`; persons holding another INS than ``ins`` are not the same human."""
    prefix = demo.family_prefix
    if not prefix or not demo.birth_date:
        return []
    facility_ids = [int(fid) for (fid,) in conn.execute(select(facility.c.id))]
    rows = conn.execute(
        select(patient.c.id, patient.c.person_id, patient.c.patient_name_norm, patient.c.patient_sex,
               person.c.ins, person.c.ins_oid)
        .join(person, person.c.id == patient.c.person_id)
        .where(patient.c.facility_id.in_(facility_ids), _prefix_condition(conn, prefix),
               patient.c.patient_birth_date == demo.birth_date, patient.c.person_id != exclude_person,
               person.c.merged_into.is_(None))
        .limit(MAX_ROWS)
    )
    best: dict[int, Resemblance] = {}
    for row in rows:
        if ins is not None and row.ins and (row.ins, row.ins_oid) != (ins.value, ins.oid):
            continue
        family, given = split_name(row.patient_name_norm)
        other = Demographics(family, given, demo.birth_date, (row.patient_sex or "").strip().upper())
        found = resemblance(demo, other)
        if found is None or found.score < THRESHOLD:
            continue
        pid = int(row.person_id)
        if pid not in best or found.score > best[pid].score:
            best[pid] = Resemblance(found.score, {**found.evidence, "matched_identity": str(row.id)})
    ranked = sorted(best.items(), key=lambda item: (-item[1].score, item[0]))
    return ranked[:MAX_CANDIDATES]


def _ins_key(ins: QualifiedIns) -> str:
    return f"coffre-ins:{ins.oid}:{ins.value}"


def link_new_identity(
    conn: Connection, *, patient_pk: int, parsed: ParsedInstance, actor: str, now: datetime
) -> IdentityOutcome:
    """Give a just-created local identity its person (module docstring, steps 1-2)."""
    extraction = ins_from_json(parsed.dicom_json)
    ins = extraction.ins
    holders: list[int] = []
    if ins is not None:
        persons.lock(conn, _ins_key(ins))
        holders = persons.persons_with_ins(conn, ins, for_update=True)
        if len(holders) == 1:
            persons.set_identity_person(conn, [patient_pk], holders[0])
            persons.record_event(conn, at=now, action="link", actor=actor, patient_pk=patient_pk,
                                 to_person=holders[0], reason="qualified INS match",
                                 evidence={"rule": "ins", **persons.sent_ins(ins)})
            return IdentityOutcome(holders[0], "ins-link", ins_ignored=extraction.ignored)
    person_id = persons.create_person(conn, now=now, ins=ins if ins is not None and not holders else None)
    persons.set_identity_person(conn, [patient_pk], person_id)
    persons.record_event(conn, at=now, action="create", actor=actor, patient_pk=patient_pk,
                         to_person=person_id, reason="new local identity",
                         evidence=persons.sent_ins(ins) if ins is not None else {})
    queued = 0
    for holder in holders:  # several persons hold the INS: a human decides
        queued += persons.add_candidate(conn, patient_pk=patient_pk, person_id=holder, score=100,
                                        evidence={"rule": "ins"}, now=now)
    demo = demographics_from_attributes(parsed.attributes)
    if demo.birth_date:
        persons.lock(conn, f"coffre-birth-date:{demo.birth_date}")
    for other, found in similar_persons(conn, demo, exclude_person=person_id, ins=ins):
        if other not in holders:
            queued += persons.add_candidate(conn, patient_pk=patient_pk, person_id=other, score=found.score,
                                            evidence=found.evidence, now=now)
    return IdentityOutcome(person_id, "new-person", queued, extraction.ignored)


def note_ins(
    conn: Connection, *, patient_pk: int, parsed: ParsedInstance, actor: str, now: datetime
) -> IdentityOutcome | None:
    """An object of a known identity carries an INS qualifier: set or queue (module doc).

    None when there is nothing to do (the usual case: the person already has this INS).
    """
    if not may_carry_ins(parsed.dicom_json):
        return None
    extraction = ins_from_json(parsed.dicom_json)
    ins = extraction.ins
    row = conn.execute(
        select(patient.c.person_id, person.c.ins, person.c.ins_oid)
        .select_from(patient.outerjoin(person, person.c.id == patient.c.person_id))
        .where(patient.c.id == patient_pk)
    ).one()
    if ins is None:
        return _ignored(row.person_id, extraction)
    if row.person_id is not None and (row.ins, row.ins_oid) == (ins.value, ins.oid):
        return None
    if persons.ins_sent_by(conn, [patient_pk]).get(patient_pk) == ins:
        return None  # seen before for this identity: already set, queued or noted
    persons.lock(conn, _ins_key(ins))
    person_id = row.person_id
    if person_id is None:  # a row from before persons existed
        person_id = persons.create_person(conn, now=now)
        persons.set_identity_person(conn, [patient_pk], person_id)
        persons.record_event(conn, at=now, action="create", actor=actor, patient_pk=patient_pk,
                             to_person=person_id, reason="local identity without a person")
    holders = [h for h in persons.persons_with_ins(conn, ins, for_update=True) if h != person_id]
    evidence: dict[str, Any] = dict(persons.sent_ins(ins))
    if holders:
        queued = 0
        for holder in holders:
            queued += persons.add_candidate(conn, patient_pk=patient_pk, person_id=holder, score=100,
                                            evidence={"rule": "ins"}, now=now)
        persons.record_event(conn, at=now, action="ins", actor=actor, patient_pk=patient_pk,
                             from_person=person_id, to_person=person_id,
                             reason="INS held by another person: queued",
                             evidence={**evidence, "applied": False, "held_by": holders})
        return IdentityOutcome(person_id, "ins-held-elsewhere", queued, extraction.ignored)
    current = persons.person_ins(conn, person_id)
    if current is not None and current != ins:
        persons.record_event(conn, at=now, action="ins", actor=actor, patient_pk=patient_pk,
                             from_person=person_id, to_person=person_id,
                             reason="INS differs from the person's: not applied",
                             evidence={**evidence, "applied": False})
        return IdentityOutcome(person_id, "ins-mismatch", 0, extraction.ignored)
    persons.set_person_ins(conn, person_id, ins)
    persons.record_event(conn, at=now, action="ins", actor=actor, patient_pk=patient_pk,
                         from_person=person_id, to_person=person_id, reason="qualified INS received",
                         evidence={**evidence, "applied": True})
    return IdentityOutcome(person_id, "ins-set", 0, extraction.ignored)


def _ignored(person_id: int | None, extraction: InsExtraction) -> IdentityOutcome | None:
    if not extraction.ignored:
        return None
    return IdentityOutcome(person_id, "none", 0, extraction.ignored)

"""The caller's identifier domain (IHE RAD "Multiple Identity Management", MIMA).

A facility queries and retrieves with its own PatientIDs and must receive its own
PatientIDs back, so that its PACS files priors from other sites under the right patient:

- :func:`query_domain`: a single-value PatientID key given by a facility's actor (with
  no IssuerOfPatientID, or the facility's own) means the facility's local identity; it
  is expanded to every identity of the same person (within the caller's scope, added
  separately). When the facility knows no such patient, it matches the facility's own
  rows only — never another facility's patient who happens to share the number.
- :class:`Coercer`: matches and instances of another facility's identity are returned
  with the caller's PatientID/IssuerOfPatientID, the originals in
  OtherPatientIDsSequence. When the person has no identity in the caller's facility,
  the originals stay (their issuer says whose they are).

PATIENT-level C-FIND is not expanded: a patient row *is* one local identity, and
another facility's row under the caller's PatientID would be a duplicate patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coffre.dicom.attributes import Level
from coffre.dicom.coercion import Coercion
from coffre.dicom.query import Match, Query
from coffre.index.engine import Tx
from coffre.index.persons import identities_of, person_of_identity
from coffre.index.query import (
    ISSUER_OF_PATIENT_ID,
    ORIGIN_FACILITY,
    ORIGIN_ISSUER,
    ORIGIN_PATIENT_ID,
    ORIGIN_PERSON,
    PATIENT_ID,
    Domain,
    Row,
)
from coffre.index.retrieve import InstanceRef
from coffre.model import Actor

OTHER_PATIENT_IDS = 0x00101002
_WILDCARDS = frozenset("*?")


def query_domain(tx: Tx, actor: Actor, query: Query, *, expand_patient_level: bool = False) -> Domain | None:
    """The domain of the query's PatientID key, or None when it is not a local identity."""
    if actor.facility is None or (query.level is Level.PATIENT and not expand_patient_level):
        return None
    ids = [f for f in query.filters if f.tag == PATIENT_ID]
    if len(ids) != 1 or ids[0].match is not Match.SINGLE or _WILDCARDS & set(ids[0].values[0]):
        return None
    patient_id = ids[0].values[0]
    issuers = [f for f in query.filters if f.tag == ISSUER_OF_PATIENT_ID]
    own_issuers = {f.issuer for f in (actor.facility, *actor.facilities)}
    if issuers and not (issuers[0].match is Match.SINGLE and issuers[0].values[0] in own_issuers):
        return None  # an explicit other domain: plain matching
    persons = {
        p for fid in sorted(actor.facility_ids)
        if (p := person_of_identity(tx, fid, patient_id)) is not None
    }
    return Domain(patient_id=patient_id, person_ids=frozenset(persons), facility_ids=actor.facility_ids)


@dataclass
class Coercer:
    """Coerces matches and instances of one request into the caller's domain."""

    actor: Actor
    _local: dict[int, tuple[str, str] | None] = field(default_factory=dict)

    def _local_identity(self, tx: Tx, person_id: int) -> tuple[str, str] | None:
        if person_id not in self._local:
            found = None
            acting = self.actor.facility_id
            ranked = sorted(identities_of(tx, person_id), key=lambda i: (i.facility_id != acting, i.patient_pk))
            for identity in ranked:
                if identity.facility_id in self.actor.facility_ids:
                    found = (identity.patient_id, identity.issuer)
                    break
            self._local[person_id] = found
        return self._local[person_id]

    def coercion(
        self, tx: Tx, facility_id: int, person_id: int | None, patient_id: str, issuer: str
    ) -> Coercion | None:
        """How to present an identity of ``facility_id`` to the caller, or None (as is)."""
        if self.actor.facility is None or person_id is None or facility_id in self.actor.facility_ids:
            return None
        local = self._local_identity(tx, person_id)
        if local is None:
            return None
        return Coercion(patient_id=local[0], issuer=local[1], original_id=patient_id, original_issuer=issuer)

    def row(self, tx: Tx, row: Row, return_tags: tuple[int, ...]) -> Row:
        """Drop the origin keys of ``row``; coerce its identifiers when it is another domain's."""
        facility_id = row.pop(ORIGIN_FACILITY, None)
        person_id = row.pop(ORIGIN_PERSON, None)
        original_id = row.pop(ORIGIN_PATIENT_ID, None)
        original_issuer = row.pop(ORIGIN_ISSUER, None)
        if not isinstance(facility_id, int) or not isinstance(person_id, int | None):
            return row
        coercion = self.coercion(tx, facility_id, person_id, str(original_id or ""), str(original_issuer or ""))
        if coercion is None:
            return row
        if PATIENT_ID in row:
            row[PATIENT_ID] = coercion.patient_id
        if ISSUER_OF_PATIENT_ID in row:
            row[ISSUER_OF_PATIENT_ID] = coercion.issuer
        if OTHER_PATIENT_IDS in return_tags:
            # one "PatientID\\IssuerOfPatientID" per item (a backslash never occurs in LO)
            row[OTHER_PATIENT_IDS] = [f"{coercion.original_id}\\{coercion.original_issuer}"]
        return row

    def for_refs(self, tx: Tx, refs: list[InstanceRef]) -> dict[int, Coercion]:
        """Coercions of the located instances, by patient row (absent: sent as stored)."""
        out: dict[int, Coercion] = {}
        for ref in refs:
            if ref.patient_pk in out:
                continue
            found = self.coercion(tx, ref.facility_id, ref.person_id, ref.patient_id, ref.issuer)
            if found is not None:
                out[ref.patient_pk] = found
        return out

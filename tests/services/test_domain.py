"""Queries and retrieves in the caller's identifier domain (IHE RAD MIMA), both databases.

Uses the territory of ``test_leak_matrix``: person "shared" is A-1 at site-a and B-7 at
site-b; site-b also has another human under PatientID A-1 ("twin").
"""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset

from coffre.dicom.query import Model, parse_identifier, uid_query
from coffre.model import Actor, Role
from coffre.net.retrieve import payload
from coffre.services import grants, wado
from coffre.services.query import find
from coffre.services.retrieve import plan
from services.conftest import Territory

STUDY_UID = 0x0020000D
PATIENT_ID = 0x00100020
ISSUER = 0x00100021
OTHER_IDS = 0x00101002


def _radiologist(t: Territory, slug: str) -> Actor:
    return Actor.for_user(f"r@{slug}", "r", frozenset({Role.RADIOLOGIST, Role.CLINICIAN}),
                          (t.facilities[slug],), "127.0.0.1")


def _by_patient_id(patient_id: str, *, issuer: str | None = None) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientID = patient_id
    identifier.IssuerOfPatientID = issuer if issuer is not None else ""
    identifier.StudyInstanceUID = ""
    identifier.OtherPatientIDsSequence = []
    return identifier


def _uids(t: Territory, key: str, slug: str | None = None) -> set[str]:
    return {u for u, (s, k) in t.studies.items() if k == key and (slug is None or s == slug)}


def test_own_patient_id_finds_the_persons_studies_elsewhere_in_the_callers_domain(territory: Territory) -> None:
    t = territory
    caller = _radiologist(t, "site-a")
    query = parse_identifier(_by_patient_id("A-1"), Model.STUDY_ROOT)
    # without a grant: only the caller's own study, never site-b's other human "A-1"
    rows = list(find(t.ctx, caller, query, source="t"))
    assert {str(r[STUDY_UID]) for r in rows} == _uids(t, "shared", "site-a")
    assert all(r[OTHER_IDS] is None for r in rows)

    grants.record_care(t.ctx, caller, t.persons["shared"], days=10, reason="follow-up")
    rows = list(find(t.ctx, caller, query, source="t"))
    assert {str(r[STUDY_UID]) for r in rows} == _uids(t, "shared")  # both sites, not the twin
    assert {(r[PATIENT_ID], r[ISSUER]) for r in rows} == {("A-1", "SITE-A")}
    from_b = next(r for r in rows if str(r[STUDY_UID]) in _uids(t, "shared", "site-b"))
    assert from_b[OTHER_IDS] == ["B-7\\SITE-B"]


def test_explicit_other_issuer_matches_that_domain_only(territory: Territory) -> None:
    t = territory
    caller = _radiologist(t, "site-a")
    grants.record_care(t.ctx, caller, t.persons["twin"], days=10, reason="referral")
    query = parse_identifier(_by_patient_id("A-1", issuer="SITE-B"), Model.STUDY_ROOT)
    rows = list(find(t.ctx, caller, query, source="t"))
    assert {str(r[STUDY_UID]) for r in rows} == _uids(t, "twin")
    # the twin has no identity at site-a: its identifiers stay those of site-b
    assert {(r[PATIENT_ID], r[ISSUER]) for r in rows} == {("A-1", "SITE-B")}


def test_retrieved_instances_carry_the_callers_identifiers(territory: Territory) -> None:
    t = territory
    caller = _radiologist(t, "site-a")
    grants.record_care(t.ctx, caller, t.persons["shared"], days=10, reason="follow-up")
    (study_b,) = _uids(t, "shared", "site-b")
    refs = plan(t.ctx, caller, uid_query(study_b, None, None), operation="t")
    assert refs and all(r.coercion is not None for r in refs)
    ds = payload(t.ctx, refs[0], {refs[0].sop_class_uid: {refs[0].transfer_syntax_uid}})
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("A-1", "SITE-A")
    assert [(i.PatientID, i.IssuerOfPatientID) for i in ds.OtherPatientIDsSequence] == [("B-7", "SITE-B")]
    # the stored original is untouched
    stored = dcmread(BytesIO(t.ctx.blobs.read(refs[0].blob_key)))
    assert (stored.PatientID, "OtherPatientIDsSequence" in stored) == ("B-7", False)

    retrieval = wado.retrieve(t.ctx, caller, study_b, None, None, [wado.Acceptable("application/dicom", wado.ANY)])
    part = next(iter(retrieval.parts))
    sent = dcmread(BytesIO(b"".join(part.chunks)))
    assert (sent.PatientID, sent.OtherPatientIDsSequence[0].PatientID) == ("A-1", "B-7")

    meta = b"".join(wado.metadata(t.ctx, caller, study_b, None, None, base_url="http://x").chunks)
    assert b'"00100020":{"vr":"LO","Value":["A-1"]}' in meta and b'"B-7"' in meta


def test_patient_root_retrieve_by_own_patient_id_takes_the_whole_visible_person(territory: Territory) -> None:
    t = territory
    caller = _radiologist(t, "site-a")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientID = "A-1"
    from coffre.dicom.query import parse_retrieve

    query = parse_retrieve(identifier, Model.PATIENT_ROOT)
    assert {r.study_instance_uid for r in plan(t.ctx, caller, query, operation="t")} == _uids(t, "shared", "site-a")
    grants.record_care(t.ctx, caller, t.persons["shared"], days=10, reason="follow-up")
    assert {r.study_instance_uid for r in plan(t.ctx, caller, query, operation="t")} == _uids(t, "shared")

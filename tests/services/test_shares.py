"""Share links at the service level, on SQLite and PostgreSQL: creation rights, studies
fixed at creation, expiry, uses, lockout, revocation, recipient sessions, secrets
stored hashed and absent from logs, and the streamed ZIP export with its DICOMDIR."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet
from sqlalchemy import select, update

from coffre.app import Context
from coffre.dicom.query import uid_query
from coffre.errors import BadRequest, InvalidUID, NotAuthorized, NotFound
from coffre.index.engine import Database
from coffre.index.schema import audit_event, patient, share_link, share_link_study
from coffre.model import Actor, Facility, Node, Permission, Role
from coffre.services import auth, export, facilities, grants, shares, users
from coffre.services.grants import PersonRef
from coffre.services.ingest import ingest
from coffre.services.retrieve import plan
from coffre.services.shares import LinkUnavailable, ShareRequest, WrongCode
from coffre.services.tokens import NotAuthenticated
from coffre.settings import Settings
from coffre.storage.filesystem import FileSystemBlobStore
from factories import encode, make_dataset

OP = Actor.system("tests")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Territory:
    ctx: Context
    clock: Clock
    a: Facility
    b: Facility
    #: Claire: A-1 at site-a (two studies) and B-7 at site-b (one study), one person
    claire: int
    #: study UID -> (facility slug, StudyDate)
    studies: dict[str, tuple[str, str]]
    #: every stored object by SOP Instance UID (the original bytes)
    originals: dict[str, bytes]

    def uids(self, slug: str | None = None) -> set[str]:
        return {u for u, (s, _) in self.studies.items() if slug is None or s == slug}

    def store(self, facility: Facility, pid: str, date: str, instances: int = 2, series: int = 1,
              description: str = "") -> str:
        study_uid = None
        for s in range(series):
            series_uid = None
            for i in range(instances):
                ds = make_dataset(patient_id=pid, patient_name="MARTIN^CLAIRE", study_date=date,
                                  study_uid=study_uid, series_uid=series_uid, series_number=s + 1,
                                  instance_number=i + 1, study_description=description, pixel_seed=i)
                study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
                data = encode(ds)
                self.originals[str(ds.SOPInstanceUID)] = data
                ingest(self.ctx, Actor.system("t", facility=facility), data, source="test")
        assert study_uid is not None
        self.studies[study_uid] = (facility.slug, date)
        return study_uid


def user(t: Territory, role: Role, facility: Facility, name: str | None = None) -> Actor:
    subject = name or f"{role.value}.{facility.slug}"
    return Actor.for_user(subject, subject, frozenset({role}), (facility,), "10.0.0.9")


def _person(ctx: Context, facility_id: int, pid: str) -> int:
    with ctx.db.read() as tx:
        return int(tx.execute(select(patient.c.person_id).where(
            patient.c.facility_id == facility_id, patient.c.patient_id == pid)).scalar_one())


@pytest.fixture
def t(database: Database, tmp_path: Path) -> Territory:
    clock = Clock()
    ctx = Context(settings=Settings(data_dir=tmp_path), db=database,
                  blobs=FileSystemBlobStore(tmp_path / "blobs"), clock=clock)
    a = facilities.add_facility(ctx, OP, slug="site-a", name="A", issuer="SITE-A")
    b = facilities.add_facility(ctx, OP, slug="site-b", name="B", issuer="SITE-B")
    terr = Territory(ctx, clock, a, b, 0, {}, {})
    terr.store(a, "A-1", "20210315", series=2, description="CT THORAX")
    terr.store(a, "A-1", "20230902")
    terr.store(b, "B-7", "20240611")
    claire = _person(ctx, a.id, "A-1")
    with ctx.db.write() as tx:  # one person, two local identities
        tx.execute(update(patient).where(patient.c.facility_id == b.id, patient.c.patient_id == "B-7")
                   .values(person_id=claire))
    terr.claire = claire
    return terr


def person_share(t: Territory, **kw: object) -> ShareRequest:
    return ShareRequest(person=PersonRef(person_id=t.claire), **kw)  # type: ignore[arg-type]


def events(ctx: Context, action: str) -> list[dict[str, object]]:
    with ctx.db.read() as tx:
        rows = tx.execute(select(audit_event).where(audit_event.c.action == action).order_by(audit_event.c.id))
        return [dict(r._mapping) for r in rows]


def code_of(created: shares.CreatedShare) -> str:
    return created.access_code


# -- creation --------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.RADIOLOGIST, Role.CLINICIAN])
def test_care_roles_create_links_to_what_they_see_now(t: Territory, role: Role) -> None:
    actor = user(t, role, t.a)
    created = shares.create_share(t.ctx, actor, person_share(t, days=10, max_uses=3, recipient="Dr Durand (GP)"))

    assert created.studies == 2  # site-b's study is not visible to site-a without a grant
    assert created.path == "/share/" + created.token and len(created.token) == 43
    assert created.expires_at == t.clock.now + timedelta(days=10)
    assert len(created.access_code) == 11 and created.access_code[5] == "-"
    [info] = shares.list_shares(t.ctx, actor)
    assert (info.id, info.state, info.studies, info.uses, info.max_uses, info.recipient) == (
        created.id, "active", 2, 0, 3, "Dr Durand (GP)")
    [event] = events(t.ctx, "grant-share")
    assert event["person_id"] == t.claire and event["object_id"] == str(created.id)
    assert set(json.loads(str(event["detail"]))["study_uids"]) == t.uids("site-a")


@pytest.mark.parametrize("role", [r for r in Role if r not in (Role.RADIOLOGIST, Role.CLINICIAN)])
def test_other_roles_may_not_share(t: Territory, role: Role) -> None:
    with pytest.raises(NotAuthorized):
        shares.create_share(t.ctx, user(t, role, t.a), person_share(t))
    assert events(t.ctx, "grant-share") == []


def test_machines_and_recipients_may_not_share(t: Territory) -> None:
    node = Node(id=1, ae_title="PACS", host="h", port=104, facility_id=t.a.id, permissions=frozenset(Permission))
    for actor in (Actor.for_node(node, t.a, "h"),
                  Actor.for_client("token:x", t.a, frozenset(Permission), "h"),
                  Actor.for_recipient(1, frozenset({1}), "h")):
        with pytest.raises(NotAuthorized):
            shares.create_share(t.ctx, actor, person_share(t))


def test_study_scope_and_invisible_studies_are_not_found(t: Territory) -> None:
    clinician = user(t, Role.CLINICIAN, t.a)
    [b_study] = t.uids("site-b")
    with pytest.raises(NotFound):
        shares.create_share(t.ctx, clinician, ShareRequest(study_instance_uid=b_study))
    with pytest.raises(NotFound):
        shares.create_share(t.ctx, clinician, ShareRequest(study_instance_uid="1.2.3.4"))
    a_study = sorted(t.uids("site-a"))[0]
    created = shares.create_share(t.ctx, clinician, ShareRequest(study_instance_uid=a_study))
    assert created.studies == 1
    # a care relationship opens site-b's study: a new link includes it, the old one does not
    grants.record_care(t.ctx, clinician, t.claire, days=30, reason="follow-up")
    both = shares.create_share(t.ctx, clinician, person_share(t))
    assert both.studies == 3


def test_date_range_and_bad_requests(t: Territory) -> None:
    clinician = user(t, Role.CLINICIAN, t.a)
    assert shares.create_share(t.ctx, clinician, person_share(t, date_from="20220101")).studies == 1
    assert shares.create_share(t.ctx, clinician, person_share(t, date_to="20211231")).studies == 1
    with pytest.raises(NotFound):
        shares.create_share(t.ctx, clinician, person_share(t, date_from="20250101", date_to="20251231"))
    bad = [person_share(t, days=31), person_share(t, days=0), person_share(t, max_uses=0),
           person_share(t, date_from="2021-01-01"), person_share(t, date_from="20211301"),
           person_share(t, date_from="20220101", date_to="20210101"), ShareRequest(),
           ShareRequest(study_instance_uid="1.2.3", person=PersonRef(person_id=t.claire)),
           ShareRequest(study_instance_uid="../etc"), person_share(t, recipient="x" * 201)]
    for request in bad:
        with pytest.raises((BadRequest, InvalidUID)):  # both 400
            shares.create_share(t.ctx, clinician, request)
    assert events(t.ctx, "grant-share") and len(shares.list_shares(t.ctx, clinician)) == 2


def test_studies_are_fixed_at_creation(t: Territory) -> None:
    clinician = user(t, Role.CLINICIAN, t.a)
    created = shares.create_share(t.ctx, clinician, person_share(t))
    assert created.expires_at == t.clock.now + timedelta(days=shares.DEFAULT_DAYS)
    later = t.store(t.a, "A-1", "20250101")  # a new study of the same person, after the link
    grants.record_care(t.ctx, clinician, t.claire, days=30, reason="follow-up")  # and more visibility
    recipient = shares.authenticate_share_token(
        t.ctx, shares.open_share(t.ctx, created.token, created.access_code, address="1.1.1.1").token, "1.1.1.1")
    page = shares.shared_studies(t.ctx, recipient)
    assert {s.study_instance_uid for s in page.studies} == t.uids("site-a") - {later}
    # the recipient's reads are exactly the link's studies, through every read use case
    for uid in t.uids():
        refs = plan(t.ctx, recipient, uid_query(uid, None, None), operation="wado-rs")
        assert bool(refs) == (uid in t.uids("site-a") - {later})


# -- use ---------------------------------------------------------------------------------------


def test_right_code_opens_a_session_counting_one_use(t: Territory) -> None:
    created = shares.create_share(t.ctx, user(t, Role.RADIOLOGIST, t.a), person_share(t, max_uses=2))
    typed = created.access_code.lower().replace("-", " ")  # case, spaces and dashes do not matter
    session = shares.open_share(t.ctx, created.token, typed, address="1.2.3.4")
    assert session.share_id == created.id
    assert session.expires_at == t.clock.now + timedelta(minutes=60)  # [territory] share_session_minutes
    actor = shares.authenticate_share_token(t.ctx, session.token, "1.2.3.4")
    assert actor.kind.value == "recipient" and actor.share_id == created.id and len(actor.share_studies) == 2
    [opened] = events(t.ctx, "share-open")
    assert opened["outcome"] == "success" and opened["person_id"] == t.claire
    assert opened["facility_id"] == t.a.id and opened["actor_address"] == "1.2.3.4"
    shares.shared_studies(t.ctx, actor)
    assert events(t.ctx, "share-view")[0]["person_id"] == t.claire


def test_max_uses(t: Territory) -> None:
    created = shares.create_share(t.ctx, user(t, Role.CLINICIAN, t.a), person_share(t, max_uses=2))
    first = shares.open_share(t.ctx, created.token, created.access_code, address="a")
    shares.open_share(t.ctx, created.token, created.access_code, address="a")
    with pytest.raises(LinkUnavailable):
        shares.open_share(t.ctx, created.token, created.access_code, address="a")
    assert not shares.link_available(t.ctx, created.token)
    # a session opened before the link was used up runs until it ends
    shares.authenticate_share_token(t.ctx, first.token, "a")
    [info] = shares.list_shares(t.ctx, user(t, Role.CLINICIAN, t.a))
    assert (info.uses, info.state) == (2, "used-up")
    assert [e["outcome"] for e in events(t.ctx, "share-open")] == ["success", "success", "refused"]


def test_expiry_ends_the_link_and_its_sessions(t: Territory) -> None:
    created = shares.create_share(t.ctx, user(t, Role.CLINICIAN, t.a), person_share(t, days=1))
    session = shares.open_share(t.ctx, created.token, created.access_code, address="a")
    t.clock.now += timedelta(minutes=30)
    shares.authenticate_share_token(t.ctx, session.token, "a")
    t.clock.now += timedelta(hours=1)  # the session (60 minutes) has ended
    with pytest.raises(NotAuthenticated):
        shares.authenticate_share_token(t.ctx, session.token, "a")
    second = shares.open_share(t.ctx, created.token, created.access_code, address="a")
    t.clock.now += timedelta(days=1)
    assert second.expires_at <= t.clock.now  # a session never outlives its link
    with pytest.raises(LinkUnavailable):
        shares.open_share(t.ctx, created.token, created.access_code, address="a")
    with pytest.raises(NotAuthenticated):
        shares.authenticate_share_token(t.ctx, second.token, "a")
    assert not shares.link_available(t.ctx, created.token)


def test_five_wrong_codes_lock_the_link_even_for_the_right_code(t: Territory) -> None:
    created = shares.create_share(t.ctx, user(t, Role.CLINICIAN, t.a), person_share(t))
    wrong = "2222233333" if created.access_code != "22222-33333" else "4444455555"
    for _ in range(4):
        with pytest.raises(WrongCode):
            shares.open_share(t.ctx, created.token, wrong, address="6.6.6.6")
    assert shares.link_available(t.ctx, created.token)
    with pytest.raises(LinkUnavailable):  # the fifth locks it
        shares.open_share(t.ctx, created.token, "not a code at all", address="6.6.6.6")
    with pytest.raises(LinkUnavailable):  # the sixth, with the right code, is refused
        shares.open_share(t.ctx, created.token, created.access_code, address="6.6.6.6")
    assert not shares.link_available(t.ctx, created.token)
    [locked] = events(t.ctx, "share-locked")
    assert locked["outcome"] == "alert" and locked["person_id"] == t.claire
    assert len(events(t.ctx, "share-code-refused")) == 5
    refused = events(t.ctx, "share-open")[-1]
    assert refused["outcome"] == "refused" and json.loads(str(refused["detail"]))["reason"] == "locked"
    with t.ctx.db.read() as tx:
        row = tx.execute(select(share_link)).one()
    assert row.failed_attempts == 5 and row.locked_at is not None and row.uses == 0


def test_unknown_expired_revoked_used_and_locked_links_answer_alike(t: Territory) -> None:
    clinician = user(t, Role.CLINICIAN, t.a)
    links = {name: shares.create_share(t.ctx, clinician, person_share(t, max_uses=1))
             for name in ("expired", "revoked", "used", "locked")}
    shares.open_share(t.ctx, links["used"].token, links["used"].access_code, address="a")
    shares.revoke_share(t.ctx, clinician, links["revoked"].id)
    for _ in range(5):
        with pytest.raises((WrongCode, LinkUnavailable)):
            shares.open_share(t.ctx, links["locked"].token, "WRONGWRONG", address="a")
    with t.ctx.db.write() as tx:
        tx.execute(update(share_link).where(share_link.c.id == links["expired"].id)
                   .values(expires_at=t.clock.now - timedelta(seconds=1)))
    answers = set()
    for created in [*links.values(), replace(links["used"], token="A" * 43), replace(links["used"], token="x")]:
        with pytest.raises(LinkUnavailable) as caught:
            shares.open_share(t.ctx, created.token, created.access_code, address="a")
        answers.add((type(caught.value), caught.value.reason, caught.value.http_status))
        assert not shares.link_available(t.ctx, created.token)
    assert len(answers) == 1


# -- revocation --------------------------------------------------------------------------------


def test_revocation_by_creator_or_facility_admin_only(t: Territory) -> None:
    creator = user(t, Role.CLINICIAN, t.a)
    created = shares.create_share(t.ctx, creator, person_share(t))
    session = shares.open_share(t.ctx, created.token, created.access_code, address="a")
    for other in (user(t, Role.CLINICIAN, t.a, "someone.else"), user(t, Role.FACILITY_ADMIN, t.b),
                  user(t, Role.AUDITOR, t.a), Actor.for_recipient(created.id, frozenset(), "a")):
        with pytest.raises(NotFound):
            shares.revoke_share(t.ctx, other, created.id)
    shares.revoke_share(t.ctx, user(t, Role.FACILITY_ADMIN, t.a), created.id)
    with pytest.raises(NotAuthenticated):  # open sessions end at their next request
        shares.authenticate_share_token(t.ctx, session.token, "a")
    with pytest.raises(LinkUnavailable):
        shares.open_share(t.ctx, created.token, created.access_code, address="a")
    [info] = shares.list_shares(t.ctx, creator)
    assert info.state == "revoked" and info.revoked_by == "facility-admin.site-a"
    revoked = [e for e in events(t.ctx, "grant-revoked") if e["object_type"] == "share"]
    assert len(revoked) == 1 and revoked[0]["person_id"] == t.claire
    other = shares.create_share(t.ctx, creator, person_share(t))
    shares.revoke_share(t.ctx, creator, other.id)
    with pytest.raises(NotFound):
        shares.revoke_share(t.ctx, creator, 9999)


def test_listing_mine_and_facility_wide(t: Territory) -> None:
    one = shares.create_share(t.ctx, user(t, Role.CLINICIAN, t.a), person_share(t))
    two = shares.create_share(t.ctx, user(t, Role.RADIOLOGIST, t.a), person_share(t))
    grants.record_care(t.ctx, user(t, Role.CLINICIAN, t.b), t.claire, days=5, reason="care")
    three = shares.create_share(t.ctx, user(t, Role.CLINICIAN, t.b), person_share(t))
    assert [s.id for s in shares.list_shares(t.ctx, user(t, Role.CLINICIAN, t.a))] == [one.id]
    admin_a = user(t, Role.FACILITY_ADMIN, t.a)
    assert shares.list_shares(t.ctx, admin_a) == []
    assert [s.id for s in shares.list_shares(t.ctx, admin_a, facility_wide=True)] == [two.id, one.id]
    everyone = [s.id for s in shares.list_shares(t.ctx, OP, facility_wide=True)]
    assert everyone == [three.id, two.id, one.id]
    with pytest.raises(NotAuthorized):
        shares.list_shares(t.ctx, Actor.for_recipient(one.id, frozenset(), "a"))


# -- sessions ----------------------------------------------------------------------------------


def test_session_tokens_and_user_tokens_do_not_cross(t: Territory) -> None:
    created = shares.create_share(t.ctx, user(t, Role.CLINICIAN, t.a), person_share(t))
    session = shares.open_share(t.ctx, created.token, created.access_code, address="a")
    assert shares.is_share_token(session.token)
    with pytest.raises(NotAuthenticated):  # Coffre's user-token verification refuses it
        auth.authenticate_bearer(t.ctx, session.token, "a")
    users.create_user(t.ctx, OP, username="doc", password="correct horse battery", roles=frozenset({Role.CLINICIAN}),
                      facilities=["site-a"])
    row = users.get_user(t.ctx, "doc")
    assert row is not None
    user_token = auth.issue_token(t.ctx, row).access_token
    assert not shares.is_share_token(user_token)
    key = auth.signing_key(t.ctx)  # a share type on a user audience is not routed here
    mixed = jwt.encode({"aud": "coffre", "share": created.id}, key.private, algorithm="EdDSA",
                       headers={"kid": key.kid, "typ": shares.SESSION_TYPE})
    assert not shares.is_share_token(mixed)
    with pytest.raises(NotAuthenticated):
        shares.authenticate_share_token(t.ctx, user_token, "a")
    head, body, signature = session.token.split(".")
    forged = ".".join([head, body, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")])
    for bad in (forged, session.token + "x", "a.b.c", ""):
        with pytest.raises(NotAuthenticated):
            shares.authenticate_share_token(t.ctx, bad, "a")
    refusals = [json.loads(str(e["detail"])) for e in events(t.ctx, "authenticate") if e["outcome"] == "refused"]
    assert sum(1 for d in refusals if d.get("scheme") == "share") == 5


# -- secrets -----------------------------------------------------------------------------------


def test_secrets_are_stored_hashed_and_never_logged(t: Territory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clinician = user(t, Role.CLINICIAN, t.a)
    created = shares.create_share(t.ctx, clinician, person_share(t, allow_download=True))
    raw_code = created.access_code.replace("-", "")
    with pytest.raises(WrongCode):
        shares.open_share(t.ctx, created.token, "2345678923" if raw_code != "2345678923" else "3456789234",
                          address="a")
    session = shares.open_share(t.ctx, created.token, created.access_code, address="a")
    actor = shares.authenticate_share_token(t.ctx, session.token, "a")
    shares.shared_studies(t.ctx, actor)
    b"".join(export.share_download(t.ctx, actor).chunks)

    with t.ctx.db.read() as tx:
        row = tx.execute(select(share_link)).one()
        everything = [dict(r._mapping) for r in tx.execute(select(audit_event))] + [dict(row._mapping)]
        assert len(tx.execute(select(share_link_study)).all()) == 2
    assert row.token_hash == hashlib.sha256(created.token.encode()).hexdigest()
    assert row.code_hash.startswith("$argon2id$")
    dumped = json.dumps(everything, default=str)
    for secret in (created.token, raw_code, created.access_code, session.token):
        assert secret not in dumped
        assert secret not in caplog.text
    assert "MARTIN" not in caplog.text and "A-1" not in caplog.text
    assert "share link" in caplog.text  # the logs do name the link, by number
    url = t.ctx.db.engine.url
    if url.get_backend_name() == "sqlite":
        path = Path(str(url.database))
        stored = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert row.token_hash.encode() in stored  # the file does hold the link
        for secret in (created.token, raw_code, created.access_code, session.token):
            assert secret.encode() not in stored


# -- export ------------------------------------------------------------------------------------


def _recipient(t: Territory, **kw: object) -> tuple[shares.CreatedShare, Actor]:
    created = shares.create_share(t.ctx, user(t, Role.CLINICIAN, t.a), person_share(t, **kw))
    session = shares.open_share(t.ctx, created.token, created.access_code, address="9.9.9.9")
    return created, shares.authenticate_share_token(t.ctx, session.token, "9.9.9.9")


def test_download_is_a_zip_of_a_valid_file_set(t: Territory, tmp_path: Path) -> None:
    created, actor = _recipient(t, allow_download=True)
    archive = export.share_download(t.ctx, actor)
    assert (archive.studies, archive.instances) == (2, 6)
    pieces = list(archive.chunks)
    assert len(pieces) > 3  # streamed, not one block
    data = b"".join(pieces)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        names = z.namelist()
        assert names[:2] == ["DICOMDIR", "README.txt"]
        assert names[2:] == ["DICOM/ST0001/SE0001/IM000001", "DICOM/ST0001/SE0001/IM000002",
                             "DICOM/ST0001/SE0002/IM000001", "DICOM/ST0001/SE0002/IM000002",
                             "DICOM/ST0002/SE0001/IM000001", "DICOM/ST0002/SE0001/IM000002"]
        assert "2 imaging studies" in z.read("README.txt").decode()
        folder = tmp_path / "unzipped"
        z.extractall(folder)
        for name in names[2:]:  # the originals, byte for byte
            ds = dcmread(folder / name)
            assert t.originals[str(ds.SOPInstanceUID)] == z.read(name)
    dicomdir = dcmread(folder / "DICOMDIR")
    assert dicomdir.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    assert dicomdir.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    records = dicomdir.DirectoryRecordSequence
    assert [r.DirectoryRecordType for r in records] == [
        "PATIENT", "STUDY", "SERIES", "IMAGE", "IMAGE", "SERIES", "IMAGE", "IMAGE", "STUDY", "SERIES", "IMAGE",
        "IMAGE"]
    by_offset = {r.seq_item_tell: r for r in records}
    assert dicomdir.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity == records[0].seq_item_tell
    assert records[0].OffsetOfReferencedLowerLevelDirectoryEntity == records[1].seq_item_tell
    assert by_offset[records[1].OffsetOfTheNextDirectoryRecord] is records[8]  # study → study
    assert records[2].OffsetOfTheNextDirectoryRecord == records[5].seq_item_tell  # series → series
    fs = FileSet(dicomdir)  # pydicom checks every offset and that every referenced file exists
    try:
        assert len(fs) == 6
        assert {str(i.SOPInstanceUID) for i in fs} == {
            str(dcmread(folder / n).SOPInstanceUID) for n in names[2:]}
        assert {i.path for i in fs} == {str(folder / n) for n in names[2:]}
    finally:  # FileSet's staging folder warns (an error here) unless removed
        fs._stage["t"].cleanup()
    downloads = events(t.ctx, "share-download")
    assert len(downloads) == 2 and {e["object_id"] for e in downloads} == t.uids("site-a")
    assert all(e["person_id"] == t.claire and e["actor_kind"] == "recipient" for e in downloads)
    assert created.id and {json.loads(str(e["detail"]))["share"] for e in downloads} == {created.id}


def test_download_not_allowed_and_not_for_others(t: Territory) -> None:
    _, actor = _recipient(t, allow_download=False)
    with pytest.raises(NotAuthorized):
        export.share_download(t.ctx, actor)
    with pytest.raises(NotAuthorized):
        export.share_download(t.ctx, user(t, Role.CLINICIAN, t.a))
    assert events(t.ctx, "share-download") == []

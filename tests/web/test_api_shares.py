"""Share links over HTTP, in-process: the REST API (``/api/shares``), the recipient's
pages (``/share…``: neutral answers, code form, session cookie, studies, streamed ZIP
with a valid DICOMDIR) and the recipient session on DICOMweb."""

from __future__ import annotations

import io
import re
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.fileset import FileSet
from sqlalchemy import update

from coffre.dicom.synthetic import InstanceSpec
from coffre.index.schema import share_link
from coffre.model import Actor, Role
from coffre.services import users
from coffre.services.shares import MAX_FAILED_CODES

if TYPE_CHECKING:  # tests/web is no package: the fixtures' types are for readers only
    from tests.web.conftest import WebArchive

PASSWORD = "correct horse battery staple"
WRONG = "2345623456"


def _login(client: TestClient, web: WebArchive, name: str, role: Role, facility: str = "site-a") -> dict[str, str]:
    if users.get_user(web.ctx, name) is None:
        users.create_user(web.ctx, Actor.system("t"), username=name, password=PASSWORD,
                          roles=frozenset({role}), facilities=[facility])
    answer = client.post("/api/auth/login", json={"username": name, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.fixture
def studies(web: WebArchive) -> dict[str, str]:
    """Two studies of patient A-1 at site-a (one with two series), one of B-1 at site-b."""
    out: dict[str, str] = {}
    first = InstanceSpec(patient_id="A-1", patient_name="MARTIN^CLAIRE", study_date="20240110",
                         study_description="CT THORAX")
    web.store(first)
    web.store(InstanceSpec(patient_id="A-1", patient_name="MARTIN^CLAIRE", study_uid=first.study_uid,
                           study_date="20240110", series_number=2, instance_number=1))
    out["ct"] = first.study_uid
    second = InstanceSpec(patient_id="A-1", patient_name="MARTIN^CLAIRE", modality="CR", study_date="20250301")
    web.store(second)
    out["cr"] = second.study_uid
    other = InstanceSpec(patient_id="B-1", patient_name="LEROY^SOPHIE")
    web.store(other, site="b")
    out["other"] = other.study_uid
    return out


@pytest.fixture
def clinician(client: TestClient, web: WebArchive) -> dict[str, str]:
    return _login(client, web, "clinicien.a", Role.CLINICIAN)


def _create(client: TestClient, headers: dict[str, str], **body: object) -> dict[str, object]:
    answer = client.post("/api/shares", json=body, headers=headers)
    assert answer.status_code == 201, answer.text
    assert answer.headers["cache-control"] == "no-store"
    created: dict[str, object] = answer.json()
    return created


def _path(created: dict[str, object]) -> str:
    return "/share/" + str(created["token"])


def _open(client: TestClient, created: dict[str, object], code: str | None = None) -> object:
    return client.post(_path(created), data={"code": code or str(created["access_code"])}, follow_redirects=False)


# -- REST --------------------------------------------------------------------------------------


def test_create_list_revoke(client: TestClient, web: WebArchive, studies: dict[str, str],
                            clinician: dict[str, str]) -> None:
    created = _create(client, clinician, patient_id="A-1", days=3, max_uses=2, allow_download=True,
                      recipient="Dr Durand (GP)")
    assert created["studies"] == 2
    assert str(created["url"]) == "http://testserver/share/" + str(created["token"])
    assert len(str(created["access_code"])) == 11

    listed = client.get("/api/shares", headers=clinician)
    assert listed.status_code == 200
    [link] = listed.json()
    assert (link["id"], link["state"], link["studies"], link["max_uses"], link["recipient"]) == (
        created["id"], "active", 2, 2, "Dr Durand (GP)")
    assert str(created["token"]) not in listed.text and str(created["access_code"]) not in listed.text

    single = _create(client, clinician, study_instance_uid=studies["cr"])
    assert single["studies"] == 1
    assert client.delete(f"/api/shares/{single['id']}", headers=clinician).status_code == 204
    states = {s["id"]: s["state"] for s in client.get("/api/shares", headers=clinician).json()}
    assert states == {created["id"]: "active", single["id"]: "revoked"}
    other = _login(client, web, "clinicien.b", Role.CLINICIAN, "site-b")
    assert client.delete(f"/api/shares/{created['id']}", headers=other).status_code == 404
    admin = _login(client, web, "admin.a", Role.FACILITY_ADMIN)
    assert [s["id"] for s in client.get("/api/shares?all=true", headers=admin).json()] == [
        single["id"], created["id"]]
    assert client.delete(f"/api/shares/{created['id']}", headers=admin).status_code == 204


def test_creation_is_refused_to_others_and_for_invisible_studies(
    client: TestClient, web: WebArchive, studies: dict[str, str], clinician: dict[str, str],
) -> None:
    technologist = _login(client, web, "manip.a", Role.TECHNOLOGIST)
    body = {"study_instance_uid": studies["ct"]}
    assert client.post("/api/shares", json=body).status_code == 401
    assert client.post("/api/shares", json=body, headers=technologist).status_code == 403
    assert client.post("/api/shares", json=body, headers=web.headers()).status_code == 403  # API token
    hidden = client.post("/api/shares", json={"study_instance_uid": studies["other"]}, headers=clinician)
    absent = client.post("/api/shares", json={"study_instance_uid": "1.2.3.999"}, headers=clinician)
    assert hidden.status_code == absent.status_code == 404 and hidden.json() == absent.json()
    for bad in ({"study_instance_uid": studies["ct"], "days": 31}, {"patient_id": "A-1", "max_uses": 0},
                {"patient_id": "A-1", "date_from": "2024"}, {}, {"study_instance_uid": "x/../y"}):
        assert client.post("/api/shares", json=bad, headers=clinician).status_code == 400, bad
    assert client.get("/api/shares", headers=clinician).json() == []


# -- the recipient's pages -----------------------------------------------------------------------


def test_code_form_session_and_studies_page(client: TestClient, web: WebArchive, studies: dict[str, str],
                                            clinician: dict[str, str]) -> None:
    created = _create(client, clinician, patient_id="A-1", allow_download=False)
    form = client.get(_path(created))
    assert form.status_code == 200 and 'name="code"' in form.text
    assert form.headers["referrer-policy"] == "no-referrer"
    assert form.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in form.headers["content-security-policy"]

    wrong = _open(client, created, WRONG)
    assert wrong.status_code == 401 and "not valid" in wrong.text  # type: ignore[attr-defined]
    assert "coffre_session" not in wrong.headers.get("set-cookie", "")  # type: ignore[attr-defined]

    opened = _open(client, created)
    assert opened.status_code == 303 and opened.headers["location"] == "/share"  # type: ignore[attr-defined]
    cookie = opened.headers["set-cookie"]  # type: ignore[attr-defined]
    assert cookie.startswith("coffre_session=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert str(created["token"]) not in cookie

    page = client.get("/share")
    assert page.status_code == 200
    assert page.text.count('class="study"') == 2
    assert f"/viewer?StudyInstanceUIDs={studies['ct']}" in page.text
    assert studies["other"] not in page.text and "LEROY" not in page.text
    assert "MARTIN CLAIRE" in page.text and 'id="download"' not in page.text
    assert client.get("/share/download").status_code == 403

    ended = client.post("/share/end")
    assert ended.status_code == 200 and 'coffre_session=""' in ended.headers["set-cookie"]
    assert client.get("/share").status_code == 404


def _neutral(answer: object) -> tuple[int, str]:
    return answer.status_code, answer.text  # type: ignore[attr-defined]


def test_every_unusable_link_gets_the_same_neutral_page(client: TestClient, web: WebArchive,
                                                        studies: dict[str, str], clinician: dict[str, str]) -> None:
    links = {k: _create(client, clinician, patient_id="A-1", max_uses=1)
             for k in ("expired", "revoked", "used", "locked")}
    assert _open(client, links["used"]).status_code == 303  # type: ignore[attr-defined]
    client.cookies.clear()
    assert client.delete(f"/api/shares/{links['revoked']['id']}", headers=clinician).status_code == 204
    for attempt in range(MAX_FAILED_CODES):
        answer = _open(client, links["locked"], WRONG)
        assert answer.status_code == (404 if attempt == MAX_FAILED_CODES - 1 else 401)  # type: ignore[attr-defined]
    with web.ctx.db.write() as tx:
        tx.execute(update(share_link).where(share_link.c.id == links["expired"]["id"])
                   .values(expires_at=web.ctx.clock() - timedelta(seconds=1)))
    unknown = {"token": "B" * 43, "access_code": "ABCDE-FGHJK"}
    malformed = {"token": "not-a-token", "access_code": "ABCDE-FGHJK"}
    answers = set()
    for created in [*links.values(), unknown, malformed]:
        answers.add(_neutral(client.get(_path(created))))
        answers.add(_neutral(_open(client, created)))  # the right code
        answers.add(_neutral(_open(client, created, WRONG)))
    assert len(answers) == 1
    [(status, text)] = answers
    assert status == 404 and "This link is not available" in text
    assert "coffre_session" not in client.cookies
    assert client.get("/share").status_code == 404  # no session: the same page


def test_cross_site_posts_are_refused_and_count_nothing(client: TestClient, web: WebArchive,
                                                        studies: dict[str, str], clinician: dict[str, str]) -> None:
    created = _create(client, clinician, patient_id="A-1", max_uses=1)
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        for code in (WRONG, str(created["access_code"])):
            answer = client.post(_path(created), data={"code": code}, headers=headers, follow_redirects=False)
            assert answer.status_code == 403
    [link] = client.get("/api/shares", headers=clinician).json()
    assert (link["uses"], link["failed_attempts"], link["state"]) == (0, 0, "active")
    same = client.post(_path(created), data={"code": created["access_code"]},
                       headers={"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
                       follow_redirects=False)
    assert same.status_code == 303


def test_download_streams_a_zip_with_a_valid_dicomdir(client: TestClient, web: WebArchive, studies: dict[str, str],
                                                      clinician: dict[str, str], tmp_path: Path) -> None:
    created = _create(client, clinician, patient_id="A-1", allow_download=True)
    assert _open(client, created).status_code == 303  # type: ignore[attr-defined]
    assert 'id="download"' in client.get("/share").text
    answer = client.get("/share/download")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/zip"
    assert answer.headers["content-disposition"].startswith('attachment; filename="coffre-share-')
    assert "content-length" not in answer.headers  # streamed
    with zipfile.ZipFile(io.BytesIO(answer.content)) as z:
        assert z.testzip() is None
        names = z.namelist()
        assert names[:2] == ["DICOMDIR", "README.txt"] and len(names) == 5
        assert all(re.fullmatch(r"DICOM/ST[0-9]{4}/SE[0-9]{4}/IM[0-9]{6}", n) for n in names[2:])
        z.extractall(tmp_path / "x")
    fs = FileSet(dcmread(tmp_path / "x" / "DICOMDIR"))
    try:
        assert len(fs) == 3
        assert {str(i.StudyInstanceUID) for i in fs} == {studies["ct"], studies["cr"]}
        for instance in fs:
            assert dcmread(instance.path).SOPInstanceUID == instance.SOPInstanceUID
    finally:
        fs._stage["t"].cleanup()


# -- the recipient session on DICOMweb ------------------------------------------------------------


def test_the_session_reads_exactly_the_shared_studies_over_dicomweb(
    client: TestClient, web: WebArchive, studies: dict[str, str], clinician: dict[str, str],
) -> None:
    """Needs ``web.deps.get_actor`` to accept recipient session tokens (docs/share-links.md)."""
    created = _create(client, clinician, study_instance_uid=studies["ct"])
    assert _open(client, created).status_code == 303  # type: ignore[attr-defined]
    session = client.cookies["coffre_session"]
    bearer = {"Authorization": f"Bearer {session}", "Accept": "application/dicom+json"}
    found = client.get("/dicomweb/studies", headers=bearer)
    assert found.status_code == 200, found.text
    assert [s["0020000D"]["Value"][0] for s in found.json()] == [studies["ct"]]
    assert client.get(f"/dicomweb/studies/{studies['ct']}/metadata", headers=bearer).status_code == 200
    for hidden in (studies["cr"], studies["other"]):
        assert client.get(f"/dicomweb/studies/{hidden}/metadata", headers=bearer).status_code == 404
    assert client.delete(f"/api/shares/{created['id']}", headers=clinician).status_code == 204
    assert client.get("/dicomweb/studies", headers=bearer).status_code == 401

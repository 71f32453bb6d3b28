"""QIDO-RS (PS3.18 10.6) and the /patients extension, on SQLite and PostgreSQL.

One small territory per test (``territory``):

- site-a: S1 (P1 DOE^JOHN, CT, 2020-03-15, two series: 2 + 1 instances),
  S2 (P2 DOE^JANE, MR, 2021-06-01, one instance), S3 (P3 SMITH^ANNA, CR, 2020-12-31,
  one instance, no accession number, a description with ``%`` and ``_``);
- site-b: S4 for *its own* P1 DOE^JOHN (same PatientID, another person), CT,
  2020-03-15, two series of 2 instances.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from dicomweb_client import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from coffre.dicom.synthetic import InstanceSpec, encode, make_dataset
from coffre.model import Actor, Permission
from coffre.services.ingest import ingest
from coffre.services.tokens import create_token
from coffre.web.dicomweb import dicomjson
from coffre.web.dicomweb.qido import TRUNCATED
from coffre.web.http import create_app

if TYPE_CHECKING:  # tests/web is no package: the fixtures' types are for readers only
    from tests.web.conftest import LiveServer, WebArchive

BASE = "/dicomweb"
SERVICE = "http://testserver/dicomweb"
CT, CR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.1"


@dataclass
class Territory:
    s1: str
    s2: str
    s3: str
    s4: str
    s1_series: tuple[str, str]
    s1_sops: tuple[str, str, str]
    s4_series: tuple[str, str]
    all_a_sops: frozenset[str]
    s4_sops: frozenset[str]


def _store(web: WebArchive, site: str, **spec: object) -> str:
    sop = generate_uid()
    web.store(InstanceSpec(sop_uid=sop, rows=8, columns=8, **spec), site=site)  # type: ignore[arg-type]
    return sop


def make_territory(web: WebArchive) -> Territory:
    s1, s2, s3, s4 = (generate_uid() for _ in range(4))
    se1, se2, se3, se4 = (generate_uid() for _ in range(4))
    john = {"patient_id": "P1", "patient_name": "DOE^JOHN", "study_date": "20200315",
            "modality": "CT"}
    s1_common = {**john, "study_uid": s1, "accession": "ACC1", "study_description": "CT HEAD"}
    a1 = _store(web, "a", **s1_common, series_uid=se1, series_number=1, instance_number=1)
    a2 = _store(web, "a", **s1_common, series_uid=se1, series_number=1, instance_number=2)
    a3 = _store(web, "a", **s1_common, series_uid=se2, series_number=2, instance_number=1,
                series_description="CT BONE")
    b1 = _store(web, "a", patient_id="P2", patient_name="DOE^JANE", sex="F", study_uid=s2,
                study_date="20210601", modality="MR", accession="ACC2",
                study_description="MR KNEE")
    c1 = _store(web, "a", patient_id="P3", patient_name="SMITH^ANNA", sex="F", study_uid=s3,
                study_date="20201231", modality="CR", study_description="CR 100%_CHEST")
    s4_sops = {
        _store(web, "b", **john, study_uid=s4, series_uid=series, instance_number=n)
        for series in (se3, se4) for n in (1, 2)
    }
    return Territory(s1=s1, s2=s2, s3=s3, s4=s4, s1_series=(se1, se2), s1_sops=(a1, a2, a3),
                     s4_series=(se3, se4), all_a_sops=frozenset({a1, a2, a3, b1, c1}),
                     s4_sops=frozenset(s4_sops))


@pytest.fixture
def territory(web: WebArchive) -> Territory:
    return make_territory(web)


def value(ds: dict[str, dict[str, object]], tag: str) -> object:
    """The single value of ``tag`` (None when empty)."""
    values = ds[tag].get("Value")
    assert values is None or isinstance(values, list)
    return None if values is None else (values[0] if len(values) == 1 else values)


def uids(results: list[dict[str, dict[str, object]]], tag: str = "0020000D") -> list[str]:
    return [str(value(ds, tag)) for ds in results]


def search(client: TestClient, web: WebArchive, path: str, query: str = "",
           token: str | None = None, **headers: str) -> list[dict[str, dict[str, object]]]:
    response = client.get(f"{BASE}{path}" + (f"?{query}" if query else ""),
                          headers=web.headers(token, **headers))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    assert isinstance(body, list)
    return body


# -- dicomweb-client against a live server -------------------------------------------------


def test_dicomweb_client_search_round_trip(live: LiveServer, territory: Territory) -> None:
    t = territory
    dw = DICOMwebClient(url=live.dicomweb, headers={"Authorization": f"Bearer {live.web.token_a}"})
    assert sorted(uids(dw.search_for_studies(search_filters={"PatientName": "DOE*"}))) == sorted(
        [t.s1, t.s2])
    assert uids(dw.search_for_studies(search_filters={"PatientName": "jo"}, fuzzymatching=True)) == [t.s1]
    assert dw.search_for_studies(search_filters={"PatientName": "jo"}, fuzzymatching=False) == []
    assert uids(dw.search_for_studies(search_filters={"PatientName": "an"}, fuzzymatching=True)) == [t.s3]
    in_range = dw.search_for_studies(search_filters={"StudyDate": "20200101-20201231"},
                                     fields=["StudyDescription"])
    assert {str(value(ds, "0020000D")): value(ds, "00081030") for ds in in_range} == {
        t.s1: "CT HEAD", t.s3: "CR 100%_CHEST"}
    series = dw.search_for_series(study_instance_uid=t.s1)
    assert {str(value(ds, "0020000E")): value(ds, "00201209") for ds in series} == {
        t.s1_series[0]: 2, t.s1_series[1]: 1}
    instances = dw.search_for_instances(study_instance_uid=t.s1, series_instance_uid=t.s1_series[0])
    assert sorted(uids(instances, "00080018")) == sorted(t.s1_sops[:2])
    assert set(uids(dw.search_for_instances(), "00080018")) == t.all_a_sops
    assert set(uids(dw.search_for_series(search_filters={"Modality": "C?"}), "00080060")) == {"CT", "CR"}
    # paging through everything one result at a time
    paged = dw.search_for_studies(limit=1, get_remaining=True)
    assert sorted(uids(paged)) == sorted([t.s1, t.s2, t.s3])
    other = DICOMwebClient(url=live.dicomweb, headers={"Authorization": f"Bearer {live.web.token_b}"})
    assert uids(other.search_for_studies(search_filters={"PatientName": "DOE*"})) == [t.s4]


# -- result attributes ------------------------------------------------------------------


def test_study_default_attributes_are_exact(client: TestClient, web: WebArchive,
                                            territory: Territory) -> None:
    t = territory
    [study] = search(client, web, "/studies", f"StudyInstanceUID={t.s1}")
    assert study == {
        "00080020": {"vr": "DA", "Value": ["20200315"]},
        "00080030": {"vr": "TM", "Value": ["101500"]},
        "00080050": {"vr": "SH", "Value": ["ACC1"]},
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00080061": {"vr": "CS", "Value": ["CT"]},
        "00080090": {"vr": "PN"},
        "00081190": {"vr": "UR", "Value": [f"{SERVICE}/studies/{t.s1}"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00100040": {"vr": "CS", "Value": ["M"]},
        "0020000D": {"vr": "UI", "Value": [t.s1]},
        "00200010": {"vr": "SH", "Value": ["1"]},
        "00201206": {"vr": "IS", "Value": [2]},
        "00201208": {"vr": "IS", "Value": [3]},
    }


def test_series_and_instance_default_attributes(client: TestClient, web: WebArchive,
                                                territory: Territory) -> None:
    t = territory
    se1, se2 = t.s1_series
    series = search(client, web, f"/studies/{t.s1}/series", "SeriesNumber=2")
    assert series == [{
        "00080060": {"vr": "CS", "Value": ["CT"]},
        "0008103E": {"vr": "LO", "Value": ["CT BONE"]},
        "00081190": {"vr": "UR", "Value": [f"{SERVICE}/studies/{t.s1}/series/{se2}"]},
        "0020000D": {"vr": "UI", "Value": [t.s1]},
        "0020000E": {"vr": "UI", "Value": [se2]},
        "00200011": {"vr": "IS", "Value": [2]},
        "00201209": {"vr": "IS", "Value": [1]},
    }]
    instances = search(client, web, f"/studies/{t.s1}/series/{se1}/instances", "InstanceNumber=2")
    sop = t.s1_sops[1]
    assert instances == [{
        "00080016": {"vr": "UI", "Value": [CT]},
        "00080018": {"vr": "UI", "Value": [sop]},
        "00080056": {"vr": "CS", "Value": ["ONLINE"]},
        "00081190": {"vr": "UR", "Value": [f"{SERVICE}/studies/{t.s1}/series/{se1}/instances/{sop}"]},
        "0020000D": {"vr": "UI", "Value": [t.s1]},
        "0020000E": {"vr": "UI", "Value": [se1]},
        "00200013": {"vr": "IS", "Value": [2]},
        "00280008": {"vr": "IS"},
        "00280010": {"vr": "US", "Value": [8]},
        "00280011": {"vr": "US", "Value": [8]},
        "00280100": {"vr": "US", "Value": [16]},
    }]
    # all series: study attributes too; a study's instances: series attributes too
    [bone] = search(client, web, "/series", "SeriesDescription=CT%20BONE")
    assert value(bone, "00100010") == {"Alphabetic": "DOE^JOHN"}
    assert value(bone, "00201208") == 3 and value(bone, "00201209") == 1
    in_study = search(client, web, f"/studies/{t.s1}/instances", "SeriesNumber=1")
    assert sorted(uids(in_study, "00080018")) == sorted(t.s1_sops[:2])
    assert {value(ds, "00080060") for ds in in_study} == {"CT"}
    [of_series] = search(client, web, f"/series/{se2}/instances")
    assert value(of_series, "00080018") == t.s1_sops[2]
    assert value(of_series, "00080050") == "ACC1"
    [cr] = search(client, web, "/instances", "PatientName=smith*")
    assert value(cr, "00080016") == CR and value(cr, "0020000D") == t.s3


def test_includefield_all_and_lists(client: TestClient, web: WebArchive, territory: Territory) -> None:
    t = territory
    [full] = search(client, web, "/studies", f"StudyInstanceUID={t.s2}&includefield=all")
    assert value(full, "00081030") == "MR KNEE"
    assert value(full, "00201206") == 1 and value(full, "00201208") == 1
    assert value(full, "00080062") == "1.2.840.10008.5.1.4.1.1.4"  # SOPClassesInStudy
    assert value(full, "00201200") == 1  # NumberOfPatientRelatedStudies
    assert value(full, "00100040") == "F"
    assert "0008103E" not in full  # a series attribute is not a study attribute
    both = search(client, web, "/studies",
                  f"StudyInstanceUID={t.s2}&includefield=StudyDescription,00080021"
                  "&includefield=InstitutionName")
    assert value(both[0], "00081030") == "MR KNEE"
    assert both[0]["00080021"] == {"vr": "DA"}  # a series attribute asked at study level: empty
    assert both[0]["00080080"] == {"vr": "LO"}
    [series] = search(client, web, f"/studies/{t.s2}/series", "includefield=all")
    assert value(series, "00081030") == "MR KNEE" and value(series, "00080021") == "20210601"
    response = client.get(f"{BASE}/studies?includefield=NoSuchKeyword", headers=web.headers())
    assert response.status_code == 400 and response.json()["error"] == "BadRequest"


def test_patients_extension(client: TestClient, web: WebArchive, territory: Territory) -> None:
    patients = search(client, web, "/patients", "PatientID=P1")
    assert patients == [{
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]},
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "00100021": patients[0]["00100021"],
        "00100030": {"vr": "DA", "Value": ["19700101"]},
        "00100040": {"vr": "CS", "Value": ["M"]},
        "00201200": {"vr": "IS", "Value": [1]},
        "00201202": {"vr": "IS", "Value": [2]},
        "00201204": {"vr": "IS", "Value": [3]},
    }]
    assert patients[0]["00100021"]["vr"] == "LO"
    everyone = search(client, web, "/patients", "PatientName=doe*")
    assert sorted(uids(everyone, "00100020")) == ["P1", "P2"]
    theirs = search(client, web, "/patients", "", token=web.token_b)
    assert [(value(p, "00100020"), value(p, "00201204")) for p in theirs] == [("P1", 4)]
    response = client.get(f"{BASE}/patients?StudyDate=20200315", headers=web.headers())
    assert response.status_code == 400  # a study key cannot constrain patients


# -- matching ---------------------------------------------------------------------------


MATCHING = [
    ("StudyDate=20200101-20201231", ("s1", "s3")),
    ("StudyDate=-20201231", ("s1", "s3")),
    ("StudyDate=20210101-", ("s2",)),
    ("StudyDate=20200315", ("s1",)),
    ("00080020=20201231", ("s3",)),
    ("PatientName=doe*", ("s1", "s2")),
    ("PatientName=DOE%5EJ?NE", ("s2",)),
    ("AccessionNumber=ACC?", ("s1", "s2")),
    ("AccessionNumber=acc*", ()),  # wild cards are case-sensitive but for PN
    ("AccessionNumber=%22%22", ("s3",)),  # empty value matching
    ("ModalitiesInStudy=MR", ("s2",)),
    ("ModalitiesInStudy=CT%5CCR", ("s1", "s3")),
    ("ModalitiesInStudy=MR,CR", ("s2", "s3")),
    ("StudyDescription=*%25*", ("s3",)),  # a literal %
    ("StudyDescription=*_*", ("s3",)),  # a literal _
    ("StudyDescription=CR?100*", ("s3",)),
    ("PatientName=*", ("s1", "s2", "s3")),
    ("PatientName=", ("s1", "s2", "s3")),
    ("PatientID=P1&StudyDate=20200315", ("s1",)),
]


def test_matching(client: TestClient, web: WebArchive, territory: Territory) -> None:
    for query, expected in MATCHING:
        found = search(client, web, "/studies", query)
        assert sorted(uids(found)) == sorted(getattr(territory, n) for n in expected), query
    # lists of UIDs (PS3.18 8.3.4.1 uid-list-match) with a comma or a backslash
    t = territory
    for sep in (",", "%5C"):
        found = search(client, web, "/studies", f"StudyInstanceUID={t.s1}{sep}{t.s3}{sep}{t.s4}")
        assert sorted(uids(found)) == sorted([t.s1, t.s3])  # s4 belongs to site-b
    found = search(client, web, "/instances",
                   f"SOPInstanceUID={t.s1_sops[0]},{t.s1_sops[2]}&includefield=SeriesNumber")
    assert {str(value(ds, "00080018")): value(ds, "00200011") for ds in found} == {
        t.s1_sops[0]: 1, t.s1_sops[2]: 2}


def test_datetime_range_matching_on_instances(client: TestClient, web: WebArchive) -> None:
    """AcquisitionDateTime (DT) single value and ranges (PS3.4 C.2.2.2.5) on /instances;
    a value with an offset from UTC compares as its instant and is returned in UTC."""
    study, series = generate_uid(), generate_uid()
    sops: dict[int, str] = {}
    sent = {1: "20240101120000", 2: "20240101120000+0100", 3: "20240102083000.25", 4: None}
    for number, acquired in sent.items():
        ds = make_dataset(InstanceSpec(study_uid=study, series_uid=series, instance_number=number,
                                       rows=8, columns=8))  # fmt: skip
        if acquired is not None:
            ds.AcquisitionDateTime = acquired
        ingest(web.ctx, web.actor_a, encode(ds), source="test")
        sops[number] = str(ds.SOPInstanceUID)

    def found(query: str) -> list[int]:
        results = search(client, web, "/instances", f"AcquisitionDateTime={query}")
        return sorted(sops_by_uid[str(value(ds, "00080018"))] for ds in results)

    sops_by_uid = {uid: number for number, uid in sops.items()}
    assert found("20240101-20240102") == [1, 2, 3]  # closed range, whole days
    assert found("20240101-20240101113000") == [2]  # 11:00 UTC; 1 is 12:00 as written
    assert found("-20240101") == [1, 2]  # open ranges; 4 has no value
    assert found("20240102-") == [3]
    assert found("2024") == [1, 2, 3]  # a single value names an interval
    assert found("20240101120000%2B0100") == [2]  # the same instant as 11:00 UTC
    assert found("20240101-0500") == [1, 2]  # one day in UTC-5: a negative offset, no range
    assert found("20240102083000.25") == [3]
    assert found("%22%22") == [4]  # empty value matching
    [offset] = search(client, web, "/instances", "AcquisitionDateTime=20240101120000%2B0100")
    assert offset["0008002A"] == {"vr": "DT", "Value": ["20240101110000+0000"]}
    [fraction] = search(client, web, "/instances", "AcquisitionDateTime=20240102")
    assert fraction["0008002A"] == {"vr": "DT", "Value": ["20240102083000.25"]}
    response = client.get(f"{BASE}/instances?AcquisitionDateTime=20241301-", headers=web.headers())
    assert response.status_code == 400 and response.json()["error"] == "InvalidQuery"


def test_unsupported_and_unknown_keys_warn(client: TestClient, web: WebArchive,
                                           territory: Territory) -> None:
    response = client.get(f"{BASE}/studies?PatientComments=secret&foo=bar&StudyDate=20200315",
                          headers=web.headers())
    assert response.status_code == 200
    [study] = response.json()
    assert value(study, "0020000D") == territory.s1
    assert study["00104000"] == {"vr": "LT"}  # returned empty, never matched
    warnings = response.headers.get_list("warning")
    assert warnings == [
        f'299 {SERVICE}: "The following attributes are not supported for matching and were '
        'ignored: PatientComments"',
        f'299 {SERVICE}: "The following query parameters are not supported and were ignored: foo"',
    ]
    below = client.get(f"{BASE}/studies?Modality=CT", headers=web.headers())
    assert below.status_code == 400
    assert below.json() == {
        "error": "BadRequest",
        "reason": "Modality is a series attribute: it cannot be matched when searching for studies",
    }
    bad_date = client.get(f"{BASE}/studies?StudyDate=yesterday", headers=web.headers())
    assert bad_date.status_code == 400 and bad_date.json()["error"] == "InvalidQuery"
    twice = client.get(f"{BASE}/studies?PatientID=P1&00100020=P2", headers=web.headers())
    assert twice.status_code == 400
    empty = client.get(f"{BASE}/studies?emptyvaluematching=true&multiplevaluematching=false"
                       "&StudyDate=20200315", headers=web.headers())
    assert uids(empty.json()) == [territory.s1]
    assert empty.headers.get_list("warning") == [
        f'299 {SERVICE}: "The emptyvaluematching parameter is not supported. Empty Value '
        'Matching has not been performed."']


#: OHIF 3.x study list (extensions/default DicomWebDataSource/qido.js ``mapParams``) with
#: qidoSupportsIncludeField, supportsFuzzyMatching and supportsWildcard: every filter
#: value is wrapped in ``*…*``, the four fields are one comma-separated includefield
OHIF_FIXED = "limit=101&offset=0&fuzzymatching=true&includefield=00081030,00080060,00080090,00100030"
OHIF_LIST = [
    ("", ("s1", "s2", "s3")),
    ("PatientName=*doe*", ("s1", "s2")),
    ("PatientName=*john*", ("s1",)),
    ("PatientName=*oe^ja*", ("s2",)),
    ("00100020=*P*", ("s1", "s2", "s3")),
    ("00100020=*3*", ("s3",)),
    ("AccessionNumber=*ACC*", ("s1", "s2")),
    ("StudyDescription=*HEAD*", ("s1",)),
    ("ModalitiesInStudy=CR", ("s3",)),
    ("StudyDate=19700102-20201231", ("s1", "s3")),
    ("StudyDate=20210101-20991231&PatientName=*doe*", ("s2",)),
]


def test_ohif_study_list_requests(client: TestClient, web: WebArchive, territory: Territory) -> None:
    """What OHIF's DICOMweb data source sends with the three flags Coffre's viewer sets."""
    t = territory
    for filters, expected in OHIF_LIST:
        query = "&".join(q for q in (filters, OHIF_FIXED) if q)
        response = client.get(f"{BASE}/studies?{query}", headers=web.headers(Accept="application/dicom+json"))
        assert response.status_code == 200, (filters, response.text)
        assert "warning" not in response.headers, (filters, response.headers.get_list("warning"))
        found = response.json()
        assert sorted(uids(found)) == sorted(getattr(t, n) for n in expected), filters
        for ds in found:  # the included fields are there (empty when not a study attribute)
            assert {"00081030", "00080060", "00080090", "00100030", "00080061"} <= set(ds), filters
    [s1] = search(client, web, "/studies", f"StudyInstanceUID={t.s1}&{OHIF_FIXED}")
    assert value(s1, "00081030") == "CT HEAD" and value(s1, "00100030") == "19700101"
    # the StudyInstanceUID list OHIF builds (separator: backslash), fuzzy matching off
    both = search(client, web, "/studies", f"StudyInstanceUID={t.s1}%5C{t.s3}&fuzzymatching=false&limit=101")
    assert sorted(uids(both)) == sorted([t.s1, t.s3])
    # the series and instance lists of a study OHIF opens
    series = search(client, web, f"/studies/{t.s1}/series", "includefield=0008103E,00200011")
    assert sorted(value(ds, "00200011") for ds in series) == [1, 2]  # type: ignore[type-var]
    instances = search(client, web, f"/studies/{t.s1}/series/{t.s1_series[0]}/instances")
    assert sorted(uids(instances, "00080018")) == sorted(t.s1_sops[:2])


# -- paging -----------------------------------------------------------------------------


def test_limit_offset_paging_is_stable_and_warns(client: TestClient, web: WebArchive,
                                                 territory: Territory) -> None:
    t = territory
    truncated = f'299 {SERVICE}: "{TRUNCATED}"'
    first = client.get(f"{BASE}/studies?limit=2", headers=web.headers())
    assert first.status_code == 200 and len(first.json()) == 2
    assert first.headers.get_list("warning") == [truncated]
    second = client.get(f"{BASE}/studies?limit=2&offset=2", headers=web.headers())
    assert len(second.json()) == 1 and "warning" not in second.headers
    pages = uids(first.json()) + uids(second.json())
    assert sorted(pages) == sorted([t.s1, t.s2, t.s3])
    again = client.get(f"{BASE}/studies?limit=2", headers=web.headers())
    assert uids(again.json()) == uids(first.json())
    assert uids(search(client, web, "/studies")) == pages  # the same stable order
    assert search(client, web, "/studies", "offset=3") == []
    assert search(client, web, "/studies", "offset=999999999999999999") == []
    whole = client.get(f"{BASE}/studies?limit=3", headers=web.headers())
    assert len(whole.json()) == 3 and "warning" not in whole.headers


def test_limit_is_capped_by_configuration(web: WebArchive, territory: Territory) -> None:
    settings = web.ctx.settings
    http = replace(settings.http, qido_default_limit=1, qido_max_limit=2)
    ctx = replace(web.ctx, settings=replace(settings, http=http))
    with TestClient(create_app(ctx), raise_server_exceptions=False) as client:
        default = client.get(f"{BASE}/studies", headers=web.headers())
        assert len(default.json()) == 1
        assert default.headers.get_list("warning") == [f'299 {SERVICE}: "{TRUNCATED}"']
        capped = client.get(f"{BASE}/instances?limit=500", headers=web.headers())
        assert len(capped.json()) == 2
        assert capped.headers.get_list("warning") == [
            f'299 {SERVICE}: "The limit was reduced to 2, the maximum supported by the server."',
            f'299 {SERVICE}: "{TRUNCATED}"',
        ]


# -- scope ------------------------------------------------------------------------------


def test_facility_scope_and_counts(client: TestClient, web: WebArchive, territory: Territory) -> None:
    t = territory
    theirs = search(client, web, "/studies", "includefield=all", token=web.token_b)
    assert uids(theirs) == [t.s4]
    assert value(theirs[0], "00201206") == 2 and value(theirs[0], "00201208") == 4
    assert value(theirs[0], "00201204") == 4  # NumberOfPatientRelatedInstances: site-b only
    [ours] = search(client, web, "/studies", "PatientID=P1&includefield=all")
    assert value(ours, "0020000D") == t.s1
    assert value(ours, "00201206") == 2 and value(ours, "00201208") == 3
    assert value(ours, "00201202") == 2 and value(ours, "00201204") == 3
    token_b = web.token_b
    assert search(client, web, "/studies", f"StudyInstanceUID={t.s1}", token=token_b) == []
    assert search(client, web, f"/studies/{t.s1}/series", token=token_b) == []
    assert search(client, web, f"/studies/{t.s1}/instances", token=token_b) == []
    assert search(client, web, f"/series/{t.s1_series[0]}/instances", token=token_b) == []
    assert set(uids(search(client, web, "/instances", token=token_b), "00080018")) == t.s4_sops
    assert set(uids(search(client, web, "/series", token=token_b), "0020000E")) == set(t.s4_series)
    assert search(client, web, f"/studies/{t.s4}/series", "") == []


def test_authentication(client: TestClient, web: WebArchive, territory: Territory) -> None:
    for path in ("/studies", "/series", "/instances", "/patients", f"/studies/{territory.s1}/series"):
        anonymous = client.get(f"{BASE}{path}")
        assert anonymous.status_code == 401, path
        assert anonymous.json()["error"] == "NotAuthenticated"
    wrong = client.get(f"{BASE}/studies", headers={"Authorization": "Bearer cof_nope"})
    assert wrong.status_code == 401
    viewer = search(client, web, "/studies", token=web.token_a_query_only)
    assert len(viewer) == 3
    store_only = create_token(web.ctx, Actor.system("tests"), facility_slug="site-a",
                              name="modality", permissions=frozenset({Permission.STORE}))
    refused = client.get(f"{BASE}/studies", headers=web.headers(store_only))
    assert refused.status_code == 403 and refused.json()["error"] == "NotAuthorized"


# -- hostile input ----------------------------------------------------------------------


HOSTILE = [
    "x" * 10_000,
    "' OR 1=1 --",
    "%",
    "_*",
    "!*",
    "[*",
    "DOE\x00*",
    "\x1b[31m",
    "\r\nX-Injected: 1",
    "é*" * 2000,
    "*\\" * 5000,
]
#: one key per matching path: person name, string (LIKE / GLOB), UID, computed, date
HOSTILE_KEYS = ["PatientName", "00100020", "StudyInstanceUID", "ModalitiesInStudy", "StudyDate"]


def test_hostile_values_match_nothing(client: TestClient, web: WebArchive,
                                      territory: Territory) -> None:
    """Never a 500, never a match; a date that cannot be parsed is a 400."""
    cases = [(key, raw, web.token_a) for key, raw in itertools.product(HOSTILE_KEYS, HOSTILE)]
    cases += [("PatientID", raw, web.token_b) for raw in HOSTILE]
    for key, raw, token in cases:
        response = client.get(f"{BASE}/studies?{key}={quote(raw, safe='')}",
                              headers=web.headers(token))
        assert "x-injected" not in response.headers
        if response.status_code == 400 and key == "StudyDate":
            assert response.json()["error"] == "InvalidQuery", raw[:20]
            continue
        assert response.status_code == 200, (key, raw[:20], response.text)
        assert response.json() == [], (key, raw[:20])
    # a value of NUL padding only is an empty value (PS3.5 6.2): universal matching,
    # still within the caller's facility
    assert len(search(client, web, "/studies", "PatientName=%00")) == 3
    assert uids(search(client, web, "/studies", "PatientName=%00", token=web.token_b)) == [territory.s4]


BAD_PARAMETERS = [
    ("limit=abc", "BadRequest"),
    ("limit=-1", "BadRequest"),
    ("limit=0", "BadRequest"),
    ("limit=1e3", "BadRequest"),
    ("limit=99999999999999999999", "BadRequest"),
    ("limit=1&limit=2", "BadRequest"),
    ("offset=-1", "BadRequest"),
    ("offset=%00", "BadRequest"),
    ("fuzzymatching=maybe", "BadRequest"),
    ("emptyvaluematching=perhaps", "BadRequest"),
    ("StudyDate=2020-01-01-2021", "InvalidQuery"),
    ("StudyTime=25", "InvalidQuery"),
    ("includefield=" + "A" * 5000, "BadRequest"),
    ("includefield=" + ",".join(f"0009{e:04X}" for e in range(300)), "BadRequest"),
]


def test_bad_parameters_are_400(client: TestClient, web: WebArchive) -> None:
    for query, error in BAD_PARAMETERS:
        response = client.get(f"{BASE}/studies?{query}", headers=web.headers())
        assert response.status_code == 400, (query[:40], response.text)
        assert response.json()["error"] == error, query[:40]


BAD_PATHS = [
    "/studies/1.2.abc/series",
    "/studies/01.2/series",
    "/studies/1..2/instances",
    "/studies/" + "1" * 65 + "/series",
    "/studies/1.2/series/x/instances",
    "/series/%20/instances",
    "/studies/1.2%00/series",
]


def test_invalid_uid_in_path_is_400(client: TestClient, web: WebArchive) -> None:
    for path in BAD_PATHS:
        response = client.get(f"{BASE}{path}", headers=web.headers())
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"] == "InvalidUID", path


def test_hostile_parameter_names_are_ignored(client: TestClient, web: WebArchive,
                                             territory: Territory) -> None:
    response = client.get(f"{BASE}/studies?{quote('a' * 10_000)}=1&%0D%0AX-Injected:%201=2"
                          "&ReferencedSOPSequence.ReferencedSOPInstanceUID=1.2",
                          headers=web.headers())
    assert response.status_code == 200
    assert len(response.json()) == 3
    assert "x-injected" not in response.headers
    assert response.headers.get_list("warning") == [
        f'299 {SERVICE}: "The following attributes are not supported for matching and were '
        'ignored: ReferencedSOPSequence"',
        f'299 {SERVICE}: "The following query parameters are not supported and were ignored: '
        '2 more"',
    ]
    assert response.json()[0]["00081199"] == {"vr": "SQ"}


# -- media types ------------------------------------------------------------------------


def test_accept_negotiation(client: TestClient, web: WebArchive, territory: Territory) -> None:
    for accept in ("application/dicom+xml", 'multipart/related; type="application/dicom+xml"',
                   "image/jpeg", "application/dicom+json;q=0"):
        response = client.get(f"{BASE}/studies", headers=web.headers(Accept=accept))
        assert response.status_code == 406, accept
        assert response.json()["error"] == "NotAcceptable"
    plain = client.get(f"{BASE}/studies", headers=web.headers(Accept="application/json"))
    assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
    assert len(plain.json()) == 3
    for accept in ("*/*", "application/*", "application/dicom+json",
                   "application/dicom+xml, application/dicom+json;q=0.5"):
        assert len(search(client, web, "/studies", Accept=accept)) == 3
    by_param = client.get(f"{BASE}/studies?accept=application/json",
                          headers=web.headers(Accept="image/png"))
    assert by_param.status_code == 200 and by_param.headers["content-type"] == "application/json"


def test_empty_result_is_an_empty_array(client: TestClient, web: WebArchive) -> None:
    response = client.get(f"{BASE}/studies", headers=web.headers())
    assert response.status_code == 200 and response.json() == []


def test_openapi_describes_qido(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/studies", "/series", "/instances", "/patients", "/studies/{study}/series",
                 "/studies/{study}/series/{series}/instances", "/studies/{study}/instances",
                 "/series/{series}/instances"):
        operation = paths[BASE + path]["get"]
        names = {p["name"] for p in operation["parameters"]}
        assert {"includefield", "limit", "offset", "fuzzymatching"} <= names, path


# -- DICOM JSON encoding (no database) --------------------------------------------------


def test_dicom_json_elements() -> None:
    element = dicomjson.element
    assert element("PN", "DOE^JOHN=ドウ^ジョン=") == {
        "vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN", "Ideographic": "ドウ^ジョン"}]}
    assert element("PN", "A^B\\C^D") == {"vr": "PN", "Value": [{"Alphabetic": "A^B"}, {"Alphabetic": "C^D"}]}
    assert element("PN", "") == {"vr": "PN"}
    assert element("IS", 12) == {"vr": "IS", "Value": [12]}
    assert element("IS", "1\\2\\x") == {"vr": "IS", "Value": [1, 2, None]}
    assert element("DS", "0.5\\2") == {"vr": "DS", "Value": [0.5, 2]}
    assert element("DS", "nan") == {"vr": "DS"}
    assert element("US", None) == {"vr": "US"}
    assert element("CS", "ORIGINAL\\PRIMARY\\\\AXIAL") == {
        "vr": "CS", "Value": ["ORIGINAL", "PRIMARY", None, "AXIAL"]}
    assert element("CS", ["CT", "MR"]) == {"vr": "CS", "Value": ["CT", "MR"]}
    assert element("LT", "a\\b") == {"vr": "LT", "Value": ["a\\b"]}
    assert element("AT", "(0010,0010)") == {"vr": "AT", "Value": ["00100010"]}
    assert element("SQ", "anything") == {"vr": "SQ"}
    assert dicomjson.vr_for(0x00100010) == "PN"
    assert dicomjson.vr_for(0x00201208) == "IS"
    assert dicomjson.vr_for(0x00280106) == "US"  # "US or SS" in the dictionary
    assert dicomjson.vr_for(0x00091001) == "UN"  # private
    assert list(dicomjson.dataset({0x00100020: "P", 0x00080020: None})) == ["00080020", "00100020"]

"""STOW-RS (PS3.18 10.5) over HTTP, on SQLite and PostgreSQL.

A real client (``dicomweb-client`` against uvicorn) for round trips; the in-process
client for exact response datasets and statuses; a raw ASGI driver where what matters is
how much of the body the server reads (413 and 403 before reading it).
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

import factories
from coffre.dicom.synthetic import MODALITY_SOP, InstanceSpec, make_instance
from coffre.index import schema
from coffre.index.engine import Database
from coffre.web.http import create_app
from coffre.web.multipart import write_related
from web.conftest import LiveServer, WebArchive, build_web_archive

BOUNDARY = "stow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
BASE = "http://testserver/dicomweb"
CT = MODALITY_SOP["CT"][0]


def multipart(*parts: bytes | tuple[dict[str, str], bytes], boundary: str = BOUNDARY) -> bytes:
    items = [(p[0], [p[1]]) if isinstance(p, tuple) else ({"Content-Type": "application/dicom"}, [p])
             for p in parts]
    return b"".join(write_related(items, boundary))


def post(client: TestClient, web: WebArchive, body: bytes, *, study: str | None = None,
         token: str | None = None, content_type: str = CONTENT_TYPE, **headers: str) -> Any:
    path = "/dicomweb/studies" + (f"/{study}" if study else "")
    return client.post(path, content=body,
                       headers=web.headers(token, **{"Content-Type": content_type, **headers}))


def stored(web: WebArchive) -> dict[str, bytes]:
    """SOP Instance UID -> archived bytes, for every instance in the index."""
    with web.ctx.db.read() as tx:
        rows = tx.execute(select(schema.instance.c.sop_instance_uid, schema.instance.c.blob_key)).all()
    return {uid: web.ctx.blobs.read(key) for uid, key in rows}


def file_rows(web: WebArchive) -> int:
    with web.ctx.db.read() as tx:
        return int(tx.execute(select(func.count()).select_from(schema.instance_file)).scalar_one())


def refused_stores(web: WebArchive) -> list[dict[str, Any]]:
    with web.ctx.db.read() as tx:
        rows = tx.execute(
            select(schema.audit_event.c.detail)
            .where(schema.audit_event.c.action == "store", schema.audit_event.c.outcome == "refused")
            .order_by(schema.audit_event.c.id)
        ).all()
    return [json.loads(d) if isinstance(d, str) else d for (d,) in rows]


def ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def referenced(spec: InstanceSpec, warning: int | None = None) -> dict[str, Any]:
    item = {
        "00081150": ui(MODALITY_SOP[spec.modality][0]),
        "00081155": ui(spec.sop_uid),
        "00081190": {"vr": "UR", "Value": [
            f"{BASE}/studies/{spec.study_uid}/series/{spec.series_uid}/instances/{spec.sop_uid}"]},
    }
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    return item


def failed(reason: int, sop_class: str | None = None, sop_instance: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = ui(sop_class)
    if sop_instance:
        item["00081155"] = ui(sop_instance)
    item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def study_url(study: str) -> dict[str, Any]:
    return {"vr": "UR", "Value": [f"{BASE}/studies/{study}"]}


# --- round trips with dicomweb-client ------------------------------------------------------


def _encoded(ds: pydicom.Dataset) -> bytes:
    """What dicomweb-client sends for ``ds`` (it re-encodes with dcmwrite)."""
    out = BytesIO()
    pydicom.dcmwrite(out, ds)
    return out.getvalue()


def _url_seen_by_server(live: LiveServer) -> str:
    """dicomweb-client sends ``Host`` without the port: the server builds its URLs from it."""
    return live.dicomweb.replace(":" + live.url.rsplit(":", 1)[1], "")


def test_dicomweb_client_stores_synthetic_ct_mr_us(live: LiveServer) -> None:
    web = live.web
    study = "1.2.826.0.1.3680043.10.1460.77.1"
    specs = [InstanceSpec(modality=m, study_uid=study, seed=i) for i, m in enumerate(("CT", "MR", "US"))]
    datasets = [pydicom.dcmread(BytesIO(make_instance(s))) for s in specs]
    client = DICOMwebClient(url=live.dicomweb, headers={"Authorization": f"Bearer {web.token_a}"})

    result = client.store_instances(datasets)

    assert "FailedSOPSequence" not in result
    base = _url_seen_by_server(live)
    assert result.RetrieveURL == f"{base}/studies/{study}"
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID, i.RetrieveURL)
            for i in result.ReferencedSOPSequence] == [
        (MODALITY_SOP[s.modality][0], s.sop_uid,
         f"{base}/studies/{study}/series/{s.series_uid}/instances/{s.sop_uid}")
        for s in specs
    ]
    assert stored(web) == {s.sop_uid: _encoded(ds) for s, ds in zip(specs, datasets, strict=True)}


COMPRESSED = ["MR_small_RLE.dcm", "SC_rgb_rle.dcm", "emri_small_jpeg_2k_lossless.dcm", "US1_J2KR.dcm",
              "JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"]


def test_dicomweb_client_stores_compressed_files_byte_for_byte(live: LiveServer) -> None:
    paths = {p.name: p for p in factories.compressed_test_files()}
    assert set(COMPRESSED) <= set(paths), "pydicom test files missing"
    datasets = [pydicom.dcmread(paths[name]) for name in COMPRESSED]
    syntaxes = {str(ds.file_meta.TransferSyntaxUID) for ds in datasets}
    assert syntaxes == {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.70"}
    client = DICOMwebClient(url=live.dicomweb, headers={"Authorization": f"Bearer {live.web.token_a}"})

    result = client.store_instances(datasets)

    assert "FailedSOPSequence" not in result
    assert "RetrieveURL" not in result  # several studies: no single study URL
    assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in datasets]
    archived = stored(live.web)
    for name, ds in zip(COMPRESSED, datasets, strict=True):
        assert archived[ds.SOPInstanceUID] == paths[name].read_bytes() == _encoded(ds)
        again = pydicom.dcmread(BytesIO(archived[ds.SOPInstanceUID]))
        assert (again.pixel_array == ds.pixel_array).all()


def test_dicomweb_client_stores_into_a_named_study(live: LiveServer) -> None:
    spec = InstanceSpec(modality="MR")
    ds = pydicom.dcmread(BytesIO(make_instance(spec)))
    client = DICOMwebClient(url=live.dicomweb, headers={"Authorization": f"Bearer {live.web.token_a}"})
    result = client.store_instances([ds], study_instance_uid=spec.study_uid)
    assert result.RetrieveURL == f"{_url_seen_by_server(live)}/studies/{spec.study_uid}"
    assert [i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence] == [spec.sop_uid]
    assert stored(live.web) == {spec.sop_uid: _encoded(ds)}


# --- statuses and response datasets ----------------------------------------------------------


def test_all_stored_is_200_with_the_exact_dataset(client: TestClient, web: WebArchive) -> None:
    study = "1.2.826.0.1.3680043.10.1460.77.2"
    a, b = InstanceSpec(study_uid=study, seed=1), InstanceSpec(study_uid=study, seed=2)
    body = multipart(make_instance(a), ({}, make_instance(b)))  # no Content-Type: the `type`

    response = post(client, web, body)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert "warning" not in response.headers
    assert response.json() == {"00081190": study_url(study), "00081199": {"vr": "SQ", "Value": [
        referenced(a), referenced(b)]}}
    assert set(stored(web)) == {a.sop_uid, b.sop_uid}


def test_application_json_is_served_when_it_is_all_the_client_accepts(client: TestClient, web: WebArchive) -> None:
    spec = InstanceSpec()
    response = post(client, web, multipart(make_instance(spec)), Accept="application/json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["00081199"]["Value"] == [referenced(spec)]


def test_mixed_good_and_bad_parts_is_202(client: TestClient, web: WebArchive) -> None:
    good_a, good_b = InstanceSpec(seed=1), InstanceSpec(seed=2, modality="US")
    unknown_class = InstanceSpec(seed=3)
    bad_class = factories.with_uid(make_instance(unknown_class), "SOPClassUID", "1.2.3.4")
    body = multipart(
        make_instance(good_a),
        factories.truncated(make_instance(InstanceSpec(seed=4))),
        bad_class,
        ({"Content-Type": "application/octet-stream"}, make_instance(InstanceSpec(seed=5))),
        make_instance(good_b),
        ({"Content-Type": "application/dicom", "Content-Transfer-Encoding": "base64"}, b"AAAA"),
        ({"Content-Type": "x/" + "\u00e9" * 100}, b"..."),
    )

    response = post(client, web, body)

    assert response.status_code == 202
    assert response.json() == {
        "00081198": {"vr": "SQ", "Value": [
            failed(0xC000),
            failed(0x0122, "1.2.3.4", unknown_class.sop_uid),
            failed(0xC000),
            failed(0xC000),
            failed(0xC000),
        ]},
        "00081199": {"vr": "SQ", "Value": [referenced(good_a), referenced(good_b)]},
    }
    assert response.headers.get_list("warning") == [
        f'299 {BASE}: "element (7FE0,0010) length exceeds the data"',
        f'299 {BASE}: "SOPClassUID is not a Storage SOP Class known to the archive"',
        f'299 {BASE}: "part 4 is application/octet-stream, not application/dicom"',
        f'299 {BASE}: "part 6 has Content-Transfer-Encoding base64"',
        f'299 {BASE}: "part 7 is x/{"?" * 59}..., not application/dicom"',
    ]
    assert set(stored(web)) == {good_a.sop_uid, good_b.sop_uid}
    assert file_rows(web) == 2
    [event] = refused_stores(web)  # one event for the request, none per part
    assert event["source"] == "stow-rs" and event["parts"] == 5
    assert event["sop_instance_uids"] == [unknown_class.sop_uid]
    assert sum(event["reasons"].values()) == 5
    assert event["reasons"]["part 4 is application/octet-stream, not application/dicom"] == 1


def test_all_parts_failing_is_409(client: TestClient, web: WebArchive) -> None:
    body = multipart(b"not dicom", factories.truncated(make_instance(InstanceSpec())), b"")
    response = post(client, web, body)
    assert response.status_code == 409
    assert response.json() == {"00081198": {"vr": "SQ", "Value": [failed(0xC000)] * 3}}
    assert stored(web) == {} and file_rows(web) == 0


def test_an_oversized_part_fails_alone_with_0xA700(database: Database, tmp_path: Path) -> None:
    web = build_web_archive(database, tmp_path)
    small = replace(web.ctx.settings, limits=replace(web.ctx.settings.limits, max_object_bytes=20_000))
    web = replace(web, ctx=replace(web.ctx, settings=small))
    big, ok = InstanceSpec(rows=256, columns=256), InstanceSpec()
    with TestClient(create_app(web.ctx)) as client:
        response = post(client, web, multipart(make_instance(big), make_instance(ok)))
    assert response.status_code == 202
    assert response.json()["00081198"]["Value"] == [failed(0xA700)]
    assert "exceeds limits.max_object_bytes" in response.headers["warning"]
    assert set(stored(web)) == {ok.sop_uid}


def test_foreign_study_in_a_study_request_fails_with_0xA900(client: TestClient, web: WebArchive) -> None:
    target = "1.2.826.0.1.3680043.10.1460.77.3"
    mine, foreign = InstanceSpec(study_uid=target), InstanceSpec(seed=1)

    response = post(client, web, multipart(make_instance(mine), make_instance(foreign)), study=target)

    assert response.status_code == 202
    assert response.json() == {
        "00081190": study_url(target),
        "00081198": {"vr": "SQ", "Value": [failed(0xA900, CT, foreign.sop_uid)]},
        "00081199": {"vr": "SQ", "Value": [referenced(mine)]},
    }
    assert "StudyInstanceUID differs from the study of the request" in response.headers["warning"]
    assert set(stored(web)) == {mine.sop_uid} and file_rows(web) == 1

    only_foreign = post(client, web, multipart(make_instance(InstanceSpec(seed=2))), study=target)
    assert only_foreign.status_code == 409
    assert only_foreign.json()["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [0xA900]}


def test_duplicate_is_success_and_new_version_warns(client: TestClient, web: WebArchive) -> None:
    spec = InstanceSpec()
    data = make_instance(spec)
    first = post(client, web, multipart(data))
    again = post(client, web, multipart(data))
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert file_rows(web) == 1

    changed = make_instance(replace(spec, seed=9))  # same UIDs, other pixels
    response = post(client, web, multipart(changed))
    assert response.status_code == 202
    assert response.json()["00081199"]["Value"] == [referenced(spec, warning=0xB000)]
    assert stored(web) == {spec.sop_uid: changed}


def test_another_facility_stores_its_own_copy(client: TestClient, web: WebArchive) -> None:
    spec = InstanceSpec()
    data = make_instance(spec)
    assert post(client, web, multipart(data)).status_code == 200
    assert post(client, web, multipart(data), token=web.token_b).status_code == 200
    with web.ctx.db.read() as tx:
        facilities = tx.execute(select(schema.instance.c.facility_id)).scalars().all()
    assert sorted(facilities) == sorted({web.actor_a.facility_id, web.actor_b.facility_id})


# --- requests refused as a whole -----------------------------------------------------------


MEDIA_TYPE_ERRORS = [
    ("application/dicom", 415, 'STOW-RS takes multipart/related; type="application/dicom"'),
    ("", 415, 'STOW-RS takes multipart/related; type="application/dicom"'),
    (f"multipart/mixed; boundary={BOUNDARY}", 415, 'STOW-RS takes multipart/related; type="application/dicom"'),
    (f"multipart/related; boundary={BOUNDARY}", 415,
     'the multipart/related Content-Type needs type="application/dicom"'),
    (f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}', 415,
     "STOW-RS of metadata and bulk data (type=application/dicom+json) is not supported; "
     'send complete instances as multipart/related; type="application/dicom"'),
    ('multipart/related; type="application/dicom"', 400, "the multipart Content-Type has no boundary parameter"),
    ('multipart/related; type="application/dicom"; boundary="' + "x" * 71 + '"', 400,
     "the multipart boundary must be 1-70 characters of RFC 2046 bchars"),
]


def test_media_type_errors(client: TestClient, web: WebArchive) -> None:
    body = multipart(make_instance())
    for content_type, status, reason in MEDIA_TYPE_ERRORS:
        response = post(client, web, body, content_type=content_type)
        assert (response.status_code, response.json()["reason"]) == (status, reason), content_type
    assert stored(web) == {}


def test_quoted_boundary_and_parameter_order(client: TestClient, web: WebArchive) -> None:
    spec = InstanceSpec()
    body = multipart(make_instance(spec), boundary="a b:c")
    content_type = 'Multipart/Related; boundary="a b:c"; type=application/dicom; start="<x>"'
    response = post(client, web, body, content_type=content_type)
    assert response.status_code == 200
    assert response.json()["00081199"]["Value"] == [referenced(spec)]


def test_not_acceptable_response_type(client: TestClient, web: WebArchive) -> None:
    response = post(client, web, multipart(make_instance()), Accept="application/dicom+xml")
    assert response.status_code == 406
    assert response.json()["reason"] == "the STOW-RS response is application/dicom+json"
    assert stored(web) == {}


def test_invalid_study_uid_in_the_path(client: TestClient, web: WebArchive) -> None:
    response = post(client, web, multipart(make_instance()), study="1.02.3")
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidUID"
    assert stored(web) == {}


def test_no_token_is_401(client: TestClient, web: WebArchive) -> None:
    response = client.post("/dicomweb/studies", content=multipart(make_instance()),
                           headers={"Content-Type": CONTENT_TYPE})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="coffre"'
    assert stored(web) == {}


# --- hostile bodies --------------------------------------------------------------------------


def test_missing_closing_boundary(client: TestClient, web: WebArchive) -> None:
    body = multipart(make_instance(InstanceSpec()))[: -len(f"--{BOUNDARY}--\r\n") - 2]
    response = post(client, web, body)
    assert response.status_code == 400
    assert response.json()["reason"] == "missing closing boundary: the body ends inside part 1"
    assert stored(web) == {} and file_rows(web) == 0


def test_missing_closing_boundary_after_complete_parts(client: TestClient, web: WebArchive) -> None:
    first, second = InstanceSpec(seed=1), InstanceSpec(seed=2)
    body = multipart(make_instance(first), make_instance(second))[: -len(f"--{BOUNDARY}--\r\n") - 2]
    response = post(client, web, body)
    assert response.status_code == 400
    assert response.json()["reason"] == (
        "missing closing boundary: the body ends inside part 2; "
        "the 1 complete parts before it were processed (1 stored)")
    assert set(stored(web)) == {first.sop_uid}  # complete and valid: archived, re-sending is idempotent


def test_huge_part_headers_are_refused(client: TestClient, web: WebArchive) -> None:
    body = multipart(({"Content-Type": "application/dicom", "X-Junk": "j" * (1 << 20)}, make_instance()))
    response = post(client, web, body)
    assert response.status_code == 400
    assert response.json()["reason"] == "the headers of part 1 exceed http.max_part_header_bytes (16384 bytes)"
    assert stored(web) == {}


def test_body_longer_than_its_content_length(client: TestClient, web: WebArchive) -> None:
    body = multipart(make_instance())
    response = post(client, web, body, **{"Content-Length": str(len(body) - 1)})
    assert response.status_code == 400
    assert response.json()["reason"] == f"the body is longer than its Content-Length ({len(body) - 1} bytes)"
    assert stored(web) == {}


@pytest.mark.parametrize("delta", [1, 1000])
def test_body_shorter_than_its_content_length(client: TestClient, web: WebArchive, delta: int) -> None:
    spec = InstanceSpec()
    body = multipart(make_instance(spec))
    response = post(client, web, body, **{"Content-Length": str(len(body) + delta)})
    assert response.status_code == 400
    assert response.json()["reason"] == (
        f"the body ({len(body)} bytes) is shorter than its Content-Length ({len(body) + delta} bytes); "
        "the 1 complete parts before it were processed (1 stored)")
    # the part was complete (closing delimiter read) and valid before the end of the stream
    # showed the lie: it is archived, as a C-STORE before an aborted association is
    assert set(stored(web)) == {spec.sop_uid}


def test_a_hundred_thousand_parts_stop_at_max_parts(database: Database, tmp_path: Path) -> None:
    web = build_web_archive(database, tmp_path, max_parts=20)
    good = [InstanceSpec(seed=i) for i in range(5)]
    tiny = b"".join(write_related((({}, [b"x"]) for _ in range(100_000 - 5)), BOUNDARY))
    body = multipart(*(make_instance(s) for s in good))[: -len(f"--{BOUNDARY}--\r\n")] + tiny
    with TestClient(create_app(web.ctx)) as client:
        response = post(client, web, body)
    assert response.status_code == 413
    assert response.json()["reason"] == (
        "the body has more than http.max_parts (20) parts; "
        "the 20 complete parts before it were processed (5 stored)")
    assert set(stored(web)) == {s.sop_uid for s in good}
    assert file_rows(web) == 5
    [event] = refused_stores(web)
    assert event["parts"] == 15  # parts 6-20 were refused, nothing after part 20 was looked at


def test_a_hundred_thousand_tiny_parts_with_default_limits(client: TestClient, web: WebArchive) -> None:
    body = b"".join(write_related((({}, [b"x"]) for _ in range(100_000)), BOUNDARY))
    response = post(client, web, body)
    assert response.status_code == 413
    assert response.json()["reason"] == (
        "the body has more than http.max_parts (10000) parts; "
        "the 10000 complete parts before it were processed (0 stored)")
    assert stored(web) == {} and file_rows(web) == 0
    [event] = refused_stores(web)  # refused parts cost no index write each
    assert event["parts"] == 10_000
    assert event["reasons"] == {"not a DICOM Part 10 file: no preamble and 'DICM' prefix": 10_000}


# --- what the server reads: a raw ASGI driver ----------------------------------------------


def _asgi_post(app: FastAPI, path: str, headers: dict[str, str], chunks: list[bytes], *,
               disconnect: bool = False) -> tuple[int, dict[str, Any], int]:
    """POST ``chunks`` to ``app``; (status, JSON body, how many chunks the app pulled).

    With ``disconnect`` the client goes away after the chunks (the last one announces more).
    """
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            more = disconnect or pulled < len(chunks)
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": more}
        if not disconnect:
            await asyncio.sleep(3600)  # the client is still connected but sends nothing more
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


def test_a_body_past_max_request_bytes_is_413_without_reading_it(database: Database, tmp_path: Path) -> None:
    web = build_web_archive(database, tmp_path, max_request_bytes=200_000)
    app = create_app(web.ctx)
    body = multipart(*(make_instance(InstanceSpec(seed=i, rows=128, columns=128)) for i in range(40)))
    assert len(body) > 1_300_000
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    headers = web.headers(**{"Content-Type": CONTENT_TYPE})  # no Content-Length: chunked

    status, answer, pulled = _asgi_post(app, "/dicomweb/studies", headers, chunks)

    assert status == 413
    assert answer["reason"].startswith("the request body exceeds http.max_request_bytes (200000)")
    assert pulled == 4  # 4 x 64 KiB > 200 000: reading stopped there
    assert len(stored(web)) < 7  # only the complete parts within the first 200 000 bytes

    declared = {**headers, "Content-Length": str(len(body))}
    status, answer, pulled = _asgi_post(app, "/dicomweb/studies", declared, chunks)
    assert status == 413
    assert answer["reason"] == f"the request body of {len(body)} bytes exceeds http.max_request_bytes (200000)"
    assert pulled == 0


def test_a_query_only_token_is_403_before_the_body_is_read(web: WebArchive) -> None:
    app = create_app(web.ctx)
    headers = web.headers(web.token_a_query_only, **{"Content-Type": CONTENT_TYPE})
    status, answer, pulled = _asgi_post(app, "/dicomweb/studies", headers, [multipart(make_instance())])
    assert status == 403
    assert answer["error"] == "NotAuthorized"
    assert pulled == 0
    assert stored(web) == {}
    assert [d["source"] for d in refused_stores(web)] == ["stow-rs"]


def test_a_client_going_away_mid_body_is_400(web: WebArchive) -> None:
    first, second = InstanceSpec(seed=1), InstanceSpec(seed=2)
    body = multipart(make_instance(first), make_instance(second))
    cut = body.index(b"--" + BOUNDARY.encode(), 10) + 100  # inside part 2
    headers = web.headers(**{"Content-Type": CONTENT_TYPE})
    status, answer, pulled = _asgi_post(create_app(web.ctx), "/dicomweb/studies", headers, [body[:cut]],
                                        disconnect=True)
    assert (status, pulled) == (400, 1)
    assert answer["reason"] == "the client closed the connection before the end of the body"
    assert set(stored(web)) == {first.sop_uid}


class _FailingBlobs:
    """A blob store whose writes fail (a full disk), reads go to the real one."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def put(self, key: str, data: bytes, *, sha256: str | None = None) -> Any:
        raise OSError(28, "No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_storage_failure_of_every_part_is_503_and_leaves_nothing(web: WebArchive) -> None:
    broken = replace(web.ctx, blobs=_FailingBlobs(web.ctx.blobs))
    spec = InstanceSpec()
    with TestClient(create_app(broken)) as client:
        response = post(client, web, multipart(make_instance(spec)))
    assert response.status_code == 503
    assert response.json() == {"00081198": {"vr": "SQ", "Value": [failed(0xA701, CT, spec.sop_uid)]}}
    assert stored(web) == {} and file_rows(web) == 0
    assert list(web.ctx.blobs.keys()) == []


def test_live_server_answers_413_before_the_body_is_sent(live: LiveServer) -> None:
    host, port = live.url.removeprefix("http://").split(":")
    request = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {live.web.token_a}\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {10 * 1024**4}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)  # headers only: 10 TiB announced, nothing sent
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_openapi_describes_stow(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/dicomweb/studies", "/dicomweb/studies/{study}"):
        operation = paths[path]["post"]
        assert {"200", "202", "409", "400", "413", "415"} <= set(operation["responses"])
        assert 'multipart/related; type="application/dicom"' in operation["requestBody"]["content"]

"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data, on both databases.

Round trips go through ``dicomweb-client`` against the app served by uvicorn; exact
multipart framing, headers and error statuses through the in-process client; the
streaming of a whole series is checked by driving the ASGI app directly.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, MutableMapping
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

import factories
from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.index import metadata as metadata_index
from coffre.services.ingest import ingest
from coffre.services.wado import CHUNK
from coffre.storage import BlobInfo, BlobStore
from coffre.web.dicomweb.wado import COALESCE
from coffre.web.http import create_app

if TYPE_CHECKING:
    from tests.web.conftest import LiveServer, WebArchive

BASE = "/dicomweb"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
MPEG2 = "1.2.840.10008.1.2.4.100"


# --- helpers ------------------------------------------------------------------------


def parts_of(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related body, checking its framing exactly."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match is not None, content_type
    delimiter = b"--" + match.group(1).encode()
    assert body.startswith(delimiter + b"\r\n")
    segments = body[len(delimiter) + 2 :].split(b"\r\n" + delimiter)
    assert segments[-1] == b"--\r\n"
    out: list[tuple[dict[str, str], bytes]] = []
    for index, segment in enumerate(segments[:-1]):
        if index:
            assert segment.startswith(b"\r\n")
            segment = segment[2:]
        head, _, data = segment.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n"))
        out.append((headers, data))
    return out


def dicomweb(live: LiveServer, token: str | None = None) -> DICOMwebClient:
    client = DICOMwebClient(
        url=live.dicomweb, headers={"Authorization": f"Bearer {token or live.web.token_a}"}
    )
    # dicomweb-client sends ``Host`` without the port (non-streamed requests); the
    # archive builds absolute URLs (BulkDataURI, Content-Location) from ``Host``
    client.host = urlsplit(live.url).netloc
    return client


def store_bytes(web: WebArchive, data: bytes, site: str = "a") -> None:
    ingest(web.ctx, web.actor_a if site == "a" else web.actor_b, data, source="test")


def read(data: bytes) -> Dataset:
    return dcmread(BytesIO(data))


def stored_json(web: WebArchive, sop_uid: str) -> dict[str, Any]:
    from sqlalchemy import select

    from coffre.index.schema import instance

    with web.ctx.db.read() as tx:
        row_id = tx.execute(
            select(instance.c.id).where(instance.c.sop_instance_uid == sop_uid)
        ).scalar_one()
        doc: dict[str, Any] = json.loads(metadata_index.documents(tx, [row_id])[row_id])
    return doc


def absolute(doc: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``doc`` with every relative BulkDataURI made absolute under ``prefix``."""
    out: dict[str, Any] = {}
    for key, element in doc.items():
        element = dict(element)
        if "BulkDataURI" in element:
            element["BulkDataURI"] = f"{prefix}/{element['BulkDataURI']}"
        if element.get("vr") == "SQ" and "Value" in element:
            element["Value"] = [absolute(item, prefix) for item in element["Value"]]
        out[key] = element
    return out


def study_of(web: WebArchive, count: int = 3, **kwargs: Any) -> tuple[str, list[bytes]]:
    """A study of ``count`` instances over two series, archived for site a."""
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    blobs = []
    for i in range(count):
        data = make_instance(
            InstanceSpec(
                study_uid=study,
                series_uid=series[i % 2],
                series_number=1 + i % 2,
                instance_number=i + 1,
                seed=i,
                **kwargs,
            )
        )
        store_bytes(web, data)
        blobs.append(data)
    return study, blobs


# --- retrieve: instances ------------------------------------------------------------


def test_retrieve_study_series_instance_round_trip_as_stored(live: LiveServer) -> None:
    web = live.web
    study, originals = study_of(web, 3)
    by_sop = {read(d).SOPInstanceUID: d for d in originals}
    client = dicomweb(live)
    received = client.retrieve_study(study, media_types=(("application/dicom", "*"),))
    assert sorted(ds.SOPInstanceUID for ds in received) == sorted(by_sop)
    for ds in received:
        original = read(by_sop[ds.SOPInstanceUID])
        assert ds == original
        assert ds.file_meta == original.file_meta
    first = read(originals[0])
    series = client.retrieve_series(
        study, first.SeriesInstanceUID, media_types=(("application/dicom", "*"),)
    )
    assert sorted(ds.SOPInstanceUID for ds in series) == sorted(
        read(d).SOPInstanceUID
        for d in originals
        if read(d).SeriesInstanceUID == first.SeriesInstanceUID
    )
    one = client.retrieve_instance(study, first.SeriesInstanceUID, first.SOPInstanceUID)
    assert one == first
    assert one.file_meta.TransferSyntaxUID == EXPLICIT_LE


def test_retrieve_body_is_exact_multipart_of_stored_bytes(
    web: WebArchive, client: TestClient
) -> None:
    study, originals = study_of(web, 3)
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    response = client.get(f"{BASE}/studies/{study}", headers=web.headers(Accept=accept))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"; boundary='
    )
    parts = parts_of(response.headers["content-type"], response.content)
    by_sop = {read(d).SOPInstanceUID: d for d in originals}
    assert len(parts) == 3
    base = str(client.base_url).rstrip("/") + BASE
    for headers, data in parts:
        ds = read(data)
        assert data == by_sop[ds.SOPInstanceUID]
        assert headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
        assert headers["Content-Location"] == (
            f"{base}/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )
    # ordered by series number then instance number
    assert [read(d).InstanceNumber for _, d in parts] == [1, 3, 2]


def _jpeg_lossless_source() -> Path:
    paths = [p for p in factories.compressed_test_files() if p.name == "JPEG-LL.dcm"]
    assert paths, "JPEG-LL.dcm (pydicom-data) is needed offline"
    return Path(paths[0])


@pytest.mark.parametrize("source", ["rle", "j2k", "jpeg-lossless", "jpeg-ls"])
def test_compressed_sources_retrieved_as_explicit_le_keep_pixels(
    live: LiveServer, source: str
) -> None:
    web = live.web
    if source == "jpeg-lossless":
        data = _jpeg_lossless_source().read_bytes()
    else:
        syntax = {"rle": RLELossless, "j2k": JPEG2000Lossless, "jpeg-ls": JPEGLSLossless}[source]
        data = factories.make_instance(transfer_syntax=syntax, frames=2, rows=32, columns=48)
    original = read(data)
    assert original.file_meta.TransferSyntaxUID != EXPLICIT_LE
    store_bytes(web, data)
    # no transfer-syntax parameter: the default, Explicit VR Little Endian
    received = dicomweb(live).retrieve_instance(
        original.StudyInstanceUID,
        original.SeriesInstanceUID,
        original.SOPInstanceUID,
        media_types=("application/dicom",),
    )
    assert received.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(received.pixel_array, original.pixel_array)


def test_transcodes_to_a_requested_syntax(web: WebArchive, client: TestClient) -> None:
    data = factories.make_instance(frames=2)
    original = read(data)
    store_bytes(web, data)
    url = f"{BASE}/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}/instances/{original.SOPInstanceUID}"
    accept = (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, '
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG2000Lossless}; q=0.9'
    )
    response = client.get(url, headers=web.headers(Accept=accept))
    assert response.status_code == 200
    [(headers, body)] = parts_of(response.headers["content-type"], response.content)
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={JPEG2000Lossless}"
    ds = read(body)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_lossy_and_video_sources_default_to_stored_syntax(
    web: WebArchive, client: TestClient
) -> None:
    lossy = next(
        p for p in factories.compressed_test_files() if p.name == "JPEG-lossy.dcm"
    ).read_bytes()
    video = factories.encapsulated_instance(
        [b"\x00\x00\x01\xb3video-stream"], transfer_syntax=MPEG2
    )
    for data in (lossy, video):
        ds = read(data)
        store_bytes(web, data)
        response = client.get(f"{BASE}/studies/{ds.StudyInstanceUID}", headers=web.headers())
        assert response.status_code == 200
        [(headers, body)] = parts_of(response.headers["content-type"], response.content)
        assert (
            headers["Content-Type"]
            == f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
        )
        assert body == data


def test_impossible_syntax_is_406_with_reason(web: WebArchive, client: TestClient) -> None:
    video = factories.encapsulated_instance(
        [b"\x00\x00\x01\xb3video-stream"], transfer_syntax=MPEG2
    )
    ds = read(video)
    store_bytes(web, video)
    url = f"{BASE}/studies/{ds.StudyInstanceUID}"
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'
    response = client.get(url, headers=web.headers(Accept=accept))
    assert response.status_code == 406
    assert response.json() == {
        "error": "NotAcceptable",
        "reason": "instances stored in MPEG2 Main Profile / Main Level cannot be sent in Explicit VR Little Endian",
    }
    # Implicit VR Little Endian is not used on the web (PS3.18 8.7.3)
    study, _ = study_of(web, 1)
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
    response = client.get(f"{BASE}/studies/{study}", headers=web.headers(Accept=accept))
    assert response.status_code == 406
    response = client.get(f"{BASE}/studies/{study}", headers=web.headers(Accept="application/pdf"))
    assert response.status_code == 406
    assert "application/dicom" in response.json()["reason"]


# --- metadata and bulk data ---------------------------------------------------------


def _instance_with_bulk_data(**kwargs: Any) -> bytes:
    icon = Dataset()
    icon.Rows = icon.Columns = 64
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = bytes(range(256)) * 16
    ds = factories.make_dataset(**kwargs)
    ds.IconImageSequence = [icon]
    ds.add_new(0x00420011, "OB", bytes(reversed(range(256))) * 20)  # Encapsulated Document
    data: bytes = factories.encode(ds)
    return data


def test_metadata_at_each_level_equals_stored_json_with_absolute_uris(live: LiveServer) -> None:
    web = live.web
    study = generate_uid()
    series = generate_uid()
    datas = [
        _instance_with_bulk_data(
            study_uid=study, series_uid=series, instance_number=i + 1, pixel_seed=i
        )
        for i in range(2)
    ]
    for data in datas:
        store_bytes(web, data)
    sops = [read(d).SOPInstanceUID for d in datas]
    base = live.dicomweb
    expected = [
        absolute(stored_json(web, sop), f"{base}/studies/{study}/series/{series}/instances/{sop}")
        for sop in sops
    ]
    client = dicomweb(live)
    assert client.retrieve_study_metadata(study) == expected
    assert client.retrieve_series_metadata(study, series) == expected
    assert client.retrieve_instance_metadata(study, series, sops[1]) == expected[1]
    doc = expected[0]
    assert doc["00420011"] == {
        "vr": "OB",
        "BulkDataURI": (
            f"{base}/studies/{study}/series/{series}/instances/{sops[0]}/bulkdata/00420011"
        ),
    }
    assert doc["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"].endswith(
        "/bulkdata/00880200/0/7FE00010"
    )
    # each BulkDataURI resolves to the element's value
    original = read(datas[0])
    assert client.retrieve_bulkdata(doc["00420011"]["BulkDataURI"]) == [original[0x00420011].value]
    icon_uri = doc["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert client.retrieve_bulkdata(icon_uri) == [original.IconImageSequence[0].PixelData]
    assert client.retrieve_bulkdata(doc["7FE00010"]["BulkDataURI"]) == [original.PixelData]


def test_metadata_etag_and_304(web: WebArchive, client: TestClient) -> None:
    study, _ = study_of(web, 2)
    url = f"{BASE}/studies/{study}/metadata"
    first = client.get(url, headers=web.headers())
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/dicom+json"
    assert first.headers["cache-control"] == "private, no-cache"
    etag = first.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{40}"', etag)
    assert len(first.json()) == 2
    again = client.get(url, headers=web.headers(**{"If-None-Match": etag}))
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    weak = client.get(url, headers=web.headers(**{"If-None-Match": f'"other", W/{etag}'}))
    assert weak.status_code == 304
    # a new instance in the study changes the ETag
    store_bytes(web, make_instance(InstanceSpec(study_uid=study)))
    changed = client.get(url, headers=web.headers(**{"If-None-Match": etag}))
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert len(changed.json()) == 3


def test_metadata_accept_and_bulkdata_errors(web: WebArchive, client: TestClient) -> None:
    data = _instance_with_bulk_data()
    ds = read(data)
    store_bytes(web, data)
    instance_url = (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    xml = 'multipart/related; type="application/dicom+xml"'
    response = client.get(f"{instance_url}/metadata", headers=web.headers(Accept=xml))
    assert response.status_code == 406
    assert (
        client.get(
            f"{instance_url}/metadata", headers=web.headers(Accept="application/json")
        ).status_code
        == 200
    )
    # bulk data: exact framing, absent tags, malformed paths, sequences
    response = client.get(f"{instance_url}/bulkdata/00420011", headers=web.headers())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/octet-stream"'
    )
    [(headers, body)] = parts_of(response.headers["content-type"], response.content)
    assert headers["Content-Type"] == "application/octet-stream"
    assert body == ds[0x00420011].value
    assert client.get(f"{instance_url}/bulkdata/00100010", headers=web.headers()).status_code == 200
    for path, status in [
        ("00091001", 404),
        ("00880200/1/7FE00010", 404),
        ("00880200/0/00280301", 404),
        ("0042001", 400),
        ("00420011/x", 400),
        ("7FE0ZZZZ", 400),
        ("00420011/0", 400),
        ("00880200", 400),
    ]:
        response = client.get(f"{instance_url}/bulkdata/{path}", headers=web.headers())
        assert response.status_code == status, path
        assert set(response.json()) == {"error", "reason"}
    response = client.get(
        f"{instance_url}/bulkdata/00420011", headers=web.headers(Accept="image/png")
    )
    assert response.status_code == 406


# --- frames -------------------------------------------------------------------------


def test_frames_uncompressed_from_native_and_compressed_sources(live: LiveServer) -> None:
    web = live.web
    client = dicomweb(live)
    for syntax in (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless):
        data = factories.make_instance(transfer_syntax=syntax, frames=3, rows=32, columns=48)
        ds = read(data)
        store_bytes(web, data)
        frames = client.retrieve_instance_frames(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, [3, 1]
        )
        pixels = ds.pixel_array
        assert frames == [pixels[2].astype("<u2").tobytes(), pixels[0].astype("<u2").tobytes()], (
            syntax
        )


def test_frames_stored_untouched_with_any_syntax(
    live: LiveServer, web: WebArchive, client: TestClient
) -> None:
    data = factories.make_instance(transfer_syntax=JPEG2000Lossless, frames=3, rows=32, columns=48)
    ds = read(data)
    store_bytes(web, data)
    stored = list(generate_frames(ds.PixelData, number_of_frames=3))
    got = dicomweb(live).retrieve_instance_frames(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        [2, 3],
        media_types=(("application/octet-stream", "*"),),
    )
    assert got == [stored[1], stored[2]]
    url = (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1"
    )
    accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    response = client.get(url, headers=web.headers(Accept=accept))
    assert response.headers["content-type"].startswith('multipart/related; type="image/jp2"')
    [(headers, body)] = parts_of(response.headers["content-type"], response.content)
    assert headers["Content-Type"] == f"image/jp2; transfer-syntax={JPEG2000Lossless}"
    assert headers["Content-Location"].endswith(f"/instances/{ds.SOPInstanceUID}/frames/1")
    assert body == stored[0]


def test_frames_multi_fragment_are_unwrapped(web: WebArchive, client: TestClient) -> None:
    frames = [b"\xff\x4f\xff\x51" + bytes([i]) * 302 for i in range(2)]
    data = factories.encapsulated_instance(frames, fragments_per_frame=3)
    ds = read(data)
    store_bytes(web, data)
    url = (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/2,1"
    )
    accept = f'multipart/related; type="image/jp2"; transfer-syntax={JPEG2000Lossless}'
    response = client.get(url, headers=web.headers(Accept=accept))
    assert response.status_code == 200
    parts = parts_of(response.headers["content-type"], response.content)
    assert [body for _, body in parts] == [frames[1], frames[0]]


def test_frames_transcoded_to_a_compressed_syntax(web: WebArchive, client: TestClient) -> None:
    from openjpeg.utils import decode

    data = factories.make_instance(frames=2, rows=32, columns=48)
    ds = read(data)
    store_bytes(web, data)
    url = (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/2"
    )
    response = client.get(url, headers=web.headers(Accept='multipart/related; type="image/jp2"'))
    assert response.status_code == 200
    [(headers, body)] = parts_of(response.headers["content-type"], response.content)
    assert headers["Content-Type"] == f"image/jp2; transfer-syntax={JPEG2000Lossless}"
    assert np.array_equal(decode(body), ds.pixel_array[1])
    # JPEG baseline cannot be produced: 406 with the reason
    response = client.get(
        url,
        headers=web.headers(
            Accept='multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'
        ),
    )
    assert response.status_code == 406
    assert response.json()["reason"] == (
        "no acceptable media type can be produced from pixel data in Explicit VR Little Endian"
    )


def test_frame_lists_are_validated(web: WebArchive, client: TestClient) -> None:
    data = factories.make_instance(frames=2)
    ds = read(data)
    store_bytes(web, data)
    url = (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames"
    )
    for frames in ("0", "a", "1,,2", "-1", "1.5", "1;2", "99999999999"):
        response = client.get(f"{url}/{frames}", headers=web.headers())
        assert response.status_code == 400, frames
    assert client.get(f"{url}/3", headers=web.headers()).status_code == 404
    assert client.get(f"{url}/1,2,1", headers=web.headers()).status_code == 200
    response = client.get(f"{url}/1,2,1", headers=web.headers())
    assert len(parts_of(response.headers["content-type"], response.content)) == 3


# --- errors, scope and authorization ------------------------------------------------


def test_scope_authentication_and_uids(web: WebArchive, client: TestClient) -> None:
    data = factories.make_instance(frames=2)
    ds = read(data)
    store_bytes(web, data)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    instance = f"{BASE}/studies/{study}/series/{series}/instances/{sop}"
    urls = [
        f"{BASE}/studies/{study}",
        f"{BASE}/studies/{study}/series/{series}",
        instance,
        f"{BASE}/studies/{study}/metadata",
        f"{BASE}/studies/{study}/series/{series}/metadata",
        f"{instance}/metadata",
        f"{instance}/frames/1",
        f"{instance}/bulkdata/7FE00010",
    ]
    for url in urls:
        assert client.get(url, headers=web.headers()).status_code == 200, url
        other = client.get(url, headers=web.headers(web.token_b))
        assert other.status_code == 404, url
        assert other.json()["error"] == "NotFound"
        assert client.get(url).status_code == 401, url
        forbidden = client.get(url, headers=web.headers(web.token_a_query_only))
        assert forbidden.status_code == 403, url
    for bad in ("1.2.abc", "01.2.3", "1..2", "1." + "2" * 70):
        response = client.get(f"{BASE}/studies/{bad}/metadata", headers=web.headers())
        assert response.status_code == 400, bad
        response = client.get(f"{BASE}/studies/{study}/series/{bad}", headers=web.headers())
        assert response.status_code == 400, bad
    unknown = generate_uid()
    assert client.get(f"{BASE}/studies/{unknown}", headers=web.headers()).status_code == 404
    assert (
        client.get(
            f"{BASE}/studies/{study}/series/{unknown}/metadata", headers=web.headers()
        ).status_code
        == 404
    )


def test_no_pixel_data_frames_is_404(web: WebArchive, client: TestClient) -> None:
    data = factories.make_instance(extra={"PixelData": None})
    ds = read(data)
    store_bytes(web, data)
    url = (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    assert client.get(f"{url}/frames/1", headers=web.headers()).status_code == 404
    assert client.get(f"{url}/bulkdata/7FE00010", headers=web.headers()).status_code == 404


def test_openapi_lists_wado_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/studies/{study}",
        "/studies/{study}/series/{series}/metadata",
        "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
        "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path}",
    ):
        assert "get" in paths[BASE + path], path


# --- streaming ----------------------------------------------------------------------


class SpyBlobs:
    """A blob store that records how blobs are read."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.opened = 0
        self.whole_reads = 0

    def put(self, key: str, data: bytes, *, sha256: str | None = None) -> BlobInfo:
        return self.inner.put(key, data, sha256=sha256)

    def open(self, key: str) -> BinaryIO:
        self.opened += 1
        return self.inner.open(key)

    def read(self, key: str) -> bytes:
        self.whole_reads += 1
        return self.inner.read(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def keys(self) -> Iterator[str]:
        return self.inner.keys()

    def local_path(self, key: str) -> Path | None:
        return self.inner.local_path(key)


def test_series_retrieve_is_streamed_in_bounded_chunks(web: WebArchive) -> None:
    study, series = generate_uid(), generate_uid()
    originals: dict[str, bytes] = {}
    for i in range(50):
        data = make_instance(
            InstanceSpec(
                study_uid=study,
                series_uid=series,
                instance_number=i + 1,
                rows=512,
                columns=512,
                seed=i,
            )
        )
        store_bytes(web, data)
        originals[read(data).SOPInstanceUID] = data
    spy = SpyBlobs(web.ctx.blobs)
    app = create_app(replace(web.ctx, blobs=spy))
    trace: list[tuple[int, int]] = []
    messages: list[MutableMapping[str, Any]] = []

    async def run() -> None:
        done = asyncio.Event()
        requested = False

        async def receive() -> MutableMapping[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()  # the client stays connected until the body is complete
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body":
                # (bytes sent with this message, blobs opened by then)
                sent = sum(len(m["body"]) for m in messages[1:]) + len(message["body"])
                trace.append((sent, spy.opened))
            messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done.set()

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"{BASE}/studies/{study}/series/{series}",
            "raw_path": b"",
            "root_path": "",
            "query_string": b"",
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 1),
            "headers": [
                (b"host", b"testserver"),
                (b"authorization", f"Bearer {web.token_a}".encode()),
                (b"accept", b'multipart/related; type="application/dicom"; transfer-syntax=*'),
            ],
        }
        await app(scope, receive, send)

    asyncio.run(run())
    start = messages[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    bodies = [m["body"] for m in messages[1:]]
    # nothing was read whole, blobs were opened one by one as the body was sent
    assert spy.whole_reads == 0
    # at most two writes are read ahead (to send small bodies whole)
    smallest = min(len(d) for d in originals.values())
    ahead = 2 * (COALESCE + CHUNK)
    assert all(opened <= (sent + ahead) // smallest + 1 for sent, opened in trace)
    assert trace[0][1] <= 6 and spy.opened == 50
    assert max(len(b) for b in bodies) < COALESCE + CHUNK
    assert start["headers"] and all(m.get("more_body") for m in messages[1:-1])
    content_type = dict(start["headers"])[b"content-type"].decode()
    parts = parts_of(content_type, b"".join(bodies))
    assert {read(body).SOPInstanceUID: body for _, body in parts} == originals


def test_metadata_of_a_series_served_without_opening_blobs(web: WebArchive) -> None:
    study, series = generate_uid(), generate_uid()
    for i in range(5):
        store_bytes(
            web,
            make_instance(InstanceSpec(study_uid=study, series_uid=series, instance_number=i + 1)),
        )
    spy = SpyBlobs(web.ctx.blobs)
    with TestClient(create_app(replace(web.ctx, blobs=spy))) as client:
        response = client.get(
            f"{BASE}/studies/{study}/series/{series}/metadata", headers=web.headers()
        )
    assert response.status_code == 200
    assert [doc["00200013"]["Value"] for doc in response.json()] == [[1], [2], [3], [4], [5]]
    assert spy.opened == spy.whole_reads == 0


@pytest.mark.parametrize(
    ("syntax", "sent_as"),
    [
        # PS3.18 8.7.3: Implicit VR Little Endian and Explicit VR Big Endian are not used
        # on the web: "*" sends them as Explicit VR Little Endian
        ("1.2.840.10008.1.2", EXPLICIT_LE),
        ("1.2.840.10008.1.2.2", EXPLICIT_LE),
        ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1.99"),
    ],
)
def test_native_variants(web: WebArchive, client: TestClient, syntax: str, sent_as: str) -> None:
    ds = factories.make_dataset(frames=2, rows=8, columns=8)
    data = factories.encode(ds, transfer_syntax=syntax)
    original = read(data)
    assert original.file_meta.TransferSyntaxUID == syntax
    store_bytes(web, data)
    url = (
        f"{BASE}/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
        f"/instances/{original.SOPInstanceUID}"
    )
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    response = client.get(url, headers=web.headers(Accept=accept))
    [(headers, body)] = parts_of(response.headers["content-type"], response.content)
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={sent_as}"
    received = read(body)
    assert received.file_meta.TransferSyntaxUID == sent_as
    assert np.array_equal(received.pixel_array, original.pixel_array)
    if sent_as == syntax:
        assert body == data
    # frames, uncompressed little endian whatever the stored byte order
    response = client.get(f"{url}/frames/2,1", headers=web.headers())
    assert response.status_code == 200
    frames = parts_of(response.headers["content-type"], response.content)
    assert [h["Content-Type"] for h, _ in frames] == [
        f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    ] * 2
    # the stored values, as little endian words
    order = ">u2" if syntax == "1.2.840.10008.1.2.2" else "<u2"
    little_endian = np.frombuffer(original.PixelData, order).astype("<u2").tobytes()
    size = 8 * 8 * 2
    assert [body for _, body in frames] == [little_endian[size:], little_endian[:size]]
    # the whole Pixel Data as bulk data, little endian
    response = client.get(f"{url}/bulkdata/7FE00010", headers=web.headers())
    [(_, value)] = parts_of(response.headers["content-type"], response.content)
    assert value == little_endian

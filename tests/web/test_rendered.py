"""WADO-RS rendered resources and thumbnails (PS3.18 10.4.1.1.3/4) and WADO-URI
(PS3.18 9), on SQLite and PostgreSQL. Images are decoded with Pillow and their pixel
values checked against the PS3.3 C.11 window formulas."""

from __future__ import annotations

import io
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from dicomweb_client import DICOMwebClient
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from coffre.dicom.synthetic import InstanceSpec, encode, make_dataset
from coffre.index.audit import list_events
from coffre.services.ingest import ingest

if TYPE_CHECKING:  # tests/web is no package: the fixtures' types are for readers only
    from tests.web.conftest import LiveServer, WebArchive

BASE = "/dicomweb"

#: HU of the three vertical bands of the test CT: air, soft tissue (the window centre), bone
BANDS = (-1000, 40, 1000)


def ct_pixels(rows: int = 60, columns: int = 60, bands: tuple[int, ...] = BANDS) -> np.ndarray:
    """HU image in vertical bands of equal width."""
    hu = np.empty((rows, columns), dtype=np.int32)
    step = columns // len(bands)
    for i, value in enumerate(bands):
        hu[:, i * step : (i + 1) * step] = value
    return hu


def store_ct(web: WebArchive, hu: np.ndarray, spec: InstanceSpec | None = None, *, site: str = "a",
             slope: float = 1.0, intercept: float = -1024.0) -> InstanceSpec:
    """A CT whose modality values are exactly ``hu`` (stored = (hu - intercept) / slope)."""
    frames = hu.shape[0] if hu.ndim == 3 else 1
    spec = replace(spec or InstanceSpec(), modality="CT", rows=hu.shape[-2], columns=hu.shape[-1],
                   frames=frames)
    ds = make_dataset(spec)
    stored = np.rint((hu - intercept) / slope)
    assert stored.min() >= 0 and stored.max() < 4096
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ingest(web.ctx, web.actor_a if site == "a" else web.actor_b, encode(ds), source="test")
    return spec


def store(web: WebArchive, spec: InstanceSpec) -> tuple[InstanceSpec, bytes]:
    """Archive ``spec``; the UIDs of what was stored (pydicom's compress gives a new
    SOP Instance UID) and its bytes."""
    data, result = web.store(spec)
    assert result.status.value == "stored"
    return replace(spec, sop_uid=result.sop_instance_uid), data


def image(response: object, fmt: str = "PNG") -> np.ndarray:
    assert getattr(response, "status_code", None) == 200, getattr(response, "text", "")
    content = response.content  # type: ignore[attr-defined]
    picture = Image.open(io.BytesIO(content))
    assert picture.format == fmt
    return np.asarray(picture)


def url(spec: InstanceSpec, level: str = "instance", resource: str = "rendered") -> str:
    path = f"{BASE}/studies/{spec.study_uid}"
    if level in ("series", "instance", "frame"):
        path += f"/series/{spec.series_uid}"
    if level in ("instance", "frame"):
        path += f"/instances/{spec.sop_uid}"
    return f"{path}/{resource}"


def bands_of(pixels: np.ndarray, count: int = 3) -> list[int]:
    """The value of each vertical band (asserting that each band is uniform)."""
    step = pixels.shape[1] // count
    out = []
    for i in range(count):
        band = pixels[:, i * step : (i + 1) * step]
        assert band.min() == band.max()
        out.append(int(band[0, 0]))
    return out


PNG_ACCEPT = {"Accept": "image/png"}


# --- WADO-RS rendered ---------------------------------------------------------------------


WINDOWS = [
    ("1000,1", [0, 0, 255]),  # a threshold at 999.5
    ("-1000,3", [191, 255, 255]),  # ((-1000 - -1000.5) / 2 + 0.5) * 255 = 191.25
    ("0,2001,linear-exact", [0, 133, 255]),  # ((40 - 0) / 2001 + 0.5) * 255 = 132.6
    ("40,400,sigmoid", [0, 128, 255]),
    ("40,400,LINEAR", [0, 128, 255]),
]


def test_window_level(web: WebArchive, client: TestClient) -> None:
    spec = store_ct(web, ct_pixels())  # WindowCenter 40, WindowWidth 400
    pixels = image(client.get(url(spec), headers=web.headers(**PNG_ACCEPT)))
    assert pixels.shape == (60, 60)
    assert bands_of(pixels) == [0, 128, 255]
    rescaled = store_ct(web, ct_pixels(), slope=2.0, intercept=-2000.0)
    assert bands_of(image(client.get(url(rescaled), headers=web.headers(**PNG_ACCEPT)))) == [0, 128, 255]
    for window, expected in WINDOWS:
        response = client.get(url(spec), params={"window": window}, headers=web.headers(**PNG_ACCEPT))
        assert bands_of(image(response)) == expected, window


def test_monochrome1_is_inverted(web: WebArchive, client: TestClient) -> None:
    cr = InstanceSpec(modality="CR", seed=7)  # MONOCHROME1, no window: value range
    dx = InstanceSpec(modality="DX", seed=7)  # MONOCHROME2, same pixels
    web.store(cr)
    web.store(dx)
    inverted = image(client.get(url(cr), headers=web.headers(**PNG_ACCEPT))).astype(int)
    plain = image(client.get(url(dx), headers=web.headers(**PNG_ACCEPT))).astype(int)
    assert plain.min() == 0 and plain.max() == 255
    assert np.array_equal(inverted, 255 - plain)


def test_us_rgb_is_rendered_in_colour(web: WebArchive, client: TestClient) -> None:
    spec = InstanceSpec(modality="US", seed=3)
    web.store(spec)
    pixels = image(client.get(url(spec), headers=web.headers(**PNG_ACCEPT)))
    assert pixels.shape == (64, 64, 3)
    assert np.array_equal(pixels, make_dataset(spec).pixel_array)
    jpeg = client.get(url(spec), headers=web.headers())
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).mode == "RGB"


VIEWPORTS = [
    ("32,16", (32, 16)), ("16,16", (16, 8)), ("100,100", (100, 50)), (",20", (40, 20)),
    ("10,", (10, 5)), ("30,30,0,0,60,30", (30, 15)), ("30,30,30,,,", (30, 30)),
]


def test_viewport_sizes(web: WebArchive, client: TestClient) -> None:
    spec = store_ct(web, ct_pixels(rows=30, columns=60))
    for viewport, size in VIEWPORTS:
        response = client.get(url(spec), params={"viewport": viewport}, headers=web.headers(**PNG_ACCEPT))
        pixels = image(response)
        assert (pixels.shape[1], pixels.shape[0]) == size, viewport


def test_viewport_region_crops_and_flips(web: WebArchive, client: TestClient) -> None:
    spec = store_ct(web, ct_pixels())
    bone = client.get(url(spec), params={"viewport": "20,20,40,0,20,20"}, headers=web.headers(**PNG_ACCEPT))
    assert np.unique(image(bone)).tolist() == [255]
    # a negative width mirrors the region: bone, soft tissue, air
    flipped = client.get(url(spec), params={"viewport": "60,60,0,0,-60,"}, headers=web.headers(**PNG_ACCEPT))
    assert bands_of(image(flipped)) == [255, 128, 0]


def test_quality_changes_jpeg_size(web: WebArchive, client: TestClient) -> None:
    spec = InstanceSpec(modality="MR", seed=1, rows=128, columns=128)
    web.store(spec)
    sizes = []
    for quality in (5, 95):
        response = client.get(url(spec), params={"quality": str(quality)}, headers=web.headers())
        assert response.headers["content-type"] == "image/jpeg"
        assert image(response, "JPEG").shape == (128, 128)
        sizes.append(len(response.content))
    assert sizes[0] * 2 < sizes[1]


def test_multiframe_frame_choice(web: WebArchive, client: TestClient) -> None:
    hu = np.stack([np.full((16, 16), v, dtype=np.int32) for v in BANDS])
    spec = store_ct(web, hu)
    headers = web.headers(**PNG_ACCEPT)
    assert np.unique(image(client.get(url(spec), headers=headers))).tolist() == [0]
    for number, value in zip((1, 2, 3), (0, 128, 255), strict=True):
        for resource in ("rendered", "thumbnail"):
            response = client.get(url(spec, "frame", f"frames/{number}/{resource}"), headers=headers)
            pixels = image(response)
            assert np.unique(pixels).tolist() == [value]
            assert pixels.shape == ((16, 16) if resource == "rendered" else (128, 128))
    for bad in ("0", "4", "1,2", "x"):
        response = client.get(url(spec, "frame", f"frames/{bad}/rendered"), headers=headers)
        assert response.status_code == 400, bad
        assert response.json()["error"] == "BadRequest"


def test_thumbnails(web: WebArchive, client: TestClient) -> None:
    wide = store_ct(web, ct_pixels(rows=30, columns=60))
    for level in ("study", "series", "instance"):
        response = client.get(url(wide, level, "thumbnail"), headers=web.headers())
        assert response.headers["content-type"] == "image/jpeg"
        assert image(response, "JPEG").shape == (64, 128)
    custom = client.get(url(wide, "instance", "thumbnail"), params={"viewport": "32,32"},
                        headers=web.headers(**PNG_ACCEPT))
    assert image(custom).shape == (16, 32)


def test_compressed_sources_render_like_uncompressed(web: WebArchive, client: TestClient) -> None:
    native, _ = store(web, InstanceSpec(modality="CT", seed=9, frames=2))
    headers = web.headers(**PNG_ACCEPT)
    frames = [image(client.get(url(native, "frame", f"frames/{n}/rendered"), headers=headers)) for n in (1, 2)]
    assert not np.array_equal(frames[0], frames[1])
    for syntax in (JPEG2000Lossless, RLELossless, JPEGLSLossless):
        compressed, _ = store(web, InstanceSpec(modality="CT", seed=9, frames=2, transfer_syntax=syntax))
        for number, expected in zip((1, 2), frames, strict=True):
            response = client.get(url(compressed, "frame", f"frames/{number}/rendered"), headers=headers)
            assert np.array_equal(image(response), expected), syntax


def test_series_and_study_show_the_middle_image_of_the_first_series(
    web: WebArchive, client: TestClient
) -> None:
    study = InstanceSpec().study_uid
    first = InstanceSpec(study_uid=study, series_number=1)
    second = InstanceSpec(study_uid=study, series_number=2)
    # stored out of order; instance numbers 1..3 hold HU -1000, 40, 1000
    for number in (3, 1, 2):
        spec = replace(first, sop_uid=InstanceSpec().sop_uid, instance_number=number)
        store_ct(web, np.full((8, 8), BANDS[number - 1], dtype=np.int32), spec)
    store_ct(web, np.full((8, 8), 1000, dtype=np.int32), replace(second, instance_number=1))
    headers = web.headers(**PNG_ACCEPT)
    for level in ("series", "study"):
        response = client.get(url(first, level), headers=headers)
        assert np.unique(image(response)).tolist() == [128], level
    other = client.get(url(second, "series"), headers=headers)
    assert np.unique(image(other)).tolist() == [255]


def test_modality_lut_and_voi_lut_sequences_are_applied(web: WebArchive, client: TestClient) -> None:
    """PS3.3 C.11.1 then C.11.2: LUT sequences of the stored object, through the route.

    Stored 10..13 -> Modality LUT -> 0..3 -> VOI LUT -> 0, 51, 102, 255. Ignoring the
    Modality LUT would give 255 everywhere (10..13 clamped in the VOI LUT); ignoring the
    VOI LUT would stretch 0..3 to 0, 85, 170, 255.
    """
    spec = InstanceSpec(modality="DX", rows=8, columns=40)
    ds = make_dataset(spec)
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    stored = np.repeat(np.array([10, 11, 12, 13], dtype=np.uint16), 10)[None, :].repeat(8, axis=0)
    ds.PixelData = stored.tobytes()
    modality = pydicom.Dataset()
    modality.LUTDescriptor = [4, 10, 16]
    modality.add_new(0x00283006, "US", [0, 1, 2, 3])  # LUT Data
    modality.ModalityLUTType = "US"
    ds.ModalityLUTSequence = [modality]
    voi = pydicom.Dataset()
    voi.LUTDescriptor = [4, 0, 8]
    voi.add_new(0x00283006, "US", [0, 51, 102, 255])
    ds.VOILUTSequence = [voi]
    ingest(web.ctx, web.actor_a, encode(ds), source="test")
    headers = web.headers(**PNG_ACCEPT)
    for resource in ("rendered", "thumbnail"):
        pixels = image(client.get(url(spec, "instance", resource), params={"viewport": "40,8"},
                                  headers=headers))
        assert bands_of(pixels, 4) == [0, 51, 102, 255], resource
    # a window parameter replaces the VOI LUT, the Modality LUT still applies: 0..3 in 2,2
    windowed = image(client.get(url(spec), params={"window": "2,2"}, headers=headers))
    assert bands_of(windowed, 4) == [0, 0, 255, 255]


def test_png_and_jpeg_negotiation(web: WebArchive, client: TestClient) -> None:
    spec = store_ct(web, ct_pixels())
    for accept, expected in (("image/png", "image/png"), ("image/*", "image/jpeg"), ("*/*", "image/jpeg"),
                             ("image/gif, image/png;q=0.5", "image/png"), (None, "image/jpeg")):
        headers = web.headers() if accept is None else web.headers(Accept=accept)
        response = client.get(url(spec), headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"] == expected
    by_param = client.get(url(spec), params={"accept": "image/png"}, headers=web.headers(Accept="image/gif"))
    assert by_param.headers["content-type"] == "image/png"
    for accept in ("image/gif", "application/dicom", "text/html"):
        response = client.get(url(spec), headers=web.headers(Accept=accept))
        assert response.status_code == 406
        assert response.json()["error"] == "NotAcceptable"
    # annotation and charset are accepted; nothing is burnt into the pixels
    plain = image(client.get(url(spec), headers=web.headers(**PNG_ACCEPT)))
    annotated = client.get(url(spec), params={"annotation": "patient,technique", "charset": "utf-8"},
                           headers=web.headers(**PNG_ACCEPT))
    assert np.array_equal(image(annotated), plain)


BAD_PARAMETERS = [
    {"window": "abc"}, {"window": "40"}, {"window": "40,0"}, {"window": "40,400,cubic"},
    {"window": "40,nan"}, {"window": "40,400,linear,1"},
    {"viewport": "0,10"}, {"viewport": "10"}, {"viewport": ","}, {"viewport": "10,10,70,0"},
    {"viewport": "10,10,0,0,61,10"}, {"viewport": "10,10,-1,0"}, {"viewport": "100000,10"},
    {"viewport": "a,b"}, {"quality": "0"}, {"quality": "101"}, {"quality": "high"},
    {"annotation": "burn"},
]


def test_bad_parameters_are_400(web: WebArchive, client: TestClient) -> None:
    spec = store_ct(web, ct_pixels())
    for params in BAD_PARAMETERS:
        response = client.get(url(spec), params=params, headers=web.headers())
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"] == "BadRequest"
    response = client.get(f"{BASE}/studies/1.02.3/rendered", headers=web.headers())
    assert response.status_code == 400
    assert response.json()["error"] == "InvalidUID"


def test_scope_auth_and_audit(web: WebArchive, client: TestClient) -> None:
    spec = store_ct(web, ct_pixels(), site="b")
    for level in ("study", "series", "instance"):
        assert client.get(url(spec, level), headers=web.headers(web.token_a)).status_code == 404
        assert client.get(url(spec, level), headers=web.headers(web.token_b)).status_code == 200
    unknown = client.get(f"{BASE}/studies/1.2.3.4/thumbnail", headers=web.headers())
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "NotFound"
    assert client.get(url(spec)).status_code == 401
    assert client.get(url(spec), headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get(url(spec), headers=web.headers(web.token_a_query_only)).status_code == 403
    with web.ctx.db.read() as conn:
        events = list_events(conn, action="wado-rs-rendered")
    assert any(e.object_id == spec.study_uid and e.outcome == "success" for e in events)


def test_openapi_lists_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for suffix in ("rendered", "thumbnail"):
        assert f"{BASE}/studies/{{study}}/{suffix}" in paths
        assert f"{BASE}/studies/{{study}}/series/{{series}}/instances/{{instance}}/frames/{{frame}}/{suffix}" in paths
    wado = paths[f"{BASE}/wado"]["get"]
    names = {p["name"] for p in wado["parameters"]}
    assert {"requestType", "studyUID", "seriesUID", "objectUID", "contentType", "windowCenter"} <= names


def test_dicomweb_client_rendered(live: LiveServer) -> None:
    spec = store_ct(live.web, ct_pixels())
    dw = DICOMwebClient(url=live.dicomweb, headers={"Authorization": f"Bearer {live.web.token_a}"})
    png = dw.retrieve_instance_rendered(spec.study_uid, spec.series_uid, spec.sop_uid,
                                        media_types=("image/png",), params={"window": "40,400"})
    assert bands_of(np.asarray(Image.open(io.BytesIO(png)))) == [0, 128, 255]
    frame = dw.retrieve_instance_frames_rendered(spec.study_uid, spec.series_uid, spec.sop_uid, [1],
                                                 media_types=("image/png",), params={"window": "1000,1"})
    assert bands_of(np.asarray(Image.open(io.BytesIO(frame)))) == [0, 0, 255]
    series = dw.retrieve_series_rendered(spec.study_uid, spec.series_uid, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(series)).size == (60, 60)


# --- WADO-URI -------------------------------------------------------------------------------


def wado(spec: InstanceSpec, **params: str) -> dict[str, str]:
    return {"requestType": "WADO", "studyUID": spec.study_uid, "seriesUID": spec.series_uid,
            "objectUID": spec.sop_uid, **params}


def test_wado_uri_dicom_is_byte_equal(web: WebArchive, client: TestClient) -> None:
    spec = InstanceSpec(modality="MR", seed=2)
    data, _ = web.store(spec)
    response = client.get(f"{BASE}/wado", params=wado(spec, contentType="application/dicom"),
                          headers=web.headers())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert response.content == data
    same = client.get(f"{BASE}/wado", params=wado(spec, contentType="application/dicom",
                                                  transferSyntax=ExplicitVRLittleEndian), headers=web.headers())
    assert same.content == data


def test_wado_uri_dicom_transfer_syntax(web: WebArchive, client: TestClient) -> None:
    compressed, data = store(web, InstanceSpec(modality="CT", seed=4, transfer_syntax=JPEG2000Lossless))
    default = client.get(f"{BASE}/wado", params=wado(compressed, contentType="application/dicom"),
                         headers=web.headers())
    assert default.status_code == 200
    ds = pydicom.dcmread(io.BytesIO(default.content))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # PS3.18 9.4.2.4 default
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(io.BytesIO(data)).pixel_array)
    kept = client.get(f"{BASE}/wado", params=wado(compressed, contentType="application/dicom",
                                                  transferSyntax=JPEG2000Lossless), headers=web.headers())
    assert kept.content == data
    rle = client.get(f"{BASE}/wado", params=wado(compressed, contentType="application/dicom",
                                                 transferSyntax=RLELossless), headers=web.headers())
    assert pydicom.dcmread(io.BytesIO(rle.content)).file_meta.TransferSyntaxUID == RLELossless
    for syntax, status in (("1.2.840.10008.1.2.4.50", 406), ("1.2.3.4", 406), ("1.02", 400)):
        response = client.get(f"{BASE}/wado", params=wado(compressed, contentType="application/dicom",
                                                          transferSyntax=syntax), headers=web.headers())
        assert response.status_code == status, syntax


def test_wado_uri_rendered(web: WebArchive, client: TestClient) -> None:
    spec = store_ct(web, ct_pixels())
    jpeg = client.get(f"{BASE}/wado", params=wado(spec, contentType="image/jpeg"), headers=web.headers())
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert image(jpeg, "JPEG").shape == (60, 60)
    default = client.get(f"{BASE}/wado", params=wado(spec), headers=web.headers())
    assert default.headers["content-type"] == "image/jpeg"  # a single-frame image
    png = client.get(f"{BASE}/wado", params=wado(spec, contentType="image/png"), headers=web.headers())
    assert bands_of(image(png)) == [0, 128, 255]
    windowed = client.get(f"{BASE}/wado", params=wado(spec, contentType="image/png", windowCenter="1000",
                                                      windowWidth="1"), headers=web.headers())
    assert bands_of(image(windowed)) == [0, 0, 255]
    small = client.get(f"{BASE}/wado", params=wado(spec, contentType="image/png", rows="30", columns="45"),
                       headers=web.headers())
    assert image(small).shape == (30, 30)
    region = client.get(f"{BASE}/wado", params=wado(spec, contentType="image/png", region="0,0,0.5,1",
                                                    annotation="patient", charset="utf-8", imageQuality="80"),
                        headers=web.headers())
    pixels = image(region)
    assert pixels.shape == (60, 30)
    assert np.unique(pixels[:, :20]).tolist() == [0] and np.unique(pixels[:, 20:]).tolist() == [128]


def test_wado_uri_multiframe(web: WebArchive, client: TestClient) -> None:
    hu = np.stack([np.full((16, 16), v, dtype=np.int32) for v in BANDS])
    spec = store_ct(web, hu)
    default = client.get(f"{BASE}/wado", params=wado(spec), headers=web.headers())
    assert default.headers["content-type"] == "application/dicom"  # multi-frame: the object
    assert pydicom.dcmread(io.BytesIO(default.content)).NumberOfFrames == 3
    third = client.get(f"{BASE}/wado", params=wado(spec, frameNumber="3"), headers=web.headers(**PNG_ACCEPT))
    assert third.headers["content-type"] == "image/png"
    assert np.unique(image(third)).tolist() == [255]
    assert client.get(f"{BASE}/wado", params=wado(spec, contentType="image/png", frameNumber="4"),
                      headers=web.headers()).status_code == 400


WADO_URI_ERRORS = [
    ({"requestType": "WADO-RS"}, 400),
    ({"requestType": "wado"}, 400),
    ({"studyUID": "1..2"}, 400),
    ({"anonymize": "yes"}, 400),
    ({"presentationUID": "1.2.3"}, 400),
    ({"windowCenter": "40"}, 400),
    ({"contentType": "image/png", "windowCenter": "40", "windowWidth": "0"}, 400),
    ({"contentType": "image/png", "rows": "0"}, 400),
    ({"contentType": "image/png", "region": "0,0,1.5,1"}, 400),
    ({"contentType": "image/png", "region": "0,0,1"}, 400),
    ({"contentType": "image/png", "imageQuality": "0"}, 400),
    ({"contentType": "image/png", "frameNumber": "0"}, 400),
    ({"contentType": "image/png", "transferSyntax": ExplicitVRLittleEndian}, 400),
    ({"contentType": "application/dicom", "rows": "10"}, 400),
    ({"contentType": "application/dicom", "frameNumber": "1"}, 400),
    ({"contentType": "text/html"}, 406),
    ({"contentType": "image/gif"}, 406),
    ({"objectUID": "1.2.3.4"}, 404),
]


def test_wado_uri_errors(web: WebArchive, client: TestClient) -> None:
    spec = store_ct(web, ct_pixels())
    for params, status in WADO_URI_ERRORS:
        response = client.get(f"{BASE}/wado", params={**wado(spec), **params}, headers=web.headers())
        assert response.status_code == status, (params, response.text)
        assert "reason" in response.json()


def test_wado_uri_missing_uid_and_accept_conflict(web: WebArchive, client: TestClient) -> None:
    spec = store_ct(web, ct_pixels())
    params = wado(spec)
    del params["seriesUID"]
    assert client.get(f"{BASE}/wado", params=params, headers=web.headers()).status_code == 400
    conflict = client.get(f"{BASE}/wado", params=wado(spec, contentType="image/jpeg"),
                          headers=web.headers(Accept="image/png"))
    assert conflict.status_code == 406
    dicom_only = client.get(f"{BASE}/wado", params=wado(spec), headers=web.headers(Accept="application/dicom"))
    assert dicom_only.headers["content-type"] == "application/dicom"


def test_wado_uri_scope_and_bearer_only(web: WebArchive, client: TestClient) -> None:
    spec = store_ct(web, ct_pixels(), site="b")
    params = wado(spec, contentType="application/dicom")
    assert client.get(f"{BASE}/wado", params=params, headers=web.headers(web.token_a)).status_code == 404
    assert client.get(f"{BASE}/wado", params=params, headers=web.headers(web.token_b)).status_code == 200
    assert client.get(f"{BASE}/wado", params={**params, "access_token": web.token_b}).status_code == 401
    with web.ctx.db.read() as conn:
        events = list_events(conn, action="wado-uri")
    assert [e.object_id for e in events if e.outcome == "success"] == [spec.study_uid]

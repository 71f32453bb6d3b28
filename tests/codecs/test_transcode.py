"""Transcoding PS3.10 objects between transfer syntaxes (coffre.codecs.transcode)."""

from __future__ import annotations

import tracemalloc
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

import factories
from coffre.codecs import (
    DEFAULT_MAX_DECODED_BYTES,
    LOSSY,
    TranscodeError,
    can_transcode,
    decode_frames,
    decoded_size,
    targets_for,
    transcode,
)
from coffre.dicom import transfer_syntaxes as tsx
from coffre.dicom.instance import parse_instance
from coffre.dicom.synthetic import IMPLEMENTATION_CLASS_UID, InstanceSpec, make_instance
from coffre.errors import CoffreError, InvalidInstance, TooLarge
from coffre.settings import LimitsSettings

LIMITS = LimitsSettings()
NATIVE_TARGETS = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
LOSSLESS_CODECS = [RLELossless, JPEG2000Lossless, JPEGLSLossless]

#: Elements a transcode may change: pixel data and its description, lossy flags.
PIXEL_RELATED = {
    0x00280004,  # PhotometricInterpretation
    0x00280006,  # PlanarConfiguration
    0x00282110,  # LossyImageCompression
    0x00282114,  # LossyImageCompressionMethod
    0x7FE00001,  # ExtendedOffsetTable
    0x7FE00002,  # ExtendedOffsetTableLengths
    0x7FE00010,  # PixelData
}

#: Offline files whose pixel data pydicom's plugins cannot decode either.
UNDECODABLE = {"JPEG-lossy.dcm"}


@pytest.fixture(autouse=True)
def _quiet_pydicom() -> Iterator[None]:
    """The reference readers (dcmread, pixel_array) warn about the odd test files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- helpers --------------------------------------------------------------------------


def _read(data: bytes) -> Dataset:
    return dcmread(BytesIO(data), force=False)


@cache
def _offline(name: str) -> Path | None:
    for path in factories.compressed_test_files():
        if path.name == name:
            return path
    return None


def _offline_params() -> list[Any]:
    return [
        pytest.param(name, id=name)
        for name in factories.COMPRESSED_TEST_FILE_NAMES
        if _offline(name) is not None
    ]


@cache
def _reference(name: str) -> np.ndarray:
    """pydicom's own decoding of an offline file (pylibjpeg plugin, RGB for YCbCr),
    with a frames axis."""
    path = _offline(name)
    assert path is not None
    ds = dcmread(path)
    ts = ds.file_meta.TransferSyntaxUID
    plugin = "pylibjpeg" if ts.is_compressed else ""
    arr = pixel_array(ds, decoding_plugin=plugin)
    return arr if int(ds.get("NumberOfFrames") or 1) > 1 else arr[np.newaxis]


def _parse_outcome(data: bytes) -> type[Exception] | None:
    try:
        parse_instance(data, LIMITS)
    except CoffreError as exc:
        return type(exc)
    return None


def _comparable(ds: Dataset) -> dict[int, Any]:
    """Data set values by tag, pixel-related elements left out."""
    return {
        int(tag): ds[tag].value
        for tag in ds.keys()
        if tag not in PIXEL_RELATED and tag.element != 0  # group lengths are dropped
    }


def _assert_meta(source: bytes, out: bytes, target: str) -> None:
    old, new = _read(source).file_meta, _read(out).file_meta
    assert new.TransferSyntaxUID == target
    assert new.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert new.ImplementationVersionName.startswith("COFFRE_")
    assert new.MediaStorageSOPClassUID == old.MediaStorageSOPClassUID
    assert new.MediaStorageSOPInstanceUID == old.MediaStorageSOPInstanceUID


def _assert_same_attributes(source: bytes, out: bytes) -> None:
    """Same elements and values; a private element written in implicit VR loses its VR
    (PS3.5 7.1.3: read back as UN or with pydicom's private dictionary VR), so only
    its presence is compared then."""
    old, new = _read(source), _read(out)
    assert set(_comparable(new)) == set(_comparable(old))
    untyped = {
        int(tag)
        for tag in new.keys()
        if tag.is_private and tag in old and new[tag].VR != old[tag].VR
    }
    typed_new = {k: v for k, v in _comparable(new).items() if k not in untyped}
    typed_old = {k: v for k, v in _comparable(old).items() if k not in untyped}
    assert typed_new == typed_old


@cache
def _synthetic(modality: str, ts: str, frames: int = 1) -> bytes:
    spec = InstanceSpec(modality=modality, transfer_syntax=ts, frames=frames, seed=3)
    return make_instance(spec)


@cache
def _synthetic_pixels(modality: str, frames: int = 1) -> np.ndarray:
    """The pixels as generated (explicit VR LE source), with a frames axis."""
    return decode_frames(_synthetic(modality, ExplicitVRLittleEndian, frames))


SYNTHETIC = [("CT", 1), ("MR", 1), ("US", 1), ("US", 3), ("MR", 2)]


# --- registry -------------------------------------------------------------------------


def test_pairs() -> None:
    assert can_transcode(JPEG2000Lossless, ExplicitVRLittleEndian)
    assert can_transcode(tsx.JPEG_BASELINE_8BIT, ImplicitVRLittleEndian)
    assert can_transcode(ExplicitVRLittleEndian, RLELossless)
    assert can_transcode(RLELossless, JPEG2000Lossless)
    assert can_transcode(tsx.JPEG_LOSSLESS_SV1, JPEGLSLossless)
    assert can_transcode(tsx.HTJ2K_LOSSLESS, ExplicitVRLittleEndian)
    assert can_transcode(ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)
    assert can_transcode(tsx.MPEG2_MPML, tsx.MPEG2_MPML)  # identity
    assert not can_transcode(tsx.JPEG_BASELINE_8BIT, JPEG2000Lossless)  # lossy source
    assert not can_transcode(JPEG2000, RLELossless)
    assert not can_transcode(ExplicitVRLittleEndian, tsx.JPEG_BASELINE_8BIT)  # no encoder
    assert not can_transcode(tsx.MPEG2_MPML, ExplicitVRLittleEndian)
    assert not can_transcode(tsx.HEVC_MP51, ImplicitVRLittleEndian)
    assert not can_transcode(ExplicitVRLittleEndian, "1.2.3.4")
    assert not can_transcode("1.2.3.4", "1.2.3.4")


def test_targets_for() -> None:
    explicit = targets_for(ExplicitVRLittleEndian)
    assert explicit[:3] == (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless)
    assert set(explicit) >= {RLELossless, JPEGLSLossless, JPEG2000, ExplicitVRBigEndian}
    jpeg = targets_for(tsx.JPEG_BASELINE_8BIT)
    assert jpeg[:3] == (tsx.JPEG_BASELINE_8BIT, ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert not set(jpeg) & {RLELossless, JPEG2000Lossless, JPEGLSLossless, JPEG2000}
    assert JPEG2000Lossless not in targets_for(JPEG2000Lossless)[1:]
    assert targets_for(tsx.HEVC_M10P51) == (tsx.HEVC_M10P51,)
    assert targets_for("1.2.3.4") == ()
    for source in tsx.BY_UID:
        for target in targets_for(source):
            assert can_transcode(source, target)


def test_identity_returns_the_bytes_untouched() -> None:
    data = _synthetic("CT", RLELossless)
    assert transcode(data, RLELossless, limits=LIMITS) is data


# --- offline reference files ---------------------------------------------------------


@pytest.mark.parametrize("target", NATIVE_TARGETS)
@pytest.mark.parametrize("name", _offline_params())
def test_offline_files_to_native(name: str, target: str) -> None:
    path = _offline(name)
    assert path is not None
    source = path.read_bytes()
    if name in UNDECODABLE:
        with pytest.raises(TranscodeError):
            transcode(source, target, limits=LIMITS)
        return
    out = transcode(source, target, limits=LIMITS)
    # validates exactly when the source does (some pydicom files lack Study UID...)
    assert _parse_outcome(out) == _parse_outcome(source)
    _assert_meta(source, out, target)
    _assert_same_attributes(source, out)
    got = decode_frames(out)
    assert np.array_equal(got, _reference(name))
    ds = _read(out)
    assert not ds["PixelData"].is_undefined_length
    if ds.SamplesPerPixel > 1:
        assert ds.PlanarConfiguration == 0
    source_ts = _read(source).file_meta.TransferSyntaxUID
    if source_ts in LOSSY:
        assert ds.LossyImageCompression == "01"


def test_jpeg_baseline_ycbcr_becomes_rgb() -> None:
    path = _offline("SC_rgb_jpeg_dcmtk.dcm")
    if path is None:
        pytest.skip("pydicom test file absent")  # pragma: no cover
    source = path.read_bytes()
    assert _read(source).PhotometricInterpretation == "YBR_FULL"
    ds = _read(transcode(source, ExplicitVRLittleEndian, limits=LIMITS))
    assert ds.PhotometricInterpretation == "RGB"
    assert ds.PlanarConfiguration == 0
    assert ds.LossyImageCompression == "01"


def test_lossy_flag_and_method_are_added() -> None:
    path = _offline("JPEGLSNearLossless_16.dcm")
    if path is None:
        pytest.skip("pydicom-data file absent")  # pragma: no cover
    source = path.read_bytes()
    assert "LossyImageCompression" not in _read(source)
    ds = _read(transcode(source, ExplicitVRLittleEndian, limits=LIMITS))
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_14495_1"


@pytest.mark.parametrize(
    ("name", "target"),
    [
        (name, target)
        for name in ("JPEG-LL.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_RLE.dcm")
        for target in (JPEG2000Lossless, JPEGLSLossless, RLELossless, JPEG2000)
        if factories.COMPRESSED_TEST_FILE_NAMES[name] != target
    ],
)
def test_lossless_compressed_to_compressed(name: str, target: str) -> None:
    path = _offline(name)
    if path is None:
        pytest.skip("pydicom test file absent")  # pragma: no cover
    source = path.read_bytes()
    out = transcode(source, target, limits=LIMITS)
    _assert_meta(source, out, target)
    _assert_same_attributes(source, out)
    assert _read(out)["PixelData"].is_undefined_length
    assert np.array_equal(decode_frames(out), _reference(name))


@pytest.mark.parametrize("target", [RLELossless, JPEG2000Lossless, JPEGLSLossless, JPEG2000])
def test_lossy_to_compressed_is_refused(target: str) -> None:
    path = _offline("SC_rgb_jpeg_dcmtk.dcm")
    if path is None:
        pytest.skip("pydicom test file absent")  # pragma: no cover
    with pytest.raises(TranscodeError, match="lossy"):
        transcode(path.read_bytes(), target, limits=LIMITS)


# --- synthetic instances ------------------------------------------------------------


@pytest.mark.parametrize("target", NATIVE_TARGETS)
@pytest.mark.parametrize("codec", LOSSLESS_CODECS)
@pytest.mark.parametrize(("modality", "frames"), SYNTHETIC)
def test_synthetic_compressed_to_native(
    modality: str, frames: int, codec: str, target: str
) -> None:
    source = _synthetic(modality, codec, frames)
    out = transcode(source, target, limits=LIMITS)
    parsed = parse_instance(out, LIMITS)
    assert parsed.transfer_syntax_uid == target
    assert len(parsed.frame_offsets) == frames
    _assert_meta(source, out, target)
    _assert_same_attributes(source, out)
    got = decode_frames(out)
    assert np.array_equal(got, decode_frames(source))
    assert np.array_equal(got, _synthetic_pixels(modality, frames))


@pytest.mark.parametrize("codec", [*LOSSLESS_CODECS, JPEG2000])
@pytest.mark.parametrize(("modality", "frames"), SYNTHETIC)
def test_native_round_trip_through_codec(modality: str, frames: int, codec: str) -> None:
    original = _synthetic(modality, ExplicitVRLittleEndian, frames)
    compressed = transcode(original, codec, limits=LIMITS)
    parsed = parse_instance(compressed, LIMITS)
    assert parsed.transfer_syntax_uid == codec
    assert len(parsed.frame_offsets) == frames
    _assert_meta(original, compressed, codec)
    back = transcode(compressed, ExplicitVRLittleEndian, limits=LIMITS)
    parse_instance(back, LIMITS)
    _assert_same_attributes(original, back)
    assert _read(back).get("LossyImageCompression", "00") == "00"
    assert np.array_equal(decode_frames(back), _synthetic_pixels(modality, frames))
    # the native pixel bytes themselves are identical
    assert _read(back).PixelData == _read(original).PixelData


NATIVE_ALL = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]


@pytest.mark.parametrize("target", NATIVE_ALL)
@pytest.mark.parametrize("source_ts", NATIVE_ALL)
@pytest.mark.parametrize("modality", ["CT", "US"])
def test_native_to_native(modality: str, source_ts: str, target: str) -> None:
    source = factories.make_instance(modality=modality, transfer_syntax=source_ts, frames=2)
    out = transcode(source, target, limits=LIMITS)
    if source_ts == target:
        assert out is source
        return
    assert parse_instance(out, LIMITS).transfer_syntax_uid == target
    _assert_meta(source, out, target)
    assert _comparable(_read(out)) == _comparable(_read(source))
    assert _read(out).PhotometricInterpretation == _read(source).PhotometricInterpretation
    assert np.array_equal(decode_frames(out), decode_frames(source))
    assert np.array_equal(pixel_array(_read(out)), pixel_array(_read(source)))


@pytest.mark.parametrize("codec", LOSSLESS_CODECS)
@pytest.mark.parametrize(
    "source_ts", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_any_native_source_to_codec(source_ts: str, codec: str) -> None:
    for modality in ("CT", "US"):
        source = factories.make_instance(modality=modality, transfer_syntax=source_ts, frames=2)
        out = transcode(source, codec, limits=LIMITS)
        assert parse_instance(out, LIMITS).transfer_syntax_uid == codec
        _assert_same_attributes(source, out)
        assert np.array_equal(decode_frames(out), decode_frames(source))


def test_elements_after_pixel_data_are_kept_in_order() -> None:
    """(FFFC,FFFC) Data Set Trailing Padding follows Pixel Data (PS3.10 7.2)."""
    padding = b"\0" * 6
    source = factories.make_instance(
        transfer_syntax=RLELossless, extra={"DataSetTrailingPadding": padding}
    )
    for target in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless):
        out = transcode(source, target, limits=LIMITS)
        parse_instance(out, LIMITS)
        assert out.endswith(padding)
        assert _read(out).DataSetTrailingPadding == padding
        assert np.array_equal(decode_frames(out), decode_frames(source))


def test_big_endian_words_are_swapped() -> None:
    """OW values other than Pixel Data follow the byte order too (PS3.5 7.3)."""
    lut = bytes(range(16))
    source = factories.make_instance(
        transfer_syntax=ExplicitVRLittleEndian, extra={"RedPaletteColorLookupTableData": lut}
    )
    big = transcode(source, ExplicitVRBigEndian, limits=LIMITS)
    raw = big[big.index(b"\x00\x28\x12\x01") :]
    assert raw[12:28] == bytes(b for i in range(0, 16, 2) for b in (lut[i + 1], lut[i]))
    back = transcode(big, ExplicitVRLittleEndian, limits=LIMITS)
    assert _read(back).RedPaletteColorLookupTableData == lut
    assert _read(back).PixelData == _read(source).PixelData


def test_no_pixel_data() -> None:
    source = factories.without("PixelData")
    out = transcode(source, RLELossless, limits=LIMITS)
    assert parse_instance(out, LIMITS).transfer_syntax_uid == RLELossless
    _assert_same_attributes(source, out)
    with pytest.raises(TranscodeError):
        decode_frames(source)


# --- impossible and hostile ---------------------------------------------------------


@pytest.mark.parametrize("video", [tsx.MPEG2_MPML, tsx.MPEG4_HP41, tsx.HEVC_MP51])
def test_video_cannot_be_decoded(video: str) -> None:
    data = factories.encapsulated_instance(
        [b"\x00\x00\x01\xb3" + b"\0" * 60], transfer_syntax=video
    )
    assert targets_for(video) == (video,)
    for target in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless):
        with pytest.raises(TranscodeError, match="video"):
            transcode(data, target, limits=LIMITS)
    with pytest.raises(TranscodeError):
        decode_frames(data)


def test_unknown_or_unencodable_target() -> None:
    data = _synthetic("CT", ExplicitVRLittleEndian)
    with pytest.raises(TranscodeError):
        transcode(data, "1.2.3.4", limits=LIMITS)
    with pytest.raises(TranscodeError):
        transcode(data, tsx.JPEG_BASELINE_8BIT, limits=LIMITS)
    with pytest.raises(TranscodeError):
        transcode(data, tsx.HTJ2K_LOSSLESS, limits=LIMITS)


def test_pixel_format_the_codec_refuses() -> None:
    """Possible per syntax, refused for this object: 32-bit samples in JPEG-LS."""
    ds = factories.make_dataset(modality="CT")
    pixels = ds.pixel_array.astype(np.uint32)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = pixels.tobytes()
    data = factories.encode(ds)
    with pytest.raises(TranscodeError, match="encoded"):
        transcode(data, JPEGLSLossless, limits=LIMITS)


def test_undecodable_pixels() -> None:
    data = factories.encapsulated_instance([b"not a jpeg 2000 code stream"])
    with pytest.raises(TranscodeError, match="decoded"):
        transcode(data, ExplicitVRLittleEndian, limits=LIMITS)


def test_declared_huge_frame_is_refused_before_allocating() -> None:
    source = _synthetic("CT", RLELossless)
    rows = factories.with_raw_value(source, 0x00280010, (65535).to_bytes(2, "little"))
    huge = factories.with_raw_value(rows, 0x00280011, (32770).to_bytes(2, "little"))
    assert decoded_size(_read(huge)) >= 4 * 1024**3
    tracemalloc.start()
    try:
        for target in (ExplicitVRLittleEndian, JPEG2000Lossless):
            with pytest.raises(TooLarge):
                transcode(huge, target, limits=LIMITS)
        with pytest.raises(TooLarge):
            decode_frames(huge)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2


def test_max_decoded_bytes_is_the_bound() -> None:
    source = _synthetic("CT", JPEG2000Lossless)  # 64 x 64 x 2 bytes
    with pytest.raises(TooLarge):
        transcode(source, ExplicitVRLittleEndian, limits=LIMITS, max_decoded_bytes=8191)
    transcode(source, ExplicitVRLittleEndian, limits=LIMITS, max_decoded_bytes=8192)
    small = LimitsSettings(max_decoded_bytes=8191)  # the setting is the default bound
    with pytest.raises(TooLarge):
        transcode(source, ExplicitVRLittleEndian, limits=small)
    with pytest.raises(TooLarge):
        decode_frames(source, limits=small)
    assert LimitsSettings().max_decoded_bytes == DEFAULT_MAX_DECODED_BYTES


def test_lying_pixel_length_is_refused_by_the_scanner() -> None:
    with pytest.raises(InvalidInstance):
        transcode(factories.huge_pixel_claim(), ImplicitVRLittleEndian, limits=LIMITS)


def test_missing_pixel_description() -> None:
    ds = factories.make_dataset(transfer_syntax=RLELossless)
    del ds.Rows
    with pytest.raises(InvalidInstance, match="Rows"):
        transcode(factories.encode(ds), ExplicitVRLittleEndian, limits=LIMITS)


# --- threads ------------------------------------------------------------------------


def test_concurrent_transcodes_agree_and_leave_warning_filters_alone() -> None:
    jobs = [
        (_synthetic(m, codec, f), target)
        for (m, f) in SYNTHETIC
        for codec in LOSSLESS_CODECS
        for target in (ExplicitVRLittleEndian, JPEG2000Lossless)
        if codec != target
    ]
    expected = [transcode(data, target, limits=LIMITS) for data, target in jobs]
    filters = list(warnings.filters)

    def run(job: tuple[bytes, str]) -> bytes:
        return transcode(job[0], job[1], limits=LIMITS)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, jobs))
    assert results == expected
    assert list(warnings.filters) == filters

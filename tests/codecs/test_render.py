"""The rendering pipeline (coffre.codecs.render): PS3.3 C.11 grayscale pipeline,
colour, viewport, encoding, bounds. Pure: arrays and PS3.10 bytes, no archive."""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pytest
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels.processing import convert_color_space
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

import factories
from coffre.codecs import transcode
from coffre.codecs.render import (
    JPEG,
    PNG,
    Lut,
    Presentation,
    Region,
    RelativeRegion,
    RenderOptions,
    Viewport,
    VoiFunction,
    Window,
    apply_window,
    decode_frame,
    frame_count,
    output_size,
    presentation_from_dataset,
    render,
    render_instance,
    to_display,
)
from coffre.dicom.synthetic import InstanceSpec, encode, make_dataset, make_instance
from coffre.errors import BadRequest, NotAcceptable, TooLarge
from coffre.settings import LimitsSettings

LIMITS = LimitsSettings()


def png_array(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def linear(x: float, c: float, w: float) -> int:
    """PS3.3 C.11.2.1.2.1, written out independently of the implementation."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0
    if x > c - 0.5 + (w - 1) / 2:
        return 255
    return round(((x - (c - 0.5)) / (w - 1) + 0.5) * 255)


# --- VOI LUT functions ------------------------------------------------------------------


def test_linear_window_matches_ps3_3_formula() -> None:
    values = np.array([-1000, -160, -159, 40, 238, 239, 240, 1000], dtype=np.float64)
    out = np.rint(apply_window(values, Window(40, 400))).astype(int).tolist()
    assert out == [linear(v, 40, 400) for v in values]
    assert out == [0, 0, 1, 128, 254, 255, 255, 255]


def test_linear_exact_and_sigmoid() -> None:
    values = np.array([-160.0, 40.0, 240.0, 241.0])
    exact = apply_window(values, Window(40, 400, VoiFunction.LINEAR_EXACT))
    assert exact.tolist() == [0.0, 127.5, 255.0, 255.0]
    sigmoid = apply_window(np.array([40.0, 240.0, -1e9]), Window(40, 400, VoiFunction.SIGMOID))
    assert sigmoid[0] == pytest.approx(127.5)
    assert sigmoid[1] == pytest.approx(255 / (1 + np.exp(-2)))
    assert sigmoid[2] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("width", "function"),
    [(0.5, VoiFunction.LINEAR), (0, VoiFunction.LINEAR_EXACT), (-1, VoiFunction.SIGMOID), (float("nan"), VoiFunction.LINEAR)],
)
def test_window_width_rules(width: float, function: VoiFunction) -> None:
    with pytest.raises(BadRequest):
        Window(40, width, function)


def test_linear_exact_accepts_width_below_one() -> None:
    assert Window(0, 0.5, VoiFunction.LINEAR_EXACT).width == 0.5


# --- grayscale pipeline -------------------------------------------------------------------


def test_rescale_then_window_then_monochrome1_inversion() -> None:
    stored = np.array([[0, 520, 1000]], dtype=np.uint16)  # HU = 2 * stored - 1000
    p = Presentation(rows=1, columns=3, rescale_slope=2, rescale_intercept=-1000,
                     windows=(Window(40, 400),))
    assert to_display(stored, p).tolist() == [[0, 128, 255]]
    inverted = to_display(stored, dataclasses.replace(p, photometric="MONOCHROME1"))
    assert inverted.tolist() == [[255, 127, 0]]


def test_window_parameter_overrides_the_object() -> None:
    stored = np.array([[0, 100, 200]], dtype=np.uint16)
    p = Presentation(rows=1, columns=3, windows=(Window(1000, 10),))
    assert to_display(stored, p).tolist() == [[0, 0, 0]]
    assert to_display(stored, p, Window(100, 200)).tolist() == [[0, 128, 255]]


def test_without_window_the_value_range_is_stretched() -> None:
    stored = np.array([[100, 150, 200]], dtype=np.uint16)
    assert to_display(stored, Presentation(rows=1, columns=3)).tolist() == [[0, 128, 255]]
    flat = np.full((2, 2), 7, dtype=np.uint16)
    assert to_display(flat, Presentation(rows=2, columns=2)).tolist() == [[0, 0], [0, 0]]


def test_modality_and_voi_lut_sequences_from_the_dataset() -> None:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 1, 4, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, 0
    modality = Dataset()
    modality.LUTDescriptor = [4, 10, 16]  # 4 entries, first mapped value 10
    modality.LUTData = [0, 1000, 2000, 3000]
    modality.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([modality])
    voi = Dataset()
    voi.LUTDescriptor = [4, 0, 8]  # input 0..3 000 step: only 4 entries, clamped
    voi.LUTData = [0, 51, 102, 255]
    ds.VOILUTSequence = Sequence([voi])
    p = presentation_from_dataset(ds)
    assert p.modality_lut is not None and p.modality_lut.first_mapped == 10
    assert p.voi_lut is not None and p.voi_lut.bits == 8
    stored = np.array([[10, 11, 12, 99]], dtype=np.uint16)  # -> 0, 1000, 2000, 3000
    # modality values 0 -> voi[0], 1000 and more -> voi[3] (clamped)
    assert to_display(stored, p).tolist() == [[0, 255, 255, 255]]
    small = np.array([[9, 10]], dtype=np.uint16)  # below the first mapped value: entry 0
    assert to_display(small, p).tolist() == [[0, 0]]


def test_lut_is_clamped_and_offset() -> None:
    lut = Lut(first_mapped=-2, data=np.array([5, 6, 7]), bits=8)
    assert lut.apply(np.array([-5, -2, -1, 0, 9])).tolist() == [5, 5, 6, 7, 7]


def test_enhanced_multiframe_per_frame_groups() -> None:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1, 2, 2
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    shared_transform = Dataset()
    shared_transform.RescaleSlope, shared_transform.RescaleIntercept = 1, -1024
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([shared_transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for center, width in ((40, 400), (500, 2000)):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([voi])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    first, second = presentation_from_dataset(ds, 0), presentation_from_dataset(ds, 1)
    assert first.rescale_intercept == second.rescale_intercept == -1024
    assert first.windows == (Window(40, 400),)
    assert second.windows == (Window(500, 2000),)


def test_malformed_display_attributes_are_ignored() -> None:
    ds = make_dataset(InstanceSpec(modality="CT"))
    ds[0x00281050] = RawDataElement(Tag(0x00281050), "DS", 4, b"abc ", 0, False, True)
    ds[0x00281053] = RawDataElement(Tag(0x00281053), "DS", 2, b"x ", 0, False, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = presentation_from_dataset(ds)
    assert p.windows == ()
    assert p.rescale_slope == 1.0 and p.rescale_intercept == -1024


# --- colour -------------------------------------------------------------------------------


def test_rgb_passes_through_and_ybr_becomes_rgb() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    p = Presentation(rows=8, columns=8, samples_per_pixel=3, photometric="RGB")
    assert np.array_equal(to_display(rgb, p), rgb)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    back = to_display(ybr, Presentation(rows=8, columns=8, samples_per_pixel=3, photometric="YBR_FULL"))
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 2


def test_rgb_with_more_than_8_bits_is_scaled() -> None:
    rgb16 = np.array([[[0, 2048, 4095]]], dtype=np.uint16)
    p = Presentation(rows=1, columns=1, samples_per_pixel=3, photometric="RGB", bits_stored=12)
    assert to_display(rgb16, p).tolist() == [[[0, 128, 255]]]


def test_palette_colour_is_looked_up() -> None:
    red = Lut(0, np.array([0, 255 * 257]), 16)
    green = Lut(0, np.array([255 * 257, 0]), 16)
    blue = Lut(0, np.array([0, 0]), 16)
    p = Presentation(rows=1, columns=2, photometric="PALETTE COLOR", palette=(red, green, blue))
    out = to_display(np.array([[0, 1]], dtype=np.uint8), p)
    assert out.tolist() == [[[0, 255, 0], [255, 0, 0]]]


def test_unknown_photometric_is_not_acceptable() -> None:
    p = Presentation(rows=1, columns=1, samples_per_pixel=4, photometric="CMYK")
    with pytest.raises(NotAcceptable):
        to_display(np.zeros((1, 1, 4), dtype=np.uint8), p)


# --- viewport, region, encoding --------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "viewport", "expected"),
    [
        ((64, 64), Viewport(32, 16), (16, 16)),
        ((64, 32), Viewport(100, 100), (100, 50)),
        ((64, 32), Viewport(None, 20), (40, 20)),
        ((64, 32), Viewport(10, None), (10, 5)),
        ((3, 1000), Viewport(128, 128), (1, 128)),
        ((64, 64), None, (64, 64)),
    ],
)
def test_output_size_keeps_the_aspect_ratio(
    size: tuple[int, int], viewport: Viewport | None, expected: tuple[int, int]
) -> None:
    assert output_size(*size, viewport) == expected


def test_region_crop_and_flip() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    p = Presentation(rows=3, columns=4, windows=(Window(127.5, 256, VoiFunction.LINEAR_EXACT),))

    def rendered(region: Region | RelativeRegion) -> list[list[int]]:
        out = render(pixels, p, RenderOptions(PNG, viewport=Viewport(None, None, region)), max_bytes=10**6)
        result: list[list[int]] = png_array(out).tolist()
        return result

    assert rendered(Region(1, 1, 2, 2)) == [[5, 6], [9, 10]]
    assert rendered(Region(1, 1, None, None)) == [[5, 6, 7], [9, 10, 11]]
    assert rendered(Region(1, 0, -2, 1)) == [[2, 1]]  # columns 1 and 2, mirrored
    assert rendered(Region(0, 0, -4, -3)) == [[11, 10, 9, 8], [7, 6, 5, 4], [3, 2, 1, 0]]
    assert rendered(RelativeRegion(0.0, 0.0, 0.5, 1 / 3)) == [[0, 1]]
    for bad in (Region(4, 0), Region(0, 0, 5, 1), Region(1, 1, 0, 1), Region(3, 0, -2, 1)):
        with pytest.raises(BadRequest):
            rendered(bad)
    with pytest.raises(BadRequest):
        RelativeRegion(0.5, 0, 0.4, 1)


def test_jpeg_quality_changes_size_and_png_is_lossless() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(128, 128), dtype=np.uint16)
    p = Presentation(rows=128, columns=128, bits_stored=12, windows=(Window(2048, 4096),))
    low = render(pixels, p, RenderOptions(JPEG, quality=10), max_bytes=10**7)
    high = render(pixels, p, RenderOptions(JPEG, quality=95), max_bytes=10**7)
    assert low[:2] == high[:2] == b"\xff\xd8"
    assert len(low) < len(high) / 2
    png = render(pixels, p, RenderOptions(PNG), max_bytes=10**7)
    assert np.array_equal(png_array(png), to_display(pixels, p))


@pytest.mark.parametrize("quality", [0, 101])
def test_quality_bounds(quality: int) -> None:
    with pytest.raises(BadRequest):
        RenderOptions(JPEG, quality=quality)


def test_only_jpeg_and_png() -> None:
    with pytest.raises(NotAcceptable):
        RenderOptions("image/gif")


# --- whole objects ------------------------------------------------------------------------


def test_output_and_decoded_sizes_are_bounded() -> None:
    data = make_instance(InstanceSpec(rows=64, columns=64))
    with pytest.raises(TooLarge):
        decode_frame(data, 0, limits=LimitsSettings(max_decoded_bytes=64 * 64 * 4 - 1))
    pixels, p = decode_frame(data, 0, limits=LimitsSettings(max_decoded_bytes=64 * 64 * 4))
    with pytest.raises(TooLarge):
        render(pixels, p, RenderOptions(viewport=Viewport(1000, 1000)), max_bytes=1000 * 1000 - 1)


def test_frames_are_chosen_and_checked() -> None:
    data = make_instance(InstanceSpec(frames=3, seed=4))
    assert frame_count(data, limits=LIMITS) == 3
    whole = make_dataset(InstanceSpec(frames=3, seed=4)).pixel_array
    for index in range(3):
        pixels, p = decode_frame(data, index, limits=LIMITS)
        assert np.array_equal(pixels, whole[index])
        assert p.number_of_frames == 3
    for index in (-1, 3):
        with pytest.raises(BadRequest):
            decode_frame(data, index, limits=LIMITS)


def test_object_without_pixels_is_not_acceptable() -> None:
    ds = make_dataset(InstanceSpec())
    del ds.PixelData
    data = encode(ds)
    assert frame_count(data, limits=LIMITS) == 0
    with pytest.raises(NotAcceptable):
        decode_frame(data, 0, limits=LIMITS)


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"]
)
@pytest.mark.parametrize("modality", ["CT", "CR", "US"])
def test_compressed_sources_render_like_uncompressed(syntax: str, modality: str) -> None:
    native = make_instance(InstanceSpec(modality=modality, seed=2, frames=2))
    compressed = make_instance(InstanceSpec(modality=modality, seed=2, frames=2, transfer_syntax=syntax))
    for index in (0, 1):
        a = render_instance(native, index, RenderOptions(PNG), limits=LIMITS)
        b = render_instance(compressed, index, RenderOptions(PNG), limits=LIMITS)
        assert np.array_equal(png_array(a), png_array(b))


def test_real_compressed_files_render_like_their_decompressed_copy() -> None:
    names = {"JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb_jpeg_gdcm.dcm",
             "MR_small_jpeg_ls_lossless.dcm", "US1_J2KR.dcm", "SC_rgb_rle.dcm", "image_dfl.dcm"}
    paths = [p for p in factories.compressed_test_files() if p.name in names]
    assert len(paths) == len(names)
    for path in paths:
        data = path.read_bytes()
        native = transcode(data, ExplicitVRLittleEndian, limits=LIMITS)
        a = png_array(render_instance(data, 0, RenderOptions(PNG), limits=LIMITS))
        b = png_array(render_instance(native, 0, RenderOptions(PNG), limits=LIMITS))
        assert np.array_equal(a, b), path.name


def test_native_ybr_full_object_renders_in_rgb() -> None:
    ds = make_dataset(InstanceSpec(modality="US", seed=5))
    rgb = ds.pixel_array.copy()
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    out = png_array(render_instance(encode(ds), 0, RenderOptions(PNG), limits=LIMITS))
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 2

"""The bounded element scanner (coffre.dicom.part10) and frame byte ranges."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

import factories
from coffre.dicom import part10
from coffre.errors import InvalidInstance, TooDeeplyNested, TooLarge, UnsupportedTransferSyntax
from coffre.settings import LimitsSettings

from . import un_sequences

LIMITS = LimitsSettings()
NATIVE = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


def _read(data: bytes):  # type: ignore[no-untyped-def]
    return dcmread(BytesIO(data))


# --- valid files ----------------------------------------------------------------------


def test_meta_header_is_parsed() -> None:
    ds = factories.make_dataset()
    scan = part10.scan(factories.encode(ds), LIMITS)
    assert scan.transfer_syntax_uid == ExplicitVRLittleEndian
    assert scan.media_storage_sop_class_uid == ds.SOPClassUID
    assert scan.media_storage_sop_instance_uid == ds.SOPInstanceUID
    assert not scan.deflated
    assert scan.element_count >= 40


@pytest.mark.parametrize("ts", NATIVE)
@pytest.mark.parametrize(("modality", "frames"), [("CT", 1), ("CT", 3), ("US", 2), ("MR", 1)])
def test_native_frame_offsets_match_pixel_array(ts: str, modality: str, frames: int) -> None:
    data = factories.make_instance(modality=modality, frames=frames, transfer_syntax=ts)
    scan = part10.scan(data, LIMITS)
    pixel = scan.pixel_data
    assert pixel is not None and not pixel.encapsulated
    ds = _read(data)
    ranges = part10.native_frames(
        pixel,
        rows=ds.Rows,
        columns=ds.Columns,
        samples_per_pixel=ds.SamplesPerPixel,
        bits_allocated=ds.BitsAllocated,
        number_of_frames=frames,
    )
    assert len(ranges) == frames
    array = ds.pixel_array
    if frames == 1:
        array = array[np.newaxis]
    order = ">" if ts == ExplicitVRBigEndian else "<"
    for (offset, length), expected in zip(ranges, array, strict=True):
        stored = np.frombuffer(data[offset : offset + length], expected.dtype.newbyteorder(order))
        assert stored.size == expected.size
        assert np.array_equal(stored.reshape(expected.shape), expected)


def test_native_frames_bit_packed() -> None:
    pixel = part10.PixelElement(
        tag=part10.PIXEL_DATA, vr="OB", element_offset=0, element_end=22, value_offset=12,
        value_length=10, encapsulated=False, basic_offset_table=None, fragments=(),
    )  # fmt: skip
    # 5x5 one-bit frames: 25 bits each, frames share bytes 3 and 6 (PS3.5 8.1.1)
    ranges = part10.native_frames(
        pixel, rows=5, columns=5, samples_per_pixel=1, bits_allocated=1, number_of_frames=3
    )
    assert ranges == ((12, 4), (15, 4), (18, 4))
    with pytest.raises(InvalidInstance, match="shorter than declared"):
        part10.native_frames(
            pixel, rows=5, columns=5, samples_per_pixel=1, bits_allocated=1, number_of_frames=4
        )


def test_native_frames_reject_odd_bits_allocated() -> None:
    data = factories.make_instance()
    pixel = part10.scan(data, LIMITS).pixel_data
    assert pixel is not None
    with pytest.raises(InvalidInstance, match="BitsAllocated"):
        part10.native_frames(
            pixel, rows=64, columns=64, samples_per_pixel=1, bits_allocated=12, number_of_frames=1
        )


def test_all_compressed_reference_files_scan() -> None:
    paths = factories.compressed_test_files()
    syntaxes = {factories.COMPRESSED_TEST_FILE_NAMES[p.name] for p in paths}
    # pydicom ships these offline; pydicom-data adds more
    assert len(paths) >= 10
    assert {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99"} <= syntaxes
    for path in paths:
        data = path.read_bytes()
        scan = part10.scan(data, LIMITS)
        assert scan.transfer_syntax_uid == factories.COMPRESSED_TEST_FILE_NAMES[path.name]
        assert scan.pixel_data is not None, path.name


def _reference_frames(path: Path) -> list[bytes]:
    ds = dcmread(path)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(ds.PixelData, number_of_frames=count))


@pytest.mark.parametrize(
    "path",
    [p for p in factories.compressed_test_files() if p.name != "image_dfl.dcm"],
    ids=lambda p: p.name,
)
def test_encapsulated_frames_match_pydicom(path: Path) -> None:
    data = path.read_bytes()
    scan = part10.scan(data, LIMITS)
    pixel = scan.pixel_data
    assert pixel is not None and pixel.encapsulated
    expected = _reference_frames(path)
    ranges, notes = part10.encapsulated_frames(data, pixel, number_of_frames=len(expected))
    assert notes == ()
    assert [part10.read_frame(data, r) for r in ranges] == expected


@pytest.mark.parametrize("ts", [JPEG2000Lossless, RLELossless, JPEGLSLossless])
def test_multiframe_encoded_by_pydicom(ts: str) -> None:
    data = factories.make_instance(modality="CT", frames=4, transfer_syntax=ts)
    scan = part10.scan(data, LIMITS)
    pixel = scan.pixel_data
    assert pixel is not None and pixel.encapsulated and len(pixel.fragments) == 4
    ranges, _ = part10.encapsulated_frames(data, pixel, number_of_frames=4)
    ds = _read(data)
    expected = list(generate_frames(ds.PixelData, number_of_frames=4))
    assert [data[o : o + n] for o, n in ranges] == expected


def test_multi_fragment_frames_with_basic_offset_table() -> None:
    frames = [bytes([i]) * 1000 for i in range(1, 4)]
    data = factories.encapsulated_instance(frames, fragments_per_frame=3)
    pixel = part10.scan(data, LIMITS).pixel_data
    assert pixel is not None and len(pixel.fragments) == 9
    assert pixel.basic_offset_table is not None and pixel.basic_offset_table.length == 12
    ranges, notes = part10.encapsulated_frames(data, pixel, number_of_frames=3)
    assert notes == ()
    assert [part10.read_frame(data, r) for r in ranges] == frames
    # a multi-fragment frame is a run of whole items
    assert all(data[o : o + 4] == b"\xfe\xff\x00\xe0" for o, _ in ranges)


def test_multi_fragment_frames_found_by_markers_without_offset_table() -> None:
    frames = [b"\xff\xd8" + bytes([i]) * 998 + b"\xff\xd9" for i in range(1, 4)]
    data = factories.encapsulated_instance(
        frames,
        fragments_per_frame=2,
        basic_offset_table=False,
        transfer_syntax="1.2.840.10008.1.2.4.50",
    )
    pixel = part10.scan(data, LIMITS).pixel_data
    assert pixel is not None and pixel.basic_offset_table is not None
    assert pixel.basic_offset_table.length == 0
    ranges, notes = part10.encapsulated_frames(data, pixel, number_of_frames=3)
    assert notes == ()
    assert [part10.read_frame(data, r) for r in ranges] == frames


def test_undeterminable_frames_give_a_warning_not_a_guess() -> None:
    frames = [bytes([i]) * 100 for i in range(1, 4)]
    data = factories.encapsulated_instance(frames, fragments_per_frame=2, basic_offset_table=False)
    pixel = part10.scan(data, LIMITS).pixel_data
    assert pixel is not None
    ranges, notes = part10.encapsulated_frames(data, pixel, number_of_frames=3)
    assert ranges == ()
    assert any("undetermined" in n for n in notes)


def test_single_frame_of_several_fragments_and_video() -> None:
    frame = b"\x00\x01" * 700
    data = factories.encapsulated_instance([frame], fragments_per_frame=3)
    pixel = part10.scan(data, LIMITS).pixel_data
    assert pixel is not None
    ranges, _ = part10.encapsulated_frames(data, pixel, number_of_frames=1)
    assert len(ranges) == 1 and part10.read_frame(data, ranges[0]) == frame
    # video: one stream whatever NumberOfFrames says
    ranges, _ = part10.encapsulated_frames(data, pixel, number_of_frames=30, video=True)
    assert len(ranges) == 1 and part10.read_frame(data, ranges[0]) == frame


def test_extended_offset_table() -> None:
    frames = [bytes([i]) * 50 for i in range(1, 4)]
    data = factories.encapsulated_instance(frames, basic_offset_table=False)
    pixel = part10.scan(data, LIMITS).pixel_data
    assert pixel is not None
    rel = [f.item_offset - pixel.fragments[0].item_offset for f in pixel.fragments]
    ranges, notes = part10.encapsulated_frames(
        data, pixel, number_of_frames=3, extended_offsets=tuple(rel),
        extended_lengths=(50, 50, 50),
    )  # fmt: skip
    assert notes == ()
    assert [data[o : o + n] for o, n in ranges] == frames
    ranges, notes = part10.encapsulated_frames(
        data, pixel, number_of_frames=3, extended_offsets=(0, 3, 7), extended_lengths=(50,) * 3
    )
    assert "ExtendedOffsetTable" in notes[0]
    assert [data[o : o + n] for o, n in ranges] == frames  # fell back to one per fragment


def test_fewer_fragments_than_frames() -> None:
    data = factories.encapsulated_instance([b"\x01" * 10, b"\x02" * 10], basic_offset_table=False)
    pixel = part10.scan(data, LIMITS).pixel_data
    assert pixel is not None
    with pytest.raises(InvalidInstance, match="fewer fragments"):
        part10.encapsulated_frames(data, pixel, number_of_frames=3)


def test_dataset_without_pixels_cuts_exactly_the_pixel_element() -> None:
    data = factories.make_instance(frames=2)
    scan = part10.scan(data, LIMITS)
    rest = scan.dataset_without_pixels()
    pixel = scan.pixel_data
    assert pixel is not None
    assert len(rest) == len(data) - scan.dataset_offset - (pixel.element_end - pixel.element_offset)
    assert struct.pack("<HH", 0x7FE0, 0x0010) not in rest


def test_deflated_file_is_inflated_within_bounds() -> None:
    ds = factories.make_dataset()
    data = factories.encode(ds, DeflatedExplicitVRLittleEndian)
    scan = part10.scan(data, LIMITS)
    assert scan.deflated and scan.dataset_offset == 0
    plain = factories.encode(ds, ExplicitVRLittleEndian)
    assert scan.buffer == plain[part10.scan(plain, LIMITS).dataset_offset :]
    pixel = scan.pixel_data
    assert pixel is not None
    assert scan.buffer[pixel.value_offset : pixel.value_offset + pixel.value_length] == ds.PixelData


def test_sequences_up_to_the_depth_bound_are_accepted() -> None:
    part10.scan(factories.deeply_nested(LIMITS.max_sequence_depth), LIMITS)
    with pytest.raises(TooDeeplyNested):
        part10.scan(factories.deeply_nested(LIMITS.max_sequence_depth + 1), LIMITS)


# --- hostile input --------------------------------------------------------------------


def test_not_part10() -> None:
    data = factories.make_instance()
    with pytest.raises(InvalidInstance, match="DICM"):
        part10.scan(data[132:], LIMITS)
    with pytest.raises(InvalidInstance, match="DICM"):
        part10.scan(b"", LIMITS)


def test_meta_without_transfer_syntax() -> None:
    data = factories.make_instance()
    needle = struct.pack("<HH", 0x0002, 0x0010) + b"UI"
    with pytest.raises(InvalidInstance, match="TransferSyntaxUID"):
        part10.scan(data.replace(needle, struct.pack("<HH", 0x0002, 0x0011) + b"UI"), LIMITS)


def test_unaccepted_transfer_syntax() -> None:
    data = factories.make_instance()
    bad = data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.9\0", 1)
    assert bad != data
    with pytest.raises(UnsupportedTransferSyntax):
        part10.scan(bad, LIMITS)


@pytest.mark.parametrize("keep", [0, 140, 300, 700, 1200, 5000])
def test_truncated(keep: int) -> None:
    data = factories.make_instance()
    with pytest.raises(InvalidInstance):
        part10.scan(factories.truncated(data, 132 + keep if keep else 100), LIMITS)


def test_lying_length() -> None:
    data = factories.lying_length(factories.make_instance())
    with pytest.raises(InvalidInstance, match=r"element \(0010,0010\) length exceeds the data"):
        part10.scan(data, LIMITS)


def test_four_gigabytes_declared_over_a_hundred_bytes() -> None:
    data = factories.huge_pixel_claim(factories.make_instance(), declared=0xFFFFFFF0, keep=100)
    with pytest.raises(InvalidInstance, match=r"\(7FE0,0010\) length exceeds the data"):
        part10.scan(data, LIMITS)


def test_deep_nesting_raises_without_recursion() -> None:
    data = factories.deeply_nested(5000)
    # the walk is iterative: 5000 levels are fine when allowed, and no RecursionError
    part10.scan(data, LimitsSettings(max_sequence_depth=5000))
    with pytest.raises(TooDeeplyNested):
        part10.scan(data, LimitsSettings(max_sequence_depth=4999))
    with pytest.raises(TooDeeplyNested):
        part10.scan(factories.deeply_nested(200), LIMITS)


def test_unterminated_sequence() -> None:
    data = factories.deeply_nested(3)
    closing = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    cut = data.rindex(closing)
    # drop the pixel data and everything after the last sequence delimiter
    with pytest.raises(InvalidInstance, match=r"not terminated|truncated"):
        part10.scan(data[:cut], LIMITS)


def test_undefined_length_on_a_plain_element() -> None:
    data = factories.make_instance()
    pos = data.index(struct.pack("<HH", 0x7FE0, 0x0010) + b"OW")
    patched = bytearray(data)
    patched[pos : pos + 4] = struct.pack("<HH", 0x0099, 0x1010)  # private OW, undefined
    struct.pack_into("<I", patched, pos + 8, 0xFFFFFFFF)
    with pytest.raises(InvalidInstance, match=r"\(0099,1010\) has an undefined length"):
        part10.scan(bytes(patched), LIMITS)


def test_invalid_vr() -> None:
    data = factories.make_instance()
    needle = struct.pack("<HH", 0x0010, 0x0010) + b"PN"
    bad = data.replace(needle, needle[:4] + b"ZZ")
    with pytest.raises(InvalidInstance, match="invalid VR"):
        part10.scan(bad, LIMITS)


def test_element_larger_than_bound() -> None:
    data = factories.make_instance(extra={"ImageComments": "x" * 3000})
    part10.scan(data, LIMITS)
    with pytest.raises(TooLarge, match=r"\(0020,4000\)"):
        part10.scan(data, LimitsSettings(max_element_bytes=2000))
    # pixel data is not bounded by max_element_bytes
    part10.scan(factories.make_instance(), LimitsSettings(max_element_bytes=2000))


def test_object_larger_than_bound() -> None:
    data = factories.make_instance()
    with pytest.raises(TooLarge):
        part10.scan(data, LimitsSettings(max_object_bytes=len(data) - 1))


def test_deflate_bomb_stops_at_the_bound() -> None:
    import tracemalloc

    bomb = factories.deflate_bomb(1 << 30)  # 1 GiB inflated from ~1 MB
    assert len(bomb) < 2 * 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match="max_inflated_bytes"):
            part10.scan(bomb, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024


def test_deflate_bomb_of_small_elements_stops_at_the_bound() -> None:
    # a sequence of 100 million empty items: no large element for the header walk to see
    bomb = factories.deflate_bomb(800_000_000, shape="items")
    assert len(bomb) < 2 * 1024 * 1024
    with pytest.raises(TooLarge, match="max_inflated_bytes"):
        part10.scan(bomb, LimitsSettings(max_inflated_bytes=4 * 1024 * 1024))
    # the same shape, small: a valid file
    scan = part10.scan(factories.deflate_bomb(100_000, shape="items"), LIMITS)
    assert scan.element_count > 10_000


def test_truncated_deflate_stream() -> None:
    data = factories.encode(factories.make_dataset(), DeflatedExplicitVRLittleEndian)
    with pytest.raises(InvalidInstance, match="deflate"):
        part10.scan(data[:-200], LIMITS)
    with pytest.raises(InvalidInstance, match="deflate"):
        part10.scan(data[:400] + b"\xff" * 100, LIMITS)


# --- UN of undefined length (PS3.5 6.2.2) ---------------------------------------------

UN_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
]


@pytest.mark.parametrize("ts", UN_SYNTAXES)
def test_un_of_undefined_length_is_walked_as_an_implicit_vr_sequence(ts: str) -> None:
    plain = part10.scan(factories.make_instance(transfer_syntax=ts), LIMITS)
    data = un_sequences.with_un(un_sequences.un_value(), transfer_syntax=ts)
    scan = part10.scan(data, LIMITS)
    # every item and nested element was walked, not skipped as an opaque value
    assert scan.element_count == plain.element_count + un_sequences.UN_ELEMENT_COUNT
    pixel, before = scan.pixel_data, plain.pixel_data
    assert pixel is not None and before is not None
    # the pixel data after it is still found, at the right place
    got = scan.buffer[pixel.value_offset : pixel.value_offset + pixel.value_length]
    assert got == plain.buffer[before.value_offset : before.value_offset + before.value_length]
    assert pixel.encapsulated == before.encapsulated
    assert len(pixel.fragments) == len(before.fragments)


def test_un_without_sequence_delimiter_is_truncated() -> None:
    data = un_sequences.with_un(un_sequences.un_value(terminated=False), pixels=False)
    with pytest.raises(InvalidInstance, match=r"\(0099,1010\) is not terminated \(truncated\)"):
        part10.scan(data, LIMITS)


def test_un_cut_anywhere_is_refused() -> None:
    data = un_sequences.with_un(un_sequences.un_value(), pixels=False)
    start = data.index(struct.pack("<HH", 0x0099, 0x1010) + b"UN")
    part10.scan(data, LIMITS)
    for cut in range(start + 1, len(data)):
        with pytest.raises(InvalidInstance, match=r"truncated|exceeds the data"):
            part10.scan(data[:cut], LIMITS)


def test_un_items_count_towards_max_sequence_depth() -> None:
    depth = LIMITS.max_sequence_depth
    part10.scan(un_sequences.with_un(un_sequences.deep_un_value(depth)), LIMITS)
    with pytest.raises(TooDeeplyNested, match="max_sequence_depth"):
        part10.scan(un_sequences.with_un(un_sequences.deep_un_value(depth + 1)), LIMITS)
    # inside a sequence, the UN adds to the depth of its container
    inside = factories.deeply_nested(depth - 1)
    needle = b"\xfe\xff\x00\xe0\xff\xff\xff\xff\xfe\xff\x0d\xe0"  # innermost item, empty
    pos = inside.index(needle) + 8
    un = struct.pack("<HH2s2xI", 0x0099, 0x1010, b"UN", 0xFFFFFFFF)
    part10.scan(inside[:pos] + un + un_sequences.SEQUENCE_END + inside[pos:], LIMITS)
    nested = un + un_sequences.deep_un_value(2)
    with pytest.raises(TooDeeplyNested):
        part10.scan(inside[:pos] + nested + inside[pos:], LIMITS)


def test_un_nesting_is_walked_without_recursion() -> None:
    data = un_sequences.with_un(un_sequences.deep_un_value(5000))
    part10.scan(data, LimitsSettings(max_sequence_depth=5000))
    with pytest.raises(TooDeeplyNested):
        part10.scan(data, LimitsSettings(max_sequence_depth=4999))


def test_lengths_inside_un_stay_within_the_data() -> None:
    implicit, item = un_sequences.implicit, un_sequences.item
    end = un_sequences.SEQUENCE_END
    # an item longer than what is left
    lying_item = item(implicit(0x00080100, b"CODE01"), length=0x7FFFFFF0) + end
    with pytest.raises(InvalidInstance, match=r"item in \(0099,1010\) length exceeds the data"):
        part10.scan(un_sequences.with_un(lying_item), LIMITS)
    # an element longer than its item
    lying_element = item(implicit(0x00080100, b"CODE01", length=200)) + end
    with pytest.raises(InvalidInstance, match=r"\(0008,0100\) length exceeds the data"):
        part10.scan(un_sequences.with_un(lying_element), LIMITS)
    # something other than an item in the sequence
    not_an_item = implicit(0x00080100, b"CODE01") + end
    with pytest.raises(InvalidInstance, match=r"unexpected element \(0008,0100\) in \(0099,1010\)"):
        part10.scan(un_sequences.with_un(not_an_item), LIMITS)


def test_element_inside_un_larger_than_bound() -> None:
    big = un_sequences.item(un_sequences.implicit(0x00080104, b"x" * 3000))
    data = un_sequences.with_un(big + un_sequences.SEQUENCE_END)
    part10.scan(data, LIMITS)
    with pytest.raises(TooLarge, match=r"\(0008,0104\)"):
        part10.scan(data, LimitsSettings(max_element_bytes=2000))

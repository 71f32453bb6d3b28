"""parse_instance: validation, indexed attributes, DICOM JSON, frames."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

import factories
from coffre.dicom import instance as instance_module
from coffre.dicom.attributes import INDEXED_ATTRIBUTES, Kind
from coffre.dicom.instance import ParsedInstance, normalize_pn, normalize_tm, parse_instance
from coffre.errors import (
    InvalidInstance,
    InvalidUID,
    MissingAttribute,
    SOPClassMismatch,
    TooDeeplyNested,
    TooLarge,
    UnknownSOPClass,
    UnsupportedTransferSyntax,
)
from coffre.settings import LimitsSettings

from . import un_sequences

LIMITS = LimitsSettings()


def parse(data: bytes, limits: LimitsSettings = LIMITS) -> ParsedInstance:
    return parse_instance(data, limits)


# --- valid instances ------------------------------------------------------------------


@pytest.mark.parametrize("modality", ["CT", "MR", "CR", "DX", "US", "MG"])
@pytest.mark.parametrize(
    "ts",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
     DeflatedExplicitVRLittleEndian, RLELossless],
)  # fmt: skip
def test_valid_instances(modality: str, ts: str) -> None:
    ds = factories.make_dataset(modality=modality, transfer_syntax=ts, patient_id="ID-7")
    parsed = parse(factories.encode(ds))
    assert parsed.sop_class_uid == ds.SOPClassUID
    assert parsed.sop_instance_uid == ds.SOPInstanceUID
    assert parsed.study_instance_uid == ds.StudyInstanceUID
    assert parsed.series_instance_uid == ds.SeriesInstanceUID
    assert parsed.transfer_syntax_uid == ts
    assert parsed.warnings == ()
    assert parsed.attributes["modality"] == modality
    assert parsed.attributes["patient_id"] == "ID-7"
    assert parsed.attributes["rows"] == 64
    if ts == DeflatedExplicitVRLittleEndian:
        assert parsed.frame_offsets == ()  # frames are in the inflated data set
    else:
        assert len(parsed.frame_offsets) == 1


def test_every_indexed_attribute_has_a_value_key() -> None:
    parsed = parse(factories.make_instance())
    expected = {a.column for a in INDEXED_ATTRIBUTES}
    expected |= {f"{a.column}_norm" for a in INDEXED_ATTRIBUTES if a.kind is Kind.PN}
    assert set(parsed.attributes) == expected


def test_attribute_normalisation() -> None:
    data = factories.make_instance(
        patient_name="Dürst^Zoë^^^=デュルスト",
        issuer="CHU-SE",
        birth_date="19700102",
        accession="A 1 ",
        frames=2,
        extra={"StudyTime": "0930", "SeriesTime": "23:59:07", "ContentTime": "101601.1",
               "InstitutionName": "  Hôpital Nord  "},
    )  # fmt: skip
    a = parse(data).attributes
    assert a["patient_name"] == "Dürst^Zoë^^^=デュルスト"
    assert a["patient_name_norm"] == "DURST^ZOE^^^=デュルスト"
    assert a["issuer"] == "CHU-SE"
    assert a["patient_birth_date"] == "19700102"
    assert a["accession_number"] == "A 1"
    assert a["institution_name"] == "Hôpital Nord"
    assert a["study_time"] == "093000.000000"
    assert a["series_time"] == "235907.000000"
    assert a["content_time"] == "101601.100000"
    assert a["number_of_frames"] == 2
    assert a["series_number"] == 1
    assert a["bits_allocated"] == 16


def test_absent_and_empty_values() -> None:
    data = factories.make_instance(
        patient_id="", accession="", extra={"StationName": None, "StudyDate": None}
    )
    parsed = parse(data)
    a = parsed.attributes
    assert a["patient_id"] == ""  # Type 2: may be empty
    assert a["issuer"] == ""
    assert a["station_name"] == ""
    assert a["study_date"] == ""
    assert a["number_of_frames"] is None
    assert parsed.warnings == ()


@pytest.mark.parametrize(
    ("tag", "raw", "column", "expected", "keyword"),
    [
        (0x00200013, b"abc", "instance_number", None, "InstanceNumber"),
        (0x00200013, b"1.5", "instance_number", None, "InstanceNumber"),
        (0x00200011, b"7\\8", "series_number", None, "SeriesNumber"),
        (0x00080020, b"2024", "study_date", "", "StudyDate"),
        (0x00100030, b"19701301", "patient_birth_date", "", "PatientBirthDate"),
        (0x00080021, b"20230229", "series_date", "", "SeriesDate"),
        (0x00080030, b"256000", "study_time", "", "StudyTime"),
        (0x00080031, b"12:3x", "series_time", "", "SeriesTime"),
    ],
)
def test_malformed_optional_values_warn_and_never_raise(
    tag: int, raw: bytes, column: str, expected: Any, keyword: str
) -> None:
    data = factories.with_raw_value(factories.make_instance(), tag, raw)
    parsed = parse(data)
    assert parsed.attributes[column] == expected
    assert any(w.startswith(keyword) for w in parsed.warnings), parsed.warnings
    for warning in parsed.warnings:
        assert raw.decode() not in warning  # keyword names only, never values
    json.loads(parsed.dicom_json)  # still valid JSON


def test_old_style_values_are_normalised() -> None:
    data = factories.with_raw_value(factories.make_instance(), 0x00080020, b"2024.03.05")
    assert parse(data).attributes["study_date"] == "20240305"
    assert normalize_tm("07") == "070000.000000"
    assert normalize_tm("235960") == "235960.000000"  # leap second
    assert normalize_tm("2400") is None
    assert normalize_pn("Łódź^Ångström") == "ŁODZ^ANGSTROM"


def test_long_values_are_truncated_with_a_warning() -> None:
    data = factories.make_instance(accession="A" * 16, extra={"StationName": "S" * 16})
    assert parse(data).warnings == ()
    data = factories.with_raw_value(factories.make_instance(), 0x00080050, b"B" * 30)
    parsed = parse(data)
    assert parsed.attributes["accession_number"] == "B" * 16
    assert any(w.startswith("AccessionNumber") for w in parsed.warnings)


# --- frames ---------------------------------------------------------------------------


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_native_frame_bytes(ts: str) -> None:
    data = factories.make_instance(frames=3, transfer_syntax=ts)
    parsed = parse(data)
    array = dcmread(BytesIO(data)).pixel_array
    assert len(parsed.frame_offsets) == 3
    for (offset, length), frame in zip(parsed.frame_offsets, array, strict=True):
        assert data[offset : offset + length] == frame.tobytes()


def test_j2k_multiframe_frame_bytes() -> None:
    data = factories.make_instance(frames=3, transfer_syntax=JPEG2000Lossless)
    parsed = parse(data)
    ds = dcmread(BytesIO(data))
    expected = list(generate_frames(ds.PixelData, number_of_frames=3))
    assert [data[o : o + n] for o, n in parsed.frame_offsets] == expected


def test_compressed_reference_files_parse() -> None:
    checked = 0
    for path in factories.compressed_test_files():
        data = path.read_bytes()
        ds = dcmread(path, stop_before_pixels=True)
        if "StudyInstanceUID" not in ds:  # JPEGLSNearLossless_16.dcm lacks it
            with pytest.raises(MissingAttribute, match="StudyInstanceUID"):
                parse(data)
            continue
        parsed = parse(data)
        assert parsed.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert parsed.sop_instance_uid == ds.SOPInstanceUID
        if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
            assert parsed.frame_offsets == ()
        else:
            assert len(parsed.frame_offsets) == int(ds.get("NumberOfFrames") or 1), path.name
        assert "7FE00010" in json.loads(parsed.dicom_json)
        checked += 1
    assert checked >= 10


def test_multi_fragment_single_frame_is_one_span() -> None:
    frame = b"\x12\x34" * 500
    data = factories.encapsulated_instance([frame], fragments_per_frame=4)
    (span,) = parse(data).frame_offsets
    from coffre.dicom.part10 import read_frame

    assert read_frame(data, span) == frame


def test_pixel_data_shorter_than_declared() -> None:
    ds = factories.make_dataset(frames=3)
    ds.PixelData = ds.PixelData[: 2 * 64 * 64 * 2]
    with pytest.raises(InvalidInstance, match="pixel data shorter than declared"):
        parse(factories.encode(ds))


def test_encapsulated_pixel_data_in_a_native_syntax() -> None:
    data = factories.encapsulated_instance([b"\x01" * 10], transfer_syntax=ExplicitVRLittleEndian)
    with pytest.raises(InvalidInstance, match="does not match the transfer syntax"):
        parse(data)


def test_pixel_data_without_rows() -> None:
    with pytest.raises(InvalidInstance, match="Rows"):
        parse(factories.make_instance(extra={"Rows": None}))


def test_bit_packed_frames() -> None:
    ds = factories.make_dataset(rows=5, columns=5, frames=3)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = bytes(range(10))
    ds["PixelData"].VR = "OB"
    assert parse(factories.encode(ds)).frame_offsets[1][1] == 4


# --- DICOM JSON -----------------------------------------------------------------------


def _rich_dataset() -> Dataset:
    code = Dataset()
    code.CodeValue = "T-D3000"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "Chest"
    inner = Dataset()
    inner.ScheduledProcedureStepID = "SPS1"
    inner.ScheduledProtocolCodeSequence = Sequence([code])
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5"
    ref.ReferencedFrameNumber = [1, 2]
    ds = factories.make_dataset(
        patient_name="Müller^Jürgen=ミュラー",
        extra={
            "RequestAttributesSequence": Sequence([inner]),
            "ReferencedImageSequence": Sequence([ref, ref]),
            "WindowCenter": ["40", "400"],
            "WindowWidth": [400, 2000],
            "OtherPatientNames": ["A^B", "C^D"],
            "ImageComments": "",
        },
    )
    ds.private_block(0x0009, "COFFRE TEST", create=True).add_new(0x10, "OB", b"\x01" * 5000)
    ds.private_block(0x0009, "COFFRE TEST").add_new(0x11, "LO", "small private")
    big = Dataset()
    big.PatientID = "nested"
    big.add_new(0x00181072, "TM", "101010")
    big.add_new(0x00204000, "LT", "y" * 5000)  # bulk inside a sequence
    ds.add_new(0x00540016, "SQ", Sequence([big]))
    return ds


def _strip_bulk(model: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in model.items():
        if "BulkDataURI" in value:
            continue
        if value["vr"] == "SQ" and "Value" in value:
            value = {**value, "Value": [_strip_bulk(item) for item in value["Value"]]}
        out[key] = value
    return out


def test_json_roundtrip_without_bulk_data() -> None:
    ds = _rich_dataset()
    parsed = parse(factories.encode(ds))
    model = json.loads(parsed.dicom_json)
    assert parsed.dicom_json == json.dumps(model, separators=(",", ":"), ensure_ascii=False)

    assert model["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
    assert model["00091010"] == {"vr": "OB", "BulkDataURI": "bulkdata/00091010"}
    assert model["00540016"]["Value"][0]["00204000"] == {
        "vr": "LT", "BulkDataURI": "bulkdata/00540016/0/00204000"
    }  # fmt: skip
    assert model["00100010"]["Value"] == [
        {"Alphabetic": "Müller^Jürgen", "Ideographic": "ミュラー"}
    ]
    assert model["00281050"]["Value"] == [40, 400]
    assert not any(key.startswith("0002") or key.endswith("0000") for key in model)

    roundtrip = Dataset.from_json(_strip_bulk(model))
    expected = Dataset()
    expected.update(ds)
    del expected.PixelData
    del expected[0x00091010]
    del expected[0x00540016][0][0x00204000]
    assert roundtrip == expected
    # check the comparison can fail
    expected.PatientName = "Other^Name"
    assert roundtrip != expected


def test_json_threshold_applies_to_every_vr() -> None:
    data = factories.encode(_rich_dataset())
    model = json.loads(parse(data, LimitsSettings(bulk_data_threshold=10)).dicom_json)
    assert model["00080080"]["BulkDataURI"] == "bulkdata/00080080"  # LO of 18 bytes
    assert "Value" in model["00080060"]  # CS "CT"
    ref = model["00081140"]["Value"][1]
    assert ref["00081155"]["Value"] == ["1.2.3.4.5"]
    assert ref["00081150"]["BulkDataURI"] == "bulkdata/00081140/1/00081150"


def test_json_of_implicit_vr_pixel_data() -> None:
    data = factories.make_instance(transfer_syntax=ImplicitVRLittleEndian, modality="US")
    model = json.loads(parse(data).dicom_json)
    assert model["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
    assert model["00280010"] == {"vr": "US", "Value": [64]}


def test_malformed_value_is_left_out_of_json() -> None:
    data = factories.with_raw_value(factories.make_instance(), 0x00200013, b"abc")
    model = json.loads(parse(data).dicom_json)
    assert model["00200013"] == {"vr": "IS"}


# --- hostile input --------------------------------------------------------------------


def test_not_part10() -> None:
    with pytest.raises(InvalidInstance):
        parse(factories.make_instance()[128:])


def test_truncated() -> None:
    with pytest.raises(InvalidInstance):
        parse(factories.truncated(factories.make_instance()))


def test_lying_length() -> None:
    with pytest.raises(InvalidInstance, match="length exceeds the data"):
        parse(factories.lying_length(factories.make_instance()))


def test_deep_nesting() -> None:
    data = factories.deeply_nested(200)
    with pytest.raises(TooDeeplyNested):
        parse(data)
    # within the bound it is a valid object
    parse(factories.deeply_nested(LIMITS.max_sequence_depth))


def test_invalid_uid() -> None:
    data = factories.with_uid(factories.make_instance(), "StudyInstanceUID", "1.2.03")
    with pytest.raises(InvalidUID, match="StudyInstanceUID"):
        parse(data)


def test_uid_with_path_characters() -> None:
    data = factories.with_uid({"modality": "MR"}, "SOPInstanceUID", "../../etc/passwd")
    with pytest.raises(InvalidUID) as info:
        parse(data)
    assert "SOPInstanceUID" in str(info.value)
    assert "passwd" not in str(info.value)


@pytest.mark.parametrize(
    "keyword", ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"]
)
def test_missing_required_uid(keyword: str) -> None:
    with pytest.raises(MissingAttribute, match=keyword):
        parse(factories.without(keyword))
    with pytest.raises(MissingAttribute, match=keyword):
        parse(factories.with_uid({}, keyword, ""))


def test_multi_valued_uid() -> None:
    data = factories.with_uid({}, "SeriesInstanceUID", "1.2.3\\1.2.4")
    with pytest.raises(InvalidUID, match="SeriesInstanceUID"):
        parse(data)


def test_deflate_bomb_is_refused_before_inflating_it() -> None:
    import tracemalloc

    bomb = factories.deflate_bomb(1 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            parse(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the refusal inflates a few chunks, not the 256 MiB bound nor the 1 GiB bomb
    assert peak < 16 * 1024 * 1024


def test_unknown_sop_class() -> None:
    data = factories.with_uid(factories.make_instance(), "SOPClassUID", "1.2.3.4.5")
    with pytest.raises(UnknownSOPClass):
        parse(data)
    # a real non-storage class (Storage Commitment Push Model) is refused too
    data = factories.with_uid(factories.make_instance(), "SOPClassUID", "1.2.840.10008.1.20.1")
    with pytest.raises(UnknownSOPClass):
        parse(data)


@pytest.mark.parametrize("keyword", ["MediaStorageSOPInstanceUID", "MediaStorageSOPClassUID"])
def test_meta_and_dataset_uids_differ(keyword: str) -> None:
    data = factories.with_meta_uid(factories.make_instance(), keyword, "1.2.840.10008.5.1.4.1.1.4")
    announced = keyword.removeprefix("MediaStorage")
    with pytest.raises(SOPClassMismatch, match=f"{announced} does not match the announced"):
        parse(data)


def test_meta_uid_changed_with_dataset_is_accepted() -> None:
    new = "1.2.826.0.1.3680043.10.1.77"
    parsed = parse(factories.with_uid(factories.make_instance(), "SOPInstanceUID", new))
    assert parsed.sop_instance_uid == new


def test_four_gigabytes_of_pixel_data_over_a_hundred_bytes() -> None:
    with pytest.raises(InvalidInstance, match="length exceeds the data"):
        parse(factories.huge_pixel_claim(factories.make_instance(), declared=0xFFFFFFF0, keep=100))


def test_unsupported_transfer_syntax() -> None:
    data = factories.make_instance()
    bad = data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.4.92", 1)
    bad = bad.replace(b"\x02\x00\x10\x00UI\x14\x00", b"\x02\x00\x10\x00UI\x16\x00", 1)
    with pytest.raises(UnsupportedTransferSyntax):
        parse(bad)


def test_pydicom_failures_become_invalid_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    data = factories.make_instance()

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("pydicom exploded on 'DOE^JOHN'")

    monkeypatch.setattr(instance_module, "read_dataset", broken)
    with pytest.raises(InvalidInstance) as info:
        parse(data)
    assert type(info.value) is InvalidInstance
    assert "DOE" not in str(info.value)

    def recursing(*args: object, **kwargs: object) -> None:
        raise RecursionError

    monkeypatch.setattr(instance_module, "read_dataset", recursing)
    with pytest.raises(TooDeeplyNested):
        parse(data)


def test_parsing_leaves_no_pydicom_warning_escaping() -> None:
    # pytest turns warnings into errors: an invalid optional value must stay silent
    data = factories.with_raw_value(factories.make_instance(), 0x00200013, b"x1")
    parsed = parse(data)
    assert parsed.attributes["instance_number"] is None


def test_huge_declared_frame_count_is_refused_by_arithmetic() -> None:
    data = factories.make_instance(frames=2)
    data = factories.with_raw_value(data, 0x00280008, b"999999999")
    with pytest.raises(InvalidInstance, match="pixel data shorter than declared"):
        parse(data)


# --- UN of undefined length (PS3.5 6.2.2) ---------------------------------------------


@pytest.mark.parametrize(
    "ts",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
     JPEG2000Lossless],
)  # fmt: skip
def test_un_of_undefined_length_is_accepted_and_indexed(ts: str) -> None:
    data = un_sequences.with_un(un_sequences.un_value(), transfer_syntax=ts, patient_id="UN-1")
    full = dcmread(BytesIO(data))  # pydicom reads the UN as a sequence too
    parsed = parse(data)
    assert parsed.sop_instance_uid == full.SOPInstanceUID
    assert parsed.study_instance_uid == full.StudyInstanceUID
    assert [item.CodeValue for item in full[un_sequences.UN_TAG].value] == ["CODE01", "CODE02"]
    assert parsed.warnings == ()
    # the object's other attributes are indexed as usual
    assert parsed.attributes["patient_id"] == "UN-1"
    assert parsed.attributes["modality"] == "CT"
    assert parsed.attributes["rows"] == 64
    # valid DICOM JSON; the UN whose value is a sequence is given as SQ (PS3.18 F.2.3)
    model = json.loads(parsed.dicom_json)
    assert model["00991010"] == un_sequences.UN_JSON
    assert model["00990010"] == {"vr": "LO", "Value": ["ACME 1"]}
    assert model["00100020"] == {"vr": "LO", "Value": ["UN-1"]}
    assert "7FE00010" in model
    # frame byte ranges point into the given bytes, after the UN element
    if ts == DeflatedExplicitVRLittleEndian:
        assert parsed.frame_offsets == ()
    else:
        if full.file_meta.TransferSyntaxUID.is_compressed:
            expected = list(generate_frames(full.PixelData, number_of_frames=1))
        else:
            expected = [full.PixelData]
        assert [data[o : o + n] for o, n in parsed.frame_offsets] == expected


def test_un_without_sequence_delimiter_is_refused() -> None:
    data = un_sequences.with_un(un_sequences.un_value(terminated=False), pixels=False)
    with pytest.raises(InvalidInstance, match=r"not terminated \(truncated\)"):
        parse(data)


def test_un_nested_too_deeply_is_refused() -> None:
    depth = LIMITS.max_sequence_depth
    parse(un_sequences.with_un(un_sequences.deep_un_value(depth)))
    with pytest.raises(TooDeeplyNested):
        parse(un_sequences.with_un(un_sequences.deep_un_value(depth + 1)))
    with pytest.raises(TooDeeplyNested):
        parse(un_sequences.with_un(un_sequences.deep_un_value(300)))


def test_un_item_starting_with_a_long_element_is_refused_cleanly() -> None:
    """Known limit (docs/architecture.md): pydicom 3 guesses the encoding of a UN item from
    its first element, and an element whose length bytes look like a VR (0x4144, "DA")
    is misread. Such an object is refused with a clear reason, never half-read."""
    first = un_sequences.implicit(0x00080104, b"x" * 0x4144)
    value = un_sequences.item(first) + un_sequences.SEQUENCE_END
    with pytest.raises(InvalidInstance, match="cannot be parsed"):
        parse(un_sequences.with_un(value))

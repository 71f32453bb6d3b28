"""``parse_instance``: the one validation of an object before the archive accepts it.

Order (each step may refuse the object with a :mod:`coffre.errors` exception):

1. :func:`coffre.dicom.part10.scan` bounds the encoding first (lengths, nesting, deflate,
   sizes) and refuses transfer syntaxes the archive does not accept;
2. pydicom parses the data set *without* its top-level pixel data (cut out by the scanner)
   and, for the deflated syntax, from the already bounded inflated bytes; any pydicom
   failure becomes :class:`InvalidInstance`;
3. the four UIDs that key the object (SOP Class, SOP Instance, Study, Series) must be
   present (:class:`MissingAttribute`) and valid (PS3.5 9.1, :class:`InvalidUID`); the SOP
   Class must be a Storage SOP Class (:class:`UnknownSOPClass`); the File Meta Media
   Storage SOP Class/Instance UIDs must equal them (PS3.10 7.1, :class:`InvalidInstance`);
4. indexed attribute values are normalised per kind (:mod:`coffre.dicom.attributes`); a
   malformed *optional* value never refuses the object, it yields a warning naming the
   keyword (never the value: warnings may be logged);
5. DICOM JSON (PS3.18 F.2) of the data set without bulk data, and frame byte ranges.

pydicom's own warnings are silenced while it parses (they quote values, which may be
patient data); pydicom also *logs* them on its ``pydicom`` logger, which the application's
logging configuration should keep quiet.
"""

from __future__ import annotations

import json
import math
import re
import struct
import threading
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import BytesIO
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue

from coffre.dicom import part10, transfer_syntaxes
from coffre.dicom.attributes import INDEXED_ATTRIBUTES, IndexedAttribute, Kind
from coffre.dicom.sop_classes import is_storage_sop_class
from coffre.dicom.uid import check_uid
from coffre.errors import (
    CoffreError,
    InvalidInstance,
    MissingAttribute,
    SOPClassMismatch,
    TooDeeplyNested,
    UnknownSOPClass,
)
from coffre.settings import LimitsSettings

BULK_DATA_PREFIX = "bulkdata/"

_REQUIRED_UIDS = (
    ("SOPClassUID", 0x00080016),
    ("SOPInstanceUID", 0x00080018),
    ("StudyInstanceUID", 0x0020000D),
    ("SeriesInstanceUID", 0x0020000E),
)
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
_IMPLICIT_PIXEL_VR = {
    part10.PIXEL_DATA: "OW",
    part10.FLOAT_PIXEL_DATA: "OF",
    part10.DOUBLE_FLOAT_PIXEL_DATA: "OD",
}

#: pydicom's warning filters are process-wide: parse one object at a time while they are
#: silenced (pydicom parsing holds the GIL anyway, so little is lost).
PYDICOM_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class ParsedInstance:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    #: index column -> value for every row of INDEXED_ATTRIBUTES, plus ``<column>_norm``
    #: for PN kinds. String kinds are ``""`` when absent, empty or malformed; ``int``
    #: kinds are ``None`` then.
    attributes: dict[str, str | int | None]
    #: PS3.18 F.2 DICOM JSON (compact) of the data set (no File Meta), bulk data as URIs
    dicom_json: str
    #: ``(offset in the given bytes, length)`` of each frame as stored; () without pixel
    #: data, for the deflated syntax (frames live in the inflated data set) and when
    #: encapsulated frame boundaries cannot be determined (a warning says so). See
    #: :func:`coffre.dicom.part10.encapsulated_frames` for multi-fragment frames.
    frame_offsets: tuple[tuple[int, int], ...]
    warnings: tuple[str, ...]


@contextmanager
def pydicom_guard() -> Iterator[None]:
    with PYDICOM_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def parse_instance(data: bytes, limits: LimitsSettings) -> ParsedInstance:
    """Validate a PS3.10 file and extract what the index and metadata need (module doc)."""
    scan = part10.scan(data, limits)
    syntax = transfer_syntaxes.get(scan.transfer_syntax_uid)
    notes: list[str] = []
    with pydicom_guard():
        try:
            ds = read_dataset(
                BytesIO(scan.dataset_without_pixels()),
                is_implicit_VR=syntax.implicit_vr,
                is_little_endian=syntax.little_endian,
            )
            uids = _required_uids(ds)
            json_model = _json_dataset(ds, "", limits, notes, 0)
            attributes = _attributes(ds, notes)
            frames = _frames(ds, scan, syntax, notes)
        except CoffreError:
            raise
        except RecursionError:
            raise TooDeeplyNested("sequences nest too deeply to be parsed") from None
        except Exception:
            raise InvalidInstance("data set cannot be parsed") from None

    sop_class, sop_instance, study, series = uids
    if not is_storage_sop_class(sop_class):
        raise UnknownSOPClass("SOPClassUID is not a Storage SOP Class known to the archive")
    if not scan.media_storage_sop_instance_uid or not scan.media_storage_sop_class_uid:
        raise InvalidInstance("File Meta lacks MediaStorageSOPClassUID or ...InstanceUID")
    # Over DIMSE the meta header is built from the C-STORE request, so a mismatch is
    # the dataset not matching what was announced (PS3.4 B.2.3: 0xA900).
    if scan.media_storage_sop_instance_uid != sop_instance:
        raise SOPClassMismatch("SOPInstanceUID does not match the announced SOP Instance UID")
    if scan.media_storage_sop_class_uid != sop_class:
        raise SOPClassMismatch("SOPClassUID does not match the announced SOP Class UID")

    for tag, pixel in scan.pixels.items():
        json_model[f"{tag:08X}"] = {
            "vr": pixel.vr or _IMPLICIT_PIXEL_VR[tag],
            "BulkDataURI": f"{BULK_DATA_PREFIX}{tag:08X}",
        }
    json_model = dict(sorted(json_model.items()))
    try:
        dicom_json = json.dumps(
            json_model, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError):
        raise InvalidInstance("data set cannot be represented as DICOM JSON") from None
    return ParsedInstance(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=scan.transfer_syntax_uid,
        attributes=attributes,
        dicom_json=dicom_json,
        frame_offsets=frames,
        warnings=tuple(dict.fromkeys(notes)),
    )


# --- identity ---------------------------------------------------------------------------


def _required_uids(ds: Dataset) -> tuple[str, str, str, str]:
    values: list[str] = []
    for keyword, tag in _REQUIRED_UIDS:
        if tag not in ds:
            raise MissingAttribute(f"{keyword} is missing")
        try:
            value = ds[tag].value
        except Exception:
            raise InvalidInstance(f"{keyword} cannot be decoded") from None
        if value is None or value == "":
            raise MissingAttribute(f"{keyword} is empty")
        if isinstance(value, MultiValue | list):
            check_uid(None, keyword)
        values.append(check_uid(str(value), keyword))
    return values[0], values[1], values[2], values[3]


# --- indexed attributes -----------------------------------------------------------------


def _name(tag: int) -> str:
    return keyword_for_tag(tag) or part10.tag_str(tag)


def normalize_pn(value: str) -> str:
    """Upper case without accents, for name matching.

    Compatibility decomposition (NFKD), then combining marks are dropped when they follow
    a Latin letter (é -> E; ``upper()`` turns ß into SS); marks on other scripts are
    meaningful (Japanese dakuten: デ is not テ) and are kept, recomposed (NFC). PS3.5 6.2
    component (``^``) and group (``=``) separators are kept.
    """
    kept: list[str] = []
    latin = False
    for char in unicodedata.normalize("NFKD", value):
        if unicodedata.combining(char):
            if latin:
                continue
        else:
            latin = char < "\u0250" or "\u1e00" <= char <= "\u1eff"
        kept.append(char)
    return unicodedata.normalize("NFC", "".join(kept)).upper()


_DA_RE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
_TM_RE = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")


def normalize_da(value: str) -> str | None:
    """``YYYYMMDD`` (PS3.5 6.2 DA; the ACR-NEMA ``YYYY.MM.DD`` is accepted), else None."""
    match = _DA_RE.fullmatch(value.strip())
    if match is None:
        return None
    year, month, day = (int(g) for g in match.groups())
    if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        return None
    return "".join(match.groups())


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def normalize_tm(value: str) -> str | None:
    """``HHMMSS.FFFFFF`` zero padded (PS3.5 6.2 TM; ``HH:MM:SS`` accepted), else None."""
    match = _TM_RE.fullmatch(value.strip())
    if match is None:
        return None
    hh, mm, ss, frac = match.groups()
    hours, minutes, seconds = int(hh), int(mm or 0), int(ss or 0)
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return f"{hours:02d}{minutes:02d}{seconds:02d}.{(frac or '').ljust(6, '0')}"


_DT_RE = re.compile(
    r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?)?)?)?"
    r"(?:([+-])([0-9]{2})([0-9]{2}))?"
)
#: PS3.5 6.2 DT: "&ZZXX" lies between -1200 and +1400
_DT_OFFSET_RANGE = (-12 * 60, 14 * 60)


def normalize_dt(value: str, *, end: bool = False) -> str | None:
    """A sortable canonical DT (PS3.5 6.2: ``YYYY[MM[DD[HH[MM[SS[.F{1-6}]]]]]][&ZZXX]``).

    The result is zero padded to full precision, ``YYYYMMDDHHMMSS.FFFFFF``, so that
    range matching (PS3.4 C.2.2.2.5) is a string comparison. With an offset from UTC
    (``&ZZXX``, -1200 to +1400) the instant is converted to UTC and ``+0000`` appended,
    so that values written in different zones compare as the instants they are. A value
    without an offset is compared as written: the archive cannot know the local time
    zone it was meant in (Timezone Offset From UTC (0008,0201) is not applied), so it is
    ordered as if it were UTC.

    ``end=True`` gives the last instant of the interval a less precise value names
    (``2024`` -> ``20241231235959.999999``), the upper bound of a query. None when the
    value is not a valid DT.
    """
    match = _DT_RE.fullmatch(value.strip())
    if match is None:
        return None
    yyyy, mo, dd, hh, mi, ss, frac, sign, zh, zm = match.groups()
    year = int(yyyy)
    month = int(mo) if mo else (12 if end else 1)
    if not 1 <= month <= 12:
        return None
    last_day = _days_in_month(year, month)
    day = int(dd) if dd else (last_day if end else 1)
    hours = int(hh) if hh else (23 if end else 0)
    minutes = int(mi) if mi else (59 if end else 0)
    seconds = int(ss) if ss else (59 if end else 0)
    if not 1 <= day <= last_day or hours > 23 or minutes > 59 or seconds > 60:
        return None
    fraction = (frac or "").ljust(6, "9" if end else "0")
    if sign is None:
        return f"{year:04d}{month:02d}{day:02d}{hours:02d}{minutes:02d}{seconds:02d}.{fraction}"
    offset = int(zh) * 60 + int(zm)
    offset = -offset if sign == "-" else offset
    if int(zm) > 59 or not _DT_OFFSET_RANGE[0] <= offset <= _DT_OFFSET_RANGE[1]:
        return None
    # offsets are whole minutes: seconds (a leap second 60 too) and fraction are kept
    try:
        utc = datetime(year, month, day, hours, minutes) - timedelta(minutes=offset)
    except (ValueError, OverflowError):  # year 0, or beyond year 9999 once in UTC
        return None
    stamp = f"{utc.year:04d}{utc.month:02d}{utc.day:02d}{utc.hour:02d}{utc.minute:02d}"
    return f"{stamp}{seconds:02d}.{fraction}+0000"


def _text(value: Any) -> str:
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _attributes(ds: Dataset, notes: list[str]) -> dict[str, str | int | None]:
    out: dict[str, str | int | None] = {}
    for attr in INDEXED_ATTRIBUTES:
        present, value = _get_value(ds, attr.tag)
        if present and value is _MALFORMED:
            notes.append(f"{attr.keyword}: value cannot be decoded; not indexed")
            present, value = False, None
        empty = (
            not present
            or value is None
            or value == ""
            or (isinstance(value, MultiValue | list) and len(value) == 0)
        )
        if attr.kind is Kind.INT:
            out[attr.column] = None if empty else _int_value(attr, value, notes)
            continue
        text = "" if empty else _text(value)
        if attr.kind is Kind.DATE and text:
            normalized = normalize_da(text)
            if normalized is None:
                notes.append(f"{attr.keyword}: malformed date; not indexed")
            text = normalized or ""
        elif attr.kind is Kind.TIME and text:
            normalized = normalize_tm(text)
            if normalized is None:
                notes.append(f"{attr.keyword}: malformed time; not indexed")
            text = normalized or ""
        elif attr.kind is Kind.DATETIME and text:
            normalized = normalize_dt(text)
            if normalized is None:
                notes.append(f"{attr.keyword}: malformed datetime; not indexed")
            text = normalized or ""
        text = _fit(attr, text, notes)
        out[attr.column] = text
        if attr.kind is Kind.PN:
            out[f"{attr.column}_norm"] = _fit(attr, normalize_pn(text), notes)
    return out


def _fit(attr: IndexedAttribute, text: str, notes: list[str]) -> str:
    if len(text) > attr.length:
        notes.append(f"{attr.keyword}: longer than {attr.length} characters; truncated")
        return text[: attr.length]
    return text


def _int_value(attr: IndexedAttribute, value: Any, notes: list[str]) -> int | None:
    if isinstance(value, MultiValue | list):
        notes.append(f"{attr.keyword}: several values; not indexed")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        notes.append(f"{attr.keyword}: malformed integer; not indexed")
        return None
    if not math.isfinite(number) or number != int(number):
        notes.append(f"{attr.keyword}: malformed integer; not indexed")
        return None
    return int(number)


class _Malformed:
    pass


_MALFORMED: Any = _Malformed()


def _get_value(ds: Dataset, tag: int) -> tuple[bool, Any]:
    """(present, value); value is ``_MALFORMED`` when pydicom cannot convert it."""
    if tag not in ds:
        return False, None
    try:
        return True, ds[tag].value
    except Exception:
        return True, _MALFORMED


# --- DICOM JSON (PS3.18 F.2) ------------------------------------------------------------


def _element_length(raw: RawDataElement | DataElement) -> int:
    if isinstance(raw, RawDataElement):
        return 0 if raw.length == part10.UNDEFINED_LENGTH else int(raw.length)
    value = raw.value
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, MultiValue | list):
        return sum(len(str(v)) + 1 for v in value)
    return 0


def _json_vr(vr: str | None) -> str:
    if not vr:
        return "UN"
    # ambiguous VRs pydicom could not resolve ("US or SS", "OB or OW"): first choice
    return vr.split(" or ")[0]


def _sanitize(values: list[Any]) -> list[Any]:
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]


def _json_dataset(
    ds: Dataset, prefix: str, limits: LimitsSettings, notes: list[str], depth: int
) -> dict[str, Any]:
    if depth > limits.max_sequence_depth:
        raise TooDeeplyNested("sequences nest deeper than max_sequence_depth")
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        if tag & 0xFFFF == 0 or tag == 0xFFFCFFFC:  # group lengths (PS3.5 7.2), padding
            continue
        key = f"{tag:08X}"
        path = f"{prefix}{key}"
        raw = ds.get_item(tag)
        length = _element_length(raw)
        try:
            elem = ds[tag]
        except Exception:
            notes.append(f"{_name(tag)}: value cannot be decoded; left out of the metadata")
            out[key] = {"vr": _json_vr(getattr(raw, "VR", None))}
            continue
        vr = _json_vr(elem.VR)
        # A UN of undefined length holds a sequence in Implicit VR LE (PS3.5 6.2.2);
        # pydicom reads it as SQ (``infer_sq_for_un_vr``), so its JSON is SQ with items
        # (PS3.18 F.2.3), not UN bytes.
        if vr == "SQ":
            items = [
                _json_dataset(item, f"{path}/{index}/", limits, notes, depth + 1)
                for index, item in enumerate(elem.value)
            ]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif tag in part10.PIXEL_TAGS or length > limits.bulk_data_threshold:
            out[key] = {"vr": vr, "BulkDataURI": f"{BULK_DATA_PREFIX}{path}"}
        else:
            try:
                model = elem.to_json_dict(None, limits.bulk_data_threshold)
            except Exception:
                notes.append(f"{_name(tag)}: value cannot be decoded; left out of the metadata")
                model = {}
            model["vr"] = vr
            if "Value" in model:
                model["Value"] = _sanitize(model["Value"])
            out[key] = model
    return out


# --- frames -----------------------------------------------------------------------------


def _required_int(ds: Dataset, keyword: str, tag: int, default: int | None) -> int:
    present, value = _get_value(ds, tag)
    if not present or value is None or value == "":
        if default is None:
            raise InvalidInstance(f"pixel data present but {keyword} is missing")
        return default
    if value is _MALFORMED or isinstance(value, MultiValue | list):
        raise InvalidInstance(f"{keyword} is malformed")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInstance(f"{keyword} is malformed") from None
    if number <= 0:
        raise InvalidInstance(f"{keyword} must be positive")
    return number


def _offset_table(ds: Dataset, tag: int) -> tuple[int, ...] | None:
    present, value = _get_value(ds, tag)
    if not present or not isinstance(value, bytes) or len(value) % 8:
        return None
    return struct.unpack(f"<{len(value) // 8}Q", value)


def _frames(
    ds: Dataset,
    scan: part10.ScanResult,
    syntax: transfer_syntaxes.TransferSyntax,
    notes: list[str],
) -> tuple[tuple[int, int], ...]:
    pixel = scan.pixel_data
    if pixel is None:
        return ()
    if pixel.tag == part10.PIXEL_DATA and pixel.encapsulated != syntax.encapsulated:
        raise InvalidInstance("pixel data encoding does not match the transfer syntax")
    frames = _required_int(ds, "NumberOfFrames", 0x00280008, 1)
    if scan.deflated:
        return ()
    if pixel.encapsulated:
        ranges, frame_notes = part10.encapsulated_frames(
            scan.buffer,
            pixel,
            number_of_frames=frames,
            video=syntax.video,
            extended_offsets=_offset_table(ds, _EXTENDED_OFFSET_TABLE),
            extended_lengths=_offset_table(ds, _EXTENDED_OFFSET_TABLE_LENGTHS),
        )
        notes.extend(frame_notes)
        return ranges
    return part10.native_frames(
        pixel,
        rows=_required_int(ds, "Rows", 0x00280010, None),
        columns=_required_int(ds, "Columns", 0x00280011, None),
        samples_per_pixel=_required_int(ds, "SamplesPerPixel", 0x00280002, 1),
        bits_allocated=_required_int(ds, "BitsAllocated", 0x00280100, None),
        number_of_frames=frames,
    )

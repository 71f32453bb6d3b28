"""Query/Retrieve - FIND SCP (PS3.4 C.4.1) for the Patient Root and Study Root models.

Matches stream as Pending (0xFF00) responses as the index yields them; a C-CANCEL
stops them with 0xFE00 (C.4.1.2.3); more than ``limits.max_query_results`` matches
end with 0xA700 after the bound (the caller refines the query); a bad identifier
gets 0xA900/0xC000 with an error comment. Keys the archive does not hold are
returned empty.

Response identifiers (C.4.1.1.3.2) are built with their text values already encoded
(PS3.5 6.2: values joined with ``\\``, padded to an even length with a space, UIDs with
NUL; PS3.5 6.1.2.3: the value characters in UTF-8 under ``ISO_IR 192`` for the VRs the
Specific Character Set applies to), as raw elements that pydicom writes as they are:
building and re-encoding a pydicom element per key per match was most of the handler's
time (docs/performance.md). Values pydicom would convert differently (sequences,
binary VRs, private tags, non-ASCII text in a VR of the default repertoire) take
pydicom's own path; both give the same bytes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from typing import Any

from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import CUSTOMIZABLE_CHARSET_VR, validate_value

from coffre.app import Context
from coffre.dicom.query import Model, Query, parse_identifier
from coffre.errors import CoffreError
from coffre.index.query import Row
from coffre.model import Actor
from coffre.net.statuses import failure_status
from coffre.services.domain import OTHER_PATIENT_IDS
from coffre.services.query import find

log = logging.getLogger(__name__)

#: PS3.4 C.6 Query/Retrieve SOP Classes
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

MODELS: dict[str, Model] = {
    PATIENT_ROOT_FIND: Model.PATIENT_ROOT,
    PATIENT_ROOT_MOVE: Model.PATIENT_ROOT,
    PATIENT_ROOT_GET: Model.PATIENT_ROOT,
    STUDY_ROOT_FIND: Model.STUDY_ROOT,
    STUDY_ROOT_MOVE: Model.STUDY_ROOT,
    STUDY_ROOT_GET: Model.STUDY_ROOT,
}

PENDING = 0xFF00
CANCEL = 0xFE00
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056


def _vr(tag: int, identifier: Dataset) -> str:
    elem = identifier.get(tag)
    if elem is not None and elem.VR not in ("UN", None):
        return str(elem.VR)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _items(value: Any) -> list[Dataset]:
    """OtherPatientIDsSequence items from "PatientID\\IssuerOfPatientID" strings."""
    items = []
    for pair in value if isinstance(value, list) else []:
        patient_id, _, issuer = str(pair).partition("\\")
        item = Dataset()
        item.PatientID = patient_id
        item.IssuerOfPatientID = issuer
        item.TypeOfPatientID = "TEXT"
        items.append(item)
    return items


#: VRs whose values are character strings written as they are (PS3.5 6.2), apart from padding
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                       "UC", "UI", "UR", "UT"})
#: VRs whose value may hold several values separated by a backslash (PS3.5 6.4); LT, ST,
#: UR and UT are single-valued and may contain a backslash
_MULTI_VALUED = _TEXT_VRS - {"LT", "ST", "UR", "UT"}
SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
#: pydicom's name of the ISO_IR 192 character set (UTF-8)
_UTF8 = convert_encodings("ISO_IR 192")


#: text VRs whose explicit VR header has a 32-bit length (PS3.5 7.1.2, Table 7.1-1)
_LONG_VRS = frozenset({"UC", "UR", "UT"})


def _pad(vr: str, data: bytes) -> bytes:
    """PS3.5 6.2: an even length, UIDs padded with NUL, other text with a space."""
    if len(data) % 2:
        return data + (b"\0" if vr == "UI" else b" ")
    return data


def _header(tag: int, vr: str, implicit_vr: bool) -> tuple[bytes, str]:
    """The bytes of an element header before its length (little endian, PS3.5 7.1), and
    the ``struct`` format of the length."""
    group_element = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit_vr:
        return group_element, "<I"
    if vr in _LONG_VRS:
        return group_element + vr.encode("ascii") + b"\0\0", "<I"
    return group_element + vr.encode("ascii"), "<H"


class EncodedIdentifier(Dataset):
    """A response identifier that also carries its own encoding in the presentation
    context's transfer syntax, which pynetdicom then sends as it is
    (:func:`send_prepared_identifiers`). Any access to an element drops that encoding,
    so a changed identifier is always encoded again from its elements."""

    _coffre_prepared: tuple[bool, bytes] | None = None

    def prepared(self, implicit_vr: bool, little_endian: bool) -> bytes | None:
        """The encoding made with the identifier, if it is in this transfer syntax."""
        found = self._coffre_prepared
        if found is None or not little_endian or found[0] != implicit_vr:
            return None
        return found[1]

    def __getitem__(self, key: Any) -> Any:
        object.__setattr__(self, "_coffre_prepared", None)
        return super().__getitem__(key)

    def __setitem__(self, key: Any, elem: Any) -> None:
        object.__setattr__(self, "_coffre_prepared", None)
        super().__setitem__(key, elem)

    def __delitem__(self, key: Any) -> None:
        object.__setattr__(self, "_coffre_prepared", None)
        super().__delitem__(key)


def send_prepared_identifiers() -> None:
    """Let pynetdicom's service classes send an :class:`EncodedIdentifier` as encoded.

    pynetdicom encodes every Pending C-FIND identifier with pydicom's ``write_dataset``
    (``pynetdicom.service_class`` calls ``dsutils.encode``), which was the largest part of
    the CPU of a C-FIND response. The function it calls is wrapped once per process:
    an identifier prepared in the same transfer syntax is returned as it is, anything
    else goes to the original function. Idempotent.
    """
    from pynetdicom import service_class

    original = service_class.encode  # type: ignore[attr-defined]
    if getattr(original, "coffre_prepared", False):
        return

    def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
        if isinstance(ds, EncodedIdentifier) and not deflated:
            prepared = ds.prepared(is_implicit_vr, is_little_endian)
            if prepared is not None:
                return prepared
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    encode.coffre_prepared = True  # type: ignore[attr-defined]
    service_class.encode = encode  # type: ignore[attr-defined]


def _encoded_text(vr: str, value: Any) -> bytes | None:
    """The value bytes of a text ``value`` (before padding), or None when pydicom should
    encode it (a type or character it would convert differently)."""
    if value is None:
        return b""
    if isinstance(value, int) and not isinstance(value, bool) and vr == "IS":
        text = str(value)
        values = [text]
    elif isinstance(value, str):
        if vr in _MULTI_VALUED and "\\" in value:
            return None
        text = value
        values = [value] if value else []
    elif isinstance(value, list) and vr in _MULTI_VALUED and all(isinstance(v, str) and "\\" not in v for v in value):
        text = "\\".join(value)
        values = value
    else:
        return None
    mode = config.settings.reading_validation_mode  # what pydicom applies to new elements
    for one in values:
        validate_value(vr, one, mode)
    if vr in CUSTOMIZABLE_CHARSET_VR:
        return text.encode("utf-8")  # ISO_IR 192 (PS3.5 6.1.2.3)
    return text.encode("ascii") if text.isascii() else None


class IdentifierTemplate:
    """How each return key of one query is written in its response identifiers
    (C.4.1.1.3.2): the VR and element header of each key are worked out once per query,
    not per match.

    ``transfer_syntax`` is the presentation context's (pynetdicom's ``event.context``).
    When it is a little endian one, each identifier also carries its encoding
    (:class:`EncodedIdentifier`), made here from the same bytes as its raw elements;
    else pydicom writes the raw elements as they are.
    """

    def __init__(self, query: Query, identifier: Dataset, ae_title: str, transfer_syntax: Any = None) -> None:
        self.level = query.level.value
        self.ae_title = ae_title
        self.keys = [(tag, _vr(tag, identifier)) for tag in query.return_tags]
        implicit = getattr(transfer_syntax, "is_implicit_VR", None)
        little = getattr(transfer_syntax, "is_little_endian", None)
        self.implicit_vr = bool(implicit)
        tags = [SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL, *(tag for tag, _ in self.keys)]
        # an ambiguous VR ("US or SS") must go through pydicom's VR correction
        self.encoding = (
            (bool(implicit), bool(little)) if implicit is not None and little is not None
            and all(len(vr) == 2 for _, vr in self.keys) else None
        )
        # pydicom leaves out group lengths (gggg,0000) of groups above 6 (PS3.5 7.2)
        self.prepare = (
            self.encoding is not None and self.encoding[1] and len(set(tags)) == len(tags)
            and not any(tag & 0xFFFF == 0 for tag in tags)
        )
        self._charset = self._raw(SPECIFIC_CHARACTER_SET, "CS", b"ISO_IR 192")
        self._level = self._raw(QUERY_RETRIEVE_LEVEL, "CS", self.level.encode("ascii"))
        self._headers = {tag: _header(tag, vr, self.implicit_vr) for tag, vr in
                         [(SPECIFIC_CHARACTER_SET, "CS"), (QUERY_RETRIEVE_LEVEL, "CS"), *self.keys]}
        self._order = sorted(self._headers)

    def _raw(self, tag: int, vr: str, data: bytes) -> RawDataElement:
        data = _pad(vr, data)
        return RawDataElement(Tag(tag), vr, len(data), data, 0, self.implicit_vr, True)

    def dataset(self, row: Row) -> Dataset:
        """The C-FIND response identifier of one match."""
        elements: dict[BaseTag, DataElement | RawDataElement] = {
            self._charset.tag: self._charset, self._level.tag: self._level,
        }
        others: list[tuple[int, str, Any]] = []
        for tag, vr in self.keys:
            value: Any = row.get(tag)
            if tag == RETRIEVE_AE_TITLE:
                value = self.ae_title
            elif tag == INSTANCE_AVAILABILITY:
                value = "ONLINE"
            encoded = _encoded_text(vr, value) if vr in _TEXT_VRS and tag >> 16 & 1 == 0 else None
            if encoded is not None:
                raw = self._raw(tag, vr, encoded)
                elements[raw.tag] = raw
                continue
            if vr == "SQ":
                value = _items(value) if tag == OTHER_PATIENT_IDS else []
            elif vr in ("IS", "US", "UL", "SS", "SL") and isinstance(value, str) and not value:
                value = None
            others.append((tag, vr, value))
        ds = EncodedIdentifier(elements)
        if self.encoding is not None:
            ds.set_original_encoding(*self.encoding, character_encoding=_UTF8)
        for tag, vr, value in others:
            ds.add_new(tag, vr, value)
        if self.prepare and not others:
            parts: list[bytes] = []
            for tag in self._order:
                prefix, length = self._headers[tag]
                value_bytes = elements[BaseTag(tag)].value
                assert isinstance(value_bytes, bytes)
                parts += (prefix, struct.pack(length, len(value_bytes)), value_bytes)
            object.__setattr__(ds, "_coffre_prepared", (self.implicit_vr, b"".join(parts)))
        return ds


def to_dataset(row: Row, query: Query, identifier: Dataset, ae_title: str) -> Dataset:
    """The C-FIND response identifier of one match (C.4.1.1.3.2)."""
    return IdentifierTemplate(query, identifier, ae_title).dataset(row)


def handle_find(event: Any, ctx: Context, actor: Actor | None) -> Iterator[tuple[Any, Dataset | None]]:
    """The EVT_C_FIND handler body (a generator of (status, identifier))."""
    if actor is None:
        yield failure_status(0x0124, "association not admitted"), None
        return
    model = MODELS.get(str(event.request.AffectedSOPClassUID))
    if model is None:
        yield failure_status(0x0122, "SOP class not supported"), None
        return
    cap = ctx.settings.limits.max_query_results
    try:
        identifier = event.identifier
        query = parse_identifier(identifier, model, limit=cap + 1)
        rows = find(ctx, actor, query, source=f"dimse:{actor.name}")
        context = getattr(event, "context", None)
        template = IdentifierTemplate(query, identifier, ctx.settings.archive.ae_title,
                                      getattr(context, "transfer_syntax", None))
        for sent, row in enumerate(rows):
            if event.is_cancelled:
                yield CANCEL, None
                return
            if sent == cap:
                yield failure_status(0xA700, f"more than {cap} matches; refine the query"), None
                return
            yield PENDING, template.dataset(row)
    except CoffreError as exc:
        log.info("C-FIND from %s refused: %s", actor.describe(), exc.reason)
        yield failure_status(exc.dimse_status, exc.reason), None
        return
    except Exception as exc:  # a hostile identifier pydicom cannot decode, or a bug
        log.warning("C-FIND from %s failed: %s", actor.describe(), type(exc).__name__)
        yield failure_status(0xC000, "unable to process the identifier"), None
        return
    yield 0x0000, None


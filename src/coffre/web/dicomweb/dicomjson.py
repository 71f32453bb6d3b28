"""Index rows as DICOM JSON (PS3.18 Annex F.2), for QIDO-RS results.

A data set is a JSON object keyed by the tag as eight upper-case hex digits, in tag
order; each attribute is ``{"vr": VR, "Value": [...]}`` (F.2.2). Rules applied here:

- an attribute with no value is ``{"vr": VR}`` with no ``Value`` (F.2.5);
- Person Name values are objects with ``Alphabetic``, ``Ideographic`` and ``Phonetic``
  component groups (F.2.2, PN); empty groups are left out;
- IS, DS and the binary numeric VRs (US, SS, UL, SL, UV, SV, FL, FD) are JSON numbers
  (F.2.3); a value that is not a number becomes ``null``;
- multi-valued attributes (``\\``-separated in the index) become lists; an empty item
  of a multi-valued attribute is ``null`` (F.2.5);
- AT values are eight hex digits; LT, ST, UT and UR are single-valued (their text may
  hold a backslash);
- sequences and bulk data are never held by the index: they are returned empty.

The VR of a tag comes from the attribute table (``dicom/attributes.py``), the computed
keys of the query model, then the pydicom data dictionary; unknown and private tags
are ``UN``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR

from coffre.dicom.attributes import BY_TAG
from coffre.dicom.query import COMPUTED_BY_TAG

JsonValue = str | int | float | dict[str, str] | None
Element = dict[str, Any]

_INTEGER_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})
#: single-valued text VRs: a backslash is part of the text (PS3.5 6.2)
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
#: values never carried inline by a query result
_NO_VALUE_VRS = frozenset({"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def tag_key(tag: int) -> str:
    """The DICOM JSON key of ``tag``: eight upper-case hex digits (F.2.1.1)."""
    return f"{tag:08X}"


def vr_for(tag: int) -> str:
    """The VR to report for ``tag``: index table, computed keys, then the dictionary."""
    attr = BY_TAG.get(tag)
    if attr is not None:
        return attr.vr
    computed = COMPUTED_BY_TAG.get(tag)
    if computed is not None:
        return computed.vr
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    # ambiguous dictionary entries ("US or SS", "OB or OW"): the first is the usual one
    return vr.split(" or ")[0].strip() or "UN"


def _person_name(value: str) -> dict[str, str] | None:
    groups = value.split("=")[: len(_PN_GROUPS)]
    name = {key: group for key, group in zip(_PN_GROUPS, groups, strict=False) if group}
    return name or None


def _integer(value: str) -> int | None:
    try:
        return int(value.strip())
    except ValueError:
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return int(number) if number.is_integer() else None


def _float(value: str) -> int | float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None  # JSON has no NaN nor infinity
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _item(vr: str, value: str) -> JsonValue:
    if value == "":
        return None
    if vr == "PN":
        return _person_name(value)
    if vr in _INTEGER_VRS:
        return _integer(value)
    if vr in _FLOAT_VRS:
        return _float(value)
    if vr == "AT":
        return value.replace(",", "").replace("(", "").replace(")", "").upper()
    return value


def _items(vr: str, value: object) -> list[JsonValue]:
    """The ``Value`` array of one attribute (empty when there is no value)."""
    if value is None or vr in _NO_VALUE_VRS:
        return []
    if isinstance(value, bool):
        return [str(value)]
    if isinstance(value, int | float):
        if vr in _INTEGER_VRS:
            return [int(value)]
        if vr in _FLOAT_VRS:
            return [_float(str(value))]
        return [str(value)]
    if isinstance(value, list | tuple):
        raw = [str(v) for v in value]
    else:
        text = str(value)
        if text == "":
            return []
        raw = [text] if vr in _SINGLE_TEXT_VRS else text.split("\\")
    items = [_item(vr, v) for v in raw]
    return [] if all(item is None for item in items) else items


def element(vr: str, value: object) -> Element:
    """One DICOM JSON attribute: ``{"vr": vr}`` plus ``Value`` when there is one (F.2.2, F.2.5)."""
    items = _items(vr, value)
    return {"vr": vr, "Value": items} if items else {"vr": vr}


def dataset(values: Mapping[int, object], *, vrs: Mapping[int, str] | None = None) -> dict[str, Element]:
    """A DICOM JSON data set of ``values`` (tag → value), keys in tag order."""
    out: dict[str, Element] = {}
    for tag in sorted(values):
        vr = (vrs or {}).get(tag) or vr_for(tag)
        out[tag_key(tag)] = element(vr, values[tag])
    return out


def datasets(rows: Iterable[Mapping[int, object]]) -> list[dict[str, Element]]:
    """DICOM JSON data sets of index rows (``index.query.Row``)."""
    return [dataset(row) for row in rows]

"""The one query model shared by C-FIND and QIDO-RS (PS3.4 C.2.2.2, C.4.1; PS3.18 8.3.4).

A :class:`Query` is frozen and transport-free: a level, filters each with its matching
type, the tags to return, and paging. ``parse_identifier`` builds one from a C-FIND
identifier; the DICOMweb adapter builds one from QIDO-RS parameters through
:func:`make_filter`. ``index/query.py`` compiles it to SQL.

Matching types (PS3.4 C.2.2.2):

- *single value* (C.2.2.2.1): exact; Person Names compare case- and accent-insensitively;
- *list of UIDs* (C.2.2.2.2), and, for other string VRs, a backslash-separated list of
  alternatives (any one matches);
- *universal* (C.2.2.2.3): an empty value; the key is only returned;
- *wild card* (C.2.2.2.4): ``*`` and ``?``;
- *range* (C.2.2.2.5): ``a-b``, ``-b``, ``a-`` for DA, TM and DT. A TM or DT single
  value matches the whole interval it names (``2024`` as a DT: the whole year). In a DT,
  a hyphen followed by exactly four digits at the end of a component of at least eight
  digits is a negative offset from UTC (``20240101-0500``), any other the range
  separator; DT values with an offset compare as UTC instants, those without as
  written (:func:`~coffre.dicom.instance.normalize_dt`);
- *empty value* (C.2.2.2.? "Empty Value Matching", PS3.4 C.2.2.2.1): ``""`` matches
  attributes that are absent or empty.

Keys the archive does not index are returned empty, never an error. A value that
cannot be in the index (control characters, longer than the attribute can hold)
matches nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from coffre.dicom.attributes import BY_TAG, INDEXED_ATTRIBUTES, Kind, Level
from coffre.dicom.instance import normalize_da, normalize_dt, normalize_pn, normalize_tm
from coffre.errors import CoffreError


class InvalidQuery(CoffreError):
    """The identifier or parameters cannot be processed (PS3.4 C.4.1.1.4: 0xA900/0xC000)."""

    http_status = 400
    dimse_status = 0xA900


class Model(enum.StrEnum):
    """Query/Retrieve Information Models (PS3.4 C.6)."""

    PATIENT_ROOT = "patient-root"
    STUDY_ROOT = "study-root"


class Match(enum.StrEnum):
    SINGLE = "single"
    LIST = "list"
    WILDCARD = "wildcard"
    RANGE = "range"
    EMPTY = "empty"
    #: a value that cannot occur in the index: the query matches nothing
    NOTHING = "nothing"


@dataclass(frozen=True, slots=True)
class ComputedAttribute:
    """Return keys the index computes (PS3.4 C.6.1.1.x / C.6.2.1.x optional keys)."""

    keyword: str
    tag: int
    vr: str
    level: Level


COMPUTED: tuple[ComputedAttribute, ...] = (
    ComputedAttribute("NumberOfPatientRelatedStudies", 0x00201200, "IS", Level.PATIENT),
    ComputedAttribute("NumberOfPatientRelatedSeries", 0x00201202, "IS", Level.PATIENT),
    ComputedAttribute("NumberOfPatientRelatedInstances", 0x00201204, "IS", Level.PATIENT),
    ComputedAttribute("NumberOfStudyRelatedSeries", 0x00201206, "IS", Level.STUDY),
    ComputedAttribute("NumberOfStudyRelatedInstances", 0x00201208, "IS", Level.STUDY),
    ComputedAttribute("ModalitiesInStudy", 0x00080061, "CS", Level.STUDY),
    ComputedAttribute("SOPClassesInStudy", 0x00080062, "UI", Level.STUDY),
    ComputedAttribute("NumberOfSeriesRelatedInstances", 0x00201209, "IS", Level.SERIES),
)
COMPUTED_BY_TAG: dict[int, ComputedAttribute] = {c.tag: c for c in COMPUTED}

#: matchable computed keys (others are return keys only)
MATCHABLE_COMPUTED = frozenset({0x00080061, 0x00080062})

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
#: unique keys of each level (PS3.4 C.6.1.1 / C.6.2.1)
UNIQUE_KEY: dict[Level, int] = {
    Level.PATIENT: 0x00100020,  # PatientID
    Level.STUDY: 0x0020000D,  # StudyInstanceUID
    Level.SERIES: 0x0020000E,  # SeriesInstanceUID
    Level.IMAGE: 0x00080018,  # SOPInstanceUID
}
_ORDER = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
#: longest single value (one item of a list) a matching key may hold
_MAX_VALUE = 1024
#: most items of a list of UIDs or alternatives
_MAX_ITEMS = 4096


def levels_above(level: Level, model: Model) -> tuple[Level, ...]:
    """Levels above ``level`` in ``model`` (Study Root has no PATIENT level, C.6.2)."""
    above = _ORDER[: _ORDER.index(level)]
    if model is Model.STUDY_ROOT:
        above = tuple(lv for lv in above if lv is not Level.PATIENT)
    return above


def attribute_level(tag: int) -> Level | None:
    """The information-model level of a queryable attribute, or None if not indexed."""
    if tag in BY_TAG:
        return BY_TAG[tag].level
    if tag in COMPUTED_BY_TAG:
        return COMPUTED_BY_TAG[tag].level
    return None


@dataclass(frozen=True, slots=True)
class Filter:
    """One matching key: the tag, its matching type and its normalised values.

    ``values`` holds one value (SINGLE, WILDCARD), the alternatives (LIST), or the
    ``(low, high)`` bounds of a RANGE where ``""`` is an open end.
    """

    tag: int
    match: Match
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Query:
    level: Level
    model: Model
    filters: tuple[Filter, ...]
    #: tags to return, in the order asked (unknown tags are returned empty)
    return_tags: tuple[int, ...]
    limit: int | None = None
    offset: int = 0
    #: QIDO-RS fuzzymatching: person names match the prefix of any name component
    fuzzy: bool = False

    def filter_for(self, tag: int) -> Filter | None:
        return next((f for f in self.filters if f.tag == tag), None)


def _kind(tag: int) -> Kind:
    if tag in BY_TAG:
        return BY_TAG[tag].kind
    return Kind.STR


def _vr(tag: int) -> str:
    if tag in BY_TAG:
        return BY_TAG[tag].vr
    if tag in COMPUTED_BY_TAG:
        return COMPUTED_BY_TAG[tag].vr
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _clean(value: str) -> str | None:
    """The value without padding, or None if it cannot occur in the index."""
    value = value.strip(" \x00")
    items = value.split("\\")
    if len(items) > _MAX_ITEMS or any(len(item) > _MAX_VALUE for item in items):
        return None
    if any(ord(c) < 0x20 and c != "\x1b" for c in value):
        return None
    return value


def make_filter(tag: int, raw: str) -> Filter | None:
    """The filter for ``raw`` on ``tag``; None for universal matching (empty value)."""
    value = _clean(raw)
    if value is None:
        return Filter(tag, Match.NOTHING)
    if value == "":
        return None
    if value == '""':
        return Filter(tag, Match.EMPTY)
    if value.strip("*") == "":
        return None  # "*" alone is universal matching (C.2.2.2.4), whatever the VR
    vr = _vr(tag)
    kind = _kind(tag)
    if kind in (Kind.DATE, Kind.TIME, Kind.DATETIME):
        return _date_time_filter(tag, kind, value)
    if kind is Kind.INT:
        try:
            return Filter(tag, Match.SINGLE, (str(int(value)),))
        except ValueError:
            return Filter(tag, Match.NOTHING)
    parts = value.split("\\") if "\\" in value else [value]
    if vr == "UI":
        # C.2.2.2.2: a list of UIDs; wild cards are not allowed in UIDs
        return Filter(tag, Match.LIST if len(parts) > 1 else Match.SINGLE, tuple(parts))
    if kind is Kind.PN:
        parts = [normalize_pn(p) for p in parts]
    if len(parts) > 1:
        return Filter(tag, Match.LIST, tuple(parts))
    if "*" in parts[0] or "?" in parts[0]:
        return Filter(tag, Match.WILDCARD, (_collapse(parts[0]),))
    return Filter(tag, Match.SINGLE, (parts[0],))


def _collapse(pattern: str) -> str:
    while "**" in pattern:
        pattern = pattern.replace("**", "*")
    return pattern


def _date_time_filter(tag: int, kind: Kind, value: str) -> Filter:
    """Single value or range matching of a DA, TM or DT key (PS3.4 C.2.2.2.1, C.2.2.2.5)."""
    parts = _range_parts(tag, kind, value)
    if parts is not None:
        low_raw, high_raw = parts
        low = _lower_bound(kind, low_raw) if low_raw.strip() else ""
        high = _upper_bound(kind, high_raw) if high_raw.strip() else ""
        if low is None or high is None or (low == "" and high == ""):
            raise InvalidQuery(f"{_name(tag)}: malformed range")
        return Filter(tag, Match.RANGE, (low, high))
    if kind in (Kind.TIME, Kind.DATETIME):
        # a time or datetime with less precision matches the whole interval it names
        low, high = _lower_bound(kind, value), _upper_bound(kind, value)
        if low is None or high is None:
            raise InvalidQuery(f"{_name(tag)}: malformed {kind.value}")
        return Filter(tag, Match.RANGE, (low, high))
    single = normalize_da(value)
    if single is None:
        raise InvalidQuery(f"{_name(tag)}: malformed date")
    return Filter(tag, Match.SINGLE, (single,))


_DIGITS = frozenset("0123456789")
#: the suffix of a normalised DT that carried an offset from UTC (``normalize_dt``)
_UTC = "+0000"


def _range_parts(tag: int, kind: Kind, value: str) -> tuple[str, str] | None:
    """``(low, high)`` raw parts of a range value (``""`` for an open end), None for a
    single value (PS3.4 C.2.2.2.5).

    In a DT, ``-`` also starts a negative offset from UTC (PS3.5 6.2 ``&ZZXX``): a hyphen
    followed by exactly four digits that end the value or the first component of a range,
    itself of at least eight digits (``YYYYMMDD`` or more), is an offset; any other hyphen
    separates the range. So ``20240101-0500`` is one day in UTC-5, ``2024-0500`` a range
    from 2024 to 0500; a value with two separating hyphens is an :class:`InvalidQuery`.
    """
    if kind is not Kind.DATETIME:
        if "-" not in value:
            return None
        low, _, high = value.partition("-")
        return low, high
    separators: list[int] = []
    start = 0
    for index, char in enumerate(value):
        if char != "-":
            continue
        zone = value[index + 1 : index + 5]
        after = value[index + 5 : index + 6]
        digits = sum(c in _DIGITS for c in value[start:index])
        if len(zone) == 4 and set(zone) <= _DIGITS and after in ("", "-") and digits >= 8:
            continue  # a negative offset from UTC
        separators.append(index)
        start = index + 1
    if not separators:
        return None
    if len(separators) > 1:
        raise InvalidQuery(f"{_name(tag)}: malformed range")
    return value[: separators[0]], value[separators[0] + 1 :]


def _lower_bound(kind: Kind, raw: str) -> str | None:
    if kind is Kind.DATE:
        return normalize_da(raw)
    if kind is Kind.TIME:
        return normalize_tm(raw)
    # "X" sorts before "X+0000": a lower bound without the suffix takes in both forms
    value = normalize_dt(raw)
    return None if value is None else value.removesuffix(_UTC)


def _upper_bound(kind: Kind, raw: str) -> str | None:
    """The last instant of the interval ``raw`` names (``0830`` -> ``083059.999999``)."""
    raw = raw.strip()
    if kind is Kind.DATE:
        return normalize_da(raw)
    if kind is Kind.DATETIME:
        # "X+0000" sorts after "X": an upper bound with the suffix takes in both forms
        value = normalize_dt(raw, end=True)
        return None if value is None else value.removesuffix(_UTC) + _UTC
    digits = raw.replace(":", "")
    whole, _, frac = digits.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6):
        return None
    padded = whole + "5959"[len(whole) - 2 :] if len(whole) < 6 else whole
    return normalize_tm(padded + "." + (frac + "999999")[:6] if frac else padded + ".999999")


def _name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):  # pydicom's MultiValue is no list
        return "\\".join(str(v) for v in value)
    return str(value)


def parse_identifier(identifier: Dataset, model: Model, *, limit: int | None = None) -> Query:
    """The query of a C-FIND identifier (PS3.4 C.4.1.1.3, hierarchical search C.4.1.2.1)."""
    raw_level = identifier.get("QueryRetrieveLevel", "")
    try:
        level = Level(str(raw_level).strip().upper())
    except ValueError:
        raise InvalidQuery("QueryRetrieveLevel is missing or invalid") from None
    if model is Model.STUDY_ROOT and level is Level.PATIENT:
        raise InvalidQuery("PATIENT level is not part of the Study Root model")
    filters: list[Filter] = []
    return_tags: list[int] = []
    for elem in identifier:
        tag = int(elem.tag)
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or elem.tag.group in (0x0000, 0x0002):
            continue
        return_tags.append(tag)
        if elem.VR == "SQ":
            continue  # sequence matching is not supported: returned empty
        key_level = attribute_level(tag)
        if key_level is None or (tag in COMPUTED_BY_TAG and tag not in MATCHABLE_COMPUTED):
            continue
        if _ORDER.index(key_level) > _ORDER.index(level):
            continue  # a key of a lower level cannot constrain this level
        try:
            value = _text(elem.value)
        except Exception:  # pydicom may fail to decode a hostile value
            filters.append(Filter(tag, Match.NOTHING))
            continue
        made = make_filter(tag, value)
        if made is not None:
            filters.append(made)
    for upper in levels_above(level, model):
        key = UNIQUE_KEY[upper]
        if model is Model.STUDY_ROOT and upper is Level.PATIENT:
            continue
        f = next((f for f in filters if f.tag == key), None)
        if f is None or f.match not in (Match.SINGLE, Match.NOTHING):
            raise InvalidQuery(f"{_name(key)} must be given as a single value at {level.value} level")
    for tag in required_return_tags(level, model):
        if tag not in return_tags:
            return_tags.append(tag)
    return Query(level=level, model=model, filters=tuple(filters), return_tags=tuple(return_tags), limit=limit)


def required_return_tags(level: Level, model: Model) -> tuple[int, ...]:
    """Unique keys of this level and the levels above, always returned (C.4.1.2.1)."""
    levels = (*levels_above(level, model), level)
    return tuple(UNIQUE_KEY[lv] for lv in levels if not (model is Model.STUDY_ROOT and lv is Level.PATIENT))


def queryable(level: Level) -> Iterable[int]:
    """Every tag the index can match or return at ``level`` (for the conformance statement)."""
    for attr in INDEXED_ATTRIBUTES:
        if attr.level is level:
            yield attr.tag
    for computed in COMPUTED:
        if computed.level is level:
            yield computed.tag


def parse_retrieve(identifier: Dataset, model: Model) -> Query:
    """The query of a C-MOVE/C-GET identifier (PS3.4 C.4.2.2.1, C.4.3.2.1).

    Only unique keys count: those of the levels above the retrieve level as single
    values, the retrieve level's own as a single value or a list of UIDs.
    """
    raw_level = identifier.get("QueryRetrieveLevel", "")
    try:
        level = Level(str(raw_level).strip().upper())
    except ValueError:
        raise InvalidQuery("QueryRetrieveLevel is missing or invalid") from None
    if model is Model.STUDY_ROOT and level is Level.PATIENT:
        raise InvalidQuery("PATIENT level is not part of the Study Root model")
    filters: list[Filter] = []
    for lv in (*levels_above(level, model), level):
        key = UNIQUE_KEY[lv]
        elem = identifier.get(key)
        try:
            made = make_filter(key, _text(elem.value)) if elem is not None else None
        except Exception:
            made = Filter(key, Match.NOTHING)
        allowed = (Match.SINGLE, Match.NOTHING) if lv is not level else (Match.SINGLE, Match.LIST, Match.NOTHING)
        if made is None or made.match not in allowed:
            raise InvalidQuery(f"{_name(key)} must be given to retrieve at {level.value} level")
        filters.append(made)
    return Query(level=level, model=model, filters=tuple(filters), return_tags=())


def uid_query(study: str, series: str | None = None, sop_instance: str | None = None) -> Query:
    """A Study Root retrieve of one study, series or instance by its UIDs (WADO-RS paths)."""
    from coffre.dicom.uid import check_uid

    filters = [Filter(UNIQUE_KEY[Level.STUDY], Match.SINGLE, (check_uid(study, "StudyInstanceUID"),))]
    level = Level.STUDY
    if series is not None:
        filters.append(Filter(UNIQUE_KEY[Level.SERIES], Match.SINGLE, (check_uid(series, "SeriesInstanceUID"),)))
        level = Level.SERIES
    if sop_instance is not None:
        filters.append(Filter(UNIQUE_KEY[Level.IMAGE], Match.SINGLE, (check_uid(sop_instance, "SOPInstanceUID"),)))
        level = Level.IMAGE
    return Query(level=level, model=Model.STUDY_ROOT, filters=tuple(filters), return_tags=())

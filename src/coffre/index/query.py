"""Compile a :class:`~coffre.dicom.query.Query` to one SQL SELECT and stream its rows.

Matching follows PS3.4 C.2.2.2 (single value, list of UIDs, universal, wild card,
range, empty value) on the columns of ``dicom.attributes``; return keys follow
PS3.4 C.4.1.2.1 and C.6.1.1 / C.6.2.1 (the optional computed keys such as
NumberOfStudyRelatedInstances or ModalitiesInStudy, C.6.1.1.3 / C.6.2.1.2).

- One SELECT per query: the table of the query level joined to its parents.
- Authorization is one predicate built from :class:`Scope` (:func:`scope_condition`): the
  caller's own facilities, OR the persons and studies of other facilities it holds a
  grant for. Every row of a patient → study → series → instance chain belongs to one
  facility and one person, so the computed counts (correlated on the parent row) never
  include rows outside the scope. Study-level grants (reading assignments) do not open
  the PATIENT level, whose counts would reveal the person's other studies.
- Every user value is a bound parameter. Wild cards use ``LIKE … ESCAPE '!'`` with
  ``%``, ``_`` and ``!`` escaped; on SQLite, whose LIKE folds ASCII case, case-sensitive
  wild cards (every VR but PN, C.2.2.2.4) use ``GLOB`` instead, with ``[`` escaped.
- Person names match on the normalised ``<column>_norm`` (case- and accent-insensitive);
  QIDO-RS ``fuzzymatching`` (PS3.18 8.3.4.6) matches the prefix of any name component.
- Ranges on DA/TM/DT ignore empty values (``-b`` does not match an absent date); they
  compare the normalised strings of ``dicom.instance`` (DT: ``normalize_dt``).
- Filters on attributes the index does not hold are ignored (C-FIND: keys the SCP does
  not support are returned empty); a filter on an indexed attribute below the query
  level is an :class:`~coffre.dicom.query.InvalidQuery`.
- Rows are streamed (``yield_per``): nothing is fetched all at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    and_,
    distinct,
    exists,
    false,
    func,
    literal_column,
    or_,
    select,
)

from coffre.dicom.attributes import BY_TAG, IndexedAttribute, Kind, Level
from coffre.dicom.instance import normalize_pn
from coffre.dicom.query import (
    COMPUTED_BY_TAG,
    MATCHABLE_COMPUTED,
    Filter,
    InvalidQuery,
    Match,
    Query,
)
from coffre.index.schema import instance, patient, series, study


@dataclass(frozen=True, slots=True)
class Scope:
    """What the caller may see, computed by ``services.access`` (the one place of rules).

    ``facility_ids``: the caller's own facilities (None: every facility, the system
    actor). ``person_ids``: persons whose data in any facility it may see (care
    relationships, break-the-glass). ``study_pks``: single studies (reading
    assignments). ``persons_except``: when not None, every person but these (the
    "shared" territory policy, minus oppositions).
    """

    facility_ids: frozenset[int] | None
    person_ids: frozenset[int] = frozenset()
    study_pks: frozenset[int] = frozenset()
    persons_except: frozenset[int] | None = None

    @property
    def facilities_only(self) -> bool:
        """True when the scope is a plain set of facilities (the fast path)."""
        return not self.person_ids and not self.study_pks and self.persons_except is None

    @staticmethod
    def everything() -> Scope:
        return Scope(facility_ids=None)

    @staticmethod
    def nothing() -> Scope:
        return Scope(facility_ids=frozenset())


def _among(column: ColumnElement[Any], values: Sequence[int]) -> ColumnElement[bool]:
    """``column IN (values)``; ``column = value`` for one value (the usual one-facility
    scope): SQLAlchemy renders an expanding IN list again at every execution
    (``_literal_execute_expanding_parameter``, with the grants' own IN lists 7 % of the
    server's samples of a C-FIND association; docs/performance.md)."""
    return column == values[0] if len(values) == 1 else column.in_(values)


def scope_condition(scope: Scope, level: Level, *, facility_index: bool = True) -> ColumnElement[bool] | None:
    """The authorization predicate of ``scope`` on a SELECT over ``_joined(level)``.

    None means no restriction (the system actor). ``facility_index=False`` writes the
    facility term as ``facility_id + 0`` (same rows) so that SQLite does not pick a
    ``(facility_id, …)`` index for it: see :func:`_compiled`.
    """
    if scope.facility_ids is None:
        return None
    table = _TABLES[level]
    ids = sorted(scope.facility_ids)
    facility: ColumnElement[Any] = table.c.facility_id if facility_index else table.c.facility_id + literal_column("0")
    conditions: list[ColumnElement[bool]] = [_among(facility, ids)] if ids else []
    if scope.person_ids:
        conditions.append(_among(patient.c.person_id, sorted(scope.person_ids)))
    if scope.persons_except is not None:
        excluded = sorted(scope.persons_except)
        conditions.append(patient.c.person_id.not_in(excluded) if excluded else patient.c.person_id.is_not(None))
    if scope.study_pks and level is not Level.PATIENT:
        conditions.append(_among(study.c.id, sorted(scope.study_pks)))
    if not conditions:
        return false()
    return conditions[0] if len(conditions) == 1 else or_(*conditions)


Row = dict[int, str | int | list[str] | None]
"""One match: tag -> value (str, int, sorted list for ModalitiesInStudy/SOPClassesInStudy, None)."""

PATIENT_ID = 0x00100020
ISSUER_OF_PATIENT_ID = 0x00100021

#: where a match comes from, as negative keys of each :data:`Row` (never DICOM tags):
#: the services read them to coerce identifiers into the caller's domain, then drop them
ORIGIN_FACILITY = -1
ORIGIN_PERSON = -2
ORIGIN_PATIENT_ID = -3
ORIGIN_ISSUER = -4
_ORIGIN = {
    ORIGIN_FACILITY: patient.c.facility_id,
    ORIGIN_PERSON: patient.c.person_id,
    ORIGIN_PATIENT_ID: patient.c.patient_id,
    ORIGIN_ISSUER: patient.c.issuer,
}


@dataclass(frozen=True, slots=True)
class Domain:
    """A PatientID given in the caller's own identifier domain (IHE RAD MIMA).

    The PatientID (and IssuerOfPatientID) filters of the query are replaced by: the
    patient belongs to one of ``person_ids`` (the persons of the caller's local identity),
    or, when no person is known, the PatientID matches in ``facility_ids`` only (so that
    another facility's same PatientID, maybe another human, never matches).
    """

    patient_id: str
    person_ids: frozenset[int]
    facility_ids: frozenset[int]

_TABLES: dict[Level, Table] = {
    Level.PATIENT: patient,
    Level.STUDY: study,
    Level.SERIES: series,
    Level.IMAGE: instance,
}
_ORDER = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
_ESCAPE = "!"
_YIELD_PER = 500

MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062


def _depth(level: Level) -> int:
    return _ORDER.index(level)


# -- matching -------------------------------------------------------------------------


def _like_pattern(value: str) -> str:
    """A DICOM wild card value as a LIKE pattern (escape character ``!``)."""
    out: list[str] = []
    for char in value:
        if char in ("%", "_", _ESCAPE):
            out.append(_ESCAPE + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


def _wildcard(
    column: ColumnElement[Any], value: str, dialect: str, case_sensitive: bool
) -> ColumnElement[bool]:
    if dialect == "sqlite" and case_sensitive:
        # SQLite's LIKE ignores ASCII case; GLOB does not. Only '[' is special besides * ?.
        return column.op("GLOB")(value.replace("[", "[[]"))
    return column.like(_like_pattern(value), escape=_ESCAPE)


def _fuzzy(column: ColumnElement[Any], value: str) -> ColumnElement[bool]:
    """PS3.18 8.3.4.6 fuzzy matching: ``value`` is the prefix of any name component."""
    prefix = _like_pattern(value)  # has no * or ? (those take the wild card path)
    return or_(*(column.like(f"{lead}{prefix}%", escape=_ESCAPE) for lead in ("", "%^", "% ")))


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _values_condition(
    column: ColumnElement[Any], f: Filter, *, kind: Kind, vr: str, fuzzy: bool, dialect: str
) -> ColumnElement[bool]:
    """SINGLE / LIST / WILDCARD matching of ``f.values`` on ``column``."""
    values: Sequence[Any] = f.values
    if not values:
        return false()
    if kind is Kind.PN:
        values = [normalize_pn(v) for v in values]
    elif kind is Kind.INT:
        try:
            values = [int(v) for v in values]
        except ValueError:
            return false()
    wild_allowed = vr != "UI" and kind in (Kind.STR, Kind.PN)
    plain: list[Any] = []
    conditions: list[ColumnElement[bool]] = []
    for value in values:
        if fuzzy and kind is Kind.PN and not _has_wildcard(value):
            conditions.append(_fuzzy(column, value))
        elif wild_allowed and (f.match is Match.WILDCARD or _has_wildcard(value)):
            conditions.append(_wildcard(column, value, dialect, case_sensitive=kind is not Kind.PN))
        else:
            plain.append(value)
    if len(plain) == 1:
        conditions.append(column == plain[0])
    elif plain:
        conditions.append(column.in_(plain))
    return or_(*conditions) if len(conditions) > 1 else conditions[0]


def _attribute_condition(
    attr: IndexedAttribute, f: Filter, fuzzy: bool, dialect: str
) -> ColumnElement[bool]:
    table = _TABLES[attr.level]
    raw = table.c[attr.column]
    if f.match is Match.EMPTY:
        return raw.is_(None) if attr.kind is Kind.INT else raw == ""
    if f.match is Match.RANGE:
        low, high = f.values
        bounds: list[ColumnElement[bool]] = (
            [raw != ""] if attr.kind is not Kind.INT else [raw.is_not(None)]
        )
        if low:
            bounds.append(raw >= (int(low) if attr.kind is Kind.INT else low))
        if high:
            bounds.append(raw <= (int(high) if attr.kind is Kind.INT else high))
        return and_(*bounds)
    column = table.c[f"{attr.column}_norm"] if attr.kind is Kind.PN else raw
    return _values_condition(column, f, kind=attr.kind, vr=attr.vr, fuzzy=fuzzy, dialect=dialect)


def _in_study(tag: int) -> tuple[Select[Any], ColumnElement[Any]]:
    """(FROM … WHERE <belongs to the outer study>, the value column) for a study-level set."""
    ser = series.alias("q_series")
    if tag == MODALITIES_IN_STUDY:
        return select(ser.c.id).where(ser.c.study_pk == study.c.id), ser.c.modality
    ins = instance.alias("q_instance")
    stmt = (
        select(ins.c.id).join(ser, ser.c.id == ins.c.series_pk).where(ser.c.study_pk == study.c.id)
    )
    return stmt, ins.c.sop_class_uid


def _computed_condition(f: Filter, dialect: str) -> ColumnElement[bool]:
    """ModalitiesInStudy / SOPClassesInStudy: some series / instance of the study matches."""
    stmt, column = _in_study(f.tag)
    if f.match is Match.EMPTY:
        return ~exists(stmt.where(column != "").correlate(study))
    if f.match not in (Match.SINGLE, Match.LIST, Match.WILDCARD):
        raise InvalidQuery(
            f"{f.match.value} matching is not supported on ({f.tag >> 16:04X},{f.tag & 0xFFFF:04X})"
        )
    vr = COMPUTED_BY_TAG[f.tag].vr
    cond = _values_condition(column, f, kind=Kind.STR, vr=vr, fuzzy=False, dialect=dialect)
    return exists(stmt.where(cond).correlate(study))


def _condition(f: Filter, query: Query, dialect: str) -> ColumnElement[bool] | None:
    """The WHERE term of one filter; None for a key the index cannot match (ignored)."""
    attr = BY_TAG.get(f.tag)
    if f.tag in MATCHABLE_COMPUTED:
        key_level = Level.STUDY
    elif attr is not None:
        key_level = attr.level
    else:
        return None
    if _depth(key_level) > _depth(query.level):
        raise InvalidQuery(
            f"({f.tag >> 16:04X},{f.tag & 0xFFFF:04X}) is below the {query.level.value} level"
        )
    if f.match is Match.NOTHING:
        return false()
    if attr is None:
        return _computed_condition(f, dialect)
    return _attribute_condition(attr, f, query.fuzzy, dialect)


# -- return keys ----------------------------------------------------------------------


def _count(stmt: Select[Any], correlate: Table) -> ColumnElement[Any]:
    return stmt.correlate(correlate).scalar_subquery()


@functools.lru_cache(maxsize=64)
def _computed_column(tag: int, dialect: str) -> ColumnElement[Any]:
    """The SQL of a computed return key; built once per (tag, dialect): SQL elements are
    immutable, and building them was a sixth of a C-FIND's time (docs/performance.md)."""
    st, se, im = study.alias("c_study"), series.alias("c_series"), instance.alias("c_instance")
    n = func.count()
    if tag == 0x00201200:  # NumberOfPatientRelatedStudies
        return _count(select(n).select_from(st).where(st.c.patient_pk == patient.c.id), patient)
    if tag == 0x00201202:  # NumberOfPatientRelatedSeries
        stmt = select(n).select_from(se).join(st, st.c.id == se.c.study_pk)
        return _count(stmt.where(st.c.patient_pk == patient.c.id), patient)
    if tag == 0x00201204:  # NumberOfPatientRelatedInstances
        stmt = (
            select(n)
            .select_from(im)
            .join(se, se.c.id == im.c.series_pk)
            .join(st, st.c.id == se.c.study_pk)
        )
        return _count(stmt.where(st.c.patient_pk == patient.c.id), patient)
    if tag == 0x00201206:  # NumberOfStudyRelatedSeries
        return _count(select(n).select_from(se).where(se.c.study_pk == study.c.id), study)
    if tag == 0x00201208:  # NumberOfStudyRelatedInstances
        stmt = select(n).select_from(im).join(se, se.c.id == im.c.series_pk)
        return _count(stmt.where(se.c.study_pk == study.c.id), study)
    if tag == 0x00201209:  # NumberOfSeriesRelatedInstances
        return _count(select(n).select_from(im).where(im.c.series_pk == series.c.id), series)
    # ModalitiesInStudy / SOPClassesInStudy: the distinct values, comma-joined
    stmt, column = _in_study(tag)
    return (
        stmt.with_only_columns(_aggregate_distinct(column, dialect))
        .where(column != "")
        .correlate(study)
        .scalar_subquery()
    )


def _aggregate_distinct(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """Dialect hook: the distinct values of ``column`` joined with ','."""
    if dialect == "postgresql":
        return func.string_agg(distinct(column), literal_column("','"))
    return func.group_concat(distinct(column))


def _format_time(value: Any) -> str | None:
    """Stored ``HHMMSS.FFFFFF`` as a DICOM TM without a trailing zero fraction."""
    if not value:
        return None
    whole, _, fraction = str(value).partition(".")
    fraction = fraction.rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def _format_datetime(value: Any) -> str | None:
    """Stored ``YYYYMMDDHHMMSS.FFFFFF[+0000]`` as a DICOM DT (PS3.5 6.2) without a
    trailing zero fraction; a value received with an offset is returned in UTC."""
    if not value:
        return None
    text = str(value)
    instant, zone = (text[:-5], text[-5:]) if text.endswith("+0000") else (text, "")
    return (_format_time(instant) or "") + zone


def _format_text(value: Any) -> str | None:
    return str(value) if value else None


def _format_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _format_list(value: Any) -> list[str] | None:
    return sorted(str(value).split(",")) if value else None


Converter = Callable[[Any], str | int | list[str] | None]


def _return_column(
    tag: int, level: Level, dialect: str
) -> tuple[ColumnElement[Any], Converter] | None:
    """The SELECT expression and Python conversion of one return key; None if not available."""
    attr = BY_TAG.get(tag)
    if attr is not None:
        if _depth(attr.level) > _depth(level):
            return None
        column = _TABLES[attr.level].c[attr.column]
        if attr.kind is Kind.TIME:
            return column, _format_time
        if attr.kind is Kind.DATETIME:
            return column, _format_datetime
        if attr.kind is Kind.INT:
            return column, _format_int
        return column, _format_text
    computed = COMPUTED_BY_TAG.get(tag)
    if computed is None or _depth(computed.level) > _depth(level):
        return None
    expression = _computed_column(tag, dialect)
    if tag in (MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY):
        return expression, _format_list
    return expression, _format_int


# -- the statement --------------------------------------------------------------------


def domain_condition(domain: Domain) -> ColumnElement[bool]:
    if domain.person_ids:
        return _among(patient.c.person_id, sorted(domain.person_ids))
    ids = sorted(domain.facility_ids)
    return and_(patient.c.patient_id == domain.patient_id, _among(patient.c.facility_id, ids) if ids else false())


def _compiled(
    query: Query, scope: Scope, dialect: str, domain: Domain | None = None, origin: bool = False
) -> tuple[Select[Any], list[tuple[int, Converter]]]:
    if (query.limit is not None and query.limit < 0) or query.offset < 0:
        raise InvalidQuery("limit and offset must not be negative")
    table = _TABLES[query.level]
    columns: list[ColumnElement[Any]] = [table.c.id.label("pk")]
    converters: list[tuple[int, Converter]] = []
    seen: set[int] = set()
    for tag in query.return_tags:
        if tag in seen:
            continue
        seen.add(tag)
        found = _return_column(tag, query.level, dialect)
        if found is not None:
            columns.append(found[0].label(f"t{tag:08x}"))
            converters.append((tag, found[1]))
    for key, column in _ORIGIN.items() if origin else ():
        columns.append(column.label(f"o{-key}"))
        converters.append((key, _identity))
    stmt = select(*columns).select_from(_joined(query.level))
    if domain is not None:
        stmt = stmt.where(domain_condition(domain))
    for f in query.filters:
        if domain is not None and f.tag in (PATIENT_ID, ISSUER_OF_PATIENT_ID):
            continue
        condition = _condition(f, query, dialect)
        if condition is not None:
            stmt = stmt.where(condition)
    # A query in the caller's domain names one person (or one local PatientID): SQLite,
    # without statistics, would still walk every row of the facility through the
    # level's (facility_id, …) index and test the person on each (0.7 ms for a study
    # query over 2,000 studies) instead of starting from the patient (0.02 ms).
    allowed = scope_condition(scope, query.level, facility_index=not (domain is not None and dialect == "sqlite"))
    if allowed is not None:
        stmt = stmt.where(allowed)
    stmt = stmt.order_by(table.c.id)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    if query.offset:
        stmt = stmt.offset(query.offset)
    return stmt, converters


def _joined(level: Level) -> Any:
    """The level table joined to its parents (instance → series → study → patient)."""
    joined: Any = _TABLES[level]
    if _depth(level) >= _depth(Level.IMAGE):
        joined = joined.join(series, series.c.id == instance.c.series_pk)
    if _depth(level) >= _depth(Level.SERIES):
        joined = joined.join(study, study.c.id == series.c.study_pk)
    if _depth(level) >= _depth(Level.STUDY):
        joined = joined.join(patient, patient.c.id == study.c.patient_pk)
    return joined


def compile_query(query: Query, scope: Scope, dialect: str, domain: Domain | None = None) -> Select[Any]:
    """The SELECT of ``query`` within ``scope`` for ``dialect`` ('sqlite' or 'postgresql')."""
    return _compiled(query, scope, dialect, domain)[0]


def _identity(value: Any) -> Any:
    return value


def run_query(
    conn: Connection, query: Query, scope: Scope, domain: Domain | None = None, *, origin: bool = False
) -> Iterator[Row]:
    """Stream the matches of ``query`` within ``scope``, in a stable order.

    Every tag of ``query.return_tags`` is a key of each row (None when the index has no
    value for it), plus with ``origin`` the ``ORIGIN_*`` keys of the patient row. Rows are fetched ``yield_per`` at a time; closing the iterator early
    closes the cursor.
    """
    stmt, converters = _compiled(query, scope, conn.dialect.name, domain, origin)
    empty: Row = dict.fromkeys(query.return_tags)
    # per statement: Connection.execution_options() would change the caller's connection
    result = conn.execute(stmt, execution_options={"yield_per": _YIELD_PER})
    try:
        for record in result:
            row = dict(empty)
            for index, (tag, convert) in enumerate(converters, start=1):
                row[tag] = convert(record[index])
            yield row
    finally:
        result.close()

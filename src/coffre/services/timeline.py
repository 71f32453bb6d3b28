"""The portal's patient views: search by person and the imaging timeline (issue 7).

Both are built on the one search use case, :func:`coffre.services.query.find`, so the
caller sees exactly what QIDO-RS and C-FIND would show it: the scope of its facilities
and grants (DESIGN 5, docs/security.md), the identifier domain of its facility (IHE RAD
MIMA: a local PatientID names the person, matches from other facilities come back with
the caller's identifiers), and one audited ``query`` event per search. Nothing here
reads patient data around that scope: the index is only asked, afterwards, which
facility and person each row *already returned* belongs to (a StudyInstanceUID may exist
at several facilities), and why it was visible (``services.access.cross_facility_reason``).

- :func:`search` groups matching studies by person: by name (Person Name matching,
  case- and accent-insensitive, wild cards; one word matches the start of any name
  component), birth date, the caller's own PatientID, a facility's PatientID or the INS.
  An INS or a facility's PatientID names a person (:func:`~coffre.services.grants.resolve_person`);
  when nothing of it is visible, the result says so and the portal offers
  break-the-glass, without revealing whether the person exists.
- :func:`timeline` lists a person's studies across facilities, newest first, each with
  why the caller may see it (``own``, ``care``, ``reading``, ``break-glass``,
  ``shared``), and is audited as a ``timeline`` event naming the person.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from coffre.app import Context
from coffre.dicom.attributes import Level
from coffre.dicom.query import Filter, Model, Query, make_filter
from coffre.errors import BadRequest, CoffreError, NotFound
from coffre.index import facilities as facility_index
from coffre.index import grants as grant_index
from coffre.index.engine import Tx
from coffre.index.persons import current_person, identities_of
from coffre.index.query import Row
from coffre.model import Actor, Facility
from coffre.services import audit, grants
from coffre.services.access import Action, Grants, Resource, cross_facility_reason, is_allowed
from coffre.services.domain import OTHER_PATIENT_IDS
from coffre.services.query import find

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
ISSUER = 0x00100021
BIRTH_DATE = 0x00100030
SEX = 0x00100040
STUDY_UID = 0x0020000D
STUDY_DATE = 0x00080020
STUDY_TIME = 0x00080030
ACCESSION = 0x00080050
STUDY_DESCRIPTION = 0x00081030
MODALITIES = 0x00080061
SOP_CLASSES = 0x00080062
SERIES_UID = 0x0020000E
MODALITY = 0x00080060
BODY_PART = 0x00180015
SERIES_INSTANCES = 0x00201209
STUDY_SERIES = 0x00201206
STUDY_INSTANCES = 0x00201208

_PATIENT_TAGS = (PATIENT_NAME, PATIENT_ID, ISSUER, BIRTH_DATE, SEX, OTHER_PATIENT_IDS)
SEARCH_TAGS = (*_PATIENT_TAGS, STUDY_UID, STUDY_DATE, STUDY_TIME, MODALITIES)
TIMELINE_TAGS = (*_PATIENT_TAGS, STUDY_UID, STUDY_DATE, STUDY_TIME, ACCESSION, STUDY_DESCRIPTION,
                 SOP_CLASSES, SERIES_UID, MODALITY, BODY_PART, SERIES_INSTANCES)

#: SOP classes of reports: structured reports (PS3.4 Annex O), encapsulated PDF and CDA
REPORT_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.104.1",
                       "1.2.840.10008.5.1.4.1.1.104.2")
#: most study rows a search reads (more: the result says it is truncated)
SEARCH_ROWS = 200
#: most persons a search returns
SEARCH_PERSONS = 50
#: most series rows a timeline reads
TIMELINE_ROWS = 5000
#: most identities of one person queried for a timeline
MAX_IDENTITIES = 32


@dataclass(frozen=True, slots=True)
class Criteria:
    """What the user searches for; empty fields are not used.

    ``name``: a Person Name value (``MARTIN``, ``MARTIN^CL*``; one word without wild
    card matches the start of any name component). ``birth_date``: ``YYYYMMDD``.
    ``patient_id`` alone: a PatientID of the caller's own facility; with ``facility``
    (a slug): that facility's PatientID. ``ins``: a national identifier (INS).
    """

    name: str = ""
    birth_date: str = ""
    patient_id: str = ""
    facility: str = ""
    ins: str = ""

    @property
    def names_a_person(self) -> bool:
        """An exact identifier (INS or a facility's PatientID) rather than a search."""
        return bool(self.ins or (self.facility and self.patient_id))

    @property
    def empty(self) -> bool:
        return not (self.name or self.birth_date or self.patient_id or self.ins)


@dataclass(frozen=True, slots=True)
class Identity:
    """A local identity as shown to the caller: the facility and its PatientID."""

    facility_slug: str
    facility_name: str
    patient_id: str


@dataclass(frozen=True, slots=True)
class StudyEntry:
    """One study of a timeline."""

    study_uid: str
    date: str
    time: str
    facility_slug: str
    facility_name: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    description: str
    accession: str
    series: int
    instances: int
    #: a report (structured report, encapsulated PDF/CDA) is archived with the study
    has_report: bool
    #: why the caller sees it: own, care, reading, break-glass, shared
    access: str


@dataclass(frozen=True, slots=True)
class PersonHit:
    """One person of a search result, from the studies the caller may see."""

    person_id: int
    names: tuple[str, ...]
    birth_date: str
    sex: str
    identities: tuple[Identity, ...]
    studies: int
    latest: str
    #: some of its studies are seen through break-the-glass
    break_glass: bool = False


@dataclass(frozen=True, slots=True)
class SearchResult:
    persons: tuple[PersonHit, ...]
    #: more matches exist than were read: the user should refine the search
    truncated: bool = False
    #: the criteria named one person (INS, facility:PatientID) but none of its studies
    #: is visible: the portal offers break-the-glass (whether it exists stays unknown)
    nothing_visible_for_reference: bool = False


@dataclass(frozen=True, slots=True)
class Timeline:
    person_id: int
    names: tuple[str, ...]
    birth_date: str
    sex: str
    identities: tuple[Identity, ...]
    #: newest first
    studies: tuple[StudyEntry, ...]
    #: the caller's facility holds one of the person's identities
    own_patient: bool
    #: an opposition to sharing is in force (shown to the person's own facilities only)
    opposed: bool
    care_until: datetime | None
    break_glass_until: datetime | None
    may_record_care: bool
    may_break_glass: bool
    may_record_opposition: bool


@dataclass
class _Row:
    """A row returned by ``find`` with the facility and person it belongs to."""

    values: Row
    facility: Facility
    person_id: int
    study_pk: int
    access: str = "own"
    extra: list[Row] = field(default_factory=list)


# -- queries through services.query.find ------------------------------------------------


def _filters(pairs: Iterable[tuple[int, str]]) -> tuple[Filter, ...]:
    out = []
    for tag, value in pairs:
        made = make_filter(tag, value)
        if made is not None:
            out.append(made)
    return tuple(out)


def _name_filter(name: str) -> tuple[Filter | None, bool]:
    """(the PatientName filter, fuzzy): one plain word matches any component's start."""
    text = " ".join(name.replace(",", " ").split())
    if not text:
        return None, False
    if "^" in text or "*" in text or "?" in text:
        return make_filter(PATIENT_NAME, text), False
    words = text.split(" ")
    if len(words) == 1:
        return make_filter(PATIENT_NAME, words[0]), True
    # "martin claire": family name, then the start of the given names
    return make_filter(PATIENT_NAME, f"{words[0]}^{' '.join(words[1:])}*"), False


def _query(level: Level, filters: Sequence[Filter], tags: tuple[int, ...], limit: int,
           fuzzy: bool = False) -> Query:
    return Query(level=level, model=Model.STUDY_ROOT, filters=tuple(filters), return_tags=tags,
                 limit=limit, fuzzy=fuzzy)


def _original(row: Row) -> tuple[str, str]:
    """The row's PatientID and issuer as stored (before MIMA coercion)."""
    others = row.get(OTHER_PATIENT_IDS)
    if isinstance(others, list) and others:
        patient_id, _, issuer = str(others[0]).partition("\\")
        return patient_id, issuer
    return str(row.get(PATIENT_ID) or ""), str(row.get(ISSUER) or "")


class _Owners:
    """Which facility and person each returned row belongs to (rows already in scope)."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self.facilities = {f.id: f for f in facility_index.list_facilities(tx)}
        self._studies: dict[str, list[tuple[int, int, int | None]]] = {}
        self._identities: dict[int, set[tuple[int, str, str]]] = {}

    def _candidates(self, uid: str) -> list[tuple[int, int, int | None]]:
        if uid not in self._studies:
            found = []
            for pk in grant_index.study_pks(self.tx, uid, None)[:16]:
                owner = grant_index.study_owner(self.tx, pk)
                if owner is not None:
                    person = current_person(self.tx, owner[1]) if owner[1] is not None else None
                    found.append((pk, owner[0], person))
            self._studies[uid] = found
        return self._studies[uid]

    def _holds(self, person_id: int, facility_id: int, patient_id: str, issuer: str) -> bool:
        if person_id not in self._identities:
            self._identities[person_id] = {
                (i.facility_id, i.patient_id, i.issuer) for i in identities_of(self.tx, person_id)
            }
        return (facility_id, patient_id, issuer) in self._identities[person_id]

    def of(self, row: Row) -> _Row | None:
        uid = str(row.get(STUDY_UID) or "")
        candidates = [c for c in self._candidates(uid) if c[2] is not None]
        if len(candidates) > 1:
            patient_id, issuer = _original(row)
            candidates = [c for c in candidates
                          if c[2] is not None and self._holds(c[2], c[1], patient_id, issuer)]
        if len(candidates) != 1:
            return None
        pk, facility_id, person_id = candidates[0]
        assert person_id is not None
        return _Row(row, self.facilities[facility_id], person_id, pk)


def _with_access(actor: Actor, rows: Iterable[_Row], granted: Grants) -> list[_Row]:
    for row in rows:
        if row.facility.id in actor.facility_ids or not actor.facility_ids:
            row.access = "own"
        else:
            row.access = cross_facility_reason(
                granted, Resource(row.facility.id, row.person_id, row.study_pk)) or "other"
    return list(rows)


def _resolved(ctx: Context, actor: Actor, rows: list[Row]) -> list[_Row]:
    with ctx.db.read() as tx:
        owners = _Owners(tx)
        found = [r for r in (owners.of(row) for row in rows) if r is not None]
        granted = grants.load(ctx, tx, actor)
    return _with_access(actor, found, granted)


def _person_queries(ctx: Context, actor: Actor, person_id: int, level: Level, tags: tuple[int, ...],
                    limit: int) -> Iterator[Query]:
    """The queries that reach a person's studies: its local identity in the caller's
    domain (expanded to every identity of the person, MIMA), else each of its
    identities elsewhere (plain matching: the scope decides what comes back)."""
    with ctx.db.read() as tx:
        identities = identities_of(tx, person_id)[:MAX_IDENTITIES]
    own = [i for i in identities if i.facility_id in actor.facility_ids]
    if own:
        yield _query(level, _filters([(PATIENT_ID, own[0].patient_id)]), tags, limit)
        return
    for identity in identities:
        yield _query(level, _filters([(PATIENT_ID, identity.patient_id), (ISSUER, identity.issuer)]),
                     tags, limit)


def _person_rows(ctx: Context, actor: Actor, person_id: int, level: Level, tags: tuple[int, ...],
                 limit: int, source: str) -> list[_Row]:
    rows: list[Row] = []
    for query in _person_queries(ctx, actor, person_id, level, tags, limit):
        rows.extend(find(ctx, actor, query, source=source))
    return [r for r in _resolved(ctx, actor, rows) if r.person_id == person_id]


# -- search -----------------------------------------------------------------------------


def _referenced_person(ctx: Context, actor: Actor, criteria: Criteria) -> int | None:
    ref = (grants.PersonRef(ins=criteria.ins) if criteria.ins
           else grants.PersonRef(facility=criteria.facility, patient_id=criteria.patient_id))
    try:
        return grants.resolve_person(ctx, actor, ref)
    except NotFound:
        return None


def _search_filters(ctx: Context, actor: Actor, criteria: Criteria) -> tuple[list[Filter], bool]:
    filters: list[Filter] = []
    fuzzy = False
    if criteria.name:
        made, fuzzy = _name_filter(criteria.name)
        if made is not None:
            filters.append(made)
    if criteria.birth_date:
        filters.extend(_filters([(BIRTH_DATE, criteria.birth_date)]))
    if criteria.patient_id:
        filters.extend(_filters([(PATIENT_ID, criteria.patient_id)]))
    return filters, fuzzy


def _first(values: Iterable[object]) -> str:
    return next((str(v) for v in values if v), "")


def _group(rows: Sequence[_Row]) -> list[PersonHit]:
    by_person: dict[int, list[_Row]] = {}
    for row in rows:
        by_person.setdefault(row.person_id, []).append(row)
    hits = []
    for person_id, group in by_person.items():
        names = tuple(dict.fromkeys(str(r.values.get(PATIENT_NAME) or "") for r in group if r.values.get(PATIENT_NAME)))
        identities = tuple(dict.fromkeys(
            Identity(r.facility.slug, r.facility.name, _original(r.values)[0]) for r in group))
        dates = sorted((str(r.values.get(STUDY_DATE) or "") for r in group), reverse=True)
        hits.append(PersonHit(
            person_id=person_id, names=names,
            birth_date=_first(r.values.get(BIRTH_DATE) for r in group),
            sex=_first(r.values.get(SEX) for r in group),
            identities=identities, studies=len({(r.facility.id, r.values.get(STUDY_UID)) for r in group}),
            latest=dates[0] if dates else "",
            break_glass=any(r.access == "break-glass" for r in group),
        ))
    hits.sort(key=lambda h: (h.names[0] if h.names else "", h.birth_date, h.person_id))
    return hits


def search(ctx: Context, actor: Actor, criteria: Criteria) -> SearchResult:
    """Persons matching ``criteria`` among the studies the actor may see (module doc)."""
    if criteria.empty:
        raise BadRequest("give a name, a birth date, a PatientID or an INS")
    if criteria.names_a_person:
        person_id = _referenced_person(ctx, actor, criteria)
        rows = ([] if person_id is None else
                _person_rows(ctx, actor, person_id, Level.STUDY, SEARCH_TAGS, SEARCH_ROWS + 1, "portal-search"))
        if criteria.birth_date:
            rows = [r for r in rows if r.values.get(BIRTH_DATE) == criteria.birth_date]
        if not rows:
            # audited like any search, naming no person: existence is not revealed
            audit.record_alone(ctx, actor, "query", outcome="no-match", object_type="person",
                               detail={"source": "portal-search",
                                       "keys": {"reference": "ins" if criteria.ins else "facility"}})
            return SearchResult((), nothing_visible_for_reference=True)
        return SearchResult(tuple(_group(rows)[:SEARCH_PERSONS]), truncated=len(rows) > SEARCH_ROWS)
    filters, fuzzy = _search_filters(ctx, actor, criteria)
    query = _query(Level.STUDY, filters, SEARCH_TAGS, SEARCH_ROWS + 1, fuzzy)
    found = list(find(ctx, actor, query, source="portal-search"))
    truncated = len(found) > SEARCH_ROWS
    hits = _group(_resolved(ctx, actor, found[:SEARCH_ROWS]))
    return SearchResult(tuple(hits[:SEARCH_PERSONS]), truncated=truncated or len(hits) > SEARCH_PERSONS)


def person_of_local_id(ctx: Context, actor: Actor, patient_id: str, facility: str = "") -> int:
    """The person of a PatientID of the actor's facility (or of ``facility``); NotFound."""
    if not patient_id or len(patient_id) > 64:
        raise BadRequest("a PatientID is 1 to 64 characters")
    return grants.resolve_person(ctx, actor, grants.PersonRef(facility=facility, patient_id=patient_id))


# -- timeline ---------------------------------------------------------------------------


def _is_report(sop_classes: object) -> bool:
    if not isinstance(sop_classes, list):
        return False
    return any(str(uid).startswith(REPORT_SOP_PREFIXES) for uid in sop_classes)


def _studies(rows: Sequence[_Row]) -> list[StudyEntry]:
    by_study: dict[tuple[int, str], list[_Row]] = {}
    for row in rows:
        by_study.setdefault((row.facility.id, str(row.values.get(STUDY_UID) or "")), []).append(row)
    entries = []
    for (_, uid), group in by_study.items():
        first = group[0]
        v = first.values
        series = {str(r.values.get(SERIES_UID)) for r in group}
        instances = sum(int(n) for r in group if isinstance(n := r.values.get(SERIES_INSTANCES), int))
        modalities = tuple(sorted({str(r.values.get(MODALITY)) for r in group if r.values.get(MODALITY)}))
        parts = tuple(sorted({str(r.values.get(BODY_PART)) for r in group if r.values.get(BODY_PART)}))
        entries.append(StudyEntry(
            study_uid=uid, date=str(v.get(STUDY_DATE) or ""), time=str(v.get(STUDY_TIME) or ""),
            facility_slug=first.facility.slug, facility_name=first.facility.name,
            modalities=modalities, body_parts=parts,
            description=str(v.get(STUDY_DESCRIPTION) or ""), accession=str(v.get(ACCESSION) or ""),
            series=len(series), instances=instances,
            has_report=_is_report(v.get(SOP_CLASSES)) or bool({"SR", "DOC"} & set(modalities)),
            access=first.access,
        ))
    entries.sort(key=lambda s: (s.date, s.time, s.study_uid), reverse=True)
    return entries


def timeline(ctx: Context, actor: Actor, person_id: int) -> Timeline:
    """The person's studies the actor may see, newest first (audited, module doc)."""
    if not 0 < person_id < 2**63:
        raise NotFound("person not found")
    with ctx.db.read() as tx:
        person_id = current_person(tx, person_id)
        holders = {i.facility_id for i in identities_of(tx, person_id)}
    rows = _person_rows(ctx, actor, person_id, Level.SERIES, TIMELINE_TAGS, TIMELINE_ROWS, "portal-timeline")
    studies = _studies(rows)
    own_patient = bool(holders & actor.facility_ids)
    with ctx.db.write() as tx:
        opposed = own_patient and person_id in grant_index.opposed_persons(tx, among=[person_id])
        audit.record(ctx, tx, actor, "timeline", object_type="person", object_id=str(person_id),
                     person_id=person_id,
                     detail={"studies": len(studies),
                             "access": sorted({s.access for s in studies}),
                             "facilities": sorted({s.facility_slug for s in studies})})
    care_until, btg_until = _grants_for(ctx, actor, person_id)
    facility = Resource(actor.facility_id, person_id)
    identities = tuple(dict.fromkeys(Identity(r.facility.slug, r.facility.name, _original(r.values)[0])
                                     for r in rows))
    return Timeline(
        person_id=person_id,
        names=tuple(dict.fromkeys(str(r.values.get(PATIENT_NAME)) for r in rows if r.values.get(PATIENT_NAME))),
        birth_date=_first(r.values.get(BIRTH_DATE) for r in rows),
        sex=_first(r.values.get(SEX) for r in rows),
        identities=identities, studies=tuple(studies), own_patient=own_patient, opposed=opposed,
        care_until=care_until, break_glass_until=btg_until,
        may_record_care=is_allowed(actor, Action.RECORD_CARE, facility),
        may_break_glass=is_allowed(actor, Action.BREAK_GLASS, facility),
        may_record_opposition=own_patient and is_allowed(actor, Action.RECORD_OPPOSITION, facility),
    )


def _grants_for(ctx: Context, actor: Actor, person_id: int) -> tuple[datetime | None, datetime | None]:
    """When the actor's care relationship and break-the-glass access to the person end."""
    care: datetime | None = None
    btg: datetime | None = None
    try:
        held = grants.active_grants_of(ctx, actor)
    except CoffreError:
        return None, None
    for grant in held:
        if grant.person_id != person_id:
            continue
        if grant.kind == "care":
            care = max(care, grant.expires_at) if care else grant.expires_at
        elif grant.kind == "break-glass":
            btg = max(btg, grant.expires_at) if btg else grant.expires_at
    return care, btg


__all__ = [
    "Criteria",
    "Identity",
    "PersonHit",
    "SearchResult",
    "StudyEntry",
    "Timeline",
    "person_of_local_id",
    "search",
    "timeline",
]

"""QIDO-RS: search for studies, series and instances (PS3.18 10.6), plus ``/patients``.

The request becomes the same frozen :class:`~coffre.dicom.query.Query` as a C-FIND
identifier, built with :func:`~coffre.dicom.query.make_filter` (single value, list of
UIDs, universal, wild card, range and empty value matching, PS3.4 C.2.2.2), and runs
through ``services.query.find``, which authorizes, audits and adds the facility scope.
Results are DICOM JSON (PS3.18 F.2, ``dicomjson.py``).

Behaviour (PS3.18 8.3.4, 10.6.1):

- Match keys are keywords or tags (``PatientName=DOE*``, ``00100020=P1``); a UID (or
  CS) key takes a list of alternatives separated by ``,`` or ``\\``. UIDs in the path
  are single values and must be valid (PS3.5 9.1) or the request gets 400.
- A key on an attribute the index does not hold (or a sequence path) is ignored for
  matching and returned empty, with a ``Warning: 299`` header naming it. A key on an
  indexed attribute below the searched level is a 400. A parameter that is no
  attribute at all is ignored with a ``Warning``.
- ``includefield`` (repeatable, comma-separated; ``all``) adds return attributes; match
  keys are always returned.
- ``limit`` defaults to ``http.qido_default_limit``; a larger one than
  ``http.qido_max_limit`` is reduced, with a ``Warning``. When more matches exist than
  were returned, a ``Warning`` says so (PS3.18 8.3.4.4); ``offset`` pages through them
  in a stable order.
- ``fuzzymatching=true``: a Person Name value matches the prefix of any name component.
- No match is ``200`` with ``[]``.
- Responses are ``application/dicom+json`` (or ``application/json`` when that is what
  the client prefers); any other ``Accept`` gets 406.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi import Query as QueryParam
from fastapi.responses import Response
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from coffre.dicom.attributes import BY_TAG, INDEXED_ATTRIBUTES, Level
from coffre.dicom.query import (
    COMPUTED,
    MATCHABLE_COMPUTED,
    UNIQUE_KEY,
    Filter,
    Match,
    Model,
    Query,
    levels_above,
    make_filter,
)
from coffre.dicom.uid import check_uid
from coffre.errors import BadRequest, NotAcceptable
from coffre.index.query import Row
from coffre.services.domain import OTHER_PATIENT_IDS
from coffre.services.query import find
from coffre.settings import HttpSettings
from coffre.web.deps import ActorDep, ContextDep
from coffre.web.dicomweb import dicomjson
from coffre.web.dicomweb.media import parse_accept

router = APIRouter()

DICOM_JSON = "application/dicom+json"
JSON = "application/json"

STUDY_UID = UNIQUE_KEY[Level.STUDY]
SERIES_UID = UNIQUE_KEY[Level.SERIES]
SOP_UID = UNIQUE_KEY[Level.IMAGE]
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
RETRIEVE_URL = 0x00081190
SPECIFIC_CHARACTER_SET = 0x00080005

#: what a result may report although the index has no column for it
_FILLED = frozenset({RETRIEVE_AE_TITLE, INSTANCE_AVAILABILITY, RETRIEVE_URL})

TRUNCATED = (
    "The number of results exceeded the maximum supported by the server. "
    "Additional results can be requested."
)


def _tags(*keywords: str) -> tuple[int, ...]:
    tags = tuple(tag_for_keyword(k) for k in keywords)
    assert all(t is not None for t in tags), keywords
    return tuple(int(t) for t in tags if t is not None)


#: PS3.18 Table 10.6.3-3 (Study Result Attributes), those the archive can provide
STUDY_ATTRIBUTES = _tags(
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate",
    "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
#: PS3.18 Table 10.6.3-4 (Series Result Attributes)
SERIES_ATTRIBUTES = _tags(
    "Modality", "SeriesDescription", "RetrieveURL", "SeriesInstanceUID", "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
)
#: PS3.18 Table 10.6.3-5 (Instance Result Attributes)
INSTANCE_ATTRIBUTES = _tags(
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL", "InstanceNumber",
    "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)
#: Coffre extension: /patients
PATIENT_ATTRIBUTES = _tags(
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)

_RESERVED = frozenset({
    "includefield", "limit", "offset", "fuzzymatching", "emptyvaluematching",
    "multiplevaluematching", "accept", "charset",
})
_UINT = re.compile(r"[0-9]{1,18}")
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
#: VRs whose values cannot hold a comma: a comma separates alternatives, as a backslash does
#: (PS3.18 8.3.4.1 uid-list-match for UI; CS for viewers sending ModalitiesInStudy=CT,MR)
_COMMA_LISTS = frozenset({"UI", "CS"})
#: most distinct attributes a client may name (includefield and match keys)
_MAX_RETURN_TAGS = 256
_ORDER = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)


@dataclass(frozen=True, slots=True)
class Resource:
    """One QIDO-RS target resource: its level, model and default return attributes."""

    level: Level
    model: Model
    defaults: tuple[int, ...]


PATIENTS = Resource(Level.PATIENT, Model.PATIENT_ROOT, PATIENT_ATTRIBUTES)
STUDIES = Resource(Level.STUDY, Model.STUDY_ROOT, STUDY_ATTRIBUTES)
STUDY_SERIES = Resource(Level.SERIES, Model.STUDY_ROOT, SERIES_ATTRIBUTES)
ALL_SERIES = Resource(Level.SERIES, Model.STUDY_ROOT, STUDY_ATTRIBUTES + SERIES_ATTRIBUTES)
SERIES_INSTANCES = Resource(Level.IMAGE, Model.STUDY_ROOT, INSTANCE_ATTRIBUTES)
STUDY_INSTANCES = Resource(Level.IMAGE, Model.STUDY_ROOT, SERIES_ATTRIBUTES + INSTANCE_ATTRIBUTES)
ALL_INSTANCES = Resource(
    Level.IMAGE, Model.STUDY_ROOT, STUDY_ATTRIBUTES + SERIES_ATTRIBUTES + INSTANCE_ATTRIBUTES
)


@dataclass(frozen=True, slots=True)
class Search:
    """A parsed QIDO-RS request: the query (asking one row more than the page) and warnings."""

    query: Query
    page: int
    warnings: tuple[str, ...]


# -- parameters -------------------------------------------------------------------------


def parse_attribute(name: str) -> tuple[int, bool] | None:
    """``(tag, is_path)`` of a keyword, a tag or a dotted sequence path; None if no attribute."""
    if not 0 < len(name) <= 256:
        return None
    parts = name.split(".")
    tags = [_attribute_id(p) for p in parts]
    if any(t is None for t in tags):
        return None
    first = tags[0]
    assert first is not None
    return first, len(parts) > 1


def _attribute_id(text: str) -> int | None:
    if _HEX_TAG.fullmatch(text):
        return int(text, 16)
    if not text.isascii() or not text.isalnum():
        return None
    tag = tag_for_keyword(text)
    return None if tag is None else int(tag)


def label(tag: int) -> str:
    """A keyword, or the tag as eight hex digits: never the caller's raw text."""
    return keyword_for_tag(tag) or f"{tag:08X}"


def _uint(value: str, name: str) -> int:
    if not _UINT.fullmatch(value.strip()):
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(value.strip())


def _boolean(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return lowered == "true"


def _matchable(tag: int) -> bool:
    return tag in BY_TAG or tag in MATCHABLE_COMPUTED


def _visible_levels(resource: Resource) -> tuple[Level, ...]:
    above = levels_above(resource.level, resource.model)
    if resource.model is Model.STUDY_ROOT and resource.level is not Level.PATIENT:
        above = (Level.PATIENT, *above)  # Study Root keeps patient attributes at study level
    return (*above, resource.level)


def all_fields(resource: Resource) -> tuple[int, ...]:
    """``includefield=all``: every attribute the index holds or computes at this level."""
    levels = _visible_levels(resource)
    tags = [a.tag for a in INDEXED_ATTRIBUTES if a.level in levels]
    tags += [c.tag for c in COMPUTED if c.level in levels]
    if resource.level is not Level.PATIENT:
        tags += [INSTANCE_AVAILABILITY, RETRIEVE_URL]
    return tuple(tags)


def path_filters(study: str | None = None, series: str | None = None, sop: str | None = None) -> list[Filter]:
    """Single value filters of the UIDs of the resource path (400 InvalidUID if malformed)."""
    filters = []
    for tag, value, keyword in (
        (STUDY_UID, study, "StudyInstanceUID"),
        (SERIES_UID, series, "SeriesInstanceUID"),
        (SOP_UID, sop, "SOPInstanceUID"),
    ):
        if value is not None:
            filters.append(Filter(tag, Match.SINGLE, (check_uid(value, keyword),)))
    return filters


def _warning_names(names: Sequence[str]) -> str:
    shown = [n for n in names if _SAFE_NAME.fullmatch(n)][:10]
    text = ", ".join(shown)
    hidden = len(names) - len(shown)
    if hidden:
        text += f"{', ' if shown else ''}{hidden} more"
    return text


def build_search(
    resource: Resource,
    params: Sequence[tuple[str, str]],
    filters_from_path: Sequence[Filter],
    http: HttpSettings,
) -> Search:
    """The query of a QIDO-RS request (PS3.18 8.3.4, 10.6.1.2)."""
    filters = list(filters_from_path)
    returned: list[int] = list(resource.defaults)
    returned += [UNIQUE_KEY[lv] for lv in _visible_levels(resource) if lv is not Level.PATIENT]
    match_tags: set[int] = set()
    unsupported: list[str] = []
    ignored: list[str] = []
    warnings: list[str] = []
    seen: set[str] = set()
    include_all = False
    limit: int | None = None
    offset = 0
    fuzzy = False
    for name, value in params:
        key = name.lower()
        if key == "includefield":
            for field in value.split(","):
                field = field.strip()
                if field.lower() == "all":
                    include_all = True
                elif field:
                    parsed = parse_attribute(field)
                    if parsed is None:
                        raise BadRequest("includefield: not an attribute keyword or tag")
                    returned.append(parsed[0])
            continue
        if key in _RESERVED:
            if key in seen:
                raise BadRequest(f"{key} is given more than once")
            seen.add(key)
            if key == "limit":
                limit = _uint(value, "limit")
                if limit == 0:
                    raise BadRequest("limit must be a positive integer")
            elif key == "offset":
                offset = _uint(value, "offset")
            elif key == "fuzzymatching":
                fuzzy = _boolean(value, "fuzzymatching")
            elif key == "emptyvaluematching" and _boolean(value, key):
                warnings.append("The emptyvaluematching parameter is not supported. "
                                "Empty Value Matching has not been performed.")
            elif key == "multiplevaluematching" and _boolean(value, key):
                warnings.append("The multiplevaluematching parameter is not supported. "
                                "Multiple Value Matching has not been performed.")
            continue  # accept: negotiated by the route; charset: results are always UTF-8
        parsed = parse_attribute(name)
        if parsed is None:
            ignored.append(name)
            continue
        tag, is_path = parsed
        if tag == SPECIFIC_CHARACTER_SET:
            continue  # never matched (PS3.4 C.2.2.2); results are UTF-8
        if tag in match_tags:
            raise BadRequest(f"{label(tag)} is given more than once")
        match_tags.add(tag)
        returned.append(tag)
        if is_path or not _matchable(tag):
            unsupported.append(label(tag))
            continue
        if dicomjson.vr_for(tag) in _COMMA_LISTS:
            value = value.replace(",", "\\")
        made = make_filter(tag, value)
        if made is not None:
            filters.append(made)
    if len(set(returned)) > _MAX_RETURN_TAGS:
        raise BadRequest(f"at most {_MAX_RETURN_TAGS} attributes may be returned")
    if include_all:
        returned += all_fields(resource)
    if limit is None:
        limit = http.qido_default_limit
    elif limit > http.qido_max_limit:
        warnings.append(f"The limit was reduced to {http.qido_max_limit}, "
                        "the maximum supported by the server.")
        limit = http.qido_max_limit
    if unsupported:
        warnings.append("The following attributes are not supported for matching and were "
                        "ignored: " + ", ".join(dict.fromkeys(unsupported)))
    if ignored:
        warnings.append("The following query parameters are not supported and were ignored: "
                        + _warning_names(ignored))
    _check_levels(resource, filters)
    query = Query(
        level=resource.level, model=resource.model, filters=tuple(filters),
        return_tags=tuple(dict.fromkeys(returned)), limit=limit + 1, offset=offset, fuzzy=fuzzy,
    )
    return Search(query=query, page=limit, warnings=tuple(warnings))


def _check_levels(resource: Resource, filters: Sequence[Filter]) -> None:
    """A match key of a level below the searched one cannot be used (400, before the audit)."""
    depth = _ORDER.index(resource.level)
    for f in filters:
        attr = BY_TAG.get(f.tag)
        key_level = attr.level if attr is not None else Level.STUDY
        if _ORDER.index(key_level) > depth:
            raise BadRequest(
                f"{label(f.tag)} is a {key_level.value.lower()} attribute: it cannot be "
                f"matched when searching for {_NOUN[resource.level]}"
            )


_NOUN = {Level.PATIENT: "patients", Level.STUDY: "studies", Level.SERIES: "series",
         Level.IMAGE: "instances"}


# -- responses --------------------------------------------------------------------------


def negotiate(accept_header: str | None, accept_param: str | None) -> str:
    """The media type of the response (PS3.18 8.7.3, 10.6.2); 406 if none is acceptable.

    The ``accept`` query parameter (PS3.18 8.3.3.1), when present, replaces the header.
    """
    ranges = parse_accept(accept_param if accept_param is not None else accept_header)
    for media_range in ranges:
        if media_range.essence == JSON:
            return JSON
        if media_range.matches(DICOM_JSON):
            return DICOM_JSON
    raise NotAcceptable(
        "search results are available as application/dicom+json or application/json only"
    )


def retrieve_url(service: str, level: Level, row: Row) -> str | None:
    """The WADO-RS URL of a result (RetrieveURL, 0008,1190)."""
    if level is Level.PATIENT:
        return None
    url = f"{service}/studies/{row.get(STUDY_UID)}"
    if level in (Level.SERIES, Level.IMAGE):
        url += f"/series/{row.get(SERIES_UID)}"
    if level is Level.IMAGE:
        url += f"/instances/{row.get(SOP_UID)}"
    return url


def _other_id(pair: str) -> dict[str, dicomjson.Element]:
    """One OtherPatientIDsSequence item from "PatientID\\IssuerOfPatientID" (services.domain)."""
    patient_id, _, issuer = pair.partition("\\")
    return {
        "00100020": dicomjson.element("LO", patient_id),
        "00100021": dicomjson.element("LO", issuer),
        "00100022": dicomjson.element("CS", "TEXT"),
    }


def render(rows: Sequence[Row], level: Level, service: str, ae_title: str) -> bytes:
    """The DICOM JSON array of the result rows, with the attributes the archive fills in."""
    out = []
    for row in rows:
        values: dict[int, object] = dict(row)
        if RETRIEVE_URL in values:
            values[RETRIEVE_URL] = retrieve_url(service, level, row)
        if INSTANCE_AVAILABILITY in values and level is not Level.PATIENT:
            values[INSTANCE_AVAILABILITY] = "ONLINE"
        if RETRIEVE_AE_TITLE in values:
            values[RETRIEVE_AE_TITLE] = ae_title
        doc = dicomjson.dataset(values)
        others = row.get(OTHER_PATIENT_IDS)
        if isinstance(others, list) and others:
            doc[dicomjson.tag_key(OTHER_PATIENT_IDS)] = {"vr": "SQ", "Value": [_other_id(p) for p in others]}
        out.append(doc)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True, slots=True)
class QidoRequest:
    """What a QIDO-RS route needs from the HTTP request."""

    params: tuple[tuple[str, str], ...]
    accept: str | None
    service: str


def _qido_request(
    request: Request,
    ctx: ContextDep,
    includefield: Annotated[list[str] | None, QueryParam(
        description="Return attributes: keywords or tags, comma-separated or repeated; "
                    "`all` for every attribute the archive holds at this level")] = None,
    limit: Annotated[str | None, QueryParam(
        description="Most results to return (default and maximum are configured)")] = None,
    offset: Annotated[str | None, QueryParam(description="Results to skip")] = None,
    fuzzymatching: Annotated[str | None, QueryParam(
        description="`true`: person names match the prefix of any name component")] = None,
) -> QidoRequest:
    """Match keys are any other parameter named by a keyword or a tag (``PatientName=DOE*``)."""
    del includefield, limit, offset, fuzzymatching  # declared for OpenAPI; read in order below
    params = tuple(request.query_params.multi_items())
    accept_param = next((v for k, v in params if k.lower() == "accept"), None)
    service = str(request.base_url).rstrip("/") + ctx.settings.http.dicomweb_base
    return QidoRequest(params=params, accept=negotiate(request.headers.get("accept"), accept_param),
                       service=service)


QidoDep = Annotated[QidoRequest, Depends(_qido_request)]


def _search(ctx: ContextDep, actor: ActorDep, req: QidoRequest, resource: Resource,
            filters: list[Filter]) -> Response:
    search = build_search(resource, req.params, filters, ctx.settings.http)
    rows = list(find(ctx, actor, search.query, source="qido-rs"))
    warnings = list(search.warnings)
    if len(rows) > search.page:
        rows = rows[: search.page]
        warnings.append(TRUNCATED)
    body = render(rows, resource.level, req.service, ctx.settings.archive.ae_title)
    response = Response(content=body, media_type=req.accept)
    for text in warnings:
        response.headers.append("Warning", f'299 {req.service}: "{text}"')
    return response


_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"description": "Matches as a DICOM JSON array (empty when nothing matches)",
          "content": {DICOM_JSON: {}}},
    400: {"description": "Invalid parameter, UID or match key"},
    401: {"description": "No valid bearer token"},
    403: {"description": "The token may not query"},
    406: {"description": "The Accept header asks for something other than DICOM JSON"},
}


@router.get("/patients", summary="Search for patients (Coffre extension of QIDO-RS)",
            responses=_RESPONSES, response_class=Response)
def search_patients(ctx: ContextDep, actor: ActorDep, req: QidoDep) -> Response:
    """Patient Root query at PATIENT level: one result per local identity (issuer,
    PatientID) of the caller's facility, with the number of related studies, series and
    instances. Not part of PS3.18."""
    return _search(ctx, actor, req, PATIENTS, [])


@router.get("/studies", summary="Search for studies (PS3.18 10.6)", responses=_RESPONSES,
            response_class=Response)
def search_studies(ctx: ContextDep, actor: ActorDep, req: QidoDep) -> Response:
    return _search(ctx, actor, req, STUDIES, [])


@router.get("/studies/{study}/series", summary="Search for the series of a study",
            responses=_RESPONSES, response_class=Response)
def search_study_series(study: str, ctx: ContextDep, actor: ActorDep, req: QidoDep) -> Response:
    return _search(ctx, actor, req, STUDY_SERIES, path_filters(study))


@router.get("/series", summary="Search for series (all studies)", responses=_RESPONSES,
            response_class=Response)
def search_series(ctx: ContextDep, actor: ActorDep, req: QidoDep) -> Response:
    return _search(ctx, actor, req, ALL_SERIES, [])


@router.get("/studies/{study}/series/{series}/instances",
            summary="Search for the instances of a series", responses=_RESPONSES,
            response_class=Response)
def search_series_instances(study: str, series: str, ctx: ContextDep, actor: ActorDep,
                            req: QidoDep) -> Response:
    return _search(ctx, actor, req, SERIES_INSTANCES, path_filters(study, series))


@router.get("/studies/{study}/instances", summary="Search for the instances of a study",
            responses=_RESPONSES, response_class=Response)
def search_study_instances(study: str, ctx: ContextDep, actor: ActorDep, req: QidoDep) -> Response:
    return _search(ctx, actor, req, STUDY_INSTANCES, path_filters(study))


@router.get("/series/{series}/instances",
            summary="Search for the instances of a series, whatever its study (Coffre extension)",
            responses=_RESPONSES, response_class=Response)
def search_instances_of_series(series: str, ctx: ContextDep, actor: ActorDep,
                               req: QidoDep) -> Response:
    return _search(ctx, actor, req, ALL_INSTANCES, path_filters(series=series))


@router.get("/instances", summary="Search for instances (all studies)", responses=_RESPONSES,
            response_class=Response)
def search_instances(ctx: ContextDep, actor: ActorDep, req: QidoDep) -> Response:
    return _search(ctx, actor, req, ALL_INSTANCES, [])

"""REST API: persons, their local identities, the reconciliation queue (``/api``).

- ``GET /api/persons``: search by ``name`` (prefix, case and accents ignored),
  ``birth_date`` (``YYYYMMDD``), ``facility`` + ``patient_id`` (+ ``issuer``), ``ins``;
  with none of these, the persons of ``facility`` (or all), by id.
- ``GET /api/persons/{id}``, ``GET /api/persons/{id}/history``.
- ``POST /api/persons/{id}/link`` ``{"identity", "reason"}``: the identity joins person *id*;
  ``/unlink`` ``{"identity", "reason"}``: the identity (of person *id*) gets a person of its
  own; ``/merge`` ``{"person", "reason"}``: person ``person`` is merged into *id*;
  ``/split`` ``{"reason"}``: undo the merge of person *id*.
- ``GET /api/reconciliation?status=open``; ``POST /api/reconciliation/{id}``
  ``{"decision": "link"|"reject", "reason"}``.

An identity is ``{"id": …}`` (as listed in a person) or ``{"facility", "patient_id",
"issuer"?}``. Bodies are read with a bound (:data:`MAX_BODY`) and every string is
bounded; the service (``services/identity.py``) authorizes (identity managers, for
identities of their facilities) and audits. Errors are the domain errors' statuses
(``web/errors.py``): 400 bad input, 401/403, 404 unknown, 409 refused change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool

from coffre.errors import BadRequest, TooLarge
from coffre.services import identity as service
from coffre.services.identity import (
    MAX_ID,
    MAX_LIMIT,
    MAX_NAME,
    MAX_PATIENT_ID,
    MAX_REASON,
    MAX_SLUG,
    Candidate,
    IdentityEvent,
    IdentityRecord,
    IdentityRef,
    PersonRecord,
)
from coffre.web.deps import ActorDep, ContextDep

router = APIRouter(tags=["persons"])

MAX_BODY = 8192

PersonId = Annotated[int, Path(ge=1, le=MAX_ID, description="A person's id")]
CandidateId = Annotated[int, Path(ge=1, le=MAX_ID, description="A reconciliation candidate's id")]
Reason = Annotated[str, Field(min_length=1, max_length=MAX_REASON, description="Why (required, audited)")]


# --- bodies -----------------------------------------------------------------------------


class IdentityIn(BaseModel):
    """A local identity: its ``id``, or its facility (slug) and PatientID (issuer optional)."""

    id: int | None = Field(default=None, ge=1, le=MAX_ID)
    facility: str | None = Field(default=None, min_length=1, max_length=MAX_SLUG)
    patient_id: str | None = Field(default=None, min_length=1, max_length=MAX_PATIENT_ID)
    issuer: str | None = Field(default=None, max_length=MAX_PATIENT_ID)

    @model_validator(mode="after")
    def _one_way(self) -> IdentityIn:
        if (self.id is None) == (self.facility is None or self.patient_id is None):
            raise ValueError("give the identity's id, or its facility and patient_id")
        return self

    def ref(self) -> IdentityRef | int:
        if self.id is not None:
            return self.id
        assert self.facility is not None and self.patient_id is not None
        return IdentityRef(self.facility, self.patient_id, self.issuer)


class LinkIn(BaseModel):
    identity: IdentityIn
    reason: Reason


class MergeIn(BaseModel):
    person: int = Field(ge=1, le=MAX_ID, description="The person merged into the one of the path")
    reason: Reason


class ReasonIn(BaseModel):
    reason: Reason


class DecisionIn(BaseModel):
    decision: Literal["link", "reject"]
    reason: Reason


# --- answers ----------------------------------------------------------------------------


class IdentityOut(BaseModel):
    id: int
    facility: str
    issuer: str
    patient_id: str
    person: int | None
    name: str
    birth_date: str
    sex: str


class PersonOut(BaseModel):
    id: int
    ins: str
    ins_oid: str
    merged_into: int | None
    created_at: datetime
    identities: list[IdentityOut]


class EventOut(BaseModel):
    id: int
    at: datetime
    action: str
    identity: int | None
    from_person: int | None
    to_person: int | None
    actor: str
    reason: str
    evidence: dict[str, Any]


class CandidateOut(BaseModel):
    id: int
    status: str
    score: int
    evidence: dict[str, Any]
    created_at: datetime
    decided_at: datetime | None
    decided_by: str
    identity: IdentityOut
    #: the candidate person as it is now (after merges)
    person: PersonOut


class SplitOut(BaseModel):
    person: PersonOut
    from_person: int
    restored: list[int]
    skipped: list[int]


def _identity(i: IdentityRecord) -> IdentityOut:
    return IdentityOut(id=i.patient_pk, facility=i.facility_slug, issuer=i.issuer, patient_id=i.patient_id,
                       person=i.person_id, name=i.patient_name, birth_date=i.birth_date, sex=i.sex)


def _person(p: PersonRecord) -> PersonOut:
    return PersonOut(id=p.id, ins=p.ins, ins_oid=p.ins_oid, merged_into=p.merged_into, created_at=p.created_at,
                     identities=[_identity(i) for i in p.identities])


def _event(e: IdentityEvent) -> EventOut:
    return EventOut(id=e.id, at=e.at, action=e.action, identity=e.patient_pk, from_person=e.from_person,
                    to_person=e.to_person, actor=e.actor, reason=e.reason, evidence=e.evidence)


def _candidate(c: Candidate, identity: IdentityRecord, person: PersonRecord) -> CandidateOut:
    return CandidateOut(id=c.id, status=c.status, score=c.score, evidence=c.evidence, created_at=c.created_at,
                        decided_at=c.decided_at, decided_by=c.decided_by, identity=_identity(identity),
                        person=_person(person))


_Model = TypeVar("_Model", bound=BaseModel)


async def _body(request: Request, model: type[_Model]) -> _Model:
    """The JSON body, read with a bound, as ``model`` (400 when it is not one)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise TooLarge(f"the request body exceeds {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise TooLarge(f"the request body exceeds {MAX_BODY} bytes")
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) or "body" for e in exc.errors()})
        raise BadRequest("invalid body: " + ", ".join(fields)) from None


def _openapi(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid parameters or body"},
    401: {"description": "No valid credentials"},
    403: {"description": "The caller may not manage these identities"},
    404: {"description": "Unknown person, identity, facility or candidate"},
    409: {"description": "The change contradicts the current links (e.g. two INS on one person)"},
}


# --- routes -----------------------------------------------------------------------------


@router.get("/persons", summary="Search persons (identity managers)", response_model=list[PersonOut],
            responses=_ERRORS)
def search_persons(
    ctx: ContextDep,
    actor: ActorDep,
    name: Annotated[str | None, Query(max_length=MAX_NAME, description="Name prefix: MARTIN or MARTIN^CL")] = None,
    birth_date: Annotated[str | None, Query(max_length=10, description="YYYYMMDD")] = None,
    facility: Annotated[str | None, Query(max_length=MAX_SLUG, description="A facility's slug")] = None,
    patient_id: Annotated[str | None, Query(max_length=MAX_PATIENT_ID, description="With facility")] = None,
    issuer: Annotated[str | None, Query(max_length=MAX_PATIENT_ID, description="With patient_id")] = None,
    ins: Annotated[str | None, Query(max_length=64, description="An INS value")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[PersonOut]:
    if patient_id is not None and not facility:
        raise BadRequest("patient_id needs facility: PatientIDs are unique per facility only")
    if any(v for v in (name, birth_date, patient_id, ins)):
        ref = IdentityRef(facility, patient_id, issuer) if facility and patient_id else None
        if facility and not patient_id:
            raise BadRequest("facility filters a search only with patient_id")
        found = service.search(ctx, actor, name=name, birth_date=birth_date, identity=ref, ins=ins,
                               limit=limit, offset=offset)
    else:
        found = service.list_persons(ctx, actor, facility=facility, limit=limit, offset=offset)
    return [_person(p) for p in found]


@router.get("/persons/{person_id}", summary="A person and its local identities", response_model=PersonOut,
            responses=_ERRORS)
def get_person(ctx: ContextDep, actor: ActorDep, person_id: PersonId) -> PersonOut:
    return _person(service.get(ctx, actor, person_id))


@router.get("/persons/{person_id}/history", summary="Identity events of a person (provenance)",
            response_model=list[EventOut], responses=_ERRORS)
def person_history(ctx: ContextDep, actor: ActorDep, person_id: PersonId) -> list[EventOut]:
    return [_event(e) for e in service.history(ctx, actor, person_id)]


@router.post("/persons/{person_id}/link", summary="Move a local identity to this person",
             response_model=PersonOut, responses=_ERRORS, openapi_extra=_openapi(LinkIn))
async def link(request: Request, ctx: ContextDep, actor: ActorDep, person_id: PersonId) -> PersonOut:
    body = await _body(request, LinkIn)

    def run() -> PersonOut:
        target = service.link(ctx, actor, body.identity.ref(), person_id, reason=body.reason)
        return _person(service.get(ctx, actor, target))

    return await run_in_threadpool(run)


@router.post("/persons/{person_id}/unlink", summary="Detach a local identity into a person of its own",
             response_model=PersonOut, responses=_ERRORS, openapi_extra=_openapi(LinkIn))
async def unlink(request: Request, ctx: ContextDep, actor: ActorDep, person_id: PersonId) -> PersonOut:
    body = await _body(request, LinkIn)

    def run() -> PersonOut:
        new = service.unlink(ctx, actor, body.identity.ref(), reason=body.reason, from_person=person_id)
        return _person(service.get(ctx, actor, new))

    return await run_in_threadpool(run)


@router.post("/persons/{person_id}/merge", summary="Merge another person into this one",
             response_model=PersonOut, responses=_ERRORS, openapi_extra=_openapi(MergeIn))
async def merge(request: Request, ctx: ContextDep, actor: ActorDep, person_id: PersonId) -> PersonOut:
    body = await _body(request, MergeIn)

    def run() -> PersonOut:
        service.merge(ctx, actor, person_id, body.person, reason=body.reason)
        return _person(service.get(ctx, actor, person_id))

    return await run_in_threadpool(run)


@router.post("/persons/{person_id}/split", summary="Undo the merge of this person",
             response_model=SplitOut, responses=_ERRORS, openapi_extra=_openapi(ReasonIn))
async def split(request: Request, ctx: ContextDep, actor: ActorDep, person_id: PersonId) -> SplitOut:
    body = await _body(request, ReasonIn)

    def run() -> SplitOut:
        result = service.split(ctx, actor, person_id, reason=body.reason)
        return SplitOut(person=_person(service.get(ctx, actor, result.person_id)), from_person=result.from_person,
                        restored=list(result.restored), skipped=list(result.skipped))

    return await run_in_threadpool(run)


@router.get("/reconciliation", summary="The reconciliation queue of the caller's facilities",
            response_model=list[CandidateOut], responses=_ERRORS)
def reconciliation(
    ctx: ContextDep,
    actor: ActorDep,
    status: Annotated[Literal["open", "linked", "rejected", "any"], Query()] = "open",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[CandidateOut]:
    views = service.reconciliation(ctx, actor, status=None if status == "any" else status, limit=limit,
                                   offset=offset)
    return [_candidate(v.candidate, v.identity, v.person) for v in views]


@router.post("/reconciliation/{candidate_id}", summary="Decide a candidate: link or reject",
             response_model=CandidateOut, responses=_ERRORS, openapi_extra=_openapi(DecisionIn))
async def decide(request: Request, ctx: ContextDep, actor: ActorDep, candidate_id: CandidateId) -> CandidateOut:
    body = await _body(request, DecisionIn)
    view = await run_in_threadpool(service.decide, ctx, actor, candidate_id, decision=body.decision,
                                   reason=body.reason)
    return _candidate(view.candidate, view.identity, view.person)

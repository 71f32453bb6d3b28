"""REST: grants (care relationships, reading assignments, break-the-glass) and oppositions.

Each route decodes its body, calls one use case of ``services.grants`` (which
authorizes and audits) and returns JSON. A person is named by id, by a facility's
PatientID (default: the caller's facility) or by INS.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from coffre.index.grants import GrantRow
from coffre.services import grants
from coffre.services.grants import PersonRef
from coffre.web.deps import ActorDep, ContextDep

router = APIRouter(tags=["grants"])

_Reason = Annotated[str, Field(min_length=1, max_length=500)]
_Id = Annotated[str, Field(max_length=64)]


class PersonName(BaseModel):
    person_id: int | None = Field(default=None, ge=1)
    facility: Annotated[str, Field(max_length=32)] = ""
    patient_id: _Id = ""
    ins: Annotated[str, Field(max_length=15)] = ""

    def ref(self) -> PersonRef:
        return PersonRef(person_id=self.person_id, facility=self.facility, patient_id=self.patient_id,
                         ins=self.ins)


class CareRequest(PersonName):
    days: int = Field(ge=1, le=3650)
    reason: _Reason


class BreakGlassRequest(PersonName):
    reason: _Reason


class ReadingRequest(BaseModel):
    study_instance_uid: Annotated[str, Field(min_length=1, max_length=64)]
    user: Annotated[str, Field(max_length=200)] = ""
    facility: Annotated[str, Field(max_length=32)] = ""
    days: int | None = Field(default=None, ge=1, le=3650)
    reason: _Reason = "reading assignment"


class OppositionRequest(PersonName):
    reason: _Reason


class ReviewRequest(BaseModel):
    note: _Reason


class GrantOut(BaseModel):
    id: int
    kind: str
    person_id: int | None
    grantee_facility_id: int | None
    grantee_user: str
    granted_by: str
    reason: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    reviewed_at: datetime | None
    reviewed_by: str
    review_note: str

    @staticmethod
    def of(g: GrantRow) -> GrantOut:
        return GrantOut(id=g.id, kind=g.kind, person_id=g.person_id, grantee_facility_id=g.grantee_facility_id,
                        grantee_user=g.grantee_user, granted_by=g.granted_by, reason=g.reason,
                        created_at=g.created_at, expires_at=g.expires_at, revoked_at=g.revoked_at,
                        reviewed_at=g.reviewed_at, reviewed_by=g.reviewed_by, review_note=g.review_note)


class Created(BaseModel):
    id: int
    person_id: int | None = None


@router.get("/grants", summary="The grants the caller (or its facility) holds now")
def list_mine(ctx: ContextDep, actor: ActorDep) -> list[GrantOut]:
    return [GrantOut.of(g) for g in grants.active_grants_of(ctx, actor)]


@router.post("/grants/care", status_code=201, summary="Record a care relationship with a person")
def care(body: CareRequest, ctx: ContextDep, actor: ActorDep) -> Created:
    person_id = grants.resolve_person(ctx, actor, body.ref())
    return Created(id=grants.record_care(ctx, actor, person_id, days=body.days, reason=body.reason),
                   person_id=person_id)


@router.post("/grants/break-glass", status_code=201,
             summary="Break the glass: time-limited access to one person, with a reason (alert + review)")
def break_glass(body: BreakGlassRequest, ctx: ContextDep, actor: ActorDep) -> Created:
    person_id = grants.resolve_person(ctx, actor, body.ref())
    return Created(id=grants.break_glass(ctx, actor, person_id, reason=body.reason), person_id=person_id)


@router.post("/grants/reading", status_code=201, summary="Assign a study of the caller's facility for reading")
def reading(body: ReadingRequest, ctx: ContextDep, actor: ActorDep) -> Created:
    study_pk = grants.resolve_study(ctx, actor, body.study_instance_uid)
    facility_id = grants.facility_id_of(ctx, body.facility) if body.facility else None
    return Created(id=grants.assign_reading(ctx, actor, study_pk, user=body.user, facility_id=facility_id,
                                            days=body.days, reason=body.reason))


@router.delete("/grants/{grant_id}", status_code=204, summary="Revoke a grant")
def revoke(grant_id: int, ctx: ContextDep, actor: ActorDep) -> None:
    grants.revoke(ctx, actor, grant_id)


@router.get("/break-glass", summary="Break-the-glass accesses to review (facility admins)")
def to_review(
    ctx: ContextDep, actor: ActorDep,
    include_reviewed: Annotated[bool, Query(description="Also list reviewed accesses")] = False,
) -> list[GrantOut]:
    return [GrantOut.of(g) for g in grants.break_glass_to_review(ctx, actor, include_reviewed=include_reviewed)]


@router.post("/break-glass/{grant_id}/review", status_code=204, summary="Record the review of an access")
def review(grant_id: int, body: ReviewRequest, ctx: ContextDep, actor: ActorDep) -> None:
    grants.review_break_glass(ctx, actor, grant_id, note=body.note)


@router.post("/oppositions", status_code=201, summary="Record a person's opposition to sharing")
def oppose(body: OppositionRequest, ctx: ContextDep, actor: ActorDep) -> Created:
    person_id = grants.resolve_person(ctx, actor, body.ref())
    return Created(id=grants.record_opposition(ctx, actor, person_id, reason=body.reason), person_id=person_id)


@router.post("/oppositions/withdraw", summary="Withdraw a person's opposition (at the person's request)")
def withdraw(body: PersonName, ctx: ContextDep, actor: ActorDep) -> dict[str, int]:
    person_id = grants.resolve_person(ctx, actor, body.ref())
    return {"withdrawn": grants.withdraw_opposition(ctx, actor, person_id)}

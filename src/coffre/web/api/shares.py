"""REST: share links for a GP or a patient (``/api/shares``).

- ``POST /api/shares``: create a link to one study (``study_instance_uid``) or to a
  person's studies in a date range (the person named by id, a facility's PatientID —
  default the caller's facility — or INS). Answers 201 with the link's URL, its token
  and the access code: **shown once**, never retrievable again (``no-store``).
- ``GET /api/shares``: the caller's links (``?all=true``: also the links of the
  facilities it administers). Never a token or a code.
- ``DELETE /api/shares/{id}``: revoke a link (its creator or an admin of its facility).

Each route calls one use case of ``services.shares``, which authorizes and audits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from coffre.services import shares
from coffre.services.grants import PersonRef
from coffre.services.shares import ShareInfo, ShareRequest
from coffre.web.deps import ActorDep, ContextDep

router = APIRouter(tags=["shares"])

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class ShareCreate(BaseModel):
    """One study by UID, or a person (by id, PatientID or INS) with an optional date range."""

    study_instance_uid: Annotated[str, Field(max_length=64)] = ""
    person_id: int | None = Field(default=None, ge=1)
    facility: Annotated[str, Field(max_length=32)] = ""
    patient_id: Annotated[str, Field(max_length=64)] = ""
    ins: Annotated[str, Field(max_length=15)] = ""
    date_from: Annotated[str, Field(max_length=8, description="YYYYMMDD, inclusive")] = ""
    date_to: Annotated[str, Field(max_length=8, description="YYYYMMDD, inclusive")] = ""
    days: int | None = Field(default=None, ge=1, le=3650,
                             description="Lifetime in days (default 7; at most [territory] share_link_max_days)")
    max_uses: int = Field(default=5, ge=1, le=shares.MAX_USES, description="Code entries allowed")
    allow_download: bool = False
    recipient: Annotated[str, Field(max_length=shares.MAX_RECIPIENT,
                                    description="Who receives it, e.g. 'Dr Durand (GP)'")] = ""

    def request(self) -> ShareRequest:
        named = self.person_id is not None or bool(self.patient_id or self.ins)
        person = PersonRef(person_id=self.person_id, facility=self.facility, patient_id=self.patient_id,
                           ins=self.ins) if named else None
        return ShareRequest(study_instance_uid=self.study_instance_uid, person=person, date_from=self.date_from,
                            date_to=self.date_to, days=self.days, max_uses=self.max_uses,
                            allow_download=self.allow_download, recipient=self.recipient)


class ShareCreated(BaseModel):
    id: int
    #: the link to give the recipient, and its access code (to give separately): shown once
    url: str
    token: str
    access_code: str
    expires_at: datetime
    studies: int


@router.post("/shares", status_code=201, response_model=ShareCreated,
             summary="Create a share link (its token and access code are shown once)")
def create(body: ShareCreate, request: Request, ctx: ContextDep, actor: ActorDep) -> JSONResponse:
    created = shares.create_share(ctx, actor, body.request())
    answer = ShareCreated(id=created.id, url=str(request.base_url).rstrip("/") + created.path,
                          token=created.token, access_code=created.access_code, expires_at=created.expires_at,
                          studies=created.studies)
    return JSONResponse(answer.model_dump(mode="json"), status_code=201, headers=_NO_STORE)


@router.get("/shares", summary="The caller's share links (all=true: also its facilities' links, for admins)")
def list_mine(
    ctx: ContextDep, actor: ActorDep,
    all_: Annotated[bool, Query(alias="all", description="Also the links of the facilities the caller administers")]
    = False,
) -> list[ShareInfo]:
    """Each link's state is one of active, expired, revoked, locked or used-up (never a secret)."""
    return shares.list_shares(ctx, actor, facility_wide=all_)


@router.delete("/shares/{share_id}", status_code=204, summary="Revoke a share link now")
def revoke(share_id: int, ctx: ContextDep, actor: ActorDep) -> None:
    shares.revoke_share(ctx, actor, share_id)

"""``coffre grant``: care relationships, reading assignments, break-the-glass review, oppositions.

The operator acts as the system actor *for a facility* (``--facility``): a care
relationship recorded here is the facility's, exactly as if one of its clinicians had
recorded it in the portal, and it is audited the same way.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from coffre.app import Context
from coffre.cli.common import OPERATOR, DataOption, _context, _typer, out
from coffre.index.facilities import get_facility
from coffre.index.grants import GrantRow
from coffre.model import Actor
from coffre.services import grants
from coffre.services.grants import PersonRef

grant_app = _typer("Grants: audited reasons to see another facility's data.")

FacilityOption = Annotated[str, typer.Option("--facility", "-f", help="Slug of the facility acting.")]
PersonOption = Annotated[int | None, typer.Option("--person", help="Person id.")]
PatientOption = Annotated[str, typer.Option("--patient-id", help="PatientID in the acting facility.")]
InsOption = Annotated[str, typer.Option("--ins", help="National health identifier (INS).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (required, kept in the audit trail).")]


def _as_facility(ctx: Context, slug: str) -> Actor:
    with ctx.db.read() as tx:
        facility = get_facility(tx, slug)
    return Actor.system("cli", facility=facility)


def _table(rows: list[GrantRow]) -> Table:
    table = Table("#", "kind", "person", "to", "by", "reason", "expires", "revoked", "reviewed")
    for g in rows:
        to = g.grantee_user or (f"facility #{g.grantee_facility_id}" if g.grantee_facility_id else "")
        table.add_row(str(g.id), g.kind, str(g.person_id or ""), to, g.granted_by, g.reason,
                      g.expires_at.isoformat(timespec="minutes"),
                      g.revoked_at.isoformat(timespec="minutes") if g.revoked_at else "",
                      f"{g.reviewed_by}: {g.review_note}" if g.reviewed_at else "")
    return table


@grant_app.command("care")
def care(
    data: DataOption, facility: FacilityOption, reason: ReasonOption,
    days: Annotated[int, typer.Option(help="Duration in days.")] = 90,
    person: PersonOption = None, patient_id: PatientOption = "", ins: InsOption = "",
) -> None:
    """Record a care relationship of FACILITY with a person."""
    with _context(data) as ctx:
        actor = _as_facility(ctx, facility)
        person_id = grants.resolve_person(ctx, actor, PersonRef(person, "", patient_id, ins))
        grant_id = grants.record_care(ctx, actor, person_id, days=days, reason=reason)
    out.print(f"care relationship #{grant_id}: facility {facility}, person {person_id}, {days} days")


@grant_app.command("reading")
def reading(
    data: DataOption, facility: FacilityOption,
    study: Annotated[str, typer.Option(help="StudyInstanceUID of a study of FACILITY.")],
    user: Annotated[str, typer.Option(help="Reader (user name).")] = "",
    to_facility: Annotated[str, typer.Option("--to-facility", help="Reading facility (slug).")] = "",
    days: Annotated[int | None, typer.Option(help="Duration in days.")] = None,
) -> None:
    """Assign a study of FACILITY to a reader (a user or another facility)."""
    with _context(data) as ctx:
        actor = _as_facility(ctx, facility)
        study_pk = grants.resolve_study(ctx, actor, study)
        to = grants.facility_id_of(ctx, to_facility) if to_facility else None
        grant_id = grants.assign_reading(ctx, actor, study_pk, user=user, facility_id=to, days=days)
    out.print(f"reading assignment #{grant_id}")


@grant_app.command("list")
def list_(
    data: DataOption,
    kind: Annotated[str | None, typer.Option(help="care, reading, break-glass or share.")] = None,
    person: PersonOption = None,
) -> None:
    """List grants, newest first."""
    from coffre.index.grants import list_grants

    with _context(data) as ctx, ctx.db.read() as tx:
        rows = list_grants(tx, kind=kind, person_id=person)
    out.print(_table(rows))


@grant_app.command("revoke")
def revoke(data: DataOption, grant_id: Annotated[int, typer.Argument()]) -> None:
    """End a grant now."""
    with _context(data) as ctx:
        grants.revoke(ctx, OPERATOR, grant_id)
    out.print(f"grant #{grant_id} revoked")


@grant_app.command("review")
def review(
    data: DataOption,
    grant_id: Annotated[int | None, typer.Argument(help="Break-the-glass access to mark reviewed.")] = None,
    note: Annotated[str, typer.Option(help="The reviewer's conclusion.")] = "",
) -> None:
    """List break-the-glass accesses awaiting review, or record the review of one."""
    with _context(data) as ctx:
        if grant_id is None:
            out.print(_table(grants.break_glass_to_review(ctx, OPERATOR)))
            return
        grants.review_break_glass(ctx, OPERATOR, grant_id, note=note)
    out.print(f"break-the-glass #{grant_id} reviewed")


@grant_app.command("oppose")
def oppose(
    data: DataOption, facility: FacilityOption, reason: ReasonOption,
    person: PersonOption = None, patient_id: PatientOption = "", ins: InsOption = "",
    withdraw: Annotated[bool, typer.Option("--withdraw", help="Withdraw the opposition instead.")] = False,
) -> None:
    """Record (or withdraw) a person's opposition to sharing, on behalf of FACILITY."""
    with _context(data) as ctx:
        actor = _as_facility(ctx, facility)
        person_id = grants.resolve_person(ctx, actor, PersonRef(person, "", patient_id, ins))
        if withdraw:
            count = grants.withdraw_opposition(ctx, actor, person_id)
            out.print(f"{count} opposition(s) of person {person_id} withdrawn")
            return
        opposition_id = grants.record_opposition(ctx, actor, person_id, reason=reason)
    out.print(f"opposition #{opposition_id} recorded for person {person_id}")

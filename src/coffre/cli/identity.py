"""``coffre person`` and ``coffre reconcile``: the territory's persons and the
reconciliation queue (``services/identity.py``; docs/identity.md).

Commands act as the operator (the system actor); every change needs ``--reason`` and
is recorded (identity events) and audited. An identity is ``FACILITY:PATIENTID``
(``--issuer`` when a facility uses several issuers for the same PatientID).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from coffre.cli.common import OPERATOR, DataOption, _context, _typer, out
from coffre.errors import BadRequest
from coffre.services import identity as service
from coffre.services.identity import CandidateView, IdentityEvent, IdentityRef, PersonRecord

person_app = _typer("Persons: the local identities of one human across facilities.")
reconcile_app = _typer("The reconciliation queue: possible matches for a human to decide.")

PersonArg = Annotated[int, typer.Argument(help="A person's id.", min=1)]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (required; recorded and audited).")]
IdentityOption = Annotated[str, typer.Option("--identity", help="FACILITY:PATIENTID of the local identity.")]
IssuerOption = Annotated[str | None, typer.Option(help="Issuer of Patient ID, when the PatientID is ambiguous.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
LimitOption = Annotated[int, typer.Option(help="At most this many.", min=1, max=service.MAX_LIMIT)]


def _ref(text: str, issuer: str | None) -> IdentityRef:
    try:
        return IdentityRef.parse(text, issuer)
    except BadRequest:
        raise typer.BadParameter("an identity is FACILITY:PATIENTID", param_hint="--identity") from None


def _person_doc(p: PersonRecord) -> dict[str, Any]:
    return {
        "id": p.id, "ins": p.ins, "ins_oid": p.ins_oid, "merged_into": p.merged_into,
        "created_at": p.created_at.isoformat(),
        "identities": [
            {"id": i.patient_pk, "facility": i.facility_slug, "issuer": i.issuer, "patient_id": i.patient_id,
             "name": i.patient_name, "birth_date": i.birth_date, "sex": i.sex}
            for i in p.identities
        ],
    }


def _persons_table(persons: list[PersonRecord]) -> Table:
    table = Table("person", "INS", "identity", "facility", "issuer", "PatientID", "name", "birth date", "sex")
    for p in persons:
        ins = p.ins or ("" if p.merged_into is None else f"merged into {p.merged_into}")
        if not p.identities:
            table.add_row(str(p.id), escape(ins), "", "", "", "", "", "", "")
        for n, i in enumerate(p.identities):
            table.add_row(str(p.id) if n == 0 else "", escape(ins) if n == 0 else "", str(i.patient_pk),
                          i.facility_slug, escape(i.issuer), escape(i.patient_id), escape(i.patient_name),
                          i.birth_date, i.sex)
    return table


def _print_persons(persons: list[PersonRecord], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps([_person_doc(p) for p in persons]))
    elif persons:
        out.print(_persons_table(persons))
    else:
        out.print("no person")


@person_app.command("list")
def person_list(
    data: DataOption,
    facility: Annotated[str | None, typer.Option(help="Only persons with an identity at this facility.")] = None,
    limit: LimitOption = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: JsonOption = False,
) -> None:
    """List persons with their local identities, by id."""
    with _context(data) as ctx:
        found = service.list_persons(ctx, OPERATOR, facility=facility, limit=limit, offset=offset)
    _print_persons(found, as_json)


@person_app.command("search")
def person_search(
    data: DataOption,
    name: Annotated[str | None, typer.Option(help="Name prefix: MARTIN or MARTIN^CL (case, accents ignored).")] = None,
    birth_date: Annotated[str | None, typer.Option("--birth-date", help="YYYYMMDD.")] = None,
    identity: Annotated[str | None, typer.Option("--identity", help="FACILITY:PATIENTID.")] = None,
    issuer: IssuerOption = None,
    ins: Annotated[str | None, typer.Option(help="An INS value (15 characters).")] = None,
    limit: LimitOption = 50,
    as_json: JsonOption = False,
) -> None:
    """Find persons by name, birth date, local identity or INS."""
    ref = _ref(identity, issuer) if identity else None
    with _context(data) as ctx:
        found = service.search(ctx, OPERATOR, name=name, birth_date=birth_date, identity=ref, ins=ins, limit=limit)
    _print_persons(found, as_json)


@person_app.command("show")
def person_show(data: DataOption, person: PersonArg, as_json: JsonOption = False) -> None:
    """A person, its INS and its local identities."""
    with _context(data) as ctx:
        found = service.get(ctx, OPERATOR, person)
    _print_persons([found], as_json)


def _event_doc(e: IdentityEvent) -> dict[str, Any]:
    return {"id": e.id, "at": e.at.isoformat(), "action": e.action, "identity": e.patient_pk,
            "from_person": e.from_person, "to_person": e.to_person, "actor": e.actor, "reason": e.reason,
            "evidence": e.evidence}


@person_app.command("history")
def person_history(data: DataOption, person: PersonArg, as_json: JsonOption = False) -> None:
    """Every identity event of a person: who linked what, when, why, on which evidence."""
    with _context(data) as ctx:
        events = service.history(ctx, OPERATOR, person)
    if as_json:
        out.print_json(json.dumps([_event_doc(e) for e in events]))
        return
    table = Table("event", "at", "action", "identity", "from", "to", "by", "reason", "evidence")
    for e in events:
        evidence = json.dumps(e.evidence, sort_keys=True, ensure_ascii=False)
        table.add_row(str(e.id), e.at.isoformat(timespec="seconds"), e.action, str(e.patient_pk or ""),
                      str(e.from_person or ""), str(e.to_person or ""), escape(e.actor), escape(e.reason),
                      escape(evidence))
    out.print(table)


@person_app.command("link")
def person_link(
    data: DataOption, identity: IdentityOption, to: Annotated[int, typer.Option("--to", help="The person.", min=1)],
    reason: ReasonOption, issuer: IssuerOption = None,
) -> None:
    """Move a local identity to another person."""
    ref = _ref(identity, issuer)
    with _context(data) as ctx:
        target = service.link(ctx, OPERATOR, ref, to, reason=reason)
    out.print(f"identity {escape(identity)} linked to person {target}")


@person_app.command("unlink")
def person_unlink(data: DataOption, identity: IdentityOption, reason: ReasonOption, issuer: IssuerOption = None) -> None:
    """Detach a local identity from its person into a new person of its own."""
    ref = _ref(identity, issuer)
    with _context(data) as ctx:
        new = service.unlink(ctx, OPERATOR, ref, reason=reason)
    out.print(f"identity {escape(identity)} unlinked: new person {new}")


@person_app.command("merge")
def person_merge(
    data: DataOption,
    into: Annotated[int, typer.Argument(help="The person that stays (A).", min=1)],
    merged: Annotated[int, typer.Argument(help="The person merged into A (B).", min=1)],
    reason: ReasonOption,
) -> None:
    """Merge person B into person A: every identity of B moves to A (undo: person split B)."""
    with _context(data) as ctx:
        service.merge(ctx, OPERATOR, into, merged, reason=reason)
    out.print(f"person {merged} merged into person {into}")


@person_app.command("split")
def person_split(data: DataOption, person: PersonArg, reason: ReasonOption) -> None:
    """Undo the merge of a person: the identities the merge moved come back to it."""
    with _context(data) as ctx:
        result = service.split(ctx, OPERATOR, person, reason=reason)
    out.print(f"person {result.person_id} split from person {result.from_person}: "
              f"{len(result.restored)} identities restored, {len(result.skipped)} moved since and left")


def _candidate_doc(v: CandidateView) -> dict[str, Any]:
    c = v.candidate
    return {"id": c.id, "status": c.status, "score": c.score, "evidence": c.evidence,
            "created_at": c.created_at.isoformat(), "decided_by": c.decided_by,
            "identity": {"id": v.identity.patient_pk, "facility": v.identity.facility_slug,
                         "issuer": v.identity.issuer, "patient_id": v.identity.patient_id,
                         "person": v.identity.person_id, "name": v.identity.patient_name,
                         "birth_date": v.identity.birth_date, "sex": v.identity.sex},
            "person": _person_doc(v.person)}


@reconcile_app.command("list")
def reconcile_list(
    data: DataOption,
    status: Annotated[str, typer.Option(help="open, linked, rejected or any.")] = "open",
    limit: LimitOption = 50,
    as_json: JsonOption = False,
) -> None:
    """Possible matches queued at ingest: an identity and the person it resembles."""
    with _context(data) as ctx:
        views = service.reconciliation(ctx, OPERATOR, status=None if status == "any" else status, limit=limit)
    if as_json:
        out.print_json(json.dumps([_candidate_doc(v) for v in views]))
        return
    if not views:
        out.print(f"no {escape(status)} candidate")
        return
    table = Table("candidate", "score", "status", "identity", "name", "birth date", "sex", "candidate person",
                  "its identities")
    for v in views:
        i = v.identity
        theirs = "; ".join(f"{o.facility_slug}:{o.patient_id} {o.patient_name} {o.birth_date} {o.sex}"
                           for o in v.person.identities)
        table.add_row(str(v.candidate.id), str(v.candidate.score), v.candidate.status,
                      escape(f"{i.facility_slug}:{i.patient_id} (person {i.person_id})"), escape(i.patient_name),
                      i.birth_date, i.sex, str(v.person.id), escape(theirs))
    out.print(table)


def _decide(data: DataOption, candidate: int, decision: str, reason: str) -> None:
    with _context(data) as ctx:
        view = service.decide(ctx, OPERATOR, candidate, decision=decision, reason=reason)
    out.print(f"candidate {view.candidate.id} {view.candidate.status}: identity "
              f"{escape(view.identity.facility_slug)}:{escape(view.identity.patient_id)} is with person "
              f"{view.identity.person_id}")


@reconcile_app.command("link")
def reconcile_link(
    data: DataOption, candidate: Annotated[int, typer.Argument(help="The candidate's id.", min=1)],
    reason: ReasonOption,
) -> None:
    """The candidate's identity joins the candidate person (undo: person unlink)."""
    _decide(data, candidate, "link", reason)


@reconcile_app.command("reject")
def reconcile_reject(
    data: DataOption, candidate: Annotated[int, typer.Argument(help="The candidate's id.", min=1)],
    reason: ReasonOption,
) -> None:
    """Not the same human: close the candidate without linking."""
    _decide(data, candidate, "reject", reason)

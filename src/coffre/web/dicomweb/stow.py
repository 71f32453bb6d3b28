"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``POST /studies/{study}``.

The body is ``multipart/related; type="application/dicom"`` read as a stream
(:func:`coffre.web.multipart.parse_related`): memory holds one part at a time, and each
``application/dicom`` part is handed to the STOW service (the ingest service of C-STORE)
in the threadpool as soon as it is complete. The response is the PS3.18 Table 10.5.3-1
dataset as DICOM JSON: Retrieve URL, Referenced SOP Sequence (stored, with a Warning
Reason for a new version), Failed SOP Sequence (with the Failure Reason); the distinct
failure reasons, in words, are ``Warning`` headers.

Statuses (PS3.18 10.5.3): 200 every part stored; 202 some failed or carry a warning;
409 none stored (503 when every failure is the archive's own storage failing); 400 a
malformed body; 401/403 before the body is read; 406 when the client accepts no JSON;
413 beyond ``http.max_request_bytes`` or ``http.max_parts``; 415 for another media type,
including ``type="application/dicom+json"`` (metadata + bulk data STOW is not supported).
"""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from coffre.app import Context
from coffre.dicom.uid import check_uid
from coffre.errors import BadRequest, CoffreError, NotAcceptable, TooLarge, UnsupportedMediaType
from coffre.model import Actor
from coffre.services import stow as service
from coffre.services.stow import PartOutcome
from coffre.web.deps import ActorDep, ContextDep
from coffre.web.dicomweb.media import parse_accept, parse_media_type
from coffre.web.multipart import Part, bounded_body, check_boundary, declared_length, parse_related

router = APIRouter()

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
_IDENTITY_ENCODINGS = frozenset({"binary", "8bit", "7bit"})
#: most distinct failure reasons given as Warning headers
_MAX_WARNINGS = 10

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance was stored (PS3.18 Table 10.5.3-1 dataset).",
          "content": {DICOM_JSON: {}}},
    202: {"description": "Some instances failed or were stored with a warning.", "content": {DICOM_JSON: {}}},
    409: {"description": "No instance was stored; FailedSOPSequence gives the reasons.",
          "content": {DICOM_JSON: {}}},
    400: {"description": "Malformed multipart body, bad Content-Length or bad study UID."},
    401: {"description": "No valid bearer token."},
    403: {"description": "The token may not store."},
    406: {"description": "The client accepts neither application/dicom+json nor application/json."},
    413: {"description": "Body larger than http.max_request_bytes or more parts than http.max_parts."},
    415: {"description": 'Content-Type is not multipart/related; type="application/dicom".'},
    503: {"description": "Every part failed because the archive could not store it.",
          "content": {DICOM_JSON: {}}},
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"},
            }
        },
    }
}


@router.post(
    "/studies",
    summary="STOW-RS: store instances (PS3.18 10.5)",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_BODY,
)
async def store_instances(request: Request, ctx: ContextDep, actor: ActorDep) -> Response:
    return await _store(request, ctx, actor, study=None)


@router.post(
    "/studies/{study}",
    summary="STOW-RS: store instances of one study (PS3.18 10.5)",
    response_class=Response,
    responses=_RESPONSES,
    openapi_extra=_BODY,
)
async def store_study_instances(study: str, request: Request, ctx: ContextDep, actor: ActorDep) -> Response:
    return await _store(request, ctx, actor, study=study)


async def _store(request: Request, ctx: Context, actor: Actor, *, study: str | None) -> Response:
    # everything that can refuse the whole request is checked before the body is read
    await run_in_threadpool(service.check_can_store, ctx, actor)
    if study is not None:
        check_uid(study, "StudyInstanceUID")
    media_type = _response_media_type(request.headers.get("accept"))
    boundary = _boundary(request.headers.get("content-type"))
    http = ctx.settings.http
    declared = declared_length(request.headers.get("content-length"), http.max_request_bytes)

    outcomes: list[PartOutcome] = []
    body = bounded_body(request.stream(), declared=declared, max_bytes=http.max_request_bytes)
    parts = parse_related(
        body, boundary,
        max_parts=http.max_parts,
        max_part_header_bytes=http.max_part_header_bytes,
        max_part_bytes=ctx.settings.limits.max_object_bytes,
    )
    batch = service.StowBatch(ctx, actor, study=study)
    try:
        async with aclosing(parts):
            async for part in parts:
                outcomes.append(await _store_part(batch, part))
    except ClientDisconnect:
        raise BadRequest("the client closed the connection before the end of the body") from None
    except CoffreError as exc:
        if not outcomes:
            raise
        stored = sum(o.stored for o in outcomes)
        raise type(exc)(
            f"{exc.reason}; the {len(outcomes)} complete parts before it were processed "
            f"({stored} stored)"
        ) from None
    finally:
        await run_in_threadpool(batch.close)

    base = str(request.base_url).rstrip("/") + http.dicomweb_base
    content = json.dumps(response_dataset(outcomes, base, study), separators=(",", ":"))
    response = Response(content=content, status_code=response_status(outcomes), media_type=media_type)
    for text in _failure_reasons(outcomes):
        response.headers.append("Warning", f'299 {base}: "{text}"')
    return response


async def _store_part(batch: service.StowBatch, part: Part) -> PartOutcome:
    """One part: media type and size checks, then the STOW service (in the threadpool)."""
    declared_type = part.headers.get("content-type", DICOM)  # default: the type parameter
    media = parse_media_type(declared_type)
    encoding = part.headers.get("content-transfer-encoding", "binary").lower()
    if media is None or media.essence != DICOM:
        return batch.refuse(UnsupportedMediaType(
            f"part {part.index} is not {DICOM}" if media is None
            else f"part {part.index} is {_quote(media.essence)}, not {DICOM}"))
    if encoding not in _IDENTITY_ENCODINGS:
        return batch.refuse(UnsupportedMediaType(
            f"part {part.index} has Content-Transfer-Encoding {_quote(encoding)}"))
    if part.body is None:
        return batch.refuse(TooLarge(
            f"part {part.index} of {part.size} bytes exceeds limits.max_object_bytes"))
    refused = batch.refuse_unless_part10(part.body)
    if refused is not None:
        return refused
    return await run_in_threadpool(batch.store, part.body)


def _quote(value: str) -> str:
    """A client's header value, made safe to put in a reason (printable ASCII, short)."""
    text = "".join(c if 0x20 < ord(c) < 0x7F and c not in '"\\' else "?" for c in value)
    return text if len(text) <= 64 else text[:61] + "..."


def _response_media_type(accept: str | None) -> str:
    """PS3.18 10.5.2: the response is DICOM JSON (``application/json`` if only that is accepted)."""
    ranges = parse_accept(accept)
    for media_type in (DICOM_JSON, "application/json"):
        if any(r.matches(media_type) for r in ranges):
            return media_type
    raise NotAcceptable("the STOW-RS response is application/dicom+json")


def _boundary(content_type: str | None) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body (415 otherwise)."""
    media = parse_media_type(content_type or "")
    if media is None or media.essence != "multipart/related":
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom"')
    part_type = media.params.get("type", "").strip().lower()
    if part_type in (DICOM_JSON, "application/dicom+xml"):
        raise UnsupportedMediaType(
            f"STOW-RS of metadata and bulk data (type={part_type}) is not supported; "
            'send complete instances as multipart/related; type="application/dicom"'
        )
    if part_type != DICOM:
        raise UnsupportedMediaType('the multipart/related Content-Type needs type="application/dicom"')
    return check_boundary(media.params.get("boundary"))


# --- PS3.18 10.5.3 response ----------------------------------------------------------------


def response_status(outcomes: list[PartOutcome]) -> int:
    """200 all stored, 202 some failed or warned, 409 none stored (503: archive failure)."""
    failed = [o for o in outcomes if not o.stored]
    if len(failed) == len(outcomes):
        return 503 if all(o.server_side for o in failed) else 409
    if failed or any(o.warning is not None for o in outcomes):
        return 202
    return 200


def _failure_reasons(outcomes: list[PartOutcome]) -> list[str]:
    """The distinct failure reasons, for ``Warning`` headers (PS3.18 8.3.5.1, RFC 7234 5.5)."""
    reasons = dict.fromkeys(o.reason for o in outcomes if not o.stored and o.reason)
    printable = ("".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else " " for c in r) for r in reasons)
    return list(printable)[:_MAX_WARNINGS]


def _element(vr: str, *values: object) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def _instance_url(base: str, o: PartOutcome) -> str:
    return f"{base}/studies/{o.study_instance_uid}/series/{o.series_instance_uid}/instances/{o.sop_instance_uid}"


def response_dataset(outcomes: list[PartOutcome], base: str, study: str | None) -> dict[str, Any]:
    """The Store Instances Response (PS3.18 Table 10.5.3-1) as DICOM JSON (PS3.18 F.2)."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for o in outcomes:
        item: dict[str, Any] = {}
        if o.sop_class_uid:
            item["00081150"] = _element("UI", o.sop_class_uid)
        if o.sop_instance_uid:
            item["00081155"] = _element("UI", o.sop_instance_uid)
        if o.stored:
            item["00081190"] = _element("UR", _instance_url(base, o))
            if o.warning is not None:
                item["00081196"] = _element("US", o.warning)
            referenced.append(item)
        else:
            item["00081197"] = _element("US", o.failure)
            failed.append(item)
    dataset: dict[str, Any] = {}
    studies = {o.study_instance_uid for o in outcomes if o.stored}
    target = study or (studies.pop() if len(studies) == 1 else None)
    if target:
        dataset["00081190"] = _element("UR", f"{base}/studies/{target}")
    if failed:
        dataset["00081198"] = _element("SQ", *failed)
    if referenced:
        dataset["00081199"] = _element("SQ", *referenced)
    return dataset

"""WADO-URI (PS3.18 9): ``GET {base}/wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…``.

For legacy viewers. One instance, named by its three UIDs (all required), returned as:

- ``application/dicom`` (Retrieve DICOM Instance, PS3.18 9.4): the PS3.10 object in
  ``transferSyntax`` when given (406 when it cannot be produced), else in Explicit VR
  Little Endian (PS3.18 9.4.2.4), transcoded when stored otherwise; when that default
  cannot be produced (encapsulated video) the object goes as stored. An object already
  in the syntax is streamed byte for byte as archived;
- ``image/jpeg`` or ``image/png`` (Retrieve Rendered Instance, PS3.18 9.5): the frame
  ``frameNumber`` (default the first), rendered as the WADO-RS rendered resources are
  (:mod:`coffre.web.dicomweb.rendered`) with ``windowCenter``/``windowWidth`` (both or
  neither), ``rows``/``columns`` (maximum size, aspect ratio kept), ``region``
  (``xmin,ymin,xmax,ymax`` fractions of the image) and ``imageQuality`` (1-100).

``contentType`` is a comma-separated list, best first; without it, a single-frame image
(or one ``frameNumber``) is sent as ``image/jpeg`` and anything else as
``application/dicom`` (PS3.18 2013 7.1.2 and 7.2.2). The Accept header is honoured: a
type it excludes is not chosen (without ``contentType``, ``Accept: image/png`` gives a
PNG); nothing acceptable is 406.

Refused with 400: ``requestType`` other than ``WADO``, a malformed UID or value,
``anonymize`` (de-identification on retrieve is not supported), ``presentationUID`` /
``presentationSeriesUID`` (presentation states are not applied), rendering parameters
with ``application/dicom`` and ``transferSyntax`` with an image type. ``annotation``
(``patient``, ``technique``) and ``charset`` are accepted and ignored: nothing is burnt
into the pixels.

Authentication is the bearer token of every DICOMweb route; a token in the URL (as some
legacy viewers do with ``?access_token=``) is **not** accepted: URLs end up in proxy
and server logs, browser history and Referer headers.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from coffre.codecs.render import JPEG, PNG, RelativeRegion, RenderOptions, Viewport, Window
from coffre.dicom.uid import check_uid
from coffre.errors import BadRequest, NotAcceptable
from coffre.services import render as service
from coffre.web.deps import ActorDep, ContextDep
from coffre.web.dicomweb.media import parse_accept, parse_media_type
from coffre.web.dicomweb.rendered import (
    check_annotation,
    parse_integer,
    parse_number,
    parse_quality,
)

router = APIRouter()

DICOM = service.DICOM
_SUPPORTED = (DICOM, JPEG, PNG)


def _content_types(content_type: str | None, accept_header: str | None) -> tuple[tuple[str, ...], bool]:
    """The media types that may be returned, best first, and whether ``contentType``
    named them."""
    accepted = parse_accept(accept_header)

    def acceptable(media: str) -> bool:
        return any(r.matches(media) for r in accepted)

    explicit = False
    wanted: list[str] = []
    if content_type is not None and content_type.strip():
        for raw in content_type.split(","):
            parsed = parse_media_type(raw)
            if parsed is None:
                raise BadRequest("contentType must be a list of media types")
            if parsed.essence == "*/*":
                continue
            explicit = True
            wanted.extend(m for m in _SUPPORTED if parsed.matches(m) and m not in wanted)
        if explicit and not wanted:
            raise NotAcceptable("contentType must be application/dicom, image/jpeg or image/png")
    if not explicit:
        wanted = [JPEG, PNG, DICOM]
    chosen = tuple(m for m in wanted if acceptable(m))
    if not chosen:
        raise NotAcceptable("no requested content type is allowed by the Accept header")
    return chosen, explicit


def _region(raw: str) -> RelativeRegion:
    parts = raw.split(",")
    if len(parts) != 4:
        raise BadRequest("region must be xmin,ymin,xmax,ymax")
    left, top, right, bottom = (parse_number(p, "region") for p in parts)
    return RelativeRegion(left, top, right, bottom)


def _positive(raw: str, name: str) -> int:
    value = parse_integer(raw, name)
    if value < 1:
        raise BadRequest(f"{name} must be a positive integer")
    return value


StrQ = Annotated[str | None, Query()]


@router.get(
    "/wado",
    summary="WADO-URI: one instance as DICOM or rendered (PS3.18 9)",
    response_class=Response,
    responses={
        200: {"content": {DICOM: {}, JPEG: {}, PNG: {}}, "description": "the instance"},
        400: {"description": "a parameter is missing, malformed or not supported"},
        401: {"description": "no valid bearer token"},
        403: {"description": "the token may not retrieve"},
        404: {"description": "no such instance in the caller's scope"},
        406: {"description": "the content type or transfer syntax cannot be produced"},
    },
)
def wado(
    ctx: ContextDep,
    actor: ActorDep,
    request: Request,
    request_type: Annotated[str, Query(alias="requestType", description="WADO")],
    study_uid: Annotated[str, Query(alias="studyUID")],
    series_uid: Annotated[str, Query(alias="seriesUID")],
    object_uid: Annotated[str, Query(alias="objectUID")],
    content_type: Annotated[str | None, Query(alias="contentType")] = None,
    charset: StrQ = None,
    anonymize: StrQ = None,
    annotation: StrQ = None,
    rows: StrQ = None,
    columns: StrQ = None,
    region: StrQ = None,
    window_center: Annotated[str | None, Query(alias="windowCenter")] = None,
    window_width: Annotated[str | None, Query(alias="windowWidth")] = None,
    frame_number: Annotated[str | None, Query(alias="frameNumber")] = None,
    image_quality: Annotated[str | None, Query(alias="imageQuality")] = None,
    presentation_uid: Annotated[str | None, Query(alias="presentationUID")] = None,
    presentation_series_uid: Annotated[str | None, Query(alias="presentationSeriesUID")] = None,
    transfer_syntax: Annotated[str | None, Query(alias="transferSyntax")] = None,
) -> Response:
    if request_type != "WADO":
        raise BadRequest("requestType must be WADO")
    if anonymize is not None:
        raise BadRequest("anonymize is not supported: the archive does not de-identify on retrieve")
    if presentation_uid is not None or presentation_series_uid is not None:
        raise BadRequest("presentation states are not applied by this archive")
    check_annotation(annotation)
    content_types, explicit = _content_types(content_type, request.headers.get("accept"))
    rendering = [rows, columns, region, window_center, window_width]
    if explicit and content_types[0] == DICOM and any(p is not None for p in rendering):
        raise BadRequest("rows, columns, region and windowCenter/Width apply to image content types")
    if (window_center is None) != (window_width is None):
        raise BadRequest("windowCenter and windowWidth go together")
    window = None
    if window_center is not None and window_width is not None:
        window = Window(parse_number(window_center, "windowCenter"), parse_number(window_width, "windowWidth"))
    viewport = None
    if rows is not None or columns is not None or region is not None:
        viewport = Viewport(
            _positive(columns, "columns") if columns is not None else None,
            _positive(rows, "rows") if rows is not None else None,
            _region(region) if region is not None else None,
        )
    uri_request = service.UriRequest(
        study=check_uid(study_uid, "studyUID"),
        series=check_uid(series_uid, "seriesUID"),
        instance=check_uid(object_uid, "objectUID"),
        content_types=content_types,
        explicit=explicit,
        options=RenderOptions(window=window, viewport=viewport, quality=parse_quality(image_quality)),
        frame=_positive(frame_number, "frameNumber") if frame_number is not None else None,
        transfer_syntax=check_uid(transfer_syntax, "transferSyntax") if transfer_syntax else None,
    )
    result = service.wado_uri(ctx, actor, uri_request)
    headers = {"Cache-Control": "private, max-age=0", "Vary": "Accept, Authorization"}
    if isinstance(result, service.Rendered):
        return Response(result.content, media_type=result.media_type, headers=headers)
    headers["Content-Length"] = str(result.size)
    return StreamingResponse(result.chunks, media_type=DICOM, headers=headers)

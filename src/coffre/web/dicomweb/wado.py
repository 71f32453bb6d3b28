"""WADO-RS routes (PS3.18 10.4): instances, metadata, frames and bulk data.

Thin adapter: it turns the Accept header into the service's list of
:class:`~coffre.services.wado.Acceptable` (PS3.18 8.7.5; only ``multipart/related``
and wildcards are offered for DICOM and bulk data, ``application/dicom+json`` for
metadata), calls one use case of :mod:`coffre.services.wado` with the actor, and
writes the result: ``multipart/related`` bodies streamed part by part
(:func:`coffre.web.multipart.write_related`), each part with its ``Content-Type``
(including ``transfer-syntax``) and ``Content-Location``; metadata as a streamed
DICOM JSON array with an ``ETag`` (``If-None-Match`` gives 304) and
``Cache-Control: private, no-cache``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import Response, StreamingResponse

from coffre.errors import NotAcceptable
from coffre.services import wado
from coffre.services.wado import Acceptable
from coffre.web.deps import ActorDep, ContextDep
from coffre.web.dicomweb.media import parse_accept
from coffre.web.multipart import new_boundary, write_related

router = APIRouter()

StudyUID = Annotated[str, Path(description="Study Instance UID", max_length=64)]
SeriesUID = Annotated[str, Path(description="Series Instance UID", max_length=64)]
InstanceUID = Annotated[str, Path(description="SOP Instance UID", max_length=64)]
AcceptHeader = Annotated[str | None, Header(description="PS3.18 8.7.5 acceptable media types")]

_DICOM_JSON = "application/dicom+json"
_CACHE_CONTROL = "private, no-cache"

_MULTIPART_DICOM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": 'One part per instance: `multipart/related; type="application/dicom"`',
        "content": {'multipart/related; type="application/dicom"': {}},
    },
    400: {"description": "Malformed UID"},
    401: {"description": "No or unknown bearer token"},
    403: {"description": "The token may not retrieve"},
    404: {"description": "Unknown (or out of scope) study, series or instance"},
    406: {"description": "The requested transfer syntax cannot be produced"},
}
_MULTIPART_BULK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One part per frame or bulk data value: "
        '`multipart/related; type="application/octet-stream"` (uncompressed) '
        "or a compressed media type (`image/jp2`, `image/jls`, …)",
        "content": {'multipart/related; type="application/octet-stream"': {}},
    },
    **{k: v for k, v in _MULTIPART_DICOM.items() if k != 200},
}
_METADATA: dict[int | str, dict[str, Any]] = {
    200: {"description": "DICOM JSON array (PS3.18 F.2)", "content": {_DICOM_JSON: {}}},
    304: {"description": "Not modified (If-None-Match)"},
    **{k: v for k, v in _MULTIPART_DICOM.items() if k not in (200, 406)},
    406: {"description": "Only application/dicom+json is offered"},
}


def _base(request: Request, ctx: ContextDep) -> str:
    return str(request.base_url).rstrip("/") + ctx.settings.http.dicomweb_base.rstrip("/")


def _acceptables(header: str | None, default_type: str) -> list[Acceptable]:
    """The multipart representations the Accept header admits, most preferred first."""
    out: list[Acceptable] = []
    for media in parse_accept(header):
        syntax = media.params.get("transfer-syntax", "").strip() or None
        if media.essence == "multipart/related":
            kind = media.params.get("type", "").strip().lower() or default_type
        elif media.essence in ("*/*", "multipart/*"):
            kind = "*/*"
        else:
            continue  # single-part bodies are not offered
        out.append(Acceptable(kind, syntax))
    return out


#: smallest write of a streamed body: pieces (part headers, CRLFs, blob chunks of at
#: most ``wado.CHUNK``) are gathered up to this size, so a write is below
#: ``COALESCE + wado.CHUNK`` bytes
COALESCE = 256 * 1024


def _coalesced(pieces: Iterable[bytes]) -> Iterator[bytes]:
    buffer: list[bytes] = []
    size = 0
    for piece in pieces:
        buffer.append(piece)
        size += len(piece)
        if size >= COALESCE:
            yield b"".join(buffer)
            buffer.clear()
            size = 0
    if buffer:
        yield b"".join(buffer)


def _respond(chunks: Iterable[bytes], media_type: str, headers: Mapping[str, str]) -> Response:
    """A body of one or two chunks is sent whole, with Content-Length; a longer one is
    streamed (chunked). Small bodies (a frame, a series' metadata) then go in one write,
    without the separate end-of-body write of chunked encoding that TCP delays on
    sockets without TCP_NODELAY."""
    stream = iter(chunks)
    first = next(stream, b"")
    second = next(stream, None)
    if second is None:
        return Response(first, media_type=media_type, headers=dict(headers))
    third = next(stream, None)
    if third is None:
        return Response(first + second, media_type=media_type, headers=dict(headers))
    return StreamingResponse(
        itertools.chain((first, second, third), stream),
        media_type=media_type,
        headers=dict(headers),
    )


def _multipart(
    parts: Iterable[tuple[Mapping[str, str], Iterable[bytes]]],
    media_type: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    boundary = new_boundary()
    return _respond(
        _coalesced(write_related(parts, boundary)),
        f'multipart/related; type="{media_type}"; boundary={boundary}',
        headers or {},
    )


def _instance_url(base: str, study: str, series: str, instance: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"


def _retrieve(
    request: Request,
    ctx: ContextDep,
    actor: ActorDep,
    accept: str | None,
    study: str,
    series: str | None,
    instance: str | None,
) -> Response:
    result = wado.retrieve(ctx, actor, study, series, instance, _acceptables(accept, wado.DICOM))
    base = _base(request, ctx)

    def parts() -> Iterator[tuple[Mapping[str, str], Iterable[bytes]]]:
        for part in result.parts:
            ref = part.ref
            yield (
                {
                    "Content-Type": f"{wado.DICOM}; transfer-syntax={part.transfer_syntax_uid}",
                    "Content-Location": _instance_url(
                        base, ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid
                    ),
                },
                part.chunks,
            )

    return _multipart(parts(), wado.DICOM)


@router.get(
    "/studies/{study}",
    summary="WADO-RS: retrieve the instances of a study",
    response_class=Response,
    responses=_MULTIPART_DICOM,
)
def retrieve_study(
    request: Request, ctx: ContextDep, actor: ActorDep, study: StudyUID, accept: AcceptHeader = None
) -> Response:
    """PS3.18 10.4.1.1.1: every instance of the study, one `application/dicom` part each,
    streamed. `transfer-syntax=*` keeps the stored syntax; the default is Explicit VR
    Little Endian (lossy and video instances are sent as stored)."""
    return _retrieve(request, ctx, actor, accept, study, None, None)


@router.get(
    "/studies/{study}/series/{series}",
    summary="WADO-RS: retrieve the instances of a series",
    response_class=Response,
    responses=_MULTIPART_DICOM,
)
def retrieve_series(
    request: Request,
    ctx: ContextDep,
    actor: ActorDep,
    study: StudyUID,
    series: SeriesUID,
    accept: AcceptHeader = None,
) -> Response:
    """PS3.18 10.4.1.1.1 at series level."""
    return _retrieve(request, ctx, actor, accept, study, series, None)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="WADO-RS: retrieve one instance",
    response_class=Response,
    responses=_MULTIPART_DICOM,
)
def retrieve_instance(
    request: Request,
    ctx: ContextDep,
    actor: ActorDep,
    study: StudyUID,
    series: SeriesUID,
    instance: InstanceUID,
    accept: AcceptHeader = None,
) -> Response:
    """PS3.18 10.4.1.1.1 at instance level (still `multipart/related`, one part)."""
    return _retrieve(request, ctx, actor, accept, study, series, instance)


def _metadata(
    request: Request,
    ctx: ContextDep,
    actor: ActorDep,
    accept: str | None,
    if_none_match: str | None,
    study: str,
    series: str | None,
    instance: str | None,
) -> Response:
    if not any(
        m.essence in (_DICOM_JSON, "application/json") or m.matches(_DICOM_JSON)
        for m in parse_accept(accept)
    ):
        raise NotAcceptable("metadata is offered as application/dicom+json only")
    result = wado.metadata(ctx, actor, study, series, instance, base_url=_base(request, ctx))
    headers = {
        "ETag": result.etag,
        "Cache-Control": _CACHE_CONTROL,
        "Vary": "Accept, Authorization",
    }
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        if result.etag in tags or "*" in tags:
            return Response(status_code=304, headers=headers)
    return _respond(result.chunks, _DICOM_JSON, headers)


IfNoneMatch = Annotated[str | None, Header(description="ETag of a cached copy (RFC 9110 13.1.2)")]


@router.get(
    "/studies/{study}/metadata",
    summary="WADO-RS: metadata of a study (DICOM JSON, from the index)",
    response_class=Response,
    responses=_METADATA,
)
def study_metadata(
    request: Request,
    ctx: ContextDep,
    actor: ActorDep,
    study: StudyUID,
    accept: AcceptHeader = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """PS3.18 10.4.1.1.2: the DICOM JSON of every instance of the study, without bulk
    data; each BulkDataURI is an absolute `…/bulkdata/<tag path>` URL. Served from the
    index, never from the DICOM files. ETag / If-None-Match."""
    return _metadata(request, ctx, actor, accept, if_none_match, study, None, None)


@router.get(
    "/studies/{study}/series/{series}/metadata",
    summary="WADO-RS: metadata of a series (DICOM JSON, from the index)",
    response_class=Response,
    responses=_METADATA,
)
def series_metadata(
    request: Request,
    ctx: ContextDep,
    actor: ActorDep,
    study: StudyUID,
    series: SeriesUID,
    accept: AcceptHeader = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """PS3.18 10.4.1.1.2 at series level."""
    return _metadata(request, ctx, actor, accept, if_none_match, study, series, None)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="WADO-RS: metadata of one instance (DICOM JSON, from the index)",
    response_class=Response,
    responses=_METADATA,
)
def instance_metadata(
    request: Request,
    ctx: ContextDep,
    actor: ActorDep,
    study: StudyUID,
    series: SeriesUID,
    instance: InstanceUID,
    accept: AcceptHeader = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """PS3.18 10.4.1.1.2 at instance level (an array of one data set)."""
    return _metadata(request, ctx, actor, accept, if_none_match, study, series, instance)


def _part_type(representation: wado.Representation) -> str:
    return f"{representation.media_type}; transfer-syntax={representation.transfer_syntax_uid}"


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    summary="WADO-RS: frames of an instance",
    response_class=Response,
    responses=_MULTIPART_BULK,
)
def retrieve_frames(
    request: Request,
    ctx: ContextDep,
    actor: ActorDep,
    study: StudyUID,
    series: SeriesUID,
    instance: InstanceUID,
    frames: Annotated[
        str, Path(description="Comma-separated 1-based frame numbers", max_length=100_000)
    ],
    accept: AcceptHeader = None,
) -> Response:
    """PS3.18 10.4.1.1.3: one part per listed frame. `transfer-syntax=*` returns the
    stored frames untouched (typed by their media type); `application/octet-stream`
    (the default) uncompressed little endian frames; `image/jp2`, `image/jls`,
    `image/dicom-rle` … the frames in that syntax, transcoded when needed."""
    numbers = wado.parse_frame_list(frames)
    result = wado.frames(
        ctx, actor, study, series, instance, numbers, _acceptables(accept, wado.OCTET_STREAM)
    )
    location = _instance_url(_base(request, ctx), study, series, instance)
    part_type = _part_type(result.representation)

    def parts() -> Iterator[tuple[Mapping[str, str], Iterable[bytes]]]:
        for number, frame in zip(result.numbers, result.frames, strict=False):
            yield (
                {"Content-Type": part_type, "Content-Location": f"{location}/frames/{number}"},
                (frame,),
            )

    return _multipart(parts(), result.representation.media_type)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}",
    summary="WADO-RS: bulk data of one element of an instance",
    response_class=Response,
    responses=_MULTIPART_BULK,
)
def retrieve_bulkdata(
    request: Request,
    ctx: ContextDep,
    actor: ActorDep,
    study: StudyUID,
    series: SeriesUID,
    instance: InstanceUID,
    path: Annotated[
        str, Path(description="Tag path: `gggggggg[/item/gggggggg]…` as in BulkDataURI")
    ],
    accept: AcceptHeader = None,
) -> Response:
    """PS3.18 10.4.1.1.5: the value of the element named by the tag path (the
    BulkDataURIs of the metadata point here), as `application/octet-stream`; Pixel Data
    follows the frames' negotiation (compressed: one part per frame)."""
    result = wado.bulkdata(
        ctx, actor, study, series, instance, path, _acceptables(accept, wado.OCTET_STREAM)
    )
    location = f"{_instance_url(_base(request, ctx), study, series, instance)}/bulkdata/{path}"
    part_type = result.media_type
    if result.transfer_syntax_uid is not None:
        part_type += f"; transfer-syntax={result.transfer_syntax_uid}"
    parts = [
        ({"Content-Type": part_type, "Content-Location": location}, (value,))
        for value in result.parts
    ]
    return _multipart(parts, result.media_type)

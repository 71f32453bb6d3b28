"""WADO-RS rendered resources (PS3.18 10.4.1.1.3) and thumbnails (PS3.18 10.4.1.1.4).

``GET {study}[/series/{series}[/instances/{instance}[/frames/{frame}]]]/rendered`` and
``.../thumbnail`` return one JPEG (default) or PNG image: the chosen frame, else the
first frame of the instance, else of the representative instance of the series or
study (see :mod:`coffre.services.render`). Query parameters (PS3.18 8.3.5.1):

- ``window=center,width[,function]``: function ``linear`` (default), ``linear-exact``
  or ``sigmoid`` (PS3.3 C.11.2.1.2/3); overrides the object's VOI;
- ``viewport=vw,vh[,sx,sy,sw,sh]``: fit the source region (default the whole image;
  negative ``sw``/``sh`` flip) in ``vw x vh`` keeping the aspect ratio; ``vw`` or ``vh``
  may be empty to constrain one side only; a thumbnail's default viewport is 128,128;
- ``quality=1..100``: JPEG quality (default 90); PNG is lossless and ignores it;
- ``annotation=patient,technique``: accepted and ignored: nothing is burnt into the
  pixels (patient data stays in the metadata, under access control and audit);
- ``charset``: accepted and ignored (the image holds no text);
- ``accept``: the media types, instead of the Accept header (PS3.18 8.3.3.1).

A value out of range is 400; a media type other than image/jpeg and image/png is 406.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from coffre.codecs.render import (
    DEFAULT_QUALITY,
    JPEG,
    MEDIA_TYPES,
    Region,
    RenderOptions,
    Viewport,
    VoiFunction,
    Window,
)
from coffre.errors import BadRequest, NotAcceptable
from coffre.services import render as service
from coffre.web.deps import ActorDep, ContextDep
from coffre.web.dicomweb.media import parse_accept

router = APIRouter()

THUMBNAIL_SIZE = 128
_ANNOTATIONS = frozenset({"patient", "technique"})
_FUNCTIONS = {
    "linear": VoiFunction.LINEAR,
    "linear-exact": VoiFunction.LINEAR_EXACT,
    "linear_exact": VoiFunction.LINEAR_EXACT,
    "sigmoid": VoiFunction.SIGMOID,
}
_IMAGE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {JPEG: {}, "image/png": {}}, "description": "the rendered image"},
    400: {"description": "a parameter is malformed or out of range"},
    401: {"description": "no valid bearer token"},
    403: {"description": "the token may not retrieve"},
    404: {"description": "no such study, series or instance in the caller's scope"},
    406: {"description": "no acceptable media type (image/jpeg, image/png)"},
}


# --- parameter parsing (shared with WADO-URI) -----------------------------------------


def parse_number(raw: str, name: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number")
    return value


def parse_integer(raw: str, name: str) -> int:
    text = raw.strip()
    if not text.lstrip("-").isdigit() or len(text) > 9:
        raise BadRequest(f"{name} must be an integer")
    return int(text)


def parse_window(raw: str) -> Window:
    """``center,width[,function]`` (PS3.18 8.3.5.1.4)."""
    parts = raw.split(",")
    if len(parts) not in (2, 3):
        raise BadRequest("window must be center,width[,function]")
    function = VoiFunction.LINEAR
    if len(parts) == 3:
        found = _FUNCTIONS.get(parts[2].strip().lower())
        if found is None:
            raise BadRequest("window function must be linear, linear-exact or sigmoid")
        function = found
    return Window(parse_number(parts[0], "window center"), parse_number(parts[1], "window width"), function)


def parse_viewport(raw: str) -> Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3); empty values take their defaults."""
    parts = [p.strip() for p in raw.split(",")]
    if len(parts) not in (2, 4, 6):
        raise BadRequest("viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
    width = parse_integer(parts[0], "viewport width") if parts[0] else None
    height = parse_integer(parts[1], "viewport height") if parts[1] else None
    if width is None and height is None:
        raise BadRequest("viewport needs a width or a height")
    for side in (width, height):
        if side is not None and side < 1:
            raise BadRequest("viewport width and height must be positive")
    region = None
    if len(parts) > 2:
        sx = parse_integer(parts[2], "viewport sx") if parts[2] else 0
        sy = parse_integer(parts[3], "viewport sy") if parts[3] else 0
        sw = parse_integer(parts[4], "viewport sw") if len(parts) > 4 and parts[4] else None
        sh = parse_integer(parts[5], "viewport sh") if len(parts) > 5 and parts[5] else None
        if sx < 0 or sy < 0:
            raise BadRequest("viewport sx and sy must not be negative")
        region = Region(sx, sy, sw, sh)
    return Viewport(width, height, region)


def parse_quality(raw: str | None) -> int:
    if raw is None or raw.strip() == "":
        return DEFAULT_QUALITY
    quality = parse_integer(raw, "quality")
    if not 1 <= quality <= 100:
        raise BadRequest("quality must be an integer from 1 to 100")
    return quality


def check_annotation(raw: str | None) -> None:
    """``patient`` and ``technique`` are accepted and ignored (nothing is burnt in)."""
    if raw is None or raw.strip() == "":
        return
    for item in raw.split(","):
        if item.strip().lower() not in _ANNOTATIONS:
            raise BadRequest("annotation must be patient and/or technique")


def choose_media_type(accept: str | None) -> str:
    """The rendered media type the Accept value prefers (JPEG for wildcards); 406 if
    neither JPEG nor PNG is acceptable."""
    for media in parse_accept(accept):
        if media.essence in ("*/*", "image/*"):
            return JPEG
        if media.essence in MEDIA_TYPES:
            return media.essence
    raise NotAcceptable("rendered images are available as image/jpeg or image/png only")


def _frame(raw: str) -> int:
    if "," in raw or "%2c" in raw.lower():
        raise BadRequest("a rendered image shows one frame: give a single frame number")
    number = parse_integer(raw, "frame number")
    if number < 1:
        raise BadRequest("frame numbers start at 1")
    return number


WindowQ = Annotated[str | None, Query(description="center,width[,linear|linear-exact|sigmoid]")]
ViewportQ = Annotated[str | None, Query(description="vw,vh[,sx,sy,sw,sh]")]
QualityQ = Annotated[str | None, Query(description="JPEG quality, 1-100 (default 90)")]
AnnotationQ = Annotated[
    str | None, Query(description="patient,technique: accepted, nothing is burnt in")
]
CharsetQ = Annotated[str | None, Query(description="accepted and ignored")]
AcceptQ = Annotated[str | None, Query(description="media types, instead of the Accept header")]


@dataclass(frozen=True, slots=True)
class RenderQuery:
    """The query parameters of every rendered and thumbnail resource."""

    window: WindowQ = None
    viewport: ViewportQ = None
    quality: QualityQ = None
    annotation: AnnotationQ = None
    charset: CharsetQ = None
    accept: AcceptQ = None

    def options(self, accept_header: str | None, *, thumbnail: bool) -> RenderOptions:
        check_annotation(self.annotation)
        media_type = choose_media_type(self.accept if self.accept is not None else accept_header)
        viewport = parse_viewport(self.viewport) if self.viewport else None
        if viewport is None and thumbnail:
            viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
        return RenderOptions(
            media_type=media_type,
            window=parse_window(self.window) if self.window else None,
            viewport=viewport,
            quality=parse_quality(self.quality),
        )


QueryDep = Annotated[RenderQuery, Depends()]


def _respond(
    ctx: ContextDep,
    actor: ActorDep,
    request: Request,
    target: service.RenderTarget,
    params: RenderQuery,
    *,
    thumbnail: bool,
) -> Response:
    options = params.options(request.headers.get("accept"), thumbnail=thumbnail)
    operation = "wado-rs-thumbnail" if thumbnail else "wado-rs-rendered"
    result = service.render(ctx, actor, target, options, operation=operation)
    return Response(
        result.content,
        media_type=result.media_type,
        headers={"Cache-Control": "private, max-age=0", "Vary": "Accept, Authorization"},
    )


_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"
_FRAME = _INSTANCE + "/frames/{frame}"


def _spec(summary: str) -> dict[str, Any]:
    return {"summary": summary, "response_class": Response, "responses": _IMAGE_RESPONSES}


@router.get(_STUDY + "/rendered", **_spec("Rendered study: its representative image (PS3.18 10.4.1.1.3)"))
def study_rendered(
    ctx: ContextDep, actor: ActorDep, request: Request, study: str, params: QueryDep
) -> Response:
    return _respond(ctx, actor, request, service.RenderTarget(study), params, thumbnail=False)


@router.get(_SERIES + "/rendered", **_spec("Rendered series: its middle image (PS3.18 10.4.1.1.3)"))
def series_rendered(
    ctx: ContextDep, actor: ActorDep, request: Request, study: str, series: str, params: QueryDep
) -> Response:
    target = service.RenderTarget(study, series)
    return _respond(ctx, actor, request, target, params, thumbnail=False)


@router.get(_INSTANCE + "/rendered", **_spec("Rendered instance: its first frame (PS3.18 10.4.1.1.3)"))
def instance_rendered(
    ctx: ContextDep, actor: ActorDep, request: Request, study: str, series: str, instance: str,
    params: QueryDep,
) -> Response:
    target = service.RenderTarget(study, series, instance)
    return _respond(ctx, actor, request, target, params, thumbnail=False)


@router.get(_FRAME + "/rendered", **_spec("Rendered frame (one frame number; PS3.18 10.4.1.1.3)"))
def frame_rendered(
    ctx: ContextDep, actor: ActorDep, request: Request, study: str, series: str, instance: str,
    frame: str, params: QueryDep,
) -> Response:
    target = service.RenderTarget(study, series, instance, _frame(frame))
    return _respond(ctx, actor, request, target, params, thumbnail=False)


@router.get(_STUDY + "/thumbnail", **_spec("Study thumbnail (PS3.18 10.4.1.1.4)"))
def study_thumbnail(
    ctx: ContextDep, actor: ActorDep, request: Request, study: str, params: QueryDep
) -> Response:
    return _respond(ctx, actor, request, service.RenderTarget(study), params, thumbnail=True)


@router.get(_SERIES + "/thumbnail", **_spec("Series thumbnail (PS3.18 10.4.1.1.4)"))
def series_thumbnail(
    ctx: ContextDep, actor: ActorDep, request: Request, study: str, series: str, params: QueryDep
) -> Response:
    target = service.RenderTarget(study, series)
    return _respond(ctx, actor, request, target, params, thumbnail=True)


@router.get(_INSTANCE + "/thumbnail", **_spec("Instance thumbnail (PS3.18 10.4.1.1.4)"))
def instance_thumbnail(
    ctx: ContextDep, actor: ActorDep, request: Request, study: str, series: str, instance: str,
    params: QueryDep,
) -> Response:
    target = service.RenderTarget(study, series, instance)
    return _respond(ctx, actor, request, target, params, thumbnail=True)


@router.get(_FRAME + "/thumbnail", **_spec("Frame thumbnail (PS3.18 10.4.1.1.4)"))
def frame_thumbnail(
    ctx: ContextDep, actor: ActorDep, request: Request, study: str, series: str, instance: str,
    frame: str, params: QueryDep,
) -> Response:
    target = service.RenderTarget(study, series, instance, _frame(frame))
    return _respond(ctx, actor, request, target, params, thumbnail=True)

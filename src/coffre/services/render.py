"""Rendered images (PS3.18 10.4.1.1.3 rendered, thumbnail) and WADO-URI (PS3.18 9).

Both reach the retrieve use case (:func:`coffre.services.retrieve.plan`): the actor is
authorized for *retrieve* and the access is audited study by study, exactly as a
C-MOVE, C-GET or WADO-RS retrieve; an instance outside the caller's scope is as absent
as an unknown one (:class:`~coffre.errors.NotFound`).

The image shown for a study or a series (PS3.18 10.4.1.1.3 leaves the choice to the
origin server) is a *representative instance*: for a series, its middle image in
Instance Number order (the lower middle for an even count); for a study, the middle
image of its first series (Series Number order) that holds images. Instances of
non-image SOP classes (structured reports, presentation states, encapsulated
documents, waveforms, RT objects without pixels...) are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from coffre.app import Context
from coffre.codecs import transcode
from coffre.codecs.render import RenderOptions, frame_count, render_instance
from coffre.dicom import transfer_syntaxes
from coffre.dicom.query import uid_query
from coffre.dicom.transfer_syntaxes import EXPLICIT_VR_LITTLE_ENDIAN
from coffre.errors import BadRequest, NotAcceptable, NotFound, TranscodeError
from coffre.index.retrieve import InstanceRef
from coffre.model import Actor
from coffre.services.retrieve import plan

DICOM = "application/dicom"
_CHUNK = 1 << 20

#: SOP Class UID prefixes of objects without images to show (PS3.4 Annex B).
_NON_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registrations, fiducials, segmentations
    "1.2.840.10008.5.1.4.1.1.67",  # real world value mapping
    "1.2.840.10008.5.1.4.1.1.68.",  # surfaces
    "1.2.840.10008.5.1.4.1.1.78.",  # measurements
    "1.2.840.10008.5.1.4.1.1.79.",
    "1.2.840.10008.5.1.4.1.1.80.",
    "1.2.840.10008.5.1.4.1.1.81.",
    "1.2.840.10008.5.1.4.1.1.82.",
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.90.",  # content assessment results
    "1.2.840.10008.5.1.4.1.1.91.",
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF, CDA, STL, OBJ, MTL
    "1.2.840.10008.5.1.4.1.1.200.",  # protocols
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.4",  # RT treatment records
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plans
    "1.2.840.10008.5.1.4.1.1.481.6",
    "1.2.840.10008.5.1.4.1.1.481.7",
    "1.2.840.10008.5.1.4.1.1.481.8",
    "1.2.840.10008.5.1.4.1.1.481.9",
    "1.2.840.10008.5.1.4.34.",  # RT second generation
    "1.2.840.10008.5.1.4.38.",  # hanging protocols
    "1.2.840.10008.5.1.4.39.",  # colour palettes
    "1.2.840.10008.5.1.4.43.",
    "1.2.840.10008.5.1.4.44.",
    "1.2.840.10008.5.1.4.45.",
)


@dataclass(frozen=True, slots=True)
class RenderTarget:
    """A study, a series or an instance, with an optional frame (1-based)."""

    study: str
    series: str | None = None
    instance: str | None = None
    frame: int | None = None


@dataclass(frozen=True, slots=True)
class Rendered:
    content: bytes
    media_type: str


@dataclass(frozen=True, slots=True)
class DicomObject:
    """A PS3.10 object, as stored (streamed) or transcoded (one chunk)."""

    chunks: Iterator[bytes]
    size: int
    transfer_syntax_uid: str


@dataclass(frozen=True, slots=True)
class UriRequest:
    """A WADO-URI request once its parameters are parsed (PS3.18 9.1, 9.4, 9.5).

    ``content_types``: what may be returned, best first, among ``application/dicom``,
    ``image/jpeg`` and ``image/png``; ``explicit``: whether the client's contentType
    parameter named them (otherwise the default of PS3.18 applies: a rendered JPEG for
    a single-frame image or a chosen frame, the DICOM object for anything else).
    """

    study: str
    series: str
    instance: str
    content_types: tuple[str, ...]
    explicit: bool
    options: RenderOptions
    frame: int | None = None
    transfer_syntax: str | None = None


def _is_image(ref: InstanceRef) -> bool:
    return not ref.sop_class_uid.startswith(_NON_IMAGE_PREFIXES)


def representative(refs: list[InstanceRef]) -> InstanceRef:
    """The instance shown for ``refs`` (in study, series, instance order; module doc)."""
    images = [ref for ref in refs if _is_image(ref)] or refs
    first_series = images[0].series_instance_uid
    in_series = [ref for ref in images if ref.series_instance_uid == first_series]
    return in_series[(len(in_series) - 1) // 2]


def _locate(ctx: Context, actor: Actor, target: RenderTarget, operation: str) -> InstanceRef:
    refs = plan(ctx, actor, uid_query(target.study, target.series, target.instance), operation=operation)
    if not refs:
        level = "instance" if target.instance else "series" if target.series else "study"
        raise NotFound(f"no such {level}")
    return representative(refs)


def render(
    ctx: Context,
    actor: Actor,
    target: RenderTarget,
    options: RenderOptions,
    *,
    operation: str = "wado-rs-rendered",
) -> Rendered:
    """The rendered image of ``target`` (PS3.18 10.4.1.1.3): its frame ``target.frame``,
    else its first frame; for a study or a series, of its representative instance."""
    if target.frame is not None and (target.instance is None or target.frame < 1):
        raise BadRequest("frame numbers are positive and name a frame of one instance")
    ref = _locate(ctx, actor, target, operation)
    data = ctx.blobs.read(ref.blob_key)
    frame_index = (target.frame or 1) - 1
    content = render_instance(data, frame_index, options, limits=ctx.settings.limits)
    return Rendered(content, options.media_type)


def _stream(ctx: Context, key: str) -> Iterator[bytes]:
    handle = ctx.blobs.open(key)

    def chunks() -> Iterator[bytes]:
        with handle:
            while chunk := handle.read(_CHUNK):
                yield chunk

    return chunks()


def _dicom(ctx: Context, ref: InstanceRef, requested: str | None) -> DicomObject:
    """PS3.18 9.4.2.4: the requested transfer syntax, Explicit VR Little Endian by
    default. A requested syntax that cannot be produced is 406; when the default cannot
    be produced (encapsulated video, pixels no codec decodes) the object goes as stored."""
    target = requested or EXPLICIT_VR_LITTLE_ENDIAN
    if target == ref.transfer_syntax_uid:
        return DicomObject(_stream(ctx, ref.blob_key), ref.size, ref.transfer_syntax_uid)
    if requested is not None and not transfer_syntaxes.is_accepted(requested):
        raise NotAcceptable("the requested transfer syntax is not one the archive supports")
    data = ctx.blobs.read(ref.blob_key)
    try:
        out = transcode(data, target, limits=ctx.settings.limits)
    except TranscodeError:
        if requested is not None:
            raise
        return DicomObject(iter([data]), len(data), ref.transfer_syntax_uid)
    return DicomObject(iter([out]), len(out), target)


def wado_uri(ctx: Context, actor: Actor, request: UriRequest) -> Rendered | DicomObject:
    """PS3.18 9: Retrieve DICOM Instance or Retrieve Rendered Instance."""
    if request.frame is not None and request.frame < 1:
        raise BadRequest("frameNumber must be a positive integer")
    target = RenderTarget(request.study, request.series, request.instance)
    ref = _locate(ctx, actor, target, "wado-uri")
    images = [t for t in request.content_types if t != DICOM]
    data: bytes | None = None
    if request.explicit:
        chosen = request.content_types[0]
    else:
        data = ctx.blobs.read(ref.blob_key)
        frames = frame_count(data, limits=ctx.settings.limits)
        renderable = frames == 1 or (frames > 1 and request.frame is not None)
        if renderable and images:
            chosen = images[0]
        elif DICOM in request.content_types:
            chosen = DICOM
        else:
            raise NotAcceptable("this object is not a single-frame image; ask for application/dicom")
    if chosen == DICOM:
        if request.frame is not None:
            raise BadRequest("frameNumber applies to rendered content types only")
        return _dicom(ctx, ref, request.transfer_syntax)
    if request.transfer_syntax is not None:
        raise BadRequest("transferSyntax applies to application/dicom only")
    options = RenderOptions(
        media_type=chosen,
        window=request.options.window,
        viewport=request.options.viewport,
        quality=request.options.quality,
    )
    if data is None:
        data = ctx.blobs.read(ref.blob_key)
    content = render_instance(data, (request.frame or 1) - 1, options, limits=ctx.settings.limits)
    return Rendered(content, chosen)

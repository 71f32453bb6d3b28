"""WADO-RS use cases (PS3.18 10.4): instances, metadata, frames and bulk data.

Every use case first locates the instances a request names within the caller's scope
through :func:`coffre.services.retrieve.plan`, the same use case as C-MOVE and C-GET:
it authorizes (``Action.RETRIEVE``) and audits study by study. A request that
matches nothing in scope is :class:`~coffre.errors.NotFound`; another facility's study
is indistinguishable from an absent one. Malformed UIDs are
:class:`~coffre.errors.InvalidUID` (400) before anything is read.

Representations (PS3.18 8.7.3). The adapter turns the Accept header into a list of
:class:`Acceptable` (media type or range, transfer syntax UID, ``*`` or the media
type's default), most preferred first; the choice happens here, per stored transfer
syntax, because only the index knows it:

- **instances** (``application/dicom``, Table 8.7.3-2): ``transfer-syntax=*`` sends
  the stored bytes untouched (Implicit VR Little Endian and Explicit VR Big Endian,
  which PS3.18 8.7.3 forbids on the web, are rewritten as Explicit VR Little Endian);
  an explicit UID is produced by the codecs when the stored syntax differs; no
  parameter means the default, Explicit VR Little Endian, except for instances whose
  pixel data the archive has only in lossy compressed or video form, which are sent as
  stored (the exception PS3.18 8.7.3 grants: decompressing them adds no information).
- **frames and pixel bulk data** (Tables 8.7.3-4 and 8.7.3-5): ``*`` sends the stored
  frames untouched, each part typed by the media type of the stored syntax (what OHIF
  asks with ``type=application/octet-stream; transfer-syntax=*``); a media type with
  no parameter means its default syntax (``application/octet-stream``: Explicit VR
  Little Endian, i.e. uncompressed little endian frames; ``image/jp2``: JPEG 2000
  lossless …); a wildcard (``*/*``, ``image/*``) prefers uncompressed frames, then the
  stored ones, then any other syntax the codecs can produce, and keeps lossy or video
  frames as stored (same exception as above).

A representation that cannot be produced is :class:`~coffre.errors.NotAcceptable`
(406) with the reason, decided before the response starts. Instance bodies are
produced lazily, one instance at a time (a stored instance is read from its blob in
:data:`CHUNK` pieces, a transcoded one is held alone in memory); the first instance
that needs transcoding is transcoded before the response starts, so that a codec
refusing a single instance is still a 406. A later instance failing mid-stream can
only abort the response (the client sees an unterminated multipart body).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence as DicomSequence

from coffre.app import Context
from coffre.codecs import LOSSY, can_transcode, transcode
from coffre.dicom import part10, transfer_syntaxes
from coffre.dicom.coercion import Coercion, coerce_dataset, coerce_json
from coffre.dicom.instance import parse_instance, pydicom_guard
from coffre.dicom.query import uid_query
from coffre.dicom.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HEVC_M10P51,
    HEVC_MP51,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE_8BIT,
    JPEG_EXTENDED_12BIT,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    MPEG2_MPHL,
    MPEG2_MPML,
    MPEG4_HP41,
    MPEG4_HP41_BD,
    MPEG4_HP42_2D,
    MPEG4_HP42_3D,
    MPEG4_HP42_STEREO,
    RLE_LOSSLESS,
)
from coffre.errors import (
    BadRequest,
    CoffreError,
    InvalidInstance,
    NotAcceptable,
    NotFound,
    StorageFailure,
    TooLarge,
)
from coffre.index import metadata as metadata_index
from coffre.index.retrieve import InstanceRef
from coffre.model import Actor
from coffre.services.retrieve import plan
from coffre.settings import LimitsSettings

#: the ``transfer-syntax`` parameter value meaning "any syntax" (PS3.18 8.7.3.5)
ANY = "*"
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
#: largest piece of a blob held at once while streaming an instance
CHUNK = 1 << 20

#: PS3.18 Tables 8.7.3-4 and 8.7.3-5: bulk data media types and the transfer syntaxes
#: each may carry, the default first. Alternative names follow the main one.
BULK_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    OCTET_STREAM: (EXPLICIT_VR_LITTLE_ENDIAN,),
    "image/jpeg": (JPEG_LOSSLESS_SV1, JPEG_BASELINE_8BIT, JPEG_EXTENDED_12BIT, JPEG_LOSSLESS),
    "image/dicom-rle": (RLE_LOSSLESS,),
    "image/x-dicom-rle": (RLE_LOSSLESS,),
    "image/jls": (JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS),
    "image/x-jls": (JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS),
    "image/jp2": (JPEG_2000_LOSSLESS, JPEG_2000),
    "image/jphc": (HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K),
    "video/mpeg2": (MPEG2_MPML, MPEG2_MPHL),
    "video/mp4": (MPEG4_HP41, MPEG4_HP41_BD, MPEG4_HP42_2D, MPEG4_HP42_3D, MPEG4_HP42_STEREO),
    "video/H265": (HEVC_MP51, HEVC_M10P51),
}

#: PS3.18 8.7.3: not to be used with web services
_NOT_ON_THE_WEB = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})
#: stored syntaxes whose native frames are already little endian bytes at known offsets
_LITTLE_ENDIAN_NATIVE = frozenset({EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN})
_NATIVE = frozenset(
    {*_LITTLE_ENDIAN_NATIVE, EXPLICIT_VR_BIG_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}
)
_PIXEL_KEYS = ('"7FE00010"', '"7FE00008"', '"7FE00009"')
_BULK_URI = '"BulkDataURI":"bulkdata/'
_TAG_PATH = re.compile(r"[0-9A-Fa-f]{8}(/[0-9]{1,6}/[0-9A-Fa-f]{8}){0,15}")
_MAX_FRAMES_IN_LIST = 10_000


@dataclass(frozen=True, slots=True)
class Acceptable:
    """One acceptable representation from the Accept header (PS3.18 8.7.5).

    ``media_type`` is a type or range (``application/dicom``, ``image/jp2``,
    ``image/*``, ``*/*``); ``transfer_syntax`` a UID, :data:`ANY`, or None for the
    media type's default.
    """

    media_type: str
    transfer_syntax: str | None = None


@dataclass(frozen=True, slots=True)
class Representation:
    """How pixel data are sent: media type, transfer syntax, and whether the stored
    frames are sent untouched (no decoding)."""

    media_type: str
    transfer_syntax_uid: str
    stored: bool


@dataclass(frozen=True, slots=True)
class InstancePart:
    """One instance of a retrieve response, in ``transfer_syntax_uid``."""

    ref: InstanceRef
    transfer_syntax_uid: str
    chunks: Iterable[bytes]


@dataclass(frozen=True, slots=True)
class Retrieval:
    count: int
    parts: Iterator[InstancePart]


@dataclass(frozen=True, slots=True)
class Metadata:
    """A DICOM JSON array, produced lazily (nothing is read before ``chunks`` is)."""

    etag: str
    count: int
    chunks: Iterator[bytes]


@dataclass(frozen=True, slots=True)
class Frames:
    ref: InstanceRef
    representation: Representation
    #: the frame numbers sent, one part each, in order
    numbers: tuple[int, ...]
    frames: Iterator[bytes]


@dataclass(frozen=True, slots=True)
class BulkData:
    ref: InstanceRef
    media_type: str
    #: the syntax of pixel data values; None for other elements (plain octets)
    transfer_syntax_uid: str | None
    #: pixel data in a compressed syntax: one part per frame; else one part
    parts: list[bytes] = field(default_factory=list)


# --- negotiation --------------------------------------------------------------------


def media_type_of(transfer_syntax_uid: str) -> str:
    """The bulk data media type of frames stored in ``transfer_syntax_uid``."""
    if transfer_syntax_uid in _NATIVE:
        return OCTET_STREAM
    for media_type, syntaxes in BULK_MEDIA_TYPES.items():
        if transfer_syntax_uid in syntaxes:
            return media_type
    return OCTET_STREAM  # pragma: no cover - every accepted syntax is in the table


def matches(media_range: str, media_type: str) -> bool:
    """Whether a media range (``*/*``, ``image/*``, ``image/jp2``) admits ``media_type``."""
    main, _, sub = media_range.lower().partition("/")
    t_main, _, t_sub = media_type.lower().partition("/")
    return main in ("*", t_main) and sub in ("*", t_sub)


def _lossy_or_video(uid: str) -> bool:
    return uid in LOSSY or transfer_syntaxes.get(uid).video


def _name(uid: str) -> str:
    ts = transfer_syntaxes.BY_UID.get(uid)
    return ts.name if ts else uid[:64]


def instance_syntax(stored: str, accepted: Sequence[Acceptable]) -> str:
    """The transfer syntax an instance stored in ``stored`` is sent in (module doc)."""
    tried: list[str] = []
    for acceptable in accepted:
        if not matches(acceptable.media_type, DICOM):
            continue
        wanted = acceptable.transfer_syntax
        if wanted == ANY:
            return EXPLICIT_VR_LITTLE_ENDIAN if stored in _NOT_ON_THE_WEB else stored
        if wanted is None:
            if _lossy_or_video(stored):
                return stored
            wanted = EXPLICIT_VR_LITTLE_ENDIAN
        if wanted not in _NOT_ON_THE_WEB and can_transcode(stored, wanted):
            return wanted
        tried.append(_name(wanted))
    if not tried:
        raise NotAcceptable(
            'the Accept header admits no multipart/related; type="application/dicom"'
        )
    raise NotAcceptable(
        f"instances stored in {_name(stored)} cannot be sent in {', '.join(dict.fromkeys(tried))}"
    )


def pixel_representation(
    stored: str, accepted: Sequence[Acceptable], *, frames_located: bool = True
) -> Representation:
    """How the frames of an instance stored in ``stored`` are sent (module doc).

    ``frames_located`` is False when the stored frames cannot be cut out of the blob
    (no frame offsets in the index): the stored form is then never chosen.
    """
    stored_media = media_type_of(stored)
    native_le = stored in _LITTLE_ENDIAN_NATIVE
    encapsulated = stored not in _NATIVE

    def stored_form() -> Representation | None:
        if native_le and frames_located:
            return Representation(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, stored=True)
        if encapsulated and frames_located:
            return Representation(stored_media, stored, stored=True)
        return None

    def produce(media_type: str, uid: str) -> Representation | None:
        if uid == EXPLICIT_VR_LITTLE_ENDIAN and native_le and frames_located:
            return Representation(media_type, uid, stored=True)
        if uid == stored:
            return Representation(media_type, uid, stored=True) if frames_located else None
        if can_transcode(stored, uid):
            return Representation(media_type, uid, stored=False)
        return None

    for acceptable in accepted:
        wanted = acceptable.transfer_syntax
        media_range = acceptable.media_type
        if wanted == ANY:
            chosen = stored_form() or produce(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)
            if chosen is not None:
                return chosen
            continue
        candidates: list[tuple[str, str]] = []
        if wanted is None:
            if _lossy_or_video(stored) and matches(media_range, stored_media):
                chosen = stored_form()
                if chosen is not None:
                    return chosen
            if matches(media_range, OCTET_STREAM):
                candidates.append((OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN))
            if encapsulated and matches(media_range, stored_media):
                candidates.append((stored_media, stored))
            candidates += [
                (media_type, syntaxes[0])
                for media_type, syntaxes in BULK_MEDIA_TYPES.items()
                if matches(media_range, media_type)
            ]
        else:
            candidates = [
                (media_type, wanted)
                for media_type, syntaxes in BULK_MEDIA_TYPES.items()
                if wanted in syntaxes and matches(media_range, media_type)
            ]
        for media_type, uid in candidates:
            chosen = produce(media_type, uid)
            if chosen is not None:
                return chosen
    raise NotAcceptable(
        f"no acceptable media type can be produced from pixel data in {_name(stored)}"
    )


# --- locating -----------------------------------------------------------------------


def _locate(
    ctx: Context,
    actor: Actor,
    study: str,
    series: str | None,
    instance: str | None,
    *,
    operation: str,
) -> list[InstanceRef]:
    query = uid_query(study, series, instance)
    refs = plan(ctx, actor, query, operation=operation)
    if not refs:
        what = "instance" if instance is not None else "series" if series is not None else "study"
        raise NotFound(f"{what} not found")
    return refs


def _read(ctx: Context, ref: InstanceRef) -> bytes:
    if ref.size > ctx.settings.limits.max_object_bytes:
        raise TooLarge("stored object is larger than max_object_bytes")
    return ctx.blobs.read(ref.blob_key)


def blob_chunks(ctx: Context, key: str) -> Iterator[bytes]:
    """The blob ``key`` in pieces of at most :data:`CHUNK` bytes, opened when first read."""
    with ctx.blobs.open(key) as stream:
        while True:
            try:
                chunk = stream.read(CHUNK)
            except OSError:
                raise StorageFailure(f"cannot read blob {key}") from None
            if not chunk:
                return
            yield chunk


def _pieces(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        yield bytes(view[start : start + CHUNK])


# --- instances ----------------------------------------------------------------------


def retrieve(
    ctx: Context,
    actor: Actor,
    study: str,
    series: str | None,
    instance: str | None,
    accepted: Sequence[Acceptable],
) -> Retrieval:
    """The instances of a study, series or instance, each in its chosen syntax."""
    refs = _locate(ctx, actor, study, series, instance, operation="wado-rs")
    chosen: dict[str, str] = {}
    for ref in refs:
        if ref.transfer_syntax_uid not in chosen:
            chosen[ref.transfer_syntax_uid] = instance_syntax(ref.transfer_syntax_uid, accepted)

    def body(ref: InstanceRef) -> Iterable[bytes]:
        target = chosen[ref.transfer_syntax_uid]
        if target == ref.transfer_syntax_uid and ref.coercion is None:
            return blob_chunks(ctx, ref.blob_key)
        data = _read(ctx, ref)
        if target != ref.transfer_syntax_uid:
            data = transcode(data, target, limits=ctx.settings.limits)
        if ref.coercion is not None:
            data = _coerced(data, ref.coercion)
        return _pieces(data)

    # the first instance needing a codec is transcoded now: its failure is still a 406
    first = next(
        (i for i, r in enumerate(refs) if chosen[r.transfer_syntax_uid] != r.transfer_syntax_uid),
        None,
    )
    ready: dict[int, Iterable[bytes]] = {} if first is None else {first: body(refs[first])}

    def parts() -> Iterator[InstancePart]:
        for index, ref in enumerate(refs):
            chunks = ready.pop(index, None)
            if chunks is None:
                chunks = body(ref)
            yield InstancePart(ref, chosen[ref.transfer_syntax_uid], chunks)

    return Retrieval(count=len(refs), parts=parts())


def _coerced(data: bytes, coercion: Coercion) -> bytes:
    """The Part 10 object ``data`` with its patient identifiers in the caller's domain."""
    with pydicom_guard():
        ds = dcmread(BytesIO(data))
        coerce_dataset(ds, coercion)
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# --- metadata -----------------------------------------------------------------------


def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def metadata(
    ctx: Context,
    actor: Actor,
    study: str,
    series: str | None,
    instance: str | None,
    *,
    base_url: str,
) -> Metadata:
    """The stored DICOM JSON of the located instances as one array (PS3.18 10.4.1.1.2).

    Built by concatenating the stored documents (never parsed here); each relative
    ``BulkDataURI`` becomes ``<base_url>/studies/…/instances/…/bulkdata/<tag path>``.
    The ETag is a hash of ``base_url`` and each instance's id, blob key and last
    change, so it changes when an instance is added, replaced or updated.
    """
    refs = _locate(ctx, actor, study, series, instance, operation="wado-rs-metadata")
    with ctx.db.read() as tx:
        versions = metadata_index.versions(tx, [r.id for r in refs])
    digest = hashlib.sha256(base_url.encode())
    for ref in refs:
        version = versions.get(ref.id)
        if version is not None:
            digest.update(
                f"\n{ref.id}:{version.blob_key}:{version.updated_at.isoformat()}".encode()
            )
        if ref.coercion is not None:  # the same study reads differently in another domain
            digest.update(f"\n{ref.coercion.patient_id}\\{ref.coercion.issuer}".encode())
    etag = '"' + digest.hexdigest()[:40] + '"'
    return Metadata(etag=etag, count=len(refs), chunks=_metadata_chunks(ctx, refs, base_url))


def _metadata_chunks(ctx: Context, refs: list[InstanceRef], base_url: str) -> Iterator[bytes]:
    """``[doc,doc,…]`` one batch per chunk, brackets included (few, large writes)."""
    base = _json_string(base_url)
    separator = ""
    last = len(refs) - 1
    for start in range(0, max(len(refs), 1), metadata_index.BATCH):
        batch = refs[start : start + metadata_index.BATCH]
        with ctx.db.read() as tx:
            docs = metadata_index.documents(tx, [r.id for r in batch])
        pieces: list[str] = ["["] if start == 0 else []
        for ref in batch:
            doc = docs.get(ref.id)
            if doc is None:  # deleted since it was located
                continue
            prefix = (
                f'"BulkDataURI":"{base}/studies/{ref.study_instance_uid}/series/'
                f"{ref.series_instance_uid}/instances/{ref.sop_instance_uid}/bulkdata/"
            )
            if ref.coercion is not None:
                doc = coerce_json(doc, ref.coercion)
            pieces.append(separator)
            pieces.append(doc.replace(_BULK_URI, prefix))
            separator = ","
        if start + metadata_index.BATCH > last:
            pieces.append("]")
        yield "".join(pieces).encode("utf-8")


# --- frames -------------------------------------------------------------------------


def parse_frame_list(text: str) -> tuple[int, ...]:
    """PS3.18 10.4.1.1.3 ``{frames}``: comma-separated 1-based frame numbers."""
    items = text.split(",")
    if len(items) > _MAX_FRAMES_IN_LIST:
        raise BadRequest(f"more than {_MAX_FRAMES_IN_LIST} frame numbers")
    numbers: list[int] = []
    for item in items:
        item = item.strip()
        if not item.isascii() or not item.isdigit() or len(item) > 9 or int(item) < 1:
            raise BadRequest("frame numbers must be positive integers separated by commas")
        numbers.append(int(item))
    return tuple(numbers)


def _pixel_facts(ctx: Context, ref: InstanceRef) -> tuple[int, tuple[tuple[int, int], ...]]:
    """Number of frames (from the stored JSON) and stored frame ranges of ``ref``."""
    with ctx.db.read() as tx:
        doc = metadata_index.documents(tx, [ref.id]).get(ref.id, "")
        offsets = metadata_index.frame_offsets(tx, ref.id)
    if not any(key in doc for key in _PIXEL_KEYS):
        raise NotFound("the instance has no pixel data")
    count = 1
    value = json.loads(doc).get("00280008", {}).get("Value")
    if isinstance(value, list) and value:
        try:
            count = max(1, int(value[0]))
        except (TypeError, ValueError):
            count = 1
    return count, offsets


def _check_numbers(numbers: Sequence[int], count: int) -> None:
    for number in numbers:
        if number > count:
            raise NotFound(f"frame {number} does not exist (the instance has {count})")


def _stored_frames(
    ctx: Context,
    key: str,
    offsets: Sequence[tuple[int, int]],
    numbers: Sequence[int],
    *,
    encapsulated: bool,
) -> Iterator[bytes]:
    """Stored frames read with one seek each (multi-fragment frames unwrapped)."""
    with ctx.blobs.open(key) as stream:
        for number in numbers:
            offset, length = offsets[number - 1]
            stream.seek(offset)
            raw = stream.read(length)
            if len(raw) != length:
                raise StorageFailure(f"blob {key} is shorter than its frame offsets")
            yield part10.read_frame(raw, (0, length)) if encapsulated else raw


def _transcoded_frames(
    ctx: Context, ref: InstanceRef, target: str
) -> tuple[bytes, tuple[tuple[int, int], ...]]:
    """The object in ``target`` and its frame ranges."""
    limits = ctx.settings.limits
    data = transcode(_read(ctx, ref), target, limits=limits)
    ranges = parse_instance(data, limits).frame_offsets
    if not ranges:
        raise NotAcceptable(f"frame boundaries cannot be determined in {_name(target)}")
    return data, ranges


def frames(
    ctx: Context,
    actor: Actor,
    study: str,
    series: str,
    instance: str,
    numbers: Sequence[int],
    accepted: Sequence[Acceptable],
) -> Frames:
    """Frames of one instance (PS3.18 10.4.1.1.3), stored or transcoded (module doc)."""
    ref = _locate(ctx, actor, study, series, instance, operation="wado-rs-frames")[0]
    count, offsets = _pixel_facts(ctx, ref)
    _check_numbers(numbers, count)
    stored = ref.transfer_syntax_uid
    video = transfer_syntaxes.get(stored).video
    located = bool(offsets) and (video or len(offsets) == count)
    rep = pixel_representation(stored, accepted, frames_located=located)
    if rep.stored:
        key = ref.blob_key
        if video:  # one stream: sent once, whatever frames were asked
            return Frames(
                ref, rep, (1,), _stored_frames(ctx, key, offsets, (1,), encapsulated=True)
            )
        chunks = _stored_frames(ctx, key, offsets, numbers, encapsulated=stored not in _NATIVE)
        return Frames(ref, rep, tuple(numbers), chunks)
    data, ranges = _transcoded_frames(ctx, ref, rep.transfer_syntax_uid)
    _check_numbers(numbers, len(ranges))
    out = [part10.read_frame(data, ranges[n - 1]) for n in numbers]
    return Frames(ref, rep, tuple(numbers), iter(out))


# --- bulk data ----------------------------------------------------------------------


def parse_tag_path(text: str) -> tuple[int | str, ...]:
    """``gggggggg[/item/gggggggg]…`` as in the stored BulkDataURIs (tags hex, items 0-based)."""
    if not _TAG_PATH.fullmatch(text):
        raise BadRequest(
            "bulk data path must be tags (8 hex digits) and item numbers separated by '/'"
        )
    out: list[int | str] = []
    for index, piece in enumerate(text.split("/")):
        out.append(int(piece, 16) if index % 2 == 0 else piece)
    return tuple(out)


def _element(ds: Dataset, path: Sequence[int | str]) -> RawDataElement | DataElement:
    current = ds
    for depth in range(0, len(path), 2):
        tag = path[depth]
        assert isinstance(tag, int)
        if tag not in current:
            raise NotFound("no such element in the instance")
        if depth + 1 == len(path):
            return current.get_item(tag)
        value: Any = current[tag].value
        index = int(path[depth + 1])
        if not isinstance(value, DicomSequence) or index >= len(value):
            raise NotFound("no such element in the instance")
        current = value[index]
    raise NotFound("no such element in the instance")  # pragma: no cover - path is non-empty


def _value_bytes(elem: RawDataElement | DataElement, little_endian: bool, implicit: bool) -> bytes:
    if isinstance(elem, RawDataElement):
        vr = elem.VR
        if vr is None:  # implicit VR: the dictionary says whether it is a sequence
            try:
                vr = dictionary_VR(elem.tag)
            except KeyError:
                vr = "UN"
        if vr == "SQ" or elem.length == part10.UNDEFINED_LENGTH:
            raise BadRequest("a sequence has no bulk data value")
        return bytes(elem.value or b"")
    if elem.VR == "SQ":
        raise BadRequest("a sequence has no bulk data value")
    buffer = DicomBytesIO()
    buffer.is_little_endian = little_endian
    buffer.is_implicit_VR = implicit
    write_data_element(buffer, elem)
    raw = buffer.getvalue()
    long_header = not implicit and elem.VR.encode("ascii") in part10.LONG_VRS
    return raw[12 if long_header else 8 :]


def bulkdata(
    ctx: Context,
    actor: Actor,
    study: str,
    series: str,
    instance: str,
    path: str,
    accepted: Sequence[Acceptable],
) -> BulkData:
    """The value of one element of an instance (PS3.18 10.4.1.1.5).

    Top-level pixel data follow the frames' negotiation: uncompressed, the whole value
    (all frames, little endian) as one part; compressed, one part per frame. Any other
    element, at any depth, is its value bytes as stored (little endian; an object
    stored big endian is first rewritten little endian), as ``application/octet-stream``.
    """
    tags = parse_tag_path(path)
    ref = _locate(ctx, actor, study, series, instance, operation="wado-rs-bulkdata")[0]
    stored = ref.transfer_syntax_uid
    limits = ctx.settings.limits
    if len(tags) == 1 and tags[0] in part10.PIXEL_TAGS:
        return _pixel_bulkdata(ctx, ref, int(tags[0]), accepted)
    if not any(
        matches(a.media_type, OCTET_STREAM)
        and a.transfer_syntax in (None, ANY, EXPLICIT_VR_LITTLE_ENDIAN)
        for a in accepted
    ):
        raise NotAcceptable(
            'bulk data is sent as multipart/related; type="application/octet-stream"'
        )
    data = _read(ctx, ref)
    if stored == EXPLICIT_VR_BIG_ENDIAN:
        data = transcode(data, EXPLICIT_VR_LITTLE_ENDIAN, limits=limits)
    scan = part10.scan(data, limits)
    syntax = transfer_syntaxes.get(scan.transfer_syntax_uid)
    with pydicom_guard():
        try:
            ds = read_dataset(
                BytesIO(scan.dataset_without_pixels()),
                is_implicit_VR=syntax.implicit_vr,
                is_little_endian=syntax.little_endian,
            )
            value = _value_bytes(_element(ds, tags), syntax.little_endian, syntax.implicit_vr)
        except CoffreError:
            raise
        except Exception:
            raise InvalidInstance("the stored object cannot be parsed") from None
    return BulkData(ref, OCTET_STREAM, None, [value])


def _pixel_bulkdata(
    ctx: Context, ref: InstanceRef, tag: int, accepted: Sequence[Acceptable]
) -> BulkData:
    stored = ref.transfer_syntax_uid
    limits = ctx.settings.limits
    with ctx.db.read() as tx:
        doc = metadata_index.documents(tx, [ref.id]).get(ref.id, "")
        offsets = metadata_index.frame_offsets(tx, ref.id)
    if f'"{tag:08X}"' not in doc:
        raise NotFound("no such element in the instance")
    if tag != part10.PIXEL_DATA:
        # Float / Double Float Pixel Data: native only, sent as stored (little endian)
        if not any(matches(a.media_type, OCTET_STREAM) for a in accepted):
            raise NotAcceptable("float pixel data are sent as application/octet-stream")
        data = _read(ctx, ref)
        if stored not in _LITTLE_ENDIAN_NATIVE:
            data = transcode(data, EXPLICIT_VR_LITTLE_ENDIAN, limits=limits)
        return BulkData(
            ref, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, [_pixel_value(data, tag, limits)]
        )
    rep = pixel_representation(stored, accepted, frames_located=bool(offsets))
    if rep.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN:
        data = _read(ctx, ref)
        if stored != EXPLICIT_VR_LITTLE_ENDIAN and stored != IMPLICIT_VR_LITTLE_ENDIAN:
            data = transcode(data, EXPLICIT_VR_LITTLE_ENDIAN, limits=limits)
        return BulkData(
            ref, rep.media_type, rep.transfer_syntax_uid, [_pixel_value(data, tag, limits)]
        )
    if rep.stored:
        numbers = range(1, len(offsets) + 1)
        values = list(_stored_frames(ctx, ref.blob_key, offsets, numbers, encapsulated=True))
    else:
        data, ranges = _transcoded_frames(ctx, ref, rep.transfer_syntax_uid)
        values = [part10.read_frame(data, r) for r in ranges]
    return BulkData(ref, rep.media_type, rep.transfer_syntax_uid, values)


def _pixel_value(data: bytes, tag: int, limits: LimitsSettings) -> bytes:
    scan = part10.scan(data, limits)
    pixel = scan.pixels.get(tag)
    if pixel is None or pixel.encapsulated:
        raise NotFound("no such element in the instance")
    return scan.buffer[pixel.value_offset : pixel.value_offset + pixel.value_length]

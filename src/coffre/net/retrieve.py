"""Query/Retrieve - MOVE and GET SCP (PS3.4 C.4.2, C.4.3).

Both resolve the identifier's unique keys through ``services.retrieve.plan`` and send
each instance with a C-STORE sub-operation: C-MOVE over a new association to a
registered destination node, C-GET over the requesting association (SCP/SCU role
selection, PS3.7 D.3.3.4). pynetdicom counts remaining/completed/failed/warning
sub-operations and sends the Pending responses and the Failed SOP Instance UID List.

Transfer syntax (DESIGN rule 7: originals are kept; transcoding happens on the way
out): when the peer accepted the stored syntax for the SOP class, the archived element
values are sent untouched - ``raw_dataset`` hands pynetdicom the archived elements
undecoded, and what the peer receives after the meta header is the archived data set
byte for byte (except retired group length elements, PS3.5 7.2, which pydicom's writer
leaves out). Otherwise the instance is transcoded (``codecs.transcode``) to a syntax the
peer accepted, Explicit then Implicit VR Little Endian first. An instance that cannot be
produced in any accepted syntax is a failed sub-operation. An instance sent into the
caller's identifier domain is read with ``dcmread`` and coerced (``dicom.coercion``).

Speed: each sub-operation is strictly sequential (send, wait for the C-STORE-RSP,
next), so the per-instance work and pynetdicom's reactor latency add up directly; see
the "pynetdicom internals" section below and docs/performance.md section 5.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import build_context, evt

from coffre.app import Context
from coffre.codecs.transcode import can_transcode, transcode
from coffre.dicom import part10
from coffre.dicom.coercion import coerce_dataset
from coffre.dicom.query import parse_retrieve
from coffre.dicom.transfer_syntaxes import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from coffre.errors import CoffreError
from coffre.index.retrieve import InstanceRef
from coffre.model import Actor
from coffre.net.find import MODELS
from coffre.net.statuses import failure_status
from coffre.services.retrieve import move_destination, plan
from coffre.settings import LimitsSettings

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
#: pynetdicom proposes at most 128 presentation contexts (PS3.8 9.3.2.2: 128 odd IDs)
_MAX_CONTEXTS = 128
_FALLBACK = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)

Accepted = dict[str, set[str]]


def accepted_for_sending(assoc: Any) -> Accepted:
    """SOP class -> transfer syntaxes in which this side may send C-STOREs."""
    out: Accepted = {}
    for cx in assoc.accepted_contexts:
        if cx.as_scu:
            out.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return out


def _unsendable(ref: InstanceRef) -> Dataset:
    """A dataset no accepted context fits: pynetdicom counts it as a failed sub-operation."""
    ds = Dataset()
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = ref.sop_instance_uid
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.999")
    return ds


def _read(data: bytes) -> Dataset:
    # pydicom keeps element values raw until accessed and writes raw values back as they
    # are, so an instance sent in its stored syntax is re-framed, not re-encoded.
    return dcmread(BytesIO(data))


# -- the archived bytes as raw elements, without pydicom's reader ----------------------
#
# A C-STORE sub-operation in the stored transfer syntax needs the archived data set
# again, byte for byte: pynetdicom encodes the yielded Dataset with pydicom's
# ``write_dataset``, which writes a ``RawDataElement`` as its header plus its undecoded
# value when the dataset's original encoding equals the negotiated one (pydicom's
# ``Dataset.set_original_encoding``, "to enable optimized writing"). ``dcmread`` builds
# such a dataset too, but parses undefined-length sequences into Python objects (written
# back element by element; an undefined-length UN it cannot read at all) and costs
# 0.2-1.2 ms for a CT slice here. The bounded walk of ingest (``dicom.part10.scan``, the
# one element walker of the archive) gives the top-level elements' offsets, and their
# values are cut out undecoded. Anything it refuses, and big endian or deflate, goes
# back to ``dcmread``.

_CHARSET = BaseTag(0x00080005)


def raw_dataset(data: bytes, transfer_syntax: str, limits: LimitsSettings | None = None) -> Dataset:
    """The archived Part 10 ``data`` as a Dataset of undecoded elements that encodes back
    to the archived data set bytes in ``transfer_syntax``, its stored syntax.

    The result is what ``dcmread`` returns for these bytes, minus the parsing: each
    top-level element is a ``RawDataElement`` whose value is the archived value, the
    original encoding is set so that pydicom writes them without conversion, and
    ``file_meta`` holds the Transfer Syntax UID pynetdicom uses to pick the presentation
    context. Bytes the walk refuses, or whose meta names another syntax than the index,
    are read with ``dcmread``.
    """
    try:
        scanned = part10.scan(data, limits or LimitsSettings())
    except CoffreError as exc:
        log.debug("raw read fell back to dcmread: %s", exc.reason)
        return _read(data)
    syntax = UID(transfer_syntax)
    if scanned.transfer_syntax_uid != transfer_syntax or scanned.deflated or not syntax.is_little_endian:
        return _read(data)
    implicit = syntax.is_implicit_VR
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    charset: RawDataElement | None = None
    for index, element in enumerate(scanned.elements):
        key = BaseTag(element.tag)
        # an undefined length's Sequence Delimitation Item is written back by pydicom
        elements[key] = raw = RawDataElement(
            key, element.vr, element.length, scanned.value_of(index), element.value_offset, implicit, True)
        if key == _CHARSET:
            charset = raw
    ds = Dataset(elements)
    # as pydicom's read_dataset does, so that write_dataset sees an unchanged character set
    encoding = convert_encodings(convert_raw_data_element(charset).value) if charset else default_encoding
    ds.set_original_encoding(implicit, True, encoding)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def payload(ctx: Context, ref: InstanceRef, accepted: Accepted) -> Dataset:
    """The dataset pynetdicom sends for one sub-operation, in a syntax the peer accepted,
    with the patient identifiers coerced into the caller's domain when the plan says so."""
    ds = _payload(ctx, ref, accepted)
    if ref.coercion is not None and "PatientID" in ds:  # not the unsendable placeholder
        coerce_dataset(ds, ref.coercion)
    return ds


def _payload(ctx: Context, ref: InstanceRef, accepted: Accepted) -> Dataset:
    syntaxes = accepted.get(ref.sop_class_uid, set())
    if ref.transfer_syntax_uid in syntaxes:
        data = ctx.blobs.read(ref.blob_key)
        if ref.coercion is None:
            # DESIGN rule 7: the archived element values go out untouched
            return raw_dataset(data, ref.transfer_syntax_uid, ctx.settings.limits)
        return _read(data)
    ordered = [ts for ts in _FALLBACK if ts in syntaxes] + sorted(syntaxes - set(_FALLBACK))
    for target in ordered:
        if can_transcode(ref.transfer_syntax_uid, target):
            try:
                data = transcode(ctx.blobs.read(ref.blob_key), target, limits=ctx.settings.limits)
            except CoffreError as exc:
                log.warning("transcoding for a retrieve failed: %s", exc.reason)
                break
            return _read(data)
    return _unsendable(ref)


def _contexts(refs: list[InstanceRef]) -> list[Any]:
    """Presentation contexts for a C-MOVE sub-association: stored syntax + fallbacks."""
    wanted: dict[str, set[str]] = {}
    for ref in refs:
        wanted.setdefault(ref.sop_class_uid, set()).add(ref.transfer_syntax_uid)
    contexts = []
    for sop_class, syntaxes in sorted(wanted.items()):
        for ts in sorted(syntaxes - set(_FALLBACK)):
            contexts.append(build_context(sop_class, [ts]))
        contexts.append(build_context(sop_class, list(_FALLBACK)))
    if len(contexts) > _MAX_CONTEXTS:
        log.warning("C-MOVE needs %d presentation contexts; proposing the first %d", len(contexts), _MAX_CONTEXTS)
    return contexts[:_MAX_CONTEXTS]


# -- pynetdicom internals: the only private attributes this module touches -----------
#
# Both work around pynetdicom 3.0's polling upper layer for the associations a retrieve
# sends its C-STORE sub-operations on; nothing else is changed, and nothing global.

#: How long the DUL reactor of an association that carries C-STORE sub-operations sleeps
#: when a loop found nothing to do; ``None`` keeps pynetdicom's default (1 ms).
_RETRIEVE_POLL: float | None = 0.0001
#: How long a C-MOVE waits for the sub-association's reactor to wake up between two
#: sub-operations (it normally takes microseconds; see ``_settle_reactor``).
_SETTLE_TIMEOUT = 0.005


def _poll_faster(assoc: Any) -> float | None:
    """Shorten the idle sleep of ``assoc``'s DUL reactor; return the previous value.

    pynetdicom's DUL thread polls its socket and queues, sleeping
    ``DULServiceProvider._run_loop_delay`` (1 ms) after every loop that found nothing
    to do. A C-STORE sub-operation waits for that loop twice (to send the request, to
    read the response), so the sleep alone bounds a sequential C-MOVE/C-GET at a few
    hundred instances per second. The attribute is per association (pynetdicom's
    ``run_reactor``: "Setting `_run_loop_delay` higher will use less CPU when idle, but
    will also increase the latency"); Coffre shortens it only on the associations a
    retrieve sends on, and only while it sends. A shorter sleep costs CPU only while
    the DUL thread is idle, i.e. during the sub-operations' round trips.
    """
    dul = getattr(assoc, "dul", None)
    previous = getattr(dul, "_run_loop_delay", None)
    # only ever shorter: a DUL that already sleeps less is left as it is
    if _RETRIEVE_POLL is not None and isinstance(previous, (int, float)) and previous > _RETRIEVE_POLL:
        dul._run_loop_delay = _RETRIEVE_POLL  # type: ignore[union-attr]
        return float(previous)
    return None


def _restore_poll(assoc: Any, previous: float | None) -> None:
    if previous is not None:
        assoc.dul._run_loop_delay = previous


def _settle_reactor(assoc: Any) -> None:
    """Before the next C-STORE on a C-MOVE sub-association, let its reactor wake up.

    pynetdicom's ``send_c_store`` pauses the association's reactor thread (clears
    ``_reactor_checkpoint``, waits for ``_is_paused``) so that the reactor does not take
    the C-STORE-RSP off the DIMSE queue, and releases it when the response is in. When
    the next ``send_c_store`` follows before the released reactor thread has run,
    ``_is_paused`` is still ``True`` from the previous pause: the request goes out while
    the reactor is about to wake, and the reactor can then take the response
    (``dimse.get_msg(block=False)`` in ``_run_reactor``) and drop it. The sender waits
    for it until the DIMSE timeout and the sub-association is aborted - the C-MOVE
    "stall" of docs/performance.md (seen 1 in 7 C-MOVEs, and reproduced with a bare
    pynetdicom SCU sending to ``storescp``). Waiting here until the reactor has woken
    (``_is_paused`` back to ``False``; it then sleeps 1 ms and pauses for real) closes
    that window. C-GET needs none of this: its sub-operations run in the reactor thread.
    """
    deadline = time.monotonic() + _SETTLE_TIMEOUT
    while getattr(assoc, "_is_paused", False) and assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.00005)  # also hands the GIL to the reactor thread


def _nodelay(event: Any) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handle_move(event: Any, ctx: Context, actor: Actor | None) -> Iterator[Any]:
    """The EVT_C_MOVE handler body: destination, count, then (status, dataset) pairs."""
    if actor is None:
        yield None, None
        return
    try:
        destination = move_destination(ctx, actor, str(event.move_destination))
    except CoffreError as exc:
        log.info("C-MOVE from %s refused: %s", actor.describe(), exc.reason)
        yield None, None  # pynetdicom answers 0xA801 Move Destination unknown
        return
    model = MODELS[str(event.request.AffectedSOPClassUID)]
    # An invalid identifier raises here, before the first yield: pynetdicom answers 0xC514.
    query = parse_retrieve(event.identifier, model)
    refs = plan(ctx, actor, query, operation="move", destination=destination.ae_title)
    holder: dict[str, Any] = {}

    def _established(sub_event: Any) -> None:
        holder["assoc"] = sub_event.assoc
        _poll_faster(sub_event.assoc)  # a sub-association of its own: nothing to restore

    options = {
        "ae_title": destination.ae_title,
        "contexts": _contexts(refs) or [build_context("1.2.840.10008.1.1")],
        "max_pdu": ctx.settings.dicom.max_pdu,
        "evt_handlers": [(evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_ESTABLISHED, _established)],
    }
    yield destination.host, destination.port, options
    yield len(refs)
    accepted: Accepted | None = None
    for ref in refs:
        if event.is_cancelled:
            yield CANCEL, None
            return
        sub = holder.get("assoc")
        if sub is not None and not sub.is_established:
            # the destination went away (aborted, timed out): the remaining sub-operations
            # cannot be performed, so stop instead of reading every remaining instance
            log.warning("C-MOVE destination %s dropped the association", destination.ae_title)
            yield failure_status(0xA702, "move destination association lost"), None
            return
        if accepted is None:
            accepted = accepted_for_sending(sub) if sub is not None else {}
        ds = payload(ctx, ref, accepted)
        if sub is not None:
            _settle_reactor(sub)
        yield PENDING, ds


def handle_get(event: Any, ctx: Context, actor: Actor | None) -> Iterator[Any]:
    """The EVT_C_GET handler body: count, then (status, dataset) pairs on this association."""
    if actor is None:
        yield failure_status(0x0124, "association not admitted"), None
        return
    model = MODELS[str(event.request.AffectedSOPClassUID)]
    query = parse_retrieve(event.identifier, model)
    refs = plan(ctx, actor, query, operation="get")
    yield len(refs)
    accepted = accepted_for_sending(event.assoc)
    previous = _poll_faster(event.assoc)
    try:
        for ref in refs:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, payload(ctx, ref, accepted)
    finally:
        _restore_poll(event.assoc, previous)

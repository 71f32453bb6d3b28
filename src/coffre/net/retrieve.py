"""Query/Retrieve - MOVE and GET SCP (PS3.4 C.4.2, C.4.3).

Both resolve the identifier's unique keys through ``services.retrieve.plan`` and send
each instance with a C-STORE sub-operation: C-MOVE over a new association to a
registered destination node, C-GET over the requesting association (SCP/SCU role
selection, PS3.7 D.3.3.4). pynetdicom counts remaining/completed/failed/warning
sub-operations and sends the Pending responses and the Failed SOP Instance UID List.

Transfer syntax (DESIGN rule 7: originals are kept; transcoding happens on the way
out): when the peer accepted the stored syntax for the SOP class, the archived element
values are sent untouched. Otherwise
the instance is transcoded (``codecs.transcode``) to a syntax the peer accepted,
Explicit then Implicit VR Little Endian first. An instance that cannot be produced in
any accepted syntax is a failed sub-operation.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import build_context, evt

from coffre.app import Context
from coffre.codecs.transcode import can_transcode, transcode
from coffre.dicom.coercion import coerce_dataset
from coffre.dicom.query import parse_retrieve
from coffre.dicom.transfer_syntaxes import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from coffre.errors import CoffreError
from coffre.index.retrieve import InstanceRef
from coffre.model import Actor
from coffre.net.find import MODELS
from coffre.net.statuses import failure_status
from coffre.services.retrieve import move_destination, plan

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
        return _read(ctx.blobs.read(ref.blob_key))
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
        yield PENDING, payload(ctx, ref, accepted)


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
    for ref in refs:
        if event.is_cancelled:
            yield CANCEL, None
            return
        yield PENDING, payload(ctx, ref, accepted)

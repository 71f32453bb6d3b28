"""Query/Retrieve - FIND SCP (PS3.4 C.4.1) for the Patient Root and Study Root models.

Matches stream as Pending (0xFF00) responses as the index yields them; a C-CANCEL
stops them with 0xFE00 (C.4.1.2.3); more than ``limits.max_query_results`` matches
end with 0xA700 after the bound (the caller refines the query); a bad identifier
gets 0xA900/0xC000 with an error comment. Keys the archive does not hold are
returned empty.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from coffre.app import Context
from coffre.dicom.query import Model, Query, parse_identifier
from coffre.errors import CoffreError
from coffre.index.query import Row
from coffre.model import Actor
from coffre.net.statuses import failure_status
from coffre.services.domain import OTHER_PATIENT_IDS
from coffre.services.query import find

log = logging.getLogger(__name__)

#: PS3.4 C.6 Query/Retrieve SOP Classes
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

MODELS: dict[str, Model] = {
    PATIENT_ROOT_FIND: Model.PATIENT_ROOT,
    PATIENT_ROOT_MOVE: Model.PATIENT_ROOT,
    PATIENT_ROOT_GET: Model.PATIENT_ROOT,
    STUDY_ROOT_FIND: Model.STUDY_ROOT,
    STUDY_ROOT_MOVE: Model.STUDY_ROOT,
    STUDY_ROOT_GET: Model.STUDY_ROOT,
}

PENDING = 0xFF00
CANCEL = 0xFE00
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056


def _vr(tag: int, identifier: Dataset) -> str:
    elem = identifier.get(tag)
    if elem is not None and elem.VR not in ("UN", None):
        return str(elem.VR)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _items(value: Any) -> list[Dataset]:
    """OtherPatientIDsSequence items from "PatientID\\IssuerOfPatientID" strings."""
    items = []
    for pair in value if isinstance(value, list) else []:
        patient_id, _, issuer = str(pair).partition("\\")
        item = Dataset()
        item.PatientID = patient_id
        item.IssuerOfPatientID = issuer
        item.TypeOfPatientID = "TEXT"
        items.append(item)
    return items


def to_dataset(row: Row, query: Query, identifier: Dataset, ae_title: str) -> Dataset:
    """The C-FIND response identifier of one match (C.4.1.1.3.2)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = query.level.value
    for tag in query.return_tags:
        vr = _vr(tag, identifier)
        value: Any = row.get(tag)
        if tag == RETRIEVE_AE_TITLE:
            value = ae_title
        elif tag == INSTANCE_AVAILABILITY:
            value = "ONLINE"
        if vr == "SQ":
            value = _items(value) if tag == OTHER_PATIENT_IDS else []
        elif vr in ("IS", "US", "UL", "SS", "SL") and isinstance(value, str) and not value:
            value = None
        ds.add_new(tag, vr, value)
    return ds


def handle_find(event: Any, ctx: Context, actor: Actor | None) -> Iterator[tuple[Any, Dataset | None]]:
    """The EVT_C_FIND handler body (a generator of (status, identifier))."""
    if actor is None:
        yield failure_status(0x0124, "association not admitted"), None
        return
    model = MODELS.get(str(event.request.AffectedSOPClassUID))
    if model is None:
        yield failure_status(0x0122, "SOP class not supported"), None
        return
    cap = ctx.settings.limits.max_query_results
    try:
        identifier = event.identifier
        query = parse_identifier(identifier, model, limit=cap + 1)
        rows = find(ctx, actor, query, source=f"dimse:{actor.name}")
        for sent, row in enumerate(rows):
            if event.is_cancelled:
                yield CANCEL, None
                return
            if sent == cap:
                yield failure_status(0xA700, f"more than {cap} matches; refine the query"), None
                return
            yield PENDING, to_dataset(row, query, identifier, ctx.settings.archive.ae_title)
    except CoffreError as exc:
        log.info("C-FIND from %s refused: %s", actor.describe(), exc.reason)
        yield failure_status(exc.dimse_status, exc.reason), None
        return
    except Exception as exc:  # a hostile identifier pydicom cannot decode, or a bug
        log.warning("C-FIND from %s failed: %s", actor.describe(), type(exc).__name__)
        yield failure_status(0xC000, "unable to process the identifier"), None
        return
    yield 0x0000, None


"""The C-FIND and C-MOVE handler bodies, driven without a network (unit tests of
``net.find`` / ``net.retrieve``): the moments a real peer cannot be made to hit
reliably — a C-CANCEL between two matches, a destination gone mid-move."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from coffre.app import Context
from coffre.dicom.synthetic import InstanceSpec, make_instance
from coffre.index.engine import Database
from coffre.index.schema import series
from coffre.model import Actor, Permission
from coffre.net.find import CANCEL, PENDING, STUDY_ROOT_FIND, STUDY_ROOT_MOVE, handle_find
from coffre.net.retrieve import handle_move
from coffre.services import facilities
from coffre.services.ingest import ingest
from coffre.settings import Settings
from coffre.storage.memory import MemoryBlobStore


@dataclass
class _Request:
    AffectedSOPClassUID: str


@dataclass
class _Event:
    """What the handlers read of a pynetdicom event."""

    request: _Request
    identifier: Dataset
    move_destination: str = ""
    cancel_after: int | None = None
    reads: int = field(default=0)

    @property
    def is_cancelled(self) -> bool:
        self.reads += 1
        return self.cancel_after is not None and self.reads > self.cancel_after


@pytest.fixture
def archive(database: Database, tmp_path: Path) -> tuple[Context, Actor, str]:
    ctx = Context(settings=Settings(data_dir=tmp_path), db=database, blobs=MemoryBlobStore())
    op = Actor.system("t")
    fac = facilities.add_facility(ctx, op, slug="site-a", name="A", issuer="A")
    pacs = facilities.add_node(ctx, op, ae_title="PACS_A", host="127.0.0.1", port=104,
                               facility_slug="site-a", permissions=frozenset(Permission))
    facilities.add_node(ctx, op, ae_title="DEST_A", host="127.0.0.1", port=1,
                        facility_slug="site-a", permissions=frozenset({Permission.MOVE_DESTINATION}))
    spec = InstanceSpec(patient_id="P1")
    for i in range(10):
        ingest(ctx, Actor.system("t", facility=fac), make_instance(
            InstanceSpec(patient_id="P1", study_uid=spec.study_uid, series_uid=spec.series_uid,
                         sop_uid=f"1.2.3.{i + 1}", instance_number=i + 1, seed=i)), source="t")
    return ctx, Actor.for_node(pacs, fac, "127.0.0.1"), spec.study_uid


def _identifier(level: str, study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study_uid
    if level == "IMAGE":
        ds.SOPInstanceUID = ""
    return ds


def test_find_stops_at_a_cancel_between_matches(archive: tuple[Context, Actor, str]) -> None:
    ctx, actor, study_uid = archive
    with ctx.db.read() as tx:
        series_uid = tx.execute(select(series.c.series_instance_uid)).scalar_one()
    ident = _identifier("IMAGE", study_uid)
    ident.SeriesInstanceUID = series_uid
    event = _Event(_Request(STUDY_ROOT_FIND), ident, cancel_after=3)
    statuses = [status for status, _ in handle_find(event, ctx, actor)]
    assert statuses == [PENDING, PENDING, PENDING, CANCEL]
    complete = [status for status, _ in handle_find(_Event(_Request(STUDY_ROOT_FIND), ident), ctx, actor)]
    assert complete == [PENDING] * 10 + [0x0000]


class _DeadAssociation:
    is_established = False
    accepted_contexts: tuple[Any, ...] = ()


class _LiveAssociation:
    is_established = True
    accepted_contexts: tuple[Any, ...] = ()


@pytest.mark.parametrize("alive", [True, False])
def test_move_stops_when_the_destination_association_is_gone(
    archive: tuple[Context, Actor, str], alive: bool
) -> None:
    ctx, actor, study_uid = archive
    event = _Event(_Request(STUDY_ROOT_MOVE), _identifier("STUDY", study_uid), move_destination="DEST_A")
    steps = handle_move(event, ctx, actor)
    host, port, options = next(steps)
    assert (host, port) == ("127.0.0.1", 1)
    assert next(steps) == 10
    # pynetdicom calls EVT_ESTABLISHED of the sub-association before asking for datasets
    for _event, handler in options["evt_handlers"]:
        if handler.__name__ == "_established":
            handler(type("E", (), {"assoc": _LiveAssociation() if alive else _DeadAssociation()})())
    rest = list(steps)
    if alive:
        assert [status for status, _ in rest] == [PENDING] * 10
    else:
        assert len(rest) == 1
        status, dataset = rest[0]
        assert int(status.Status) == 0xA702 and dataset is None

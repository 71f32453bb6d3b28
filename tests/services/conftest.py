"""A small territory for the access-control tests of the services (both databases).

Person "shared" is ``A-1`` at site-a and ``B-7`` at site-b; "target" is ``C-3`` at
site-c only; "twin" is site-b's patient under the PatientID ``A-1``, another human.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from coffre.app import Context
from coffre.dicom.synthetic import InstanceSpec, make_dataset
from coffre.index.engine import Database
from coffre.index.schema import patient, person
from coffre.model import Actor, Facility
from coffre.services import facilities
from coffre.services.ingest import ingest
from coffre.settings import Settings
from coffre.storage.memory import MemoryBlobStore
from factories import encode

SLUGS = ("site-a", "site-b", "site-c")


@dataclasses.dataclass
class Territory:
    ctx: Context
    facilities: dict[str, Facility]
    #: study UID -> (facility slug, person key)
    studies: dict[str, tuple[str, str]]
    persons: dict[str, int]


def _person_of(ctx: Context, facility_id: int, patient_id: str) -> int:
    """The person of a local identity, creating one when ingest left none (older index)."""
    with ctx.db.write() as tx:
        row = tx.execute(select(patient.c.id, patient.c.person_id).where(
            patient.c.facility_id == facility_id, patient.c.patient_id == patient_id)).one()
        if row.person_id is not None:
            return int(row.person_id)
        new = tx.execute(insert(person).returning(person.c.id), {"created_at": ctx.clock()}).scalar_one()
        tx.execute(update(patient).where(patient.c.id == row.id).values(person_id=new))
        return int(new)


def _link(ctx: Context, person_id: int, facility_id: int, patient_id: str) -> None:
    with ctx.db.write() as tx:
        tx.execute(update(patient).where(patient.c.facility_id == facility_id,
                                         patient.c.patient_id == patient_id).values(person_id=person_id))


@pytest.fixture
def territory(database: Database, tmp_path: Path) -> Territory:
    ctx = Context(settings=Settings(data_dir=tmp_path), db=database, blobs=MemoryBlobStore())
    op = Actor.system("test")
    facs = {s: facilities.add_facility(ctx, op, slug=s, name=s.upper(), issuer=s.upper()) for s in SLUGS}
    studies: dict[str, tuple[str, str]] = {}
    # person "shared": known at site-a as A-1 and at site-b as B-7; "target": only at site-c;
    # "twin": site-b's patient under the PatientID A-1, another human
    layout = (("site-a", "A-1", "MARTIN^CLAIRE", "shared"), ("site-b", "B-7", "MARTIN^CLAIRE", "shared"),
              ("site-c", "C-3", "LEROY^SOPHIE", "target"), ("site-b", "A-1", "DUBOIS^PIERRE", "twin"))
    for slug, pid, name, key in layout:
        ds = make_dataset(InstanceSpec(patient_id=pid, patient_name=name))
        ingest(ctx, Actor.system("test", facility=facs[slug]), encode(ds), source="test")
        studies[str(ds.StudyInstanceUID)] = (slug, key)
    shared = _person_of(ctx, facs["site-a"].id, "A-1")
    _link(ctx, shared, facs["site-b"].id, "B-7")
    persons = {"shared": shared, "target": _person_of(ctx, facs["site-c"].id, "C-3"),
               "twin": _person_of(ctx, facs["site-b"].id, "A-1")}
    assert len(set(persons.values())) == 3
    return Territory(ctx, facs, studies, persons)



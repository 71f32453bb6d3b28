"""The demo territory: three facilities, their nodes, and synthetic patients.

It contains the two identity cases every territory meets:

- one person (Claire MARTIN) known as ``CN100234`` at CHU Nord and as ``CS-77812`` at
  Clinique du Sud;
- two different people sharing PatientID ``100200``: Pierre DUBOIS at CHU Nord and
  Sophie LEROY at Imagerie de l'Est.

Both facilities send Claire MARTIN's qualified INS (a synthetic one, under the test
INS-NIR authority), so ingest links her identities to one person; Luc BERNARD is known
at Clinique du Sud and, without INS, at Imagerie de l'Est: his second identity lands
in the reconciliation queue (docs/identity.md).

Studies (CT, MR, CR, DX, US) are spread over several years. Each facility gets a
DICOMweb API token named ``demo``; for the demo only, the clear tokens are kept in the
index so that ``coffre info --json`` can print them. Each facility also gets one
built-in user per role, plus a territory admin (:data:`DEMO_USERS`), with public,
documented passwords: the demo is never for production. Loading is idempotent: a
marker in the index records that the demo is present, and missing demo users are
added at every load.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.uid import generate_uid

from coffre.app import Context
from coffre.dicom.synthetic import InstanceSpec, ins_identifier, make_instance
from coffre.index import state
from coffre.model import Actor, Facility, Permission, Role
from coffre.services import facilities
from coffre.services.ingest import ingest
from coffre.services.tokens import create_token

DEMO_MARKER = "demo-territory"
DEMO_VERSION = b"1"
#: the demo facilities' API tokens, kept in clear for the demo only (documented)
DEMO_TOKENS = "demo-tokens"

ALL = frozenset(Permission)
MODALITY = frozenset({Permission.STORE})
WORKSTATION = frozenset({Permission.QUERY, Permission.RETRIEVE, Permission.MOVE_DESTINATION})


@dataclass(frozen=True, slots=True)
class DemoFacility:
    slug: str
    name: str
    issuer: str
    #: (AE title, port, permissions, description)
    nodes: tuple[tuple[str, int, frozenset[Permission], str], ...]


FACILITIES: tuple[DemoFacility, ...] = (
    DemoFacility("chu-nord", "CHU Nord", "CHU-NORD", (
        ("CHUN_PACS", 11201, ALL, "CHU Nord PACS"),
        ("CHUN_CT1", 11202, MODALITY, "CHU Nord CT scanner"),
        ("CHUN_WS", 11203, WORKSTATION, "CHU Nord reading workstation"),
    )),
    DemoFacility("clinique-sud", "Clinique du Sud", "CLIN-SUD", (
        ("CSUD_PACS", 11211, ALL, "Clinique du Sud PACS"),
        ("CSUD_MR1", 11212, MODALITY, "Clinique du Sud MR scanner"),
    )),
    DemoFacility("imagerie-est", "Centre d'imagerie de l'Est", "IMG-EST", (
        ("IEST_PACS", 11221, ALL, "Imagerie de l'Est PACS"),
        ("IEST_US1", 11222, MODALITY, "Imagerie de l'Est ultrasound"),
    )),
)


@dataclass(frozen=True, slots=True)
class DemoPatient:
    facility: str
    patient_id: str
    name: str
    birth_date: str
    sex: str
    #: (modality, date YYYYMMDD, description, body part, series, instances per series)
    studies: tuple[tuple[str, str, str, str, int, int], ...]
    #: a qualified INS sent in OtherPatientIDsSequence (test INS-NIR authority: synthetic)
    ins: str = ""


#: Claire MARTIN's INS: a made-up number with a valid key, under the *test* authority
CLAIRE_MARTIN_INS = "268047512345664"

PATIENTS: tuple[DemoPatient, ...] = (
    # One person, two local identities: both facilities send her qualified INS, so
    # ingest links them to one person.
    DemoPatient("chu-nord", "CN100234", "MARTIN^CLAIRE", "19680412", "F", (
        ("CT", "20210315", "CT THORAX", "CHEST", 2, 12),
        ("CR", "20230902", "RADIO THORAX", "CHEST", 1, 2),
    ), ins=CLAIRE_MARTIN_INS),
    DemoPatient("clinique-sud", "CS-77812", "MARTIN^CLAIRE", "19680412", "F", (
        ("MR", "20240611", "IRM GENOU DROIT", "KNEE", 2, 8),
    ), ins=CLAIRE_MARTIN_INS),
    # Two people, one PatientID.
    DemoPatient("chu-nord", "100200", "DUBOIS^PIERRE", "19550730", "M", (
        ("CT", "20190108", "CT ABDOMEN", "ABDOMEN", 1, 10),
        ("DX", "20250117", "RADIO BASSIN", "PELVIS", 1, 1),
    )),
    DemoPatient("imagerie-est", "100200", "LEROY^SOPHIE", "19901122", "F", (
        ("US", "20220420", "ECHOGRAPHIE ABDOMINALE", "ABDOMEN", 1, 3),
        ("MR", "20260203", "IRM CEREBRALE", "HEAD", 2, 6),
    )),
    DemoPatient("clinique-sud", "CS-10001", "BERNARD^LUC", "19820305", "M", (
        ("DX", "20200612", "RADIO POIGNET", "WRIST", 1, 2),
    )),
    DemoPatient("imagerie-est", "IE-5521", "PETIT^EMMA", "20010918", "F", (
        ("CT", "20241028", "CT SINUS", "HEAD", 1, 8),
    )),
    # Same name, birth date and sex as CS-10001, no INS: queued for reconciliation.
    DemoPatient("imagerie-est", "IE-6120", "BERNARD^LUC", "19820305", "M", (
        ("US", "20250304", "ECHOGRAPHIE THYROIDE", "NECK", 1, 2),
    )),
)


@dataclass(frozen=True, slots=True)
class DemoSummary:
    loaded: bool
    facilities: int
    instances: int


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A built-in user of the demo, with its documented password (demo only)."""

    username: str
    roles: frozenset[Role]
    #: facility slugs ("" none: territory-wide)
    facilities: tuple[str, ...]
    password: str
    display_name: str


#: (user name prefix, role, display name prefix): one user per role in each facility
_DEMO_ROLES: tuple[tuple[str, Role, str], ...] = (
    ("radiologue", Role.RADIOLOGIST, "Radiologue"),
    ("clinicien", Role.CLINICIAN, "Clinicien"),
    ("manip", Role.TECHNOLOGIST, "Manipulateur radio"),
    ("admin", Role.FACILITY_ADMIN, "Administrateur"),
    ("identito", Role.IDENTITY_MANAGER, "Identitovigilance"),
    ("auditeur", Role.AUDITOR, "Auditeur"),
)

#: the demo's users (docs/authentication.md): ``<prefix>.<facility>`` with the password
#: ``demo-<role>``, and ``admin.territoire``. Public passwords: never in production.
DEMO_USERS: tuple[DemoUser, ...] = (
    *(DemoUser(f"{prefix}.{f.slug}", frozenset({role}), (f.slug,), f"demo-{role.value}", f"{label} {f.name}")
      for f in FACILITIES for prefix, role, label in _DEMO_ROLES),
    DemoUser("admin.territoire", frozenset({Role.TERRITORY_ADMIN}), (), f"demo-{Role.TERRITORY_ADMIN.value}",
             "Administrateur du territoire"),
)


def load_demo_users(ctx: Context) -> int:
    """Create the demo users that are missing (idempotent); how many were created."""
    from coffre.index.users import usernames
    from coffre.services.users import create_user

    with ctx.db.read() as tx:
        present = usernames(tx, (u.username for u in DEMO_USERS))
    operator = Actor.system("demo")
    created = 0
    for user in DEMO_USERS:
        if user.username not in present:
            create_user(ctx, operator, username=user.username, password=user.password, roles=user.roles,
                        facilities=user.facilities, display_name=user.display_name)
            created += 1
    return created


def demo_users(ctx: Context) -> list[DemoUser]:
    """The demo users present in the index ([] when the demo is not loaded)."""
    from coffre.index.users import usernames

    if not is_loaded(ctx):
        return []
    with ctx.db.read() as tx:
        present = usernames(tx, (u.username for u in DEMO_USERS))
    return [u for u in DEMO_USERS if u.username in present]


def demo_tokens(ctx: Context) -> dict[str, str]:
    """Facility slug -> API token of the demo territory ({} when the demo is not loaded)."""
    with ctx.db.read() as tx:
        raw = state.get(tx, DEMO_TOKENS)
    return dict(json.loads(raw)) if raw else {}


def is_loaded(ctx: Context) -> bool:
    with ctx.db.read() as tx:
        return state.get(tx, DEMO_MARKER) is not None


def load_demo(ctx: Context, *, progress: Callable[[int, int], None] | None = None) -> DemoSummary:
    """Create the demo territory unless it is already there."""
    if is_loaded(ctx):
        load_demo_users(ctx)  # a demo loaded before the users existed gets them now
        return DemoSummary(loaded=False, facilities=0, instances=0)
    operator = Actor.system("demo")
    created: dict[str, Facility] = {}
    for f in FACILITIES:
        created[f.slug] = facilities.add_facility(ctx, operator, slug=f.slug, name=f.name, issuer=f.issuer)
        for ae, port, perms, description in f.nodes:
            facilities.add_node(ctx, operator, ae_title=ae, host="127.0.0.1", port=port,
                                facility_slug=f.slug, permissions=perms, description=description)
    tokens = {
        f.slug: create_token(ctx, operator, facility_slug=f.slug, name="demo") for f in FACILITIES
    }
    with ctx.db.write() as tx:
        state.put(tx, DEMO_TOKENS, json.dumps(tokens).encode("utf-8"))
    load_demo_users(ctx)
    total = sum(s[4] * s[5] for p in PATIENTS for s in p.studies)
    done = 0
    seed = 0
    for patient in PATIENTS:
        actor = Actor.system("demo", facility=created[patient.facility])
        for accession, (modality, date, description, body, n_series, per_series) in enumerate(patient.studies, 1):
            study_uid = generate_uid()
            for series_number in range(1, n_series + 1):
                series_uid = generate_uid()
                for number in range(1, per_series + 1):
                    seed += 1
                    data = make_instance(_spec(patient, modality, date, description, body, study_uid,
                                               series_uid, series_number, number, seed, accession))
                    ingest(ctx, actor, data, source="demo")
                    done += 1
                    if progress:
                        progress(done, total)
    with ctx.db.write() as tx:
        state.put(tx, DEMO_MARKER, DEMO_VERSION)
    return DemoSummary(loaded=True, facilities=len(FACILITIES), instances=done)


def _spec(p: DemoPatient, modality: str, date: str, description: str, body: str, study_uid: str,
          series_uid: str, series_number: int, number: int, seed: int, accession: int) -> InstanceSpec:
    size = {"CT": 128, "MR": 128, "CR": 256, "DX": 256, "US": 96}[modality]
    return InstanceSpec(
        modality=modality, patient_id=p.patient_id, patient_name=p.name, birth_date=p.birth_date,
        sex=p.sex, study_uid=study_uid, series_uid=series_uid, study_date=date,
        accession=f"{p.facility[:3].upper()}{date}{accession:02d}", study_description=description,
        series_description=f"{description} S{series_number}", body_part=body,
        institution=next(f.name for f in FACILITIES if f.slug == p.facility),
        series_number=series_number, instance_number=number, rows=size, columns=size,
        frames=2 if modality == "US" else 1, seed=seed,
        other_patient_ids=(ins_identifier(p.ins),) if p.ins else (),
    )

"""Query/Retrieve against a running ``coffre serve``, on SQLite and on PostgreSQL.

``qr`` (package scope, parametrized ``sqlite`` / ``postgresql``): one server per backend,
loaded once through C-STORE (DCMTK ``storescu`` as ``MODALITY_A`` / ``MODALITY_B``) with
the corpus below, shared read-only by every test of this folder. Every test of the
folder therefore runs on both index backends.

Corpus (``Corpus``; every expectation the tests assert comes from it):

site-a (``MODALITY_A``)

- ``PA1`` ``MÜLLER^Jürgen``: study ``ST1`` 2019-03-15 (CT x3) and ``ST2`` 2021-06-20
  (MR x2, US x1);
- ``PA2`` ``MÜLLER^Anna``: ``ST3`` 2023-01-05 (CT x2);
- ``PA3`` ``DUPONT^Zoé``: ``ST4`` 2022-08-30, CT x2 in JPEG 2000 lossless (pydicom);
- ``PA4`` ``NGUYEN^Thi``: ``ST5`` 2018-02-02, NM x1 in JPEG lossless SV1 (pydicom-data
  ``JPEG-LL.dcm``, identifiers rewritten, encapsulated pixels untouched);
- ``BULK1`` ``BULK^Many``: ``ST6`` 2017-07-07, CT x``BULK`` (cancel tests).

site-b (``MODALITY_B``), the leak check

- ``PA1`` (the same PatientID as site-a's) ``SCHMIDT^Hans``: a study whose
  StudyInstanceUID is site-a's ``ST1`` (CT x2, MR x1) and ``STB2`` 2019-05-05 (CT x1).

Extra nodes (registered before the server starts, on free ports): ``DEST_A`` (site-a,
move destination), ``DEST_A2`` (site-a, move destination; an explicit-LE-only peer),
``DEST_B`` (site-b, move destination), ``PACS_B`` (site-b, every permission).
"""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from coffre.app import build_context
from coffre.dicom.synthetic import InstanceSpec, encode, make_dataset
from coffre.model import Actor, Permission
from coffre.services.facilities import add_node
from coffre.settings import load_settings

from ..conftest import PYDICOM_DATA, Archive, prepare_territory, tool_env
from ..dicomnet import send_raw, status_of

BACKENDS = ["sqlite", "postgresql"]
#: instances of the bulk series (enough for a cancel to land mid-way)
BULK = 60
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
US = "1.2.840.10008.5.1.4.1.1.6.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"

_databases = itertools.count(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"DCMTK's {tool} is not installed (apt-get install dcmtk)", pytrace=False)
    return subprocess.run([exe, *args], capture_output=True, text=True, env=tool_env(), timeout=timeout)


# -- the corpus ----------------------------------------------------------------------


@dataclass
class Inst:
    facility: str
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str
    modality: str
    transfer_syntax: str
    path: Path


@dataclass
class Corpus:
    """What was stored, and the expectations derived from it."""

    instances: list[Inst] = field(default_factory=list)
    #: name -> StudyInstanceUID / SeriesInstanceUID
    studies: dict[str, str] = field(default_factory=dict)
    series: dict[str, str] = field(default_factory=dict)

    def of(self, facility: str = "site-a", **where: str) -> list[Inst]:
        return [
            i for i in self.instances
            if i.facility == facility and all(getattr(i, k) == v for k, v in where.items())
        ]

    def sop_uids(self, facility: str = "site-a", **where: str) -> set[str]:
        return {i.sop_uid for i in self.of(facility, **where)}

    def series_uids(self, facility: str = "site-a", **where: str) -> set[str]:
        return {i.series_uid for i in self.of(facility, **where)}

    def study_uids(self, facility: str = "site-a", **where: str) -> set[str]:
        return {i.study_uid for i in self.of(facility, **where)}

    def by_sop(self, uid: str, facility: str = "site-a") -> Inst:
        (found,) = [i for i in self.instances if i.sop_uid == uid and i.facility == facility]
        return found


def _write(folder: Path, corpus: Corpus, facility: str, spec: InstanceSpec, sop_class: str) -> None:
    sub = facility if spec.transfer_syntax == ExplicitVRLittleEndian else f"{facility}-compressed"
    ds = make_dataset(spec)
    # make_dataset's compress() gives compressed instances a new SOP Instance UID (pydicom's
    # generate_instance_uid default; see test_corpus.py): take the UID from the dataset
    sop_uid = str(ds.SOPInstanceUID)
    path = folder / sub / f"{sop_uid}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(ds))
    corpus.instances.append(Inst(
        facility, spec.patient_id, spec.patient_name, spec.study_uid, spec.series_uid,
        sop_uid, sop_class, spec.modality, spec.transfer_syntax, path,
    ))


def _series(folder: Path, corpus: Corpus, facility: str, count: int, *, study: str, series: str,
            sop_class: str, **spec: object) -> None:
    for n in range(1, count + 1):
        s = InstanceSpec(study_uid=study, series_uid=series, sop_uid=generate_uid(),
                         instance_number=n, seed=n, **spec)  # type: ignore[arg-type]
        _write(folder, corpus, facility, s, sop_class)


def build_corpus(folder: Path) -> Corpus:
    c = Corpus()
    for name in ("ST1", "ST2", "ST3", "ST4", "ST5", "ST6", "STB2"):
        c.studies[name] = generate_uid()
    for name in ("SE1", "SE2", "SE3", "SE4", "SE5", "SE6", "SE7", "SE8", "SE9", "SEB1", "SEB2", "SEB3"):
        c.series[name] = generate_uid()
    st, se = c.studies, c.series
    jurgen = dict(patient_id="PA1", patient_name="MÜLLER^Jürgen", birth_date="19600512", sex="M")
    anna = dict(patient_id="PA2", patient_name="MÜLLER^Anna", birth_date="19851101", sex="F")
    zoe = dict(patient_id="PA3", patient_name="DUPONT^Zoé", birth_date="19771224", sex="F")
    bulk = dict(patient_id="BULK1", patient_name="BULK^Many", birth_date="19500101", sex="O")
    _series(folder, c, "site-a", 3, study=st["ST1"], series=se["SE1"], sop_class=CT, modality="CT",
            study_date="20190315", accession="A1001", study_description="CT THORAX", **jurgen)
    _series(folder, c, "site-a", 2, study=st["ST2"], series=se["SE2"], sop_class=MR, modality="MR",
            study_date="20210620", study_time="083000", accession="A1002", series_number=1, **jurgen)
    _series(folder, c, "site-a", 1, study=st["ST2"], series=se["SE3"], sop_class=US, modality="US",
            study_date="20210620", study_time="083000", accession="A1002", series_number=2, **jurgen)
    _series(folder, c, "site-a", 2, study=st["ST3"], series=se["SE4"], sop_class=CT, modality="CT",
            study_date="20230105", accession="A1003", **anna)
    _series(folder, c, "site-a", 2, study=st["ST4"], series=se["SE5"], sop_class=CT, modality="CT",
            study_date="20220830", accession="A1004", transfer_syntax=JPEG2000Lossless, **zoe)
    _jpeg_lossless(folder, c, study=st["ST5"], series=se["SE6"])
    _series(folder, c, "site-a", BULK, study=st["ST6"], series=se["SE9"], sop_class=CT, modality="CT",
            study_date="20170707", accession="A1006", rows=16, columns=16, **bulk)
    hans = dict(patient_id="PA1", patient_name="SCHMIDT^Hans", birth_date="19700101", sex="M")
    _series(folder, c, "site-b", 2, study=st["ST1"], series=se["SEB1"], sop_class=CT, modality="CT",
            study_date="20190315", accession="B2001", **hans)
    _series(folder, c, "site-b", 1, study=st["ST1"], series=se["SEB2"], sop_class=MR, modality="MR",
            study_date="20190315", accession="B2001", series_number=2, **hans)
    _series(folder, c, "site-b", 1, study=st["STB2"], series=se["SEB3"], sop_class=CT, modality="CT",
            study_date="20190505", accession="B2002", **hans)
    return c


def _jpeg_lossless(folder: Path, c: Corpus, *, study: str, series: str) -> None:
    """pydicom-data's JPEG lossless SV1 NM image with this corpus' identifiers."""
    source = PYDICOM_DATA / "JPEG-LL.dcm"
    assert source.is_file(), f"{source} is not available offline (pip install pydicom-data)"
    ds = dcmread(source)
    assert ds.file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1
    uid = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID = "NGUYEN^Thi", "PA4"
    ds.PatientBirthDate, ds.PatientSex = "19900101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.Modality = "20180202", "120000", "A1005", "NM"
    path = folder / "site-a-compressed" / f"{uid}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)  # encapsulated pixel data kept as is
    c.instances.append(Inst("site-a", "PA4", "NGUYEN^Thi", study, series, uid, SC, "NM",
                            JPEG_LOSSLESS_SV1, path))


# -- the server ----------------------------------------------------------------------


@dataclass
class QR:
    """The running archive, its backend, the corpus and the extra nodes' ports."""

    archive: Archive
    backend: str
    corpus: Corpus
    ports: dict[str, int]
    data: Path

    @property
    def host(self) -> str:
        return self.archive.host

    @property
    def port(self) -> int:
        return self.archive.dicom_port

    def assert_no_traceback(self) -> None:
        text = self.archive.stderr()
        assert "Traceback (most recent call last)" not in text, text
        assert self.archive.proc is not None and self.archive.proc.poll() is None, "server died"


EXTRA_NODES = {
    "DEST_A": ("site-a", frozenset({Permission.MOVE_DESTINATION})),
    "DEST_A2": ("site-a", frozenset({Permission.MOVE_DESTINATION})),
    "DEST_B": ("site-b", frozenset({Permission.MOVE_DESTINATION})),
    "PACS_B": ("site-b", frozenset(Permission)),
}


def write_index_url(data: Path, url: str) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / "coffre.toml").write_text(f'[index]\nurl = "{url}"\n', encoding="utf-8")


def register_nodes(data: Path) -> dict[str, int]:
    ports: dict[str, int] = {}
    ctx = build_context(load_settings(data, {}))
    try:
        for ae, (slug, perms) in EXTRA_NODES.items():
            ports[ae] = free_port()
            add_node(ctx, Actor.system("tests"), ae_title=ae, host="127.0.0.1", port=ports[ae],
                     facility_slug=slug, permissions=perms)
    finally:
        ctx.close()
    return ports


def start_server(data: Path, **extra_env: str) -> Archive:
    env = tool_env(
        COFFRE_DICOM_PORT="0", COFFRE_HTTP_PORT="0",
        COFFRE_DICOM_HOST="127.0.0.1", COFFRE_HTTP_HOST="127.0.0.1", **extra_env,
    )
    archive = Archive(data=data, env=env)
    archive.start()
    return archive


def store_files(archive: Archive, folder: Path, calling: str, expected: int) -> None:
    """storescu for the uncompressed files of ``folder``; pynetdicom (bytes as they are)
    for those of ``folder-compressed`` (storescu would offer them uncompressed)."""
    compressed = sorted(folder.with_name(folder.name + "-compressed").glob("*.dcm"))
    for path in compressed:
        rsp = send_raw(archive.dicom_port, path, calling)
        assert status_of(rsp) == 0x0000, (path, rsp)
    expected -= len(compressed)
    out = dcmtk("storescu", "-v", "+sd", "+r", "-aet", calling, "-aec", archive.ae_title,
                archive.host, str(archive.dicom_port), str(folder))
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert log.count("Received Store Response (Success)") == expected, log


@pytest.fixture(scope="package", params=BACKENDS)
def qr(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QR]:
    backend: str = request.param
    root = tmp_path_factory.mktemp(f"qr-{backend}")
    data = root / "data"
    pg = None
    db_name = ""
    if backend == "postgresql":
        pg = request.getfixturevalue("pg_server")
        db_name = f"qr_{next(_databases)}_{int(time.time())}"
        write_index_url(data, pg.create_database(db_name))
    prepare_territory(data)
    ports = register_nodes(data)
    corpus = build_corpus(root / "corpus")
    archive = start_server(data)
    try:
        store_files(archive, root / "corpus" / "site-a", "MODALITY_A", len(corpus.of("site-a")))
        store_files(archive, root / "corpus" / "site-b", "MODALITY_B", len(corpus.of("site-b")))
        yield QR(archive, backend, corpus, ports, data)
    finally:
        archive.assert_healthy_exit(archive.stop())
        if pg is not None:
            pg.drop_database(db_name)

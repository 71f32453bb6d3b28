"""C-STORE from pynetdicom SCUs: valid objects, raw bytes kept as sent, hostile objects.

Every hostile object must get its exact failure status (PS3.4 B.2.3, PS3.7 C) with an
Error Comment, leave nothing behind (no index row, no blob, ``coffre check`` clean), and
the archive must serve the next association normally.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from coffre.dicom.synthetic import InstanceSpec, make_dataset, make_instance

from . import dicomnet as net
from .conftest import Archive

MAX_OBJECT_BYTES = 2 * 1024**2
MAX_INFLATED_BYTES = 32 * 1024**2


@pytest.fixture(scope="module")
def archive_env() -> dict[str, str]:
    """Small bounds so that "too large" and the deflate bomb are cheap to provoke."""
    return {
        "COFFRE_LIMITS_MAX_OBJECT_BYTES": str(MAX_OBJECT_BYTES),
        "COFFRE_LIMITS_MAX_INFLATED_BYTES": str(MAX_INFLATED_BYTES),
    }


def store_valid_instance(archive: Archive) -> None:
    """The archive still serves: a new association stores a valid instance."""
    ds = make_dataset(InstanceSpec(patient_id="AFTER"))
    with net.association(archive.dicom_port) as assoc:
        rsp = assoc.send_c_store(ds)
    assert net.status_of(rsp) == 0x0000
    archive.assert_intact(str(ds.SOPInstanceUID))


def send_file(archive: Archive, tmp_path: Path, data: bytes, name: str = "object.dcm",
              calling: str = "MODALITY_A") -> int | None:
    path = tmp_path / name
    path.write_bytes(data)
    rsp = net.send_raw(archive.dicom_port, path, calling=calling)
    status = net.status_of(rsp)
    if status not in (None, 0x0000):
        assert rsp.get("ErrorComment"), "a failure status carries an Error Comment"
    return status


def assert_check_clean(archive: Archive) -> None:
    out = archive.check()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "missing: 0, corrupt: 0, unacknowledged leftovers: 0, orphan blobs: 0" in out.stdout, out.stdout


# -- valid objects ---------------------------------------------------------------------


def test_pynetdicom_datasets_stored(archive: Archive) -> None:
    specs = [InstanceSpec(patient_id="PYN1", instance_number=n, seed=n) for n in range(1, 6)]
    datasets = [make_dataset(s) for s in specs]
    before = archive.instance_counts()
    with net.association(archive.dicom_port) as assoc:
        statuses = [net.status_of(assoc.send_c_store(ds)) for ds in datasets]
    assert statuses == [0x0000] * 5
    for ds in datasets:
        kept = dcmread(archive.assert_intact(str(ds.SOPInstanceUID)))
        assert kept == ds
        assert kept.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert archive.instance_counts()["site-a"] == before["site-a"] + 5


def test_raw_bytes_archived_byte_for_byte(
    archive: Archive, compressed_files: dict[Path, str]
) -> None:
    """Each transfer syntax as sent: the archived dataset bytes are the file's bytes."""
    statuses = {}
    for path, ts in compressed_files.items():
        statuses[path.name] = net.status_of(net.send_raw(archive.dicom_port, path))
    assert statuses == {p.name: 0x0000 for p in compressed_files}
    for path, ts in compressed_files.items():
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        blob = archive.assert_intact(uid)
        row = archive.instance(uid)
        assert row is not None and row["transfer_syntax_uid"] == ts
        assert net.dataset_part(blob) == net.dataset_part(path), path.name
        assert dcmread(blob).file_meta.TransferSyntaxUID == ts


def test_identical_bytes_twice_is_one_blob(archive: Archive, tmp_path: Path) -> None:
    data, uid = net.valid_raw(InstanceSpec(patient_id="TWICE"))
    assert send_file(archive, tmp_path, data) == 0x0000
    after_first = archive.snapshot()
    assert send_file(archive, tmp_path, data) == 0x0000
    assert archive.snapshot() == after_first  # no second row, no second blob
    assert len(archive.file_rows(uid)) == 1
    archive.assert_intact(uid)


def test_same_uid_different_content_is_a_conflict(archive: Archive, tmp_path: Path) -> None:
    uid = generate_uid()
    first = make_instance(InstanceSpec(sop_uid=uid, patient_id="VERSIONS", seed=1))
    second = make_instance(InstanceSpec(sop_uid=uid, patient_id="VERSIONS", seed=2))
    assert first != second
    assert send_file(archive, tmp_path, first, "v1.dcm") == 0x0000
    assert send_file(archive, tmp_path, second, "v2.dcm") == 0x0000

    rows = archive.file_rows(uid)
    assert len(rows) == 2
    assert sorted(r["status"] for r in rows) == ["stored", "superseded"]
    current = archive.assert_intact(uid)
    assert net.dataset_part(current) == net.dataset_part(tmp_path / "v2.dcm")
    out = archive.cli("conflicts")
    assert out.returncode == 0, out.stderr
    assert uid in out.stdout, out.stdout
    assert_check_clean(archive)


def test_same_uid_in_two_facilities_is_two_instances(archive: Archive, tmp_path: Path) -> None:
    data, uid = net.valid_raw(InstanceSpec(patient_id="SHARED"))
    assert send_file(archive, tmp_path, data, calling="MODALITY_A") == 0x0000
    assert send_file(archive, tmp_path, data, calling="MODALITY_B") == 0x0000
    rows = archive.query(
        "SELECT f.slug FROM instance i JOIN facility f ON f.id = i.facility_id "
        "WHERE i.sop_instance_uid = ? ORDER BY f.slug", uid)
    assert [r["slug"] for r in rows] == ["site-a", "site-b"]


def test_node_without_store_permission_gets_0124(archive: Archive, tmp_path: Path) -> None:
    data, uid = net.valid_raw()
    before = archive.snapshot()
    assert send_file(archive, tmp_path, data, calling="NOSTORE") == 0x0124
    assert archive.snapshot() == before
    assert archive.instance(uid) is None


# -- hostile objects -------------------------------------------------------------------

HOSTILE: dict[str, Callable[[], net.Hostile]] = {
    "truncated": net.truncated,
    "lying-pixel-length": net.lying_pixel_length,
    "lying-element-length": net.lying_element_length,
    "deeply-nested-200": lambda: net.deeply_nested(200),
    "invalid-uid": lambda: net.with_sop_uid("1.2.840.0123.x5", "invalid-uid"),
    "path-uid": lambda: net.with_sop_uid("../../etc/passwd", "path-uid"),
    "missing-sop-instance-uid": net.without_sop_instance_uid,
    "sop-class-mismatch": net.sop_class_mismatch,
    "sop-instance-mismatch": net.sop_instance_mismatch,
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_object_refused(archive: Archive, tmp_path: Path, case: str) -> None:
    hostile = HOSTILE[case]()
    before = archive.snapshot()

    status = send_file(archive, tmp_path, hostile.data)

    assert status == hostile.status, f"{case}: got {status and hex(status)}, want {hex(hostile.status)}"
    assert archive.snapshot() == before, "nothing may be stored"
    assert not archive.query("SELECT 1 FROM instance WHERE sop_instance_uid = ?", hostile.sop_instance_uid)
    assert_check_clean(archive)
    if case == "path-uid":
        assert not [p for p in archive.data.rglob("*") if "passwd" in p.name]
    store_valid_instance(archive)


def test_deflate_bomb_refused_with_bounded_memory(archive: Archive, tmp_path: Path) -> None:
    bomb = net.deflate_bomb(512 * 1024**2)  # ~0.5 MB on the wire
    assert len(bomb.data) < MAX_OBJECT_BYTES
    before = archive.snapshot()
    peak_before = archive.rss_peak_kib()

    status = send_file(archive, tmp_path, bomb.data)

    assert status == 0xA700, status and hex(status)
    grown_mib = (archive.rss_peak_kib() - peak_before) / 1024
    assert grown_mib < 256, f"server peak memory grew by {grown_mib:.0f} MiB inflating a bomb"
    assert archive.snapshot() == before
    assert_check_clean(archive)
    store_valid_instance(archive)


def test_too_large_object_refused(archive: Archive, tmp_path: Path) -> None:
    data = make_instance(InstanceSpec(rows=1100, columns=1100, patient_id="BIG"))
    assert len(data) > MAX_OBJECT_BYTES
    before = archive.snapshot()
    assert send_file(archive, tmp_path, data) == 0xA700
    assert archive.snapshot() == before
    store_valid_instance(archive)

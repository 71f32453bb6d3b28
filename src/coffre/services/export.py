"""Export: studies as a ZIP of a DICOM File-set (PS3.10) with its DICOMDIR, streamed.

The archive holds ``DICOMDIR`` (written from the index by :mod:`coffre.dicom.media`,
no file opened), ``README.txt``, and every instance's stored Part 10 bytes — the
originals, untouched (DESIGN rule 7) — under opaque File IDs
``DICOM/STnnnn/SEnnnn/IMnnnnnn`` that carry no UID and no patient data.

**Streaming.** The ZIP is written by :mod:`zipfile` into a sink that cannot seek, so
each entry's sizes and CRC follow its data in a data descriptor (APPNOTE 4.3.9) and
nothing is ever held but the piece being sent: each blob is read in pieces of
1 MiB (``services.wado.blob_chunks``), deflated (level 1: cheap, and uncompressed pixel data shrink
well) and handed out at once. Entries over 1 GiB are written in ZIP64 form; the
archive switches to ZIP64 by itself past 65,535 entries or 4 GiB.

**Share links** (:func:`share_download`): only a recipient actor whose link allows
downloading; each study is authorized (``Action.RETRIEVE``, the recipient rule of
``services.access``: exactly the link's studies) and audited ``share-download`` with
its person before the first byte is sent. A blob failing mid-stream can only abort the
response (the client sees a truncated archive, which unzip tools report).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from coffre.app import Context
from coffre.dicom.media import DICOMDIR_NAME, MediaObject, file_id, path_of, write_dicomdir
from coffre.errors import NotAuthorized, NotFound
from coffre.index import shares as share_index
from coffre.index.shares import ExportRow
from coffre.model import Actor
from coffre.services import audit
from coffre.services.access import Action, Resource, authorize
from coffre.services.shares import recipient_share
from coffre.services.wado import blob_chunks

log = logging.getLogger(__name__)

#: largest piece of a blob held at once
#: entries at least this large are written in ZIP64 form (their size is not known ahead)
_ZIP64_ENTRY = 1 << 30
README_NAME = "README.txt"


@dataclass(frozen=True, slots=True)
class Archive:
    """A ZIP produced lazily: nothing is read before ``chunks`` is iterated."""

    filename: str
    studies: int
    instances: int
    chunks: Iterator[bytes]


class _Sink:
    """A write-only, non-seekable target: what zipfile writes is collected, then drained."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def drain(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def media_objects(rows: Sequence[ExportRow]) -> list[tuple[ExportRow, MediaObject]]:
    """Each instance with its place in the File-set (numbered in order: study, series, instance)."""
    studies: dict[int, int] = {}
    series_in_study: dict[int, int] = {}
    series: dict[tuple[int, str], int] = {}
    instances: dict[tuple[int, str], int] = {}
    out: list[tuple[ExportRow, MediaObject]] = []
    for row in rows:
        study_no = studies.setdefault(row.study_pk, len(studies) + 1)
        key = (row.study_pk, row.series_instance_uid)
        if key not in series:
            series[key] = series_in_study[row.study_pk] = series_in_study.get(row.study_pk, 0) + 1
        series_no = series[key]
        instance_no = instances[key] = instances.get(key, 0) + 1
        out.append((row, MediaObject(
            file_id=file_id(study_no, series_no, instance_no), sop_class_uid=row.sop_class_uid,
            sop_instance_uid=row.sop_instance_uid, transfer_syntax_uid=row.transfer_syntax_uid,
            instance_number=row.instance_number, patient_key=row.patient_pk, patient_id=row.patient_id,
            patient_name=row.patient_name, study_instance_uid=row.study_instance_uid,
            study_date=row.study_date, study_time=row.study_time, study_description=row.study_description,
            study_id=row.study_id, accession_number=row.accession_number,
            received_date=row.study_created_at.strftime("%Y%m%d"),
            series_instance_uid=row.series_instance_uid, modality=row.modality,
            series_number=row.series_number,
        )))
    return out


def _entry(name: str, when: datetime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def zip_stream(ctx: Context, rows: Sequence[ExportRow], *, readme: str, when: datetime) -> Iterator[bytes]:
    """The ZIP of ``rows`` (module doc), piece by piece."""
    placed = media_objects(rows)
    dicomdir = write_dicomdir([m for _, m in placed], file_set_id="COFFRE_SHARE")
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                         allowZip64=True) as archive:
        archive.writestr(_entry(DICOMDIR_NAME, when), dicomdir)
        archive.writestr(_entry(README_NAME, when), readme.encode("utf-8"))
        yield sink.drain()
        for row, media in placed:
            info = _entry(path_of(media.file_id), when)
            with archive.open(info, "w", force_zip64=row.size >= _ZIP64_ENTRY) as entry:
                for chunk in blob_chunks(ctx, row.blob_key):
                    entry.write(chunk)
                    out = sink.drain()
                    if out:
                        yield out
            yield sink.drain()
    yield sink.drain()


def _readme(studies: int, instances: int, when: datetime, expires_at: datetime) -> str:
    return (
        "Medical images shared with you through Coffre\n"
        "=============================================\n\n"
        f"This archive holds {studies} imaging stud{'y' if studies == 1 else 'ies'} "
        f"({instances} DICOM object{'' if instances == 1 else 's'}), prepared on "
        f"{when:%Y-%m-%d %H:%M} UTC.\n\n"
        "- DICOMDIR: the index of the images (DICOM PS3.10 media format). Open it with any\n"
        "  DICOM viewer (for example Weasis, Horos, OsiriX, MicroDicom, RadiAnt).\n"
        "- DICOM/: the images themselves, as the imaging facility archived them. The file\n"
        "  names are neutral on purpose; the viewer finds everything through DICOMDIR.\n\n"
        "These images are personal health data. Keep them private: store them on your own\n"
        "devices only and do not forward them without the patient's consent.\n\n"
        f"The link this archive came from stops working on {expires_at:%Y-%m-%d} (UTC) at the latest.\n"
    )


def share_download(ctx: Context, actor: Actor) -> Archive:
    """The ZIP of a recipient's studies, if its link allows downloads; audited per study."""
    row = recipient_share(ctx, actor)
    if not row.allow_download:
        raise NotAuthorized("this share link does not allow downloads")
    with ctx.db.read() as tx:
        rows = list(share_index.export_rows(tx, actor.share_studies))
    if not rows:
        raise NotFound("the shared studies are no longer available")
    by_study: dict[int, list[ExportRow]] = {}
    for r in rows:
        by_study.setdefault(r.study_pk, []).append(r)
    for study_rows in by_study.values():
        first = study_rows[0]
        authorize(actor, Action.RETRIEVE, Resource(first.facility_id, first.person_id, first.study_pk))
    now = ctx.clock()
    with ctx.db.write() as tx:
        for study_rows in by_study.values():
            first = study_rows[0]
            audit.record(ctx, tx, actor, "share-download", facility_id=first.facility_id, object_type="study",
                         object_id=first.study_instance_uid, person_id=first.person_id,
                         detail={"instances": len(study_rows), "share": row.id, "access": "share-link",
                                 "bytes": sum(r.size for r in study_rows)})
    log.info("share link %d: download of %d studies (%d instances)", row.id, len(by_study), len(rows))
    readme = _readme(len(by_study), len(rows), now, row.expires_at)
    return Archive(filename=f"coffre-share-{now:%Y%m%d}.zip", studies=len(by_study), instances=len(rows),
                   chunks=zip_stream(ctx, rows, readme=readme, when=now))

"""Mapping of service results and domain errors to DIMSE status datasets (PS3.7 C).

Failure statuses carry an Error Comment (0000,0902; LO, at most 64 characters) with the
reason, which never contains patient data.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from coffre.model import IngestResult, IngestStatus


def _comment(text: str) -> str:
    clean = "".join(c if 0x20 <= ord(c) < 0x7F and c != "\\" else " " for c in text)
    return clean[:64]


def failure_status(status: int, reason: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = _comment(reason)
    return ds


def store_success(result: IngestResult) -> Dataset:
    """0x0000 Success; a re-sent identical object is a success too (idempotent)."""
    ds = Dataset()
    ds.Status = 0x0000
    if result.status is IngestStatus.NEW_VERSION:
        ds.ErrorComment = _comment("stored as a new version of an existing instance")
    return ds

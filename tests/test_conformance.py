"""docs/conformance.md is exactly what the code generates: it cannot drift."""

from pathlib import Path

from coffre.conformance import statement
from coffre.dicom.sop_classes import STORAGE_SOP_CLASSES
from coffre.dicom.transfer_syntaxes import ACCEPTED_TRANSFER_SYNTAXES

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance.md"


def test_conformance_document_is_generated_from_the_code() -> None:
    assert DOC.read_text(encoding="utf-8") == statement(), (
        "docs/conformance.md is stale: run `coffre conformance > docs/conformance.md`"
    )


def test_statement_lists_every_sop_class_and_transfer_syntax() -> None:
    text = statement()
    assert all(uid in text for uid in STORAGE_SOP_CLASSES)
    assert all(ts.uid in text for ts in ACCEPTED_TRANSFER_SYNTAXES)
    for keyword in ("NumberOfStudyRelatedInstances", "ModalitiesInStudy", "SOPClassesInStudy", "PatientName"):
        assert keyword in text

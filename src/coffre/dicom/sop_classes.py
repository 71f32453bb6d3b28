"""Storage SOP Classes the archive knows (PS3.4 Annex B.5, Table B.5-1).

The table is derived from pydicom's UID dictionary (which follows PS3.6 Annex A): every
entry of type "SOP Class" whose name contains "Storage", except the Storage Commitment
SOP Classes (PS3.4 J, not storage) and Media Storage Directory Storage (the DICOMDIR of
PS3.10, a media object, not something a modality sends). Retired classes are kept:
an archive must still accept old objects.
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary


def _storage_sop_classes() -> dict[str, str]:
    table: dict[str, str] = {}
    for uid, entry in UID_dictionary.items():
        name, uid_type = str(entry[0]), str(entry[1])
        if uid_type != "SOP Class" or "Storage" not in name:
            continue
        if "Storage Commitment" in name or name == "Media Storage Directory Storage":
            continue
        table[str(uid)] = name
    return table


STORAGE_SOP_CLASSES: dict[str, str] = _storage_sop_classes()


def is_storage_sop_class(uid: str) -> bool:
    return uid in STORAGE_SOP_CLASSES


def sop_class_name(uid: str) -> str | None:
    return STORAGE_SOP_CLASSES.get(uid)

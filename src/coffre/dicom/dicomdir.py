"""Reading a DICOMDIR's file references (PS3.10 8.6, PS3.3 F.3 Basic Directory IOD).

Referenced File IDs (0004,1500) are up to 8 components of 1-8 characters from
``A-Z 0-9 _`` (PS3.10 8.5). Anything else, and any path that would leave the
DICOMDIR's folder, is refused: a DICOMDIR is untrusted input too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from coffre.errors import InvalidInstance

DICOMDIR_NAME = "DICOMDIR"
_COMPONENT = re.compile(r"^[A-Za-z0-9_]{1,8}(\.[A-Za-z0-9_]{0,3})?$")
_MAX_DICOMDIR_BYTES = 64 * 1024**2


def _components(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # type: ignore[attr-defined]


def referenced_files(path: Path) -> Iterator[Path]:
    """The files a DICOMDIR references, resolved within its own folder."""
    if path.stat().st_size > _MAX_DICOMDIR_BYTES:
        raise InvalidInstance("DICOMDIR larger than 64 MiB")
    try:
        ds = dcmread(path, force=False)
        records = list(ds.DirectoryRecordSequence)
    except (InvalidDicomError, AttributeError, ValueError, EOFError, RecursionError):
        raise InvalidInstance("not a readable DICOMDIR") from None
    base = path.parent.resolve()
    for record in records:
        file_id = record.get("ReferencedFileID")
        if file_id is None:
            continue
        parts = _components(file_id)
        if not 0 < len(parts) <= 8 or not all(_COMPONENT.match(p) for p in parts):
            raise InvalidInstance("DICOMDIR references a file with an invalid File ID")
        target = base.joinpath(*parts).resolve()
        if not target.is_relative_to(base):
            raise InvalidInstance("DICOMDIR references a file outside its folder")
        yield target

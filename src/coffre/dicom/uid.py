"""Unique identifiers (PS3.5 9.1).

A UID is a series of numeric components separated by ``.``: only the characters
``0-9`` and ``.``, no empty component, no component with a leading zero (``0`` alone is
allowed), at most 64 characters. The single trailing NUL that pads a UI value to an even
length (PS3.5 6.2, UI) is stripped by the reader before these rules are applied, so any
NUL left is an error.

UIDs come from untrusted peers and are used as keys everywhere: nothing that fails
:func:`check_uid` may reach the index or a blob key.
"""

from __future__ import annotations

import re

from coffre.errors import InvalidUID

MAX_UID_LENGTH = 64

_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a ``str`` obeying PS3.5 9.1."""
    if not isinstance(value, str):
        return False
    if not 0 < len(value) <= MAX_UID_LENGTH:
        return False
    # fullmatch, not match: "$" would accept a trailing newline.
    return _UID_RE.fullmatch(value) is not None


def check_uid(value: object, keyword: str) -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUID`.

    The message names ``keyword`` only: the value is untrusted and may be patient data
    or an attack string, so it is never echoed.
    """
    if not isinstance(value, str):
        raise InvalidUID(f"{keyword} is not a single UID value")
    if not value:
        raise InvalidUID(f"{keyword} is empty")
    if len(value) > MAX_UID_LENGTH:
        raise InvalidUID(f"{keyword} is longer than {MAX_UID_LENGTH} characters (PS3.5 9.1)")
    if not is_valid_uid(value):
        raise InvalidUID(
            f"{keyword} is not a valid UID: only digits and '.', no empty component, "
            "no leading zero (PS3.5 9.1)"
        )
    return value

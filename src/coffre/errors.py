"""The one exception tree of Coffre.

Every domain error knows how it is reported on each transport: an HTTP status for
DICOMweb and the REST API, and a DIMSE status for the DICOM services (PS3.7 Annex C,
PS3.4 B.2.3 for the Storage Service Class). Adapters map these in one place each
(``net/statuses.py``, ``web/errors.py``); services only raise.

Messages never contain patient data: they name the problem and, at most, a tag or a
size, so that they may be logged and returned to the peer.
"""

from __future__ import annotations


class CoffreError(Exception):
    """Base of all domain errors."""

    http_status: int = 500
    #: DIMSE status: 0xC000 "Error: cannot understand" is the generic failure.
    dimse_status: int = 0xC000

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigurationError(CoffreError):
    """The settings file, an environment override or a command argument is invalid."""

    http_status = 500
    dimse_status = 0xC000


class NotFound(CoffreError):
    """The requested resource does not exist (or the caller may not know it does)."""

    http_status = 404
    dimse_status = 0xC000


class AlreadyExists(CoffreError):
    """A facility, node or other named object with the same key already exists."""

    http_status = 409
    dimse_status = 0xC000


class NotAuthorized(CoffreError):
    """The actor may not perform this action (PS3.7 C.5: 0x0124 Refused: Not Authorized)."""

    http_status = 403
    dimse_status = 0x0124


class InvalidInstance(CoffreError):
    """The object cannot be understood: malformed encoding, lying lengths, bad UIDs.

    PS3.4 B.2.3: 0xC000-0xCFFF "Error: Cannot understand".
    """

    http_status = 400
    dimse_status = 0xC000


class MissingAttribute(InvalidInstance):
    """A required attribute (Type 1 for the archive) is absent or empty."""

    dimse_status = 0xC001


class InvalidUID(InvalidInstance):
    """A UID breaks PS3.5 9.1 (characters, length, leading zeros)."""

    dimse_status = 0xC002


class TooDeeplyNested(InvalidInstance):
    """Sequences nest deeper than the configured bound."""

    dimse_status = 0xC003


class SOPClassMismatch(CoffreError):
    """The dataset's SOP Class does not match the presentation context or the request.

    PS3.4 B.2.3: 0xA900 "Error: Data Set does not match SOP Class".
    """

    http_status = 400
    dimse_status = 0xA900


class UnknownSOPClass(CoffreError):
    """Not a Storage SOP Class the archive knows (PS3.7 C.5: 0x0122 SOP class not supported)."""

    http_status = 400
    dimse_status = 0x0122


class TooLarge(CoffreError):
    """A configured size bound is exceeded (PS3.4 B.2.3: 0xA700 Out of resources)."""

    http_status = 413
    dimse_status = 0xA700


class UnsupportedTransferSyntax(CoffreError):
    """The transfer syntax is not one the archive accepts or can produce."""

    http_status = 415
    dimse_status = 0xC004


class StorageFailure(CoffreError):
    """The blob store or the index could not durably record the object.

    PS3.4 B.2.3: 0xA7xx "Refused: Out of resources".
    """

    http_status = 503
    dimse_status = 0xA701


class Conflict(CoffreError):
    """The request contradicts the stored state."""

    http_status = 409
    dimse_status = 0xC000


class TranscodeError(CoffreError):
    """The object cannot be produced in the requested transfer syntax.

    An impossible pair (unknown target, video source, lossy to compressed), or a codec
    that refuses this object's pixels. Reported as 406 Not Acceptable (PS3.18 8.7.3:
    the requested transfer syntax cannot be provided) and, for a retrieve
    sub-operation, as a generic failure.
    """

    http_status = 406
    dimse_status = 0xC000


class BadRequest(CoffreError):
    """A malformed HTTP request: bad parameters, malformed multipart body (400)."""

    http_status = 400
    dimse_status = 0xC000


class NotAcceptable(CoffreError):
    """No representation the client accepts can be produced (406, PS3.18 8.7.3)."""

    http_status = 406
    dimse_status = 0xC000


class UnsupportedMediaType(CoffreError):
    """The request body's media type is not one the service takes (415)."""

    http_status = 415
    dimse_status = 0xC000

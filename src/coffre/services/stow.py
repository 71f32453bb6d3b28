"""STOW-RS use cases (PS3.18 10.5): who may store, and each part through ingest.

The HTTP adapter streams the request body and calls :meth:`StowBatch.store` once per
``application/dicom`` part; every part goes through the same ingest service as C-STORE
(validation, two-phase store, audit). Failures of one part never stop the others: they
become a :class:`PartOutcome` carrying the error's DIMSE status, which PS3.18 10.5.3
uses as the Failure Reason (0xC000 cannot understand, 0xA900 does not match, 0xA700
out of resources, 0x0122 SOP class not supported...).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from coffre.app import Context
from coffre.dicom import part10
from coffre.dicom.instance import parse_instance
from coffre.dicom.uid import is_valid_uid
from coffre.errors import CoffreError, NotAuthorized, SOPClassMismatch, StorageFailure
from coffre.model import Actor, IngestStatus
from coffre.services import audit
from coffre.services.access import Action, Resource, authorize
from coffre.services.ingest import ingest

log = logging.getLogger(__name__)

SOURCE = "stow-rs"

#: PS3.18 10.5.3 Warning Reason of an instance that replaced a different object with the
#: same SOP Instance UID (a new version became current). No standard code names this;
#: 0xB000 ("coercion of data elements": what the archive serves for this UID changed)
#: is the closest, and it makes the response 202 so that the sender notices.
NEW_VERSION_WARNING = 0xB000


@dataclass(frozen=True, slots=True)
class PartOutcome:
    """What became of one part: stored (``status``) or failed (``failure``)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    status: IngestStatus | None = None
    #: PS3.18 Failure Reason (the error's DIMSE status) when the part was not stored
    failure: int | None = None
    #: PS3.18 Warning Reason of a stored part, if any
    warning: int | None = None
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.status is not None

    @property
    def server_side(self) -> bool:
        """The failure is the archive's (index or blob store), not the part's."""
        return self.failure is not None and self.failure == StorageFailure.dimse_status


def check_can_store(ctx: Context, actor: Actor) -> None:
    """Refuse a whole STOW-RS request (403) before its body is read, audited."""
    try:
        if actor.facility is None:
            raise NotAuthorized("the caller is not bound to a facility")
        authorize(actor, Action.STORE, Resource(actor.facility_id))
    except NotAuthorized as exc:
        _audit_refusal(ctx, actor, {"reason": exc.reason, "error": type(exc).__name__, "source": SOURCE})
        raise


class StowBatch:
    """The parts of one STOW-RS request, stored one at a time.

    Stored parts are audited by ingest, one event each, in the transaction that indexes
    them. Refused parts are audited together by :meth:`close` (one event per request with
    the count, the reasons and the SOP Instance UIDs): a body of 10,000 bad parts then
    costs no index write per part. ``close`` must be called whatever happens.
    """

    #: most SOP Instance UIDs of refused parts listed in the audit event
    MAX_AUDITED_UIDS = 100

    def __init__(self, ctx: Context, actor: Actor, *, study: str | None = None) -> None:
        self.ctx = ctx
        self.actor = actor
        self.study = study
        self.refused = 0
        self._reasons: Counter[str] = Counter()
        self._uids: list[str] = []

    def store(self, data: bytes) -> PartOutcome:
        """Ingest one Part 10 object; never raises for a bad part.

        With a ``study`` (``POST /studies/{study}``), an object of another study is not
        stored and fails with 0xA900 (PS3.18 10.5.3.2). The object is then parsed once
        before ingest (which parses it again), so that nothing of it is written.
        """
        ctx, actor = self.ctx, self.actor
        if self.study is not None:
            try:
                parsed = parse_instance(data, ctx.settings.limits)
            except CoffreError:
                parsed = None  # ingest refuses it below, with the precise reason
            if parsed is not None and parsed.study_instance_uid != self.study:
                error = SOPClassMismatch("StudyInstanceUID differs from the study of the request")
                return self._refused(PartOutcome(
                    parsed.sop_class_uid, parsed.sop_instance_uid, parsed.study_instance_uid,
                    parsed.series_instance_uid, failure=error.dimse_status, reason=error.reason,
                ))
        try:
            result = ingest(ctx, actor, data, source=SOURCE, audit_refusals=False)
        except CoffreError as exc:
            return self.refuse(exc, data)
        except Exception as exc:  # a port failing outside ingest's own guard: never a 500
            log.error("STOW-RS part failed for %s: %s", actor.describe(), type(exc).__name__)
            return self.refuse(StorageFailure("the object could not be durably stored; nothing was kept"), data)
        return PartOutcome(
            result.sop_class_uid,
            result.sop_instance_uid,
            result.study_instance_uid,
            result.series_instance_uid,
            status=result.status,
            warning=NEW_VERSION_WARNING if result.status is IngestStatus.NEW_VERSION else None,
        )

    def refuse_unless_part10(self, data: bytes) -> PartOutcome | None:
        """Refuse at once what is not even a PS3.10 file (no IO: callable on an event loop).

        Saves a threadpool round trip per part on a body of many junk parts; the reason
        is the bounded scanner's, as ingest would give it.
        """
        if data[part10.PREAMBLE_LENGTH : part10.DATA_START] == part10.MAGIC:
            return None
        try:
            part10.scan(data, self.ctx.settings.limits)
        except CoffreError as exc:
            return self._refused(PartOutcome(None, None, failure=exc.dimse_status, reason=exc.reason))
        return None  # pragma: no cover - scan refuses every file without the magic

    def refuse(self, error: CoffreError, data: bytes | None = None) -> PartOutcome:
        """A part not stored (also one refused before ingest: media type, size)."""
        sop_class, sop_instance = _identify(self.ctx, data) if data is not None else (None, None)
        return self._refused(PartOutcome(sop_class, sop_instance, failure=error.dimse_status, reason=error.reason))

    def _refused(self, outcome: PartOutcome) -> PartOutcome:
        self.refused += 1
        self._reasons[outcome.reason] += 1
        if outcome.sop_instance_uid and len(self._uids) < self.MAX_AUDITED_UIDS:
            self._uids.append(outcome.sop_instance_uid)
        return outcome

    def close(self) -> None:
        """Audit the refused parts (one event), if any."""
        if self.refused:
            _audit_refusal(self.ctx, self.actor, {
                "source": SOURCE, "parts": self.refused, "reasons": dict(self._reasons),
                "sop_instance_uids": self._uids,
            })
            self.refused = 0
            self._reasons.clear()
            self._uids = []


def _identify(ctx: Context, data: bytes) -> tuple[str | None, str | None]:
    """Best effort: the SOP Class and Instance UIDs a refused object claims in its File Meta.

    Only valid UIDs are returned (they are echoed to the client); the bounded scanner is
    used, never pydicom on untrusted bytes.
    """
    try:
        scan = part10.scan(data, ctx.settings.limits)
    except Exception:
        return None, None
    sop_class = scan.media_storage_sop_class_uid
    sop_instance = scan.media_storage_sop_instance_uid
    return (sop_class if is_valid_uid(sop_class) else None,
            sop_instance if is_valid_uid(sop_instance) else None)


def _audit_refusal(ctx: Context, actor: Actor, detail: dict[str, Any]) -> None:
    try:
        audit.record_alone(ctx, actor, "store", outcome="refused", facility_id=actor.facility_id,
                           object_type="instance", detail=detail)
    except Exception:
        log.exception("could not audit a refused STOW-RS request")

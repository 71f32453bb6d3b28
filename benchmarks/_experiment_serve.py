"""EXPERIMENT, not Coffre: ``coffre serve`` with proposed listener changes patched in-process.

Used by ``query.py --experiment`` and ``retrieve.py --experiment`` to measure what a
proposed change would gain, without touching ``src/``. ``BENCH_COFFRE_PATCHES`` (comma
separated, default ``shallow-contexts``) selects the patches:

- ``shallow-contexts``: pynetdicom's ``RequestHandler._create_association`` deep-copies the
  AE's supported presentation contexts for every association (``transport.py``:
  ``deepcopy(self.server.contexts)``). Coffre supports ~204 storage SOP classes x 25
  transfer syntaxes, so each association re-creates and re-validates ~5,000 ``UID``
  objects (``UID.__new__`` + regex) before negotiation. Patched: a shallow copy of each
  context with a fresh transfer-syntax list (UIDs are immutable ``str``).

- ``scoped-locate`` (used by ``dicomweb.py --experiment``): ``coffre.index.retrieve.locate``
  (behind WADO-RS, series metadata, C-MOVE and C-GET) applies the facility scope as
  ``instance.facility_id IN (...)`` only. Without ``ANALYZE`` statistics SQLite then drives
  the join from the ``(facility_id, sop_instance_uid)`` unique index of ``instance``, i.e.
  walks every instance of the facility (20,300 in the benchmark index: ~50-80 ms) and sorts.
  Patched: the same scope also on ``series.facility_id`` and ``study.facility_id`` (equal
  by construction), which lets SQLite start from the ``(facility_id,
  series_instance_uid)`` / ``(facility_id, study_instance_uid)`` unique indexes (0.2 ms).

- ``polling-reactors`` was the A/B of event-woken acceptor reactors (commit aae5c0d);
  they were taken out of ``src/`` after it (docs/performance.md, section 7).

(The ``shallow-contexts`` fix is in ``src/`` since commit 9c6d830, so that patch is now a
no-op kept for comparison. An ``explicit-first`` patch measured here earlier is obsolete: since commit 796b38b the
listener prefers Explicit VR Little Endian itself, so C-GET no longer transcodes.)

Run as ``python benchmarks/_experiment_serve.py serve --data DIR`` (same CLI as ``coffre``).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pynetdicom.transport as transport


def _shallow_contexts(contexts: Any, memo: Any = None) -> Any:
    if not isinstance(contexts, list):
        return copy.deepcopy(contexts, memo)
    out = []
    for cx in contexts:
        new = copy.copy(cx)
        new._transfer_syntax = list(cx._transfer_syntax)
        out.append(new)
    return out


def _scoped_locate() -> None:
    """``coffre.index.retrieve.locate`` as in src/, plus the scope on series and study."""
    from sqlalchemy import select

    import coffre.index.retrieve as ir
    import coffre.services.retrieve as sr
    from coffre.index.schema import instance, patient, series, study

    def locate(conn: Any, query: Any, scope: Any) -> Any:
        stmt = (
            select(instance.c.id, instance.c.facility_id, study.c.study_instance_uid,
                   series.c.series_instance_uid, instance.c.sop_class_uid, instance.c.sop_instance_uid,
                   instance.c.transfer_syntax_uid, instance.c.blob_key, instance.c.size)
            .join(series, series.c.id == instance.c.series_pk)
            .join(study, study.c.id == series.c.study_pk)
            .join(patient, patient.c.id == study.c.patient_pk)
            .order_by(study.c.id, series.c.series_number, series.c.id, instance.c.instance_number, instance.c.id)
        )
        conditions = [c for c in (ir._condition(f) for f in query.filters) if c is not None]
        if not conditions:
            return
        stmt = stmt.where(*conditions)
        if scope.facility_ids is not None:
            ids = sorted(scope.facility_ids)
            stmt = stmt.where(instance.c.facility_id.in_(ids), series.c.facility_id.in_(ids),
                              study.c.facility_id.in_(ids))
        for r in conn.execute(stmt.execution_options(yield_per=500)):
            yield ir.InstanceRef(id=r.id, facility_id=r.facility_id, study_instance_uid=r.study_instance_uid,
                                 series_instance_uid=r.series_instance_uid, sop_class_uid=r.sop_class_uid,
                                 sop_instance_uid=r.sop_instance_uid, transfer_syntax_uid=r.transfer_syntax_uid,
                                 blob_key=r.blob_key, size=r.size)

    ir.locate = locate  # type: ignore[assignment]
    sr.locate = locate  # type: ignore[attr-defined]


def apply(patches: set[str]) -> None:
    if "shallow-contexts" in patches:
        transport.deepcopy = _shallow_contexts  # type: ignore[attr-defined]
    if "scoped-locate" in patches:
        _scoped_locate()


if __name__ == "__main__":
    apply(set(filter(None, os.environ.get("BENCH_COFFRE_PATCHES", "shallow-contexts").split(","))))
    from coffre.cli import main

    main()

"""Facilities and DICOM nodes in the index, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from coffre.errors import AlreadyExists, NotFound
from coffre.index.engine import Database
from coffre.index.facilities import (
    add_facility,
    add_node,
    find_node,
    get_facility,
    get_facility_by_id,
    list_facilities,
    list_nodes,
    remove_node,
)
from coffre.index.schema import node
from coffre.model import Facility, Permission

NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
ALL = frozenset(Permission)


def _facility(db: Database, slug: str = "chu-se", issuer: str = "CHU-SE") -> Facility:
    with db.write() as conn:
        return add_facility(conn, slug=slug, name=f"Site {slug}", issuer=issuer, now=NOW)


def test_add_and_list_facilities(database: Database) -> None:
    b = _facility(database, "clinique-b", "CLIN-B")
    a = _facility(database, "chu-a", "CHU-A")
    with database.read() as conn:
        assert list_facilities(conn) == [a, b]  # ordered by slug
        assert get_facility(conn, "chu-a") == a
        assert get_facility_by_id(conn, b.id) == b
        with pytest.raises(NotFound):
            get_facility(conn, "nowhere")
        with pytest.raises(NotFound):
            get_facility_by_id(conn, 10_000)
    assert a.id != b.id


def test_duplicate_facility_slug(database: Database) -> None:
    _facility(database, "chu-se")
    with database.write() as conn:
        with pytest.raises(AlreadyExists):
            add_facility(conn, slug="chu-se", name="Other", issuer="X", now=NOW)
        # the failed insert rolled back to its savepoint only: the transaction goes on
        add_facility(conn, slug="ch-roanne", name="Roanne", issuer="CHR", now=NOW)
    with database.read() as conn:
        assert [f.slug for f in list_facilities(conn)] == ["ch-roanne", "chu-se"]


def test_nodes_add_find_list_remove(database: Database) -> None:
    site = _facility(database, "chu-se")
    other = _facility(database, "clinique-b", "CLIN-B")
    with database.write() as conn:
        ct = add_node(
            conn,
            ae_title="CT_SALLE1",
            host="10.0.0.5",
            port=104,
            facility_id=site.id,
            permissions=frozenset({Permission.STORE}),
            description="CT room 1",
            now=NOW,
        )
        pacs = add_node(
            conn,
            ae_title="PACS_B",
            host="pacs.b.example",
            port=11112,
            facility_id=other.id,
            permissions=ALL,
            description="",
            now=NOW,
        )
    with database.read() as conn:
        found = find_node(conn, "CT_SALLE1")
        assert found == (ct, site)
        assert found[0].may(Permission.STORE)
        assert not found[0].may(Permission.RETRIEVE)
        assert find_node(conn, "UNKNOWN") is None
        assert list_nodes(conn) == [ct, pacs]
        assert list_nodes(conn, facility_id=other.id) == [pacs]
        assert find_node(conn, "PACS_B") == (pacs, other)
        assert find_node(conn, "PACS_B")[0].permissions == ALL  # type: ignore[index]
    with database.write() as conn:
        remove_node(conn, "CT_SALLE1")
        with pytest.raises(NotFound):
            remove_node(conn, "CT_SALLE1")
    with database.read() as conn:
        assert list_nodes(conn) == [pacs]


def test_duplicate_ae_title(database: Database) -> None:
    site = _facility(database)
    other = _facility(database, "clinique-b", "CLIN-B")
    kwargs = {"host": "h", "port": 104, "permissions": ALL, "description": "", "now": NOW}
    with database.write() as conn:
        add_node(conn, ae_title="MODALITY", facility_id=site.id, **kwargs)  # type: ignore[arg-type]
    # AE titles are unique archive-wide: the calling AE resolves the facility
    with database.write() as conn, pytest.raises(AlreadyExists):
        add_node(conn, ae_title="MODALITY", facility_id=other.id, **kwargs)  # type: ignore[arg-type]


def test_node_of_unknown_facility_is_not_found(database: Database) -> None:
    with database.write() as conn, pytest.raises(NotFound):
        add_node(
            conn,
            ae_title="ORPHAN",
            host="h",
            port=104,
            facility_id=424_242,
            permissions=ALL,
            description="",
            now=NOW,
        )


def test_foreign_keys_are_enforced(database: Database) -> None:
    """A node row referencing no facility is refused by the database itself."""
    with database.write() as conn, pytest.raises(IntegrityError):
        conn.execute(
            node.insert().values(
                ae_title="ORPHAN",
                host="h",
                port=104,
                facility_id=424_242,
                permissions="store",
                created_at=NOW,
            )
        )
    with database.read() as conn:
        assert list_nodes(conn) == []

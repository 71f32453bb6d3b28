"""docs/security.md shows the role x action table of the code, not a stale copy."""

from __future__ import annotations

from pathlib import Path

from coffre.services.access import policy_table


def test_policy_table_in_the_docs_is_the_code() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text(encoding="utf-8")
    begin, end = "<!-- policy-table:begin -->\n", "<!-- policy-table:end -->"
    assert begin in doc and end in doc
    shown = doc.split(begin, 1)[1].split(end, 1)[0]
    assert shown == policy_table()

"""Template versioning: new versions, no-op edits, optimistic locking across connections."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from kb import templates as T
from kb.db import session_scope
from kb.errors import ConflictError, InputError


def _spec(**kw):
    base = {
        "name": "Vieta's formulas",
        "category": "Algebra",
        "section": "Polynomials",
        "tags": ["roots"],
        "description": "Relate roots to coefficients.",
        "steps": ["Write the polynomial", "Read off sums"],
    }
    return T.TemplateSpec(**{**base, **kw})


def test_create_edit_noop_and_history(db):
    with session_scope(db) as s:
        v1 = T.create_template(s, _spec())
    assert v1.version_no == 1
    with session_scope(db) as s:
        v2, changed = T.edit_template(
            s, "Algebra/Polynomials/Vieta's formulas", {"description": "New."}, change_note="clarify"
        )
    assert changed and v2.version_no == 2 and v2.parent_version_id == v1.id
    with session_scope(db) as s:
        same, changed = T.edit_template(s, v2.template_id, {"description": "New."})
    assert not changed and same.id == v2.id
    with session_scope(db) as s:
        hist = T.history(s, v2.template_id)
        assert [h.version_no for h in hist] == [1, 2]
        assert T.diff_versions(hist[0], hist[1]) == [
            {"field": "description", "old": "Relate roots to coefficients.", "new": "New."}
        ]
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM template_version")).scalar() == 2


def test_expect_version_mismatch_writes_nothing(db):
    with session_scope(db) as s:
        T.create_template(s, _spec())
    with session_scope(db) as s:
        T.edit_template(s, 1, {"description": "first editor"}, expect_version=1)
    with pytest.raises(ConflictError, match="someone else"), session_scope(db) as s:
        T.edit_template(s, 1, {"description": "second editor"}, expect_version=1)
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM template_version")).scalar() == 2


def test_concurrent_edit_from_second_connection_conflicts(db):
    with session_scope(db) as s:
        T.create_template(s, _spec())
    first, second = db.session(), db.session()
    try:
        T.edit_template(first, 1, {"description": "from A"})
        # B read version 1 before A committed; its conditional update must lose, not overwrite.
        second_template = T.resolve(second, 1)
        assert second_template.current_version_no == 1
        first.commit()
        with pytest.raises(ConflictError):
            T.edit_template(second, 1, {"description": "from B"})
        second.rollback()
    finally:
        first.close()
        second.close()
    with session_scope(db) as s:
        assert T.get_version(s, 1).description == "from A"
        assert len(T.history(s, 1)) == 2


def test_bad_spec_names_field():
    with pytest.raises(InputError, match="field tags"):
        T.TemplateSpec.from_dict(
            {"name": "x", "category": "y", "tags": "notalist"}, file="t.json", record="0"
        )

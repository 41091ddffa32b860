"""One home per core write (issue 18.1): every caller goes through the one function, seen by behaviour.

- template versions: create, edit and import lose a race with the same ConflictError (kb.template_writes);
- template vectors: mining, `templates add` and the embed stage store the same text hash and vector;
- the template JSONL reader: the starter library and the import refuse a bad line the same way;
- vectors reach SQL through pgvector's type: exact float32, no hand-formatted literal;
- trajectories: the sample stage and insert_trajectory share one writer (and its idempotence);
- run records: pipeline and training runs start and finish through kb.runs.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from kb import runs
from kb import templates as T
from kb.db import session_scope
from kb.errors import ConflictError, InputError
from kb.models import TemplateEmbedding
from kb.models._common import vector_param
from kb.starter import load_starter_entries
from kb.template_vectors import content_views, embed_versions, text_hash
from kb.template_writes import conflict
from pipelines import navigator
from pipelines.embed import embed_templates
from pipelines.import_templates import ImportRecord, apply_records, read_file
from pipelines.llm import SamplingParams, create_backend
from pipelines.mine import mine
from pipelines.problems import import_problems
from pipelines.sample import sample, sample_key
from pipelines.train import training_runs
from pipelines.trajectories_store import insert_trajectory

MODEL = "all-MiniLM-L6-v2"
KEY = "Algebra/Quadratics/Factor"


def _spec(**over) -> T.TemplateSpec:
    return T.TemplateSpec(
        **{
            "name": "Factor",
            "category": "Algebra",
            "section": "Quadratics",
            "tags": ["algebra"],
            "description": "Factor a quadratic.",
            "application_scope": "Degree two.",
            "steps": ["Factor it.", "Solve each factor."],
            **over,
        }
    )


def _blocked_behind_a_lock(db, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with db.engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar()
            if waiting:
                return
            conn.rollback()
            time.sleep(0.05)
    raise AssertionError("the second writer never waited on the first")


def _race(db, second) -> BaseException | None:
    """A first writer creates KEY in an open transaction; SECOND (another thread) writes KEY too and waits
    on it; the first commits. What SECOND raised."""
    caught: list[BaseException] = []

    def run():
        try:
            second()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            caught.append(e)

    with session_scope(db) as first:
        T.create_template(first, _spec())
        first.flush()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        _blocked_behind_a_lock(db)
    thread.join(timeout=30)
    assert not thread.is_alive()
    return caught[0] if caught else None


def _versions(db) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM template_version")).scalar()


def test_create_edit_and_import_lose_a_race_with_one_conflict_error(db):
    expected = str(conflict([KEY]))

    def create():
        with session_scope(db) as s:
            T.create_template(s, _spec(description="second creator"))

    assert str(_race(db, create)) == expected
    with db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM template"))

    def imported():
        record = ImportRecord(_spec(description="importer"), "line 1", {"format": "jsonl", "line": 1})
        with db.engine.begin() as conn:
            apply_records(conn, [record], source_ref=None, run_id=None)

    error = _race(db, imported)
    assert isinstance(error, ConflictError) and str(error) == expected

    # An edit from a stale read: the other editor moved the pointer first.
    first, second = db.session(), db.session()
    try:
        stale = T.resolve(second, KEY)  # held: the session keeps what it read
        assert stale.current_version_no == 1
        T.edit_template(first, KEY, {"description": "editor A"})
        first.commit()
        with pytest.raises(ConflictError) as err:
            T.edit_template(second, KEY, {"description": "editor B"})
        second.rollback()
    finally:
        first.close()
        second.close()
    assert str(err.value) == expected
    assert _versions(db) == 2  # the first creation and editor A's; no loser wrote anything


def _stored(db, version_id: int) -> tuple[str, np.ndarray]:
    with db.session() as s:
        row = s.execute(
            sa.select(TemplateEmbedding.text_hash, TemplateEmbedding.embedding).where(
                TemplateEmbedding.version_id == version_id, TemplateEmbedding.model == MODEL
            )
        ).one()
    return row[0], np.asarray(row[1], dtype=np.float32)


def test_mining_templates_add_and_the_embed_stage_store_one_vector(db, tmp_path):
    problem = {"problem": "Solve x^2 - 3x + 2 = 0.", "solution": "(x-1)(x-2)=0", "answer": "1, 2"}
    (tmp_path / "p.jsonl").write_text(
        json.dumps({**problem, "subject": "Algebra", "unique_id": "w/1"}) + "\n"
    )
    import_problems(db, tmp_path / "p.jsonl", preset="math500", embed=False)
    reply = json.dumps(
        {
            "name": "Factor the quadratic",
            "type": "technique",
            "tags": ["algebra", "quadratics"],
            "description": "Solve a quadratic by factoring it into linear factors.",
            "scope": "A polynomial equation of degree two with integer roots.",
            "steps": [
                "Move every term to one side.",
                "Factor into linear factors.",
                "Set each factor to zero.",
            ],
            "example": {"problem": "Solve x^2-5x+6=0.", "solution": "(x-2)(x-3)=0", "answer": "2, 3"},
        }
    )
    out = mine(
        db, "all", create_backend("scripted", rules=[("Reference solution", reply)]), embed_model=MODEL
    )
    assert out["templates_created"] == 1
    with session_scope(db) as s:
        mined = T.get_version(s, "Algebra/Mined/Factor the quadratic")
        mined_id, content = mined.id, T.spec_of(T.resolve(s, mined.template_id), mined).content()
    mined_hash, mined_vec = _stored(db, mined_id)
    assert mined_hash == text_hash(content_views(content))  # the one embedded text, not a mining-only one

    # `templates add` of the same content elsewhere: the same text hash, so its vector is the mined one.
    with session_scope(db) as s:
        added = T.create_template(s, _spec(**{**content, "category": "Elsewhere", "section": None})).id
    with db.engine.begin() as conn:
        assert embed_versions(conn, [added], models=[MODEL]) == {MODEL: 1}
    added_hash, added_vec = _stored(db, added)
    assert added_hash == mined_hash and np.array_equal(added_vec, mined_vec)

    # The bulk stage, re-encoding from scratch, makes that vector again.
    assert embed_templates(db, MODEL, version_ids=[mined_id], recompute=True) == 1
    again_hash, again_vec = _stored(db, mined_id)
    assert again_hash == mined_hash and np.allclose(again_vec, mined_vec, atol=1e-6)


GOOD = {"name": "Pick", "category": "Algebra", "section": "S", "description": "d", "steps": ["s"]}


@pytest.mark.parametrize(
    "bad",
    ["{not json", {**GOOD, "status": "retired"}, GOOD, {**GOOD, "name": "X", "key": "Wrong/Key"}],
)
def test_the_starter_library_and_the_import_read_jsonl_the_same_way(tmp_path, bad):
    path = tmp_path / "lib.jsonl"
    lines = [GOOD, bad]
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    with pytest.raises(InputError) as starter:
        load_starter_entries(path)
    with pytest.raises(InputError) as importer:
        read_file(path, "jsonl")
    assert (str(starter.value), starter.value.record, starter.value.field) == (
        str(importer.value),
        importer.value.record,
        importer.value.field,
    )
    assert starter.value.file == str(path) and starter.value.record == "line 2"


def test_a_bound_vector_reaches_postgres_as_exact_float32(db):
    # Seven significant digits (one of the old literals) do not identify every float32; the binding does.
    values = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    with db.engine.connect() as conn:
        text = conn.execute(
            sa.text("SELECT CAST(:q AS vector)::text").bindparams(vector_param("q")), {"q": values}
        ).scalar()
    stored = np.array([float(x) for x in text.strip("[]").split(",")], dtype=np.float32)
    assert np.array_equal(stored, values)
    assert not np.array_equal(np.array([f"{x:.7g}" for x in values], dtype=np.float32), values)


def test_the_sample_stage_writes_trajectories_through_the_one_writer(db, tmp_path):
    problem = {"problem": "Solve x + 1 = 2.", "solution": "x = 1", "answer": "1", "unique_id": "w/2"}
    (tmp_path / "p.jsonl").write_text(json.dumps({**problem, "subject": "Algebra"}) + "\n")
    import_problems(db, tmp_path / "p.jsonl", preset="math500", embed=False)
    with db.engine.connect() as conn:
        pid = conn.execute(sa.text("SELECT id FROM problem")).scalar()
    params = SamplingParams(temperature=0.8, max_tokens=64)
    with db.engine.begin() as conn:  # seed 0, written by hand first: trajectories are immutable
        hand = insert_trajectory(
            conn, pid, [("By hand", None, None)], "nav", sample_key(params, 0), raw_output="hand"
        )
    reply = navigator.render_plan("A linear equation.", [("Subtract one", "x")])
    backend = create_backend("scripted", rules=[("", [reply, reply])])
    out = sample(db, "all", backend, n=2, navigator_name="nav", sampling=params, base_seed=0)
    assert out["trajectories_written"] == 1  # seed 1 only: the stage honours the writer's idempotence
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT t.id, t.sample_key, t.raw_output, count(s.*) FROM trajectory t "
                "LEFT JOIN trajectory_step s ON s.trajectory_id = t.id GROUP BY t.id ORDER BY t.id"
            )
        ).all()
    assert (rows[0][0], rows[0][2], rows[0][3]) == (hand, "hand", 1)
    assert [r[1] for r in rows] == [sample_key(params, 0), sample_key(params, 1)] and rows[1][3] == 1
    # The one-row form finds the stage's row instead of writing a second one.
    with db.engine.begin() as conn:
        assert (
            insert_trajectory(conn, pid, [("Other", None, None)], "nav", sample_key(params, 1)) == rows[1][0]
        )


def test_pipeline_and_training_runs_share_one_run_record(db):
    pipeline = runs.start_run(db, "import", {"file": "x"})
    training = training_runs.start_run(
        db, stage="sft", base_model="tiny", dataset_version_id=None, config={"lr": 1e-4}
    )
    runs.finish_run(db, pipeline, "failed", {"n": 1}, error="boom")
    training_runs.finish_run(db, training, "failed", error="boom")
    with db.engine.connect() as conn:
        rows = [
            conn.execute(
                sa.text(
                    f"SELECT status, error, host, pid, code_version, finished_at IS NOT NULL FROM {t} WHERE id = :i"
                ),
                {"i": i},
            ).one()
            for t, i in (("pipeline_run", pipeline), ("training_run", training))
        ]
    assert rows[0] == rows[1] and rows[0][:2] == ("failed", "boom") and rows[0][5]
    assert rows[0][2:4] == (runs.owner_values()["host"], runs.owner_values()["pid"])


def test_no_other_module_writes_template_versions_or_vectors():
    """The statements that write versions, pointers and vectors live in the one home of each."""
    root = Path(__file__).resolve().parents[2]
    homes = {
        "INSERT INTO template_version": "kb/template_writes.py",
        "SET current_version_no": "kb/template_writes.py",
        "INSERT INTO template_embedding": "kb/template_vectors.py",
        "insert(TemplateEmbedding": "kb/template_vectors.py",
        "insert(Trajectory": "pipelines/trajectories_store.py",
    }
    paths = [*root.glob("kb/**/*.py"), *root.glob("pipelines/**/*.py"), *root.glob("serve/**/*.py")]
    assert len(paths) > 50  # the product packages were found (a wrong root would pass vacuously)
    for path in paths:
        rel = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        for statement, home in homes.items():
            assert rel == home or statement not in text, f"{rel} writes with {statement!r} itself; use {home}"

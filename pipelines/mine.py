"""Template mining: solved problems (reference solutions, solved solve sessions) -> thought templates.

Per unit (one solved problem or one successful solve session) the LLM writes a template in our schema;
the reply is parsed strictly (pipelines.parsing) and, when it does not parse, the model is told what was
wrong and asked again, at most `max_retries` times; every failed attempt is recorded with its raw output.

Deduplication against the live KB, at write time (inside the unit's transaction, so concurrent workers
see each other's templates): the candidate is embedded with the KB's embedding model, from the same text
as every stored version (kb.template_vectors.content_views: never the worked example), and compared with
the current versions. Cosine similarity >= IDENTICAL: dropped as identical. A template with the same
name (>= SAME_NAME) or any template >= SAME_TEMPLATE: the candidate becomes its new version. Otherwise:
a new template. Every mined version's provenance names its problems, session and run.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from kb import config as kb_config
from kb.db import Database
from kb.embeddings import get_embedder
from kb.errors import ConflictError
from kb.models._common import vector_param
from kb.template_vectors import content_views, store_vectors, text_hash
from kb.templates import TemplateSpec, content_hash, create_template, edit_template
from pipelines.embed import embed_new_templates, embed_templates
from pipelines.llm.base import Backend, ChatRequest, SamplingParams
from pipelines.llm.calls import LoggedBackend
from pipelines.llm.config import RoleConfig, backend_for, describe_role
from pipelines.parsing import TEMPLATE_SCHEMA, MinedTemplate, ParseError, parse_template
from pipelines.prompts import Prompts
from pipelines.runner import Outcome, Unit, run_stage
from pipelines.selection import PROBLEM_KEYS, parse_selection, select_problem_ids

STAGE = "mine"
IDENTICAL_SIMILARITY = 0.97
SAME_TEMPLATE_SIMILARITY = 0.88
SAME_NAME_SIMILARITY = 0.70
NAME_MATCH_RATIO = 0.85
SECTION = "Mined"
DEFAULT_CATEGORY = "Mined"
DEFAULT_SAMPLING = SamplingParams(temperature=0.0, max_tokens=1024)


def mining_units(conn: sa.Connection, selection: str) -> list[tuple[str, dict[str, Any]]]:
    """Selected problems with a reference solution, and successful solve sessions on selected problems."""
    ids = select_problem_ids(conn, parse_selection(selection, PROBLEM_KEYS))
    rows = conn.execute(
        sa.text("""
        SELECT 'problem:' || p.id AS key, p.id AS problem_id, NULL::int AS session_id FROM problem p
        WHERE p.id = ANY(:ids) AND coalesce(p.solution, '') <> ''
        UNION ALL
        SELECT 'session:' || s.id, s.problem_id, s.id FROM solve_session s
        WHERE s.problem_id = ANY(:ids) AND s.status = 'solved' AND s.correct IS TRUE
        ORDER BY 2, 3 NULLS FIRST"""),
        {"ids": ids},
    ).all()
    return [(r.key, {"problem_id": r.problem_id, "session_id": r.session_id}) for r in rows]


@dataclass
class Candidate:
    unit_key: str
    template: MinedTemplate
    vector: list[float] | None  # None: identical to a stored version, nothing to write
    text_hash: str
    problem_id: int
    session_id: int | None
    subject: str | None


class MineHandler:
    stage = STAGE

    def __init__(
        self,
        db: Database,
        run_id: int,
        role: RoleConfig | Backend,
        *,
        max_retries: int = 2,
        sampling: SamplingParams = DEFAULT_SAMPLING,
        prompts_dir: str | None = None,
        embed_model: str | None = None,
    ):
        self.db, self.run_id = db, run_id
        self.backend = LoggedBackend(backend_for(role), db, run_id, STAGE)
        self.max_retries, self.sampling = max_retries, sampling
        self.prompts = Prompts(prompts_dir)
        self.embed_model = kb_config.embed_model_name(embed_model)

        get_embedder(self.embed_model)  # load it before the first claim, not while holding units

    def _sources(self, units: list[Unit]) -> dict[int, dict[str, Any]]:
        """Per unit id: problem text, the solution to mine (reference or the session's rounds), answer."""
        with self.db.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.text("""
                SELECT u.id AS unit_id, p.id AS problem_id, p.text, p.answer, p.subject,
                       CASE WHEN u.session_id IS NULL THEN p.solution ELSE (
                           SELECT string_agg(coalesce(r.step_text, '') || E'\n' || coalesce(r.instantiation, ''),
                                             E'\n\n' ORDER BY r.round_no)
                           FROM solve_round r WHERE r.session_id = u.session_id) END AS solution,
                       u.session_id
                FROM unnest(CAST(:uids AS bigint[]), CAST(:pids AS int[]), CAST(:sids AS int[]))
                     AS u(id, problem_id, session_id)
                JOIN problem p ON p.id = u.problem_id"""),
                    {
                        "uids": [u.id for u in units],
                        "pids": [u.payload["problem_id"] for u in units],
                        "sids": [u.payload.get("session_id") for u in units],
                    },
                )
                .mappings()
                .all()
            )
        return {r["unit_id"]: dict(r) for r in rows}

    def process(self, units: list[Unit]) -> list[Outcome]:
        sources = self._sources(units)
        convs = {
            u.id: self.prompts.messages(
                "mine", problem=s["text"], solution=s["solution"], answer=s["answer"] or "(not given)"
            )
            for u in units
            if (s := sources.get(u.id)) and (s["solution"] or "").strip()
        }
        parsed: dict[int, MinedTemplate] = {}
        failures: dict[int, list[dict[str, Any]]] = {u.id: [] for u in units}
        pending = [u for u in units if u.id in convs]
        for attempt in range(1, self.max_retries + 2):
            if not pending:
                break
            reqs = [
                ChatRequest(
                    convs[u.id],
                    self.sampling,
                    tags={"unit": u.key, "attempt": attempt},
                    response_schema=TEMPLATE_SCHEMA,
                )
                for u in pending
            ]
            comps = self.backend.generate(reqs)
            errors = [c.error for c in comps if c.error]
            if errors:  # the backend, not the model's output: the runner retries the units (bounded)
                raise RuntimeError(f"LLM backend failed: {errors[0]}")
            retry = []
            for u, c in zip(pending, comps):
                try:
                    parsed[u.id] = parse_template(c.text)
                except ParseError as e:
                    failures[u.id].append(
                        {"reason": f"attempt {attempt}: {e.reason}", "raw_output": c.text, "attempt": attempt}
                    )
                    convs[u.id] = self.prompts.repair("mine", convs[u.id], c.text, e.reason)
                    retry.append(u)
            pending = retry
        known = self._already_stored(parsed)
        vectors = self._embed([parsed[u.id] for u in units if u.id in parsed and u.id not in known])
        outcomes = []
        for u in units:
            src = sources.get(u.id)
            if u.id not in convs:
                outcomes.append(
                    Outcome(
                        status="failed",
                        failures=[
                            {"reason": "nothing to mine: the problem or its solution is gone", "attempt": 0}
                        ],
                    )
                )
            elif u.id in parsed:
                vec, h = vectors.pop(0) if u.id not in known else (None, "")
                outcomes.append(
                    Outcome(
                        data=Candidate(
                            unit_key=u.key,
                            template=parsed[u.id],
                            vector=vec,
                            text_hash=h,
                            problem_id=src["problem_id"],
                            session_id=src["session_id"],
                            subject=src["subject"],
                        ),
                        failures=failures[u.id],
                    )
                )
            else:
                failures[u.id][-1]["reason"] += f" (gave up after {self.max_retries + 1} attempts)"
                outcomes.append(Outcome(status="failed", failures=failures[u.id]))
        return outcomes

    def _already_stored(self, parsed: dict[int, MinedTemplate]) -> set[int]:
        """Units whose candidate is byte for byte a current version (same content hash): no need to embed."""
        if not parsed:
            return set()
        hashes = {
            uid: content_hash(TemplateSpec(category="-", **t.content()).content())
            for uid, t in parsed.items()
        }
        with self.db.engine.connect() as conn:
            stored = set(
                conn.execute(
                    sa.text(
                        "SELECT v.content_hash FROM template t JOIN template_version v ON v.id = t.current_version_id "
                        "WHERE v.content_hash = ANY(:h)"
                    ),
                    {"h": list(set(hashes.values()))},
                ).scalars()
            )
        return {uid for uid, h in hashes.items() if h in stored}

    def _embed(self, templates: list[MinedTemplate]) -> list[tuple[list[float], str]]:
        """Each candidate's vector and text hash, made from the one embedded text of a version
        (kb.template_vectors.content_views): a candidate is compared with stored versions like with like,
        and its vector, once written with its version, is the one the embed stage would make."""
        if not templates:
            return []

        views = [content_views(t.content()) for t in templates]
        vecs = get_embedder(self.embed_model).encode_views(views)
        return [(list(map(float, v)), text_hash(vs)) for v, vs in zip(vecs, views)]

    # ------------------------------------------------------------ write: dedupe, then version or create

    def _neighbours(self, conn: sa.Connection, cand: Candidate) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in conn.execute(
                sa.text("""
            (SELECT t.id AS template_id, v.id AS version_id, v.name, v.content_hash,
                    1 - (e.embedding <=> CAST(:q AS vector)) AS similarity
             FROM template t JOIN template_version v ON v.id = t.current_version_id
             JOIN template_embedding e ON e.version_id = v.id AND e.model = :m
             ORDER BY e.embedding <=> CAST(:q AS vector) LIMIT 5)
            UNION
            (SELECT t.id, v.id, v.name, v.content_hash,
                    coalesce(1 - (e.embedding <=> CAST(:q AS vector)), 0)
             FROM template t JOIN template_version v ON v.id = t.current_version_id
             LEFT JOIN template_embedding e ON e.version_id = v.id AND e.model = :m
             WHERE lower(v.name) = lower(:name))
            ORDER BY similarity DESC""").bindparams(vector_param("q")),
                {"q": cand.vector, "m": self.embed_model, "name": cand.template.name},
            ).mappings()
        ]

    def _match(self, cand: Candidate, neighbours: list[dict[str, Any]]) -> dict[str, Any] | None:
        name = cand.template.name.lower()
        for n in neighbours:
            same_name = difflib.SequenceMatcher(None, name, n["name"].lower()).ratio() >= NAME_MATCH_RATIO
            if same_name and n["similarity"] >= SAME_NAME_SIMILARITY:
                return n
        best = neighbours[0] if neighbours else None
        return best if best and best["similarity"] >= SAME_TEMPLATE_SIMILARITY else None

    def write(self, conn: sa.Connection, unit: Unit, outcome: Outcome, run_id: int) -> dict[str, int]:
        cand: Candidate = outcome.data
        if cand.vector is None:  # exactly the content of a current version: nothing to embed or write
            return {"templates_identical": 1}
        match = self._match(cand, self._neighbours(conn, cand))
        provenance = {
            "problems": [cand.problem_id],
            "session_id": cand.session_id,
            "run_id": run_id,
            "model": self.backend.model,
            "prompt_hash": self.prompts.hash("mine"),
            "matched_version_id": match["version_id"] if match else None,
            "similarity": round(float(match["similarity"]), 4) if match else None,
        }
        source = {
            "source_kind": "run",
            "source_ref": f"run:{run_id}/{unit.key}",
            "provenance": provenance,
            "run_id": run_id,
        }
        # The session works inside the unit's transaction: its commit releases a savepoint, nothing more.
        session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            if match is not None and match["similarity"] >= IDENTICAL_SIMILARITY:
                return {"templates_identical": 1}
            if match is not None:
                changes = {k: v for k, v in cand.template.content().items() if k != "name"}
                version, changed = edit_template(
                    session, match["template_id"], changes, change_note=f"mined from {unit.key}", **source
                )
                if not changed:
                    return {"templates_identical": 1}
                result = {"templates_versioned": 1}
            else:
                version = self._create(session, cand, source)
                result = {"templates_created": 1}
            session.commit()
        finally:
            session.close()
        store_vectors(
            conn, self.embed_model, len(cand.vector), [(version.id, cand.text_hash, cand.vector)], run_id
        )
        return result

    def _create(self, session: Session, cand: Candidate, source: dict[str, Any]):
        spec = TemplateSpec(
            category=cand.subject or DEFAULT_CATEGORY, section=SECTION, **cand.template.content()
        )
        try:
            return create_template(session, spec, change_note=f"mined from {source['source_ref']}", **source)
        except ConflictError:  # same name in the category, different method: keep both, told apart
            spec = replace(spec, name=f"{spec.name} (problem {cand.problem_id})")
            return create_template(session, spec, change_note=f"mined from {source['source_ref']}", **source)


def make_handler(db: Database, run_id: int, **options: Any) -> MineHandler:
    return MineHandler(db, run_id, **options)


def mine(
    db: Database,
    problems: str,
    role: RoleConfig | Backend,
    *,
    workers: int = 1,
    batch_size: int = 4,
    max_retries: int = 2,
    sampling: SamplingParams = DEFAULT_SAMPLING,
    prompts_dir: str | None = None,
    embed_model: str | None = None,
    retry_failed: bool = False,
    lease_s: float | None = None,
    max_attempts: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Mine templates from the selected solved problems; returns the run's counts."""
    embed_templates(db, embed_model)  # the KB side of deduplication; a no-op when vectors are current
    with db.engine.connect() as conn:
        units = mining_units(conn, problems)
    prompts = Prompts(prompts_dir)
    params = {
        "problems": parse_selection(problems, PROBLEM_KEYS).to_dict(),
        "llm": describe_role(role),
        "sampling": sampling.to_dict(),
        "max_retries": max_retries,
        "prompt_hash": prompts.hash("mine"),
        "embed_model": kb_config.embed_model_name(embed_model),
    }
    factory = functools.partial(
        make_handler,
        role=role,
        max_retries=max_retries,
        sampling=sampling,
        prompts_dir=prompts_dir,
        embed_model=embed_model,
    )
    extra = {k: v for k, v in (("lease_s", lease_s), ("max_attempts", max_attempts)) if v is not None}
    counts = run_stage(
        db,
        stage=STAGE,
        params=params,
        units=units,
        factory=factory,
        workers=workers,
        batch_size=batch_size,
        retry_failed=retry_failed,
        progress=progress,
        counters=("templates_created", "templates_versioned", "templates_identical"),
        **extra,
    )
    # The mined versions already hold their vector for EMBED_MODEL (the canonical text and hash, so the
    # embed stage keeps them); every other model the KB holds vectors for gets them here (no version
    # drops out of search).
    counts["embedded"] = embed_new_templates(db, run_id=counts["run_id"], model=embed_model)
    return counts

"""Exports: DPO pairs, SFT template data, templates and problems as immutable dataset versions.

Every export reads one selection in id order and builds Arrow tables with fixed
schemas; kb.datasets writes them (fixed Parquet options), hashes them, records the
version and writes the manifest and card. The same selection twice gives the same
bytes and the same version id.

DPO rows follow TRL's conversational preference format and the navigator contract
(`pipelines.navigator`): `prompt` is exactly the plan request the solver sends for the
problem (with the hints the chosen trajectory was sampled with), `chosen` / `rejected`
are one assistant message each holding the reply that stands for the trajectory
(`render_plan`), which the solver's parser accepts. SFT rows are the paper's first
stage (template name and tags -> description and application scope) plus, unless
turned off, plan examples: the best-rewarded trajectories of train-split problems as
(plan request -> plan reply) conversations in the same contract.

This module is the entry point (`export`) and the templates and problems parts; the DPO part is
`pipelines.export_dpo`, the SFT part `pipelines.export_sft`, trajectories as contract conversations
`pipelines.export_conversations`, the columnar reads `pipelines.export_columns`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlmodel import Session

from kb.dataset_write import check_output_dir, write_dataset
from kb.datasets import DataPart, ExportSpec, check_license
from kb.db import Database
from kb.errors import InputError
from kb.models import Template, TemplateVersion
from kb.runs import pipeline_run
from kb.template_jsonl import template_record
from pipelines import export_llamafactory, licences
from pipelines.export_dpo import DPO_USAGE, dpo_part, resolve_pairs
from pipelines.export_sft import sft_part
from pipelines.selection import PROBLEM_KEYS, parse_selection, select_problem_ids

KINDS = ("dpo", "sft", "templates", "problems")


def template_records(conn) -> list[dict[str, Any]]:
    """Current versions of all templates, as the template interchange records (template_record)."""
    with Session(bind=conn) as s:
        pairs = s.execute(
            sa.select(Template, TemplateVersion)
            .join(TemplateVersion, TemplateVersion.id == Template.current_version_id)
            .order_by(Template.id)
        ).all()
        return [template_record(t, v) for t, v in pairs]


TEMPLATE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("name", pa.string()),
        ("category", pa.string()),
        ("section", pa.string()),
        ("template_type", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("description", pa.string()),
        ("application_scope", pa.string()),
        ("steps", pa.string()),
        ("example_problem", pa.string()),
        ("example_solution", pa.string()),
        ("example_answer", pa.string()),
        ("extra", pa.string()),
        ("status", pa.string()),
    ]
)


def templates_part(conn) -> DataPart:
    records = template_records(conn)
    # steps and extra are free-form JSON: stored as JSON text so the Parquet schema is fixed.
    flat = [
        {
            **{f.name: r.get(f.name) for f in TEMPLATE_SCHEMA},
            "steps": json.dumps(r.get("steps"), ensure_ascii=False, sort_keys=True),
            "extra": json.dumps(r.get("extra"), ensure_ascii=False, sort_keys=True),
        }
        for r in records
    ]
    table = pa.Table.from_pylist(flat, schema=TEMPLATE_SCHEMA)
    return DataPart(
        "templates",
        table,
        records=lambda: records,
        description=(
            "Current version of every template. JSONL lines are exactly the template interchange records "
            "(`reasonflux import jsonl` reads them back); in Parquet, `steps` and `extra` are JSON text."
        ),
    )


PROBLEM_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("text", pa.string()),
        ("solution", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("split", pa.string()),
        ("subject", pa.string()),
        ("difficulty", pa.int64()),
        ("content_hash", pa.string()),
        ("extra", pa.string()),
    ]
)


def problems_part(conn, selection: str | None) -> DataPart:
    ids = select_problem_ids(conn, selection)
    rows = (
        conn.execute(
            sa.text(
                "SELECT id, text, solution, answer, source, source_id, split, subject, difficulty, content_hash, extra "
                "FROM problem WHERE id = ANY(:ids) ORDER BY id"
            ),
            {"ids": ids},
        )
        .mappings()
        .all()
    )
    flat = [{**r, "extra": json.dumps(r["extra"], ensure_ascii=False, sort_keys=True)} for r in rows]
    return DataPart(
        "problems",
        pa.Table.from_pylist(flat, schema=PROBLEM_SCHEMA),
        description=(
            "Problems with reference solution and answer, in id order; `extra` holds the source's other fields "
            "as JSON text."
        ),
    )


# ---- entry point ------------------------------------------------------------------------------------------

# Hub card metadata per kind: task categories and extra tags.
HUB_METADATA = {
    "dpo": (("text-generation",), ("dpo", "preference")),
    "sft": (("text-generation",), ("sft",)),
    "templates": (("text-generation",), ("template-library",)),
    "problems": (("question-answering", "text-generation"), ("math-word-problems",)),
}


def _source_ids(conn, kind: str, table: pa.Table) -> dict[str, list]:
    """What `pipelines.licences.sources` needs to find the sources of an export of KIND with rows TABLE."""

    def ids(column: str) -> list:  # distinct: a million-pair export has far fewer problems
        return pc.unique(table[column]).to_pylist()

    if kind == "dpo":
        return {"problems": ids("problem_id"), "trajectories": ids("chosen_trajectory_id")}
    if kind == "sft":
        return {"versions": ids("version_id"), "trajectories": ids("trajectory_id")}
    if kind == "templates":
        return {"versions": conn.execute(sa.text("SELECT current_version_id FROM template")).scalars().all()}
    return {"problems": ids("id")}


def _license_note(given: str | None, found: list[dict[str, Any]]) -> str:
    sources = licences.describe(found) or "none"
    if given is not None:
        return f"(given by the exporter; the sources: {sources})"
    if any(s["license"] for s in found):
        return f"(the licence recorded for every source: {sources})"
    return f"(no licence is recorded for any source: {sources})"


def export(
    db: Database,
    kind: str,
    out_dir: str | Path,
    *,
    formats: tuple[str, ...] = ("parquet",),
    pairs: str | None = None,
    min_margin: float = 0.0,
    problems: str | None = None,
    templates: bool = True,
    plans: bool = True,
    plan_min_reward: float = 0.75,
    plans_per_problem: int = 1,
    allow_mixed_contracts: bool = False,
    license: str | None = None,
) -> dict[str, Any]:
    """Write one dataset version of KIND into OUT_DIR; returns the manifest (plus its path).

    dpo: PAIRS (params hash or prefix; default the latest) with margin >= MIN_MARGIN. sft: (TEMPLATES) template
    rows plus, with PLANS, plan examples of trajectories with reward >= PLAN_MIN_REWARD (PLANS_PER_PROBLEM per problem).
    Trajectories sampled under different navigator contracts are refused unless ALLOW_MIXED_CONTRACTS.
    FORMATS: parquet and/or jsonl, or llamafactory (Parquet plus the LLaMA-Factory copy, sft and dpo).
    LICENSE: the Hub licence id written into the card and recorded with the version; None: the licence the
    data's sources agree on (`pipelines.licences`), refused (InputError) when they do not.
    """
    formats, extra_files = _check_request(kind, formats, license)
    check_output_dir(out_dir)
    options = {
        "pairs": pairs,
        "min_margin": min_margin,
        "problems": problems,
        "templates": templates,
        "plans": plans,
        "plan_min_reward": plan_min_reward,
        "plans_per_problem": plans_per_problem,
        "allow_mixed_contracts": allow_mixed_contracts,
    }
    with pipeline_run(db, "export", {"kind": kind, "out": str(out_dir), "formats": list(formats)}) as (
        run_id,
        counts,
    ):
        with db.engine.begin() as conn:
            conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            part, params, intro, usage = _build_part(conn, kind, options)
            found = licences.sources(conn, **_source_ids(conn, kind, part.table))
        task_categories, tags = HUB_METADATA[kind]
        spec = ExportSpec(
            kind=kind,
            params=params,
            parts=[part],
            formats=tuple(sorted(formats, reverse=True)),
            card_intro=intro,
            usage=usage,
            license=license if license is not None else licences.choose(found),
            task_categories=task_categories,
            tags=tags,
            extra_files=extra_files,
            license_note=_license_note(license, found),
            extra_manifest={"license_sources": found, "license_given": license is not None},
        )
        manifest = write_dataset(db, spec, out_dir, run_id=run_id)
        counts.update(dataset_version=manifest["id"], rows=part.table.num_rows)
    return manifest


def _check_request(kind: str, formats: tuple[str, ...], license: str | None) -> tuple[tuple[str, ...], list]:
    """Refuse an unknown KIND, FORMATS or LICENSE; the data formats to write and the extra file writers."""
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if not formats or set(formats) - {"parquet", "jsonl", "llamafactory"}:
        raise InputError("formats are parquet and/or jsonl, or llamafactory", field="--format")
    if "llamafactory" in formats and kind not in export_llamafactory.KINDS:
        raise InputError(
            f"the llamafactory format is for {' and '.join(export_llamafactory.KINDS)} exports",
            field="--format",
        )
    check_license(license)
    extra_files = [export_llamafactory.writer] if "llamafactory" in formats else []
    return tuple(f for f in formats if f != "llamafactory") or ("parquet",), extra_files


def _build_part(conn, kind: str, o: dict[str, Any]) -> tuple[DataPart, dict[str, Any], str, str]:
    """The data part of KIND (options O as export() takes them), its recorded params, card intro and usage."""
    if kind == "dpo":
        phash = resolve_pairs(conn, o["pairs"])
        part, contracts = dpo_part(conn, phash, o["min_margin"], allow_mixed=o["allow_mixed_contracts"])
        params = {
            "pairs": phash,
            "min_margin": float(o["min_margin"]),
            "split": "train",
            "contracts": contracts,
        }
        return part, params, "DPO pairs of navigator trajectories.", DPO_USAGE
    if kind == "sft":
        part, mix = sft_part(
            conn,
            templates=o["templates"],
            plans=o["plans"],
            min_reward=o["plan_min_reward"],
            per_problem=o["plans_per_problem"],
            allow_mixed=o["allow_mixed_contracts"],
        )
        params = {"templates": "current", "status": "active", "mix": mix}
        return part, params, "SFT data for template knowledge and planning (ReasonFlux stage 1).", ""
    if kind == "templates":
        params = {"templates": "current", "status": "any"}
        return templates_part(conn), params, "The thought-template library.", ""

    params = {"problems": parse_selection(o["problems"], PROBLEM_KEYS).to_dict()}
    return problems_part(conn, o["problems"]), params, "Problems.", ""

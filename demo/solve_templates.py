"""Four templates in the KB, embedded: what the solver tests, the sessions and HTTP tests and benchmarks/serve.py
(without ../shared/data) solve with."""

from __future__ import annotations

from kb.templates import TemplateSpec, create_template
from pipelines.embed import embed_templates

TEMPLATES = [
    (
        "Sequences",
        "Arithmetic",
        "Arithmetic series sum",
        "Sum of an arithmetic sequence with first term and common difference",
        ["Find first term a and difference d", "Use S = n/2 (2a + (n-1) d)"],
        ["sequence"],
    ),
    (
        "Sequences",
        "Arithmetic",
        "Telescoping sum",
        "Cancel consecutive terms of a sum whose terms are differences",
        ["Write each term as f(k+1) - f(k)", "Cancel the middle terms"],
        ["sequence", "sum"],
    ),
    (
        "Algebra",
        "Equations",
        "Quadratic formula",
        "Solve a quadratic equation ax^2+bx+c=0 with the formula",
        ["Compute the discriminant", "Apply x = (-b ± sqrt(D)) / 2a"],
        ["quadratic"],
    ),
    (
        "Algebra",
        "Equations",
        "Vieta's formulas",
        "Relate the roots of a polynomial to its coefficients",
        ["Sum of roots is -b/a", "Product of roots is c/a"],
        ["quadratic", "roots"],
    ),
]


def add_templates(db) -> dict[str, int]:
    ids = {}
    with db.session() as s:
        for cat, sec, name, desc, steps, tags in TEMPLATES:
            v = create_template(
                s,
                TemplateSpec(
                    name=name,
                    category=cat,
                    section=sec,
                    description=desc,
                    steps=steps,
                    tags=tags,
                    application_scope=desc,
                ),
            )
            ids[name] = v.id
        s.commit()
    embed_templates(db)
    return ids

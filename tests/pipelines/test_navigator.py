"""The navigator contract's renderer: the reply text is json.dumps's, whatever the strings hold."""

from __future__ import annotations

import json

import pytest

from pipelines import navigator

AWKWARD = [
    "plain",
    'a "quoted" word',
    "back\\slash",
    "tab\tand\nnewline",
    "ctrl \x00\x01\x1f\x7f",
    "sep\u2028\u2029",
    "éàü",
    "漢字",
    "emoji 🙂",
    "lone \ud800 surrogate",
    "",
    "  ",
    '{"json": [1, 2]}',
    "</script>",
]


def _reference(abstraction, steps):
    return json.dumps(
        {"abstraction": abstraction, "trajectory": [{"step": t, "template": n} for t, n in steps]},
        ensure_ascii=False,
    )


@pytest.mark.parametrize("abstraction", AWKWARD)
def test_render_plan_is_json_dumps_of_the_plan(abstraction):
    for steps in ([], [(AWKWARD[1], AWKWARD[2])], list(zip(AWKWARD, reversed(AWKWARD)))):
        assert navigator.render_plan(abstraction, steps) == _reference(abstraction, steps)
        assert navigator.render_plan(abstraction, iter(steps)) == _reference(
            abstraction, steps
        )  # any iterable


def test_render_plan_of_non_strings_is_still_json_dumps():
    steps = [(1, None), ("x", 2.5)]
    assert navigator.render_plan(None, steps) == _reference(None, steps)


def test_a_rendered_plan_parses_back_to_the_same_plan():
    steps = [('Split each term "1/(k(k+1))"', "Telescoping sum"), ("Sum what is left", "Cancellation é")]
    plan = navigator.parse_plan(navigator.render_plan("A telescoping sum.", steps))
    assert plan.abstraction == "A telescoping sum." and [(s.text, s.template) for s in plan.steps] == steps

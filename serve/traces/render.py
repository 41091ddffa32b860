"""Solve traces, rendered for people: a stored session as a step-by-step text, a live event as one line."""

from __future__ import annotations

import textwrap
from typing import Any

from serve.solve_events import RoundFinished, SessionDone, SolveEvent, total_tokens

ROLES = ("navigator", "inference")


def _clip(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _indent(text: str, prefix: str = "    ", width: int = 100) -> str:
    return (
        "\n".join(
            textwrap.fill(line, width=width, initial_indent=prefix, subsequent_indent=prefix) or prefix
            for line in (text or "").strip().splitlines()
        )
        or prefix + "(empty)"
    )


def _role_tokens(tokens: dict[str, Any]) -> str:
    parts = []
    for role in ROLES:
        t = tokens.get(role)
        if t:
            parts.append(
                f"{role} {int(t.get('prompt', 0))}+{int(t.get('completion', 0))} tokens "
                f"in {int(t.get('calls', 0))} calls, {t.get('latency_ms', 0) / 1000:.2f} s"
            )
    return "; ".join(parts) or "none"


def _template_line(adj: dict[str, Any], retrieved: list[dict[str, Any]]) -> str:
    used = adj.get("template")
    if not used:
        return "  Template: none found in the library (the step ran without one)"
    line = (
        f"  Template: {used.get('key') or used.get('name')} (version id {used['version_id']}, "
        f'score {used.get("score", 0):.3f}) for "{adj.get("query", "")}"'
    )
    others = [f"{h.get('name')} ({h.get('score', 0):.3f})" for h in retrieved if not h.get("used")]
    if others:
        line += "\n  Also retrieved: " + ", ".join(others)
    if adj.get("excluded"):
        line += (
            f"\n  Skipped (tried before for this step): version ids {', '.join(map(str, adj['excluded']))}"
        )
    return line


def _change_lines(adj: dict[str, Any]) -> list[str]:
    lines = []
    for c in adj.get("changes", []):
        if c["op"] == "change":
            what = f'template -> "{c.get("template")}"'
            if c.get("text"):
                what += f', text -> "{_clip(c["text"], 80)}"'
            lines.append(f"    changed step {c['step']}: {what}")
        elif c["op"] == "insert":
            lines.append(
                f'    inserted after step {c["step"]}: "{_clip(c.get("text"), 80)}" '
                f'(template "{c.get("template")}")'
            )
        else:
            lines.append(f'    removed step {c["step"]}: "{_clip(c.get("removed_text"), 80)}"')
    return lines


def _trajectory_lines(steps: list[dict[str, Any]], prefix: str = "    ") -> list[str]:
    return [
        f"{prefix}{i}. {_clip(s.get('text'), 90)} [template: {s.get('template')}]"
        for i, s in enumerate(steps, 1)
    ]


def _render_round(r: dict[str, Any]) -> list[str]:
    adj = r.get("adjustment") or {}
    kind = r["kind"]
    if kind == "plan":
        lines = [f"Round {r['round_no']} · plan"]
        if adj.get("abstraction"):
            lines.append(f"  Abstraction: {_clip(adj['abstraction'], 200)}")
            lines.append("  Trajectory:")
            lines += _trajectory_lines(adj.get("trajectory", []))
    elif kind == "final":
        lines = [f"Round {r['round_no']} · final", f"  {r.get('evaluation') or ''}"]
        return lines
    else:
        lines = [
            (
                f"Round {r['round_no']} · step {adj.get('step_no', '?')}/{adj.get('n_steps', '?')}: "
                f"{_clip(r.get('step_text'), 90)}"
            )
        ]
        if "query" in adj:
            lines.append(_template_line(adj, r.get("retrieved") or []))
        if r.get("instantiation") is not None:
            lines.append("  Result:")
            lines.append(_indent(_clip(r["instantiation"], 600)))
        if adj.get("verdict"):
            lines.append(f"  Navigator: {adj['verdict']} — {_clip(r.get('evaluation'), 200)}")
            lines += _change_lines(adj)
            if adj.get("changes"):
                lines.append("  Trajectory now:")
                lines += _trajectory_lines(adj.get("trajectory", []))
            if adj.get("answer"):
                lines.append(f"  Answer given: {adj['answer']}")
    if adj.get("parse_errors"):
        lines.append(
            f"  Unparseable navigator replies: {len(adj['parse_errors'])} "
            f"(last: {_clip(adj['parse_errors'][-1], 150)})"
        )
    if adj.get("error"):
        lines.append(f"  Ended here: {adj['error']}")
    t = r.get("tokens") or {}
    lines.append(f"  ({total_tokens(t)} tokens, {r.get('latency_ms', 0) / 1000:.2f} s)")
    return lines


def render_trace(session: dict[str, Any]) -> str:
    """A session as a readable step-by-step trace: which template, why, what changed."""
    cfg = session.get("config") or {}
    nav, inf = cfg.get("navigator", {}), cfg.get("inference", {})
    correct = {True: " (correct)", False: f" (wrong; reference {session.get('reference_answer')})"}.get(
        session.get("correct"), ""
    )
    head = [
        (
            f"Session {session['id']} · {session['status']} · {session.get('rounds', 0)} rounds · "
            f"{(session.get('latency_ms') or 0) / 1000:.2f} s"
        ),
        f"Problem: {_clip(session.get('problem_text'), 400)}",
        (
            f"Navigator: {nav.get('backend')} ({nav.get('model')}); inference: {inf.get('backend')} "
            f"({inf.get('model')}){' — one shared instance' if cfg.get('shared_backend') else ''}"
        ),
        (
            f"Limits: {cfg.get('max_rounds')} rounds, {cfg.get('token_budget', cfg.get('max_tokens'))} tokens, "
            f"{cfg.get('max_seconds')} s; retrieval {cfg.get('retrieval_mode')} top {cfg.get('top_k')}"
        ),
        f"Tokens: {_role_tokens(session.get('tokens') or {})}",
        "",
    ]
    body = []
    for r in session.get("rounds_detail", []):
        body += _render_round(r) + [""]
    answer = session.get("final_answer")
    tail = [f"Final answer: {answer if answer is not None else '(none)'}{correct}"]
    if session.get("reason"):
        tail.append(f"Reason: {session['reason']}")
    return "\n".join(head + body + tail)


def event_line(event: SolveEvent) -> str | None:
    """One line for a live solver event (a finished round or the session's end), or None to show nothing."""
    if isinstance(event, RoundFinished) and event.kind == "plan":
        return _plan_line(event)
    if isinstance(event, RoundFinished) and event.kind == "step":
        return _step_line(event)
    if isinstance(event, SessionDone):
        r = event.result
        correct = {True: " (correct)", False: " (wrong)"}.get(r.correct, "")
        reason = f" — {r.reason}" if r.reason else ""
        return f"session {r.session_id} · {r.status} · answer {r.answer}{correct}{reason}"
    return None


def _plan_line(event: RoundFinished) -> str:
    adj = event.adjustment
    if adj.get("error"):
        return f"session {event.session_id} · plan failed: {adj['error']}"
    steps = "; ".join(f"{i}. {_clip(s.get('text'), 50)}" for i, s in enumerate(adj.get("trajectory", []), 1))
    return f"session {event.session_id} · plan: {steps}"


def _step_line(event: RoundFinished) -> str:
    adj = event.adjustment
    tpl = adj.get("template")
    line = (
        f"session {event.session_id} · round {event.round_no} · "
        f"step {adj.get('step_no')}/{adj.get('n_steps')} · "
        f"{tpl['name'] + ' (v' + str(tpl['version_id']) + ')' if tpl else 'no template'}"
    )
    if adj.get("verdict"):
        line += f" · {adj['verdict']}: {_clip(event.evaluation, 80)}"
        changes = [f"{c['op']} {c['step']}" for c in adj.get("changes", [])]
        if changes:
            line += f" [{', '.join(changes)}]"
    if adj.get("error"):
        line += f" · ended: {adj['error']}"
    return line

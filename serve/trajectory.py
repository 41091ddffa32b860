"""A session's trajectory as the solver walks it: its steps, the navigator's changes applied to them, and
the exceptions that end a session early."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.llm.base import Message
from pipelines.navigator import Change


class SessionEnd(Exception):
    """Ends a session early; `status` is limit or failed, the message is the recorded reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class NavigatorUnparseable(SessionEnd):
    """Every attempt at a navigator reply (or another JSON reply: the formatted answer) failed to parse;
    carries the last attempt for the trace."""

    def __init__(self, errors: list[str], messages: list[Message], raw: str, role: str = "navigator"):
        super().__init__("failed", f"{role} output unparseable after {len(errors)} attempts: {errors[-1]}")
        self.errors, self.messages, self.raw = errors, messages, raw


@dataclass
class Step:
    text: str
    template: str
    tried: list[int] = field(default_factory=list)  # version ids already used for this step

    def to_dict(self) -> dict[str, str]:
        return {"text": self.text, "template": self.template}


def apply_changes(
    steps: list[Step], current: int, changes: list[Change]
) -> tuple[list[Step], int, list[dict], str]:
    """(trajectory after CHANGES, index of the next step to run, the changes described, outcome).

    Step numbers are as shown (1-based). The current step is redone when changed ("redo"),
    dropped when removed ("removed"), accepted otherwise ("accepted"). Steps before it are
    done and (by the parser) never touched.
    """
    shown = list(steps)
    removed: set[int] = set()
    inserts: dict[int, list[Step]] = {}
    described = []
    changed_current = False
    for c in changes:
        target = shown[c.step - 1]
        if c.op == "change":
            target.template = c.template or target.template
            target.text = c.text or target.text
            changed_current |= c.step - 1 == current
            described.append(c.to_dict())
        elif c.op == "remove":
            removed.add(id(target))
            described.append(c.to_dict() | {"removed_text": target.text})
        else:
            inserts.setdefault(id(target), []).append(Step(text=c.text or "", template=c.template or ""))
            described.append(c.to_dict())
    new: list[Step] = []
    for s in shown:
        if id(s) not in removed:
            new.append(s)
        new.extend(inserts.get(id(s), []))
    if id(shown[current]) in removed:
        return new, current, described, "removed"
    if changed_current:
        return new, current, described, "redo"
    return new, current + 1, described, "accepted"

"""The prompts of the LLM stages: built in, overridable per file, versioned by content hash.

Each prompt is a system text and a user text with `$placeholders` (string.Template: JSON braces in a
prompt need no escaping). A prompts directory (`[prompts] dir` in the LLM config) may override any of
them with files `<name>.system.txt` / `<name>.user.txt`. What a run used is recorded as `prompt_hash`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from string import Template
from typing import Any

from pipelines.llm.base import Message

BUILTIN: dict[str, dict[str, str]] = {
    "mine": {
        "system": (
            "You distil reusable thought templates from solved competition math problems. A thought template "
            "is a general, high-level method that applies to a whole family of problems, not this problem's "
            "specific numbers. Reply with ONE JSON object and nothing else."
        ),
        "user": (
            "Problem:\n$problem\n\nReference solution:\n$solution\n\nFinal answer: $answer\n\n"
            "Write the thought template this solution uses, as a JSON object with exactly these keys:\n"
            '{"name": "short name of the method", "type": "technique | theorem | formula | strategy", '
            '"tags": ["topic", "..."], "description": "what the method is and why it works", '
            '"scope": "when to apply it: the features of a problem that call for it", '
            '"steps": ["general step 1", "general step 2", "..."], '
            '"example": {"problem": "...", "solution": "...", "answer": "..."}}'
        ),
        "repair": (
            "Your reply could not be used: $error\nReply again with ONE JSON object with exactly the keys "
            "name, type, tags, description, scope, steps, example (problem, solution, answer), and nothing else."
        ),
    },
    "navigator": {
        "system": (
            "You are the navigator of a hierarchical math reasoner. Abstract the problem, then plan a "
            "trajectory: an ordered list of high-level steps, each applying a thought template. Do not solve "
            "the problem. Reply with ONE JSON object and nothing else."
        ),
        "user": (
            "Problem:\n$problem\n\n$templates"
            "Reply as JSON: {\"abstraction\": \"what kind of problem this is, in general terms\", "
            "\"steps\": [{\"template\": \"name of the thought template\", \"action\": \"what this step does\"}, "
            "...]}"
        ),
    },
    "inference": {
        "system": (
            "You solve competition math problems by following a given plan step by step. Show your work "
            "briefly and put the final answer in \\boxed{}."
        ),
        "user": (
            "Problem:\n$problem\n\nPlan (problem type: $abstraction):\n$steps\n\n"
            "Follow the plan to solve the problem. End with the final answer in \\boxed{}."
        ),
    },
}


class Prompts:
    def __init__(self, directory: str | Path | None = None):
        self.texts = {name: dict(parts) for name, parts in BUILTIN.items()}
        if directory:
            for path in sorted(Path(directory).glob("*.txt")):
                name, _, part = path.stem.partition(".")
                if name in self.texts and part:
                    self.texts[name][part] = path.read_text()

    def hash(self, name: str) -> str:
        return hashlib.sha256(json.dumps(self.texts[name], sort_keys=True).encode()).hexdigest()[:12]

    def render(self, name: str, part: str, **values: Any) -> str:
        return Template(self.texts[name][part]).safe_substitute({k: str(v) for k, v in values.items()})

    def messages(self, name: str, **values: Any) -> list[Message]:
        return [{"role": "system", "content": self.render(name, "system", **values)},
                {"role": "user", "content": self.render(name, "user", **values)}]

    def repair(self, name: str, messages: list[Message], raw_output: str, error: str) -> list[Message]:
        """The conversation so far plus the bad reply and what was wrong with it."""
        return [*messages, {"role": "assistant", "content": raw_output[:4000]},
                {"role": "user", "content": self.render(name, "repair", error=error)}]


def format_template_hints(hits: list[Any]) -> str:
    """A few candidate templates for the navigator prompt (name and when it applies)."""
    if not hits:
        return ""
    lines = [f"- {h.name}: {(h.application_scope or h.description)[:200]}" for h in hits]
    return "Thought templates that may help:\n" + "\n".join(lines) + "\n\n"


def format_steps(steps: list[dict[str, Any]]) -> str:
    """Trajectory steps with the content of the template each one is linked to."""
    out = []
    for i, s in enumerate(steps, 1):
        line = f"{i}. {s['text']}"
        if s.get("template_name"):
            line += f"\n   Template: {s['template_name']}"
            if s.get("template_steps"):
                line += "\n   " + "\n   ".join(f"- {t}" for t in s["template_steps"][:8])
        out.append(line)
    return "\n".join(out)

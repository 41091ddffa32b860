"""The multi-round solver: plan, then per step retrieve -> instantiate -> evaluate -> adjust, until an answer.

    problem --navigator--> abstraction + trajectory [(step, template phrase), ...]
    for the current step:
        retrieve templates from the live KB (the version used is pinned in the trace)
        the inference LLM carries out the step with the template
        the navigator judges the result: continue | adjust (change the step's template,
        insert or remove steps) | stop (with the final answer)
    final answer: the navigator's, or extracted from the last accepted step's result
    (with an answer schema, as the serving API's response_format asks: restated as JSON by the inference LLM)

The navigator is asked and parsed through the navigator contract (`pipelines.navigator`), the same one
sampling and the exports use, so a navigator trained on this project's exports is asked what it learned.
Every navigator reply is parsed strictly and re-asked at most `parse_retries` times.
Rounds, tokens and wall time are bounded; whatever ends a session (answer, limit,
unparseable output, backend error) is recorded with its reason, and every round is
written to the trace as it finishes, and emitted as a typed event (serve.solve_events). One Solver serves
many concurrent `solve` calls: all per-session state lives in a `_Run` (its LLM calls in
serve.session_calls), and LLM calls go through per-backend micro-batchers so concurrent sessions reach
the model together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Self

from kb.db import Database
from kb.errors import InputError
from pipelines import navigator, prompts, step_retrieval
from pipelines.grader import GRADE_TIMEOUT_S, extract_answer, grade
from pipelines.llm.base import Backend
from pipelines.navigator import Evaluation, Plan
from pipelines.parsing import extract_json_object, validate
from serve.batching import Batcher, batchers_for
from serve.session_calls import SessionCalls
from serve.solve_events import (
    RoundFinished,
    SessionDone,
    SessionStarted,
    SolveEvent,
    SolveResult,
)
from serve.solver_config import SolverConfig
from serve.traces import store
from serve.trajectory import NavigatorUnparseable, SessionEnd, Step, apply_changes

log = logging.getLogger(__name__)

EventSink = Callable[[SolveEvent], None]


class Solver:
    """Solve problems against the live KB with a navigator and an inference backend (may be one instance)."""

    def __init__(
        self,
        db: Database,
        navigator: Backend,
        inference: Backend,
        config: SolverConfig | None = None,
        *,
        run_id: int | None = None,
        batch_window_ms: float = 10.0,
    ):
        self.db = db
        self.config = config or SolverConfig()
        self.run_id = run_id
        self.backends = {"navigator": navigator, "inference": inference}
        nav_b, inf_b = batchers_for(navigator, inference, window_ms=batch_window_ms)
        self.batchers: dict[str, Batcher] = {"navigator": nav_b, "inference": inf_b}
        self.shared_backend = nav_b is inf_b

    def describe_backends(self) -> dict[str, Any]:
        return {role: {"backend": b.name, "model": b.model} for role, b in self.batchers.items()}

    def describe(self, config: SolverConfig | None = None) -> dict[str, Any]:
        """The configuration recorded with each session."""
        return {
            **(config or self.config).to_dict(),
            **self.describe_backends(),
            "shared_backend": self.shared_backend,
        }

    def solve(
        self,
        problem: str,
        *,
        problem_id: int | None = None,
        reference: str | None = None,
        config: SolverConfig | None = None,
        on_event: EventSink | None = None,
        answer_schema: dict[str, Any] | None = None,
    ) -> SolveResult:
        """Run one session to its end (never raises for model behaviour; see SolveResult.status).

        With ANSWER_SCHEMA (a JSON schema whose root is an object) a solved session ends with one more
        inference call that restates the answer as JSON following it (`SolveResult.formatted`)."""
        if not problem or not problem.strip():
            raise InputError("must not be empty", field="problem")
        run = _Run(
            self, problem.strip(), config or self.config, problem_id, reference, on_event, answer_schema
        )
        with contextlib.ExitStack() as active:
            for b in {id(b): b for b in self.batchers.values()}.values():
                active.enter_context(b.session())
            return run.execute()

    def warm_up(self) -> None:
        """Load the embedding model and embed the library's template names now, not in sessions' rounds."""
        if self.config.retrieval_mode != "text":
            step_retrieval.prime_template_names(self.db)

    def close(self) -> None:
        for b in {id(b): b for b in self.batchers.values()}.values():
            b.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Run(SessionCalls):
    """One session's state, used by one thread."""

    def __init__(
        self,
        solver: Solver,
        problem: str,
        config: SolverConfig,
        problem_id: int | None,
        reference: str | None,
        on_event: EventSink | None,
        answer_schema: dict[str, Any] | None = None,
    ):
        super().__init__(solver, config)
        self.problem, self.answer_schema = problem, answer_schema
        self.problem_id, self.reference, self.on_event = problem_id, reference, on_event
        self.rounds = 0  # step rounds done
        self.round_no = 0
        self.templates: list[int] = []
        self.last_result: str | None = None
        self.accepted: list[tuple[str, str]] = []  # (step text, result) of accepted steps
        self.formatted: str | None = None
        self.format_error: str | None = None

    # ---------------------------------------------------------------- events and trace

    def emit(self, event: SolveEvent) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("solve event listener failed")

    def write_round(self, kind: str, finish: dict[str, Any] | None = None, **fields: Any) -> RoundFinished:
        done = RoundFinished(
            session_id=self.session_id,
            round_no=self.round_no,
            kind=kind,
            tokens=self._round_tokens,
            latency_ms=(time.monotonic() - self._round_t0) * 1000,
            **fields,
        )
        store.write_round(
            self.s.db,
            self.session_id,
            done.row(),
            self._pending_calls,
            self._pending_failures,
            rounds=self.rounds,
            tokens=self.tokens,
            run_id=self.s.run_id,
            finish=finish,
        )
        self._pending_calls, self._pending_failures, self._round_tokens = [], [], {}
        self.emit(done)
        self.round_no += 1
        self._round_t0 = time.monotonic()
        return done

    # ---------------------------------------------------------------- retrieval

    def retrieve(self, step: Step) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[int]]:
        """Top templates for the step; the best one not yet tried for it is used (its version pinned)."""
        k = self.cfg.top_k + len(step.tried)
        hits = [
            h.to_dict()
            for h in step_retrieval.search_step(
                self.s.db, step.template, step.text, k=k, mode=self.cfg.retrieval_mode
            )
        ]
        chosen = next((h for h in hits if h["version_id"] not in step.tried), hits[0] if hits else None)
        skipped = [h["version_id"] for h in hits if h["version_id"] in step.tried and h is not chosen]
        shown = [h for h in hits if h["version_id"] not in skipped][: self.cfg.top_k]
        if chosen is not None and chosen not in shown:
            shown = [chosen, *shown[: self.cfg.top_k - 1]]
        return shown, chosen, skipped

    # ---------------------------------------------------------------- the loop

    def execute(self) -> SolveResult:
        s = self.s
        self.session_id = store.create_session(
            s.db,
            self.problem,
            s.describe(self.cfg),
            problem_id=self.problem_id,
            reference=self.reference,
            run_id=s.run_id,
        )
        self._round_t0 = time.monotonic()
        self.emit(SessionStarted(self.session_id, self.problem))
        status, reason, answer, source = "failed", None, None, None
        try:
            plan = self.plan()
            status, reason, answer, source = self.steps(plan)
        except SessionEnd as end:
            status, reason = end.status, end.reason
        except Exception as e:
            log.exception("solve session %s failed", self.session_id)
            status, reason = "failed", f"internal error: {type(e).__name__}: {e}"
        if answer is None and self.last_result:
            answer, source = extract_answer(self.last_result), "the last step result"
            source = source if answer is not None else None
        if status == "solved" and answer is None:
            status, reason = "failed", "no final answer in the navigator's verdict or the step results"
        correct = None if self.reference is None else bounded_grade(answer, self.reference)
        if self.answer_schema is not None and answer is not None:
            try:
                self.format_answer(answer)
            except SessionEnd as end:  # its backend failed: the session failed, as in any other round
                status, reason = end.status, end.reason
        return self.finish(status, reason, answer, source, correct)

    def format_answer(self, answer: str) -> None:
        """The answer as JSON following answer_schema (into self.formatted), or why not (self.format_error).

        Asked of the inference role with the schema (constrained where its backend is configured to) and
        parsed by the one reply parser; a reply that does not follow the schema is re-asked like the
        navigator's."""
        schema = self.answer_schema or {}
        messages = prompts.format_messages(self.problem, [r for _, r in self.accepted], answer, schema)

        def parse(text: str) -> str:
            value = extract_json_object(text)
            validate(value, schema, "formatted answer")
            return json.dumps(value, ensure_ascii=False)

        try:
            self.formatted = self.navigate(messages, parse, schema, role="inference")[0]
        except SessionEnd as end:
            if end.status == "failed" and not isinstance(end, NavigatorUnparseable):
                raise  # a backend error
            # the answer stands; only its restatement failed (unparseable, or a limit reached)
            self.format_error = f"the answer could not be put in the requested format: {end.reason}"

    def finish(
        self, status: str, reason: str | None, answer: str | None, source: str | None, correct: bool | None
    ) -> SolveResult:
        latency = (time.monotonic() - self.t0) * 1000
        text = (f"answer {answer!r} from {source}" if answer is not None else "no answer") + f"; {status}"
        if reason:
            text += f": {reason}"
        end = {
            "status": status,
            "reason": reason,
            "final_answer": answer,
            "correct": correct,
            "latency_ms": latency,
        }
        adjustment = {"answer": answer, "source": source, "status": status, "reason": reason}
        if self.answer_schema is not None:
            adjustment.update(formatted=self.formatted, format_error=self.format_error)
        try:
            self.write_round("final", finish=end, evaluation=text, adjustment=adjustment)
        except Exception:
            log.exception("could not write the final round of session %s", self.session_id)
            store.finish_session(self.s.db, self.session_id, rounds=self.rounds, tokens=self.tokens, **end)
        result = SolveResult(
            session_id=self.session_id,
            status=status,
            reason=reason,
            answer=answer,
            correct=correct,
            rounds=self.rounds,
            tokens=self.tokens,
            latency_ms=latency,
            templates=self.templates,
            llm_calls=self.calls,
            solution=self.last_result,
            steps=[r for _, r in self.accepted],
            formatted=self.formatted,
            format_error=self.format_error,
        )
        self.emit(SessionDone(result))
        return result

    def embed_phrases(self, plan: Plan) -> None:
        """The plan's template phrases embedded now, in one batch: each step round then finds its query
        vector cached instead of embedding it alone (a round's largest cost when the phrase is new)."""
        if self.cfg.retrieval_mode != "text":
            step_retrieval.prime([s.template for s in plan.steps], db=self.s.db)

    def hints(self) -> list[navigator.Hint]:
        if self.cfg.plan_hints < 1:
            return []
        hits = step_retrieval.retrieve_hints(
            self.s.db, [self.problem], k=self.cfg.plan_hints, mode=self.cfg.retrieval_mode
        )[0]
        return [navigator.Hint.from_hit(h) for h in hits]

    def plan(self) -> Plan:
        messages = navigator.plan_messages(self.problem, hints=self.hints(), max_steps=self.cfg.max_steps)
        try:
            plan, used, raw, errors = self.navigate(
                messages,
                lambda t: navigator.parse_plan(t, max_steps=self.cfg.max_steps),
                navigator.plan_schema(self.cfg.max_steps),
            )
        except NavigatorUnparseable as end:
            self.write_round(
                "plan",
                navigator_prompt=end.messages,
                navigator_output=end.raw,
                adjustment={"parse_errors": end.errors, "error": end.reason},
            )
            raise
        except SessionEnd as end:
            self.write_round("plan", navigator_prompt=messages, adjustment={"error": end.reason})
            raise
        self.embed_phrases(plan)  # part of the plan round
        self.write_round(
            "plan",
            step_text=plan.abstraction,
            navigator_prompt=used,
            navigator_output=raw,
            adjustment={
                "abstraction": plan.abstraction,
                "trajectory": [asdict(p) | {"text": p.text} for p in plan.steps],
                "parse_errors": errors,
            },
        )
        return plan

    def steps(self, plan: Plan) -> tuple[str, str | None, str | None, str | None]:
        steps = [Step(text=p.text, template=p.template) for p in plan.steps]
        i = 0
        while i < len(steps):
            if self.rounds >= self.cfg.max_rounds:
                raise SessionEnd("limit", f"round limit of {self.cfg.max_rounds} reached")
            self.rounds += 1
            evaluation, steps, i = self.step_round(plan.abstraction, steps, i)
            if evaluation.verdict == "stop":
                return (
                    "solved",
                    None,
                    evaluation.answer,
                    "the navigator's stop verdict" if evaluation.answer else None,
                )
        return "solved", None, None, None

    def step_round(self, abstraction: str, steps: list[Step], i: int) -> tuple[Evaluation, list[Step], int]:
        step = steps[i]
        round_fields: dict[str, Any] = {"step_text": step.text}
        adj: dict[str, Any] = {"step_no": i + 1, "n_steps": len(steps), "query": step.template}
        try:
            shown, chosen, skipped = self.retrieve(step)
            round_fields["retrieved"] = [
                {k: h[k] for k in ("version_id", "template_id", "key", "name", "score")}
                | {"used": h is chosen}
                for h in shown
            ]
            if chosen is not None:
                adj["template"] = {
                    k: chosen[k] for k in ("version_id", "template_id", "key", "name", "score")
                }
                step.tried.append(chosen["version_id"])
                if chosen["version_id"] not in self.templates:
                    self.templates.append(chosen["version_id"])
            if skipped:
                adj["excluded"] = skipped
            result = self.call(
                "inference",
                prompts.step_messages(self.problem, abstraction, self.accepted, step.text, chosen),
            ).text
            round_fields["instantiation"] = result
            self.last_result = self.accepted[-1][1] if self.accepted else result
            messages = navigator.evaluation_messages(
                self.problem,
                abstraction,
                [(s.text, s.template) for s in steps],
                i + 1,
                chosen["name"] if chosen else None,
                result,
                self.accepted,
                max_steps=self.cfg.max_steps,
            )
            evaluation, used, raw, errors = self.navigate(
                messages,
                lambda t: navigator.parse_evaluation(
                    t, current=i + 1, n_steps=len(steps), max_steps=self.cfg.max_steps
                ),
                navigator.evaluation_schema(self.cfg.max_steps),
            )
        except SessionEnd as end:
            if isinstance(end, NavigatorUnparseable):
                round_fields.update(navigator_prompt=end.messages, navigator_output=end.raw)
                adj["parse_errors"] = end.errors
            adj["error"] = end.reason
            self.write_round("step", adjustment=adj, **round_fields)
            raise
        new_steps, next_i, described, outcome = apply_changes(steps, i, evaluation.changes)
        if outcome == "accepted":
            self.accepted.append((step.text, result))
            self.last_result = result
        adj.update(
            verdict=evaluation.verdict,
            changes=described,
            parse_errors=errors,
            outcome=outcome,
            trajectory=[s.to_dict() for s in new_steps],
            answer=evaluation.answer,
        )
        self.write_round(
            "step",
            navigator_prompt=used,
            navigator_output=raw,
            evaluation=evaluation.reason,
            adjustment=adj,
            **round_fields,
        )
        return evaluation, new_steps, next_i


def bounded_grade(answer: str | None, reference: str, timeout_s: float = GRADE_TIMEOUT_S) -> bool:
    """pipelines.grader.grade (which gives a check up, as wrong, after TIMEOUT_S)."""
    if answer is None:
        return False
    return grade(answer, reference, timeout_s=timeout_s)

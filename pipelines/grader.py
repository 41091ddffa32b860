"""Final-answer extraction and grading for MATH-style answers.

`extract_answer` takes the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, falling back to
"the final answer is X" / "Answer: X". `grade` first compares normalised strings (so text answers,
units, LaTeX spacing and `x = 3` vs `3` agree), then asks math-verify for symbolic equivalence
(fractions, decimals, radicals, intervals, sets, tuples). The symbolic check runs in worker processes
with a deadline (GRADE_TIMEOUT_S): an answer whose check overruns (a tower of powers) is wrong, never a
hang, and math-verify runs there with its own timeouts, so it prints nothing.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool

log = logging.getLogger(__name__)

GRADER_NAME = "reasonflux-grader/math-verify-v1"

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_FALLBACK_RES = [
    re.compile(r"final answer\**\s*(?:is|[:：])\**[:\s]*(.+)", re.IGNORECASE),
    re.compile(r"(?:^|\n)\s*\**answer\**\s*[:：]\s*(.+)", re.IGNORECASE),
    re.compile(r"the answer is[:\s]*(.+)", re.IGNORECASE),
]


def _balanced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the brace group opening at text[start] == '{', and the index after it."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "\\":
            continue
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and (i == 0 or text[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def _boxed(text: str) -> str | None:
    for m in reversed(list(_BOX_RE.finditer(text))):
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            got = _balanced(text, j)
            if got is not None:
                return got[0].strip()
        elif j > m.end():  # `\boxed 5`: the argument runs to the next delimiter
            arg = re.match(r"[^\s$]+", text[j:])
            if arg:
                return arg.group(0).strip()
    return None


def _clean_fallback(s: str) -> str:
    s = s.strip().splitlines()[0].strip()
    s = s.strip("*").strip()
    if s.startswith("$") and s.count("$") >= 2:
        s = s[1 : s.index("$", 1)]
    s = s.strip().rstrip(".").strip()
    return s.strip("$").strip()


def extract_answer(text: str | None) -> str | None:
    """The final answer in a model's solution text, or None when there is none."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed is not None:
        return boxed or None
    for rx in _FALLBACK_RES:
        hits = list(rx.finditer(text))
        if hits:
            ans = _clean_fallback(hits[-1].group(1))
            if ans:
                return ans
    return None


# ---------------------------------------------------------------- normalisation

_SPACING = re.compile(r"\\[!,;: ]|\\quad|\\qquad|~")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|mathbf|operatorname)\s*\{([^{}]*)\}")
_UNITS = (
    r"(?:square\s+)?(?:cm|centimeters?|m|meters?|km|kilometers?|inches|inch|in|feet|foot|ft|yards?|miles?|"
    r"units?|sq\s*units?|degrees?|mph|minutes?|min|hours?|hrs?|seconds?|sec|days?|weeks?|months?|years?|"
    r"cents?|dollars?|pounds?|lbs?|ounces?|oz|gallons?|liters?|grams?|g|kg|people|students|ways|"
    r"points?|marbles|cookies|cups?|pages?|tickets|boxes|coins|cubic\s+\w+|percent)"
)
_TRAILING_UNIT = re.compile(
    r"(?<=[\d}\s])\s*(?:\^\{?\\circ\}?|°|\\%|%|" + _UNITS + r"(?:\^\{?[23]\}?|\^[23])?)\s*$", re.IGNORECASE
)
_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:\{,\}\d{3}|,\d{3})+)(?![\d])")
_LHS = re.compile(r"^\s*[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?!.*=)")


def normalize(ans: str) -> str:
    """A canonical string for comparing answers that differ only in presentation."""
    s = ans.strip()
    s = s.strip("$").strip()
    s = _SPACING.sub(" ", s)
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\^\{?\\circ\}?", "", s)
    s = s.replace("°", "")
    for _ in range(3):  # nested \text{...} wrappers
        s = _TEXT_CMD.sub(r"\1", s)
    s = _THOUSANDS.sub(lambda m: m.group(1) + re.sub(r"\{,\}|,", "", m.group(2)), s)
    s = re.sub(r"\\?%", "", s)
    for _ in range(2):
        s = _TRAILING_UNIT.sub("", s).strip()
    s = _LHS.sub("", s) if "," not in s else s
    s = s.rstrip(".").strip()
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    return s.lower() if re.fullmatch(r"[A-Za-z ]+|\([A-Za-z]\)", s) else s


# ---------------------------------------------------------------- symbolic check

GRADE_TIMEOUT_S = 20.0  # a symbolic check still running after this is given up: the answer counts as wrong
_CHECK_TIMEOUT_S = 5  # math-verify's own limit per parse and per comparison (SIGALRM, in the worker)


def _symbolic_equal(reference: str, predicted: str) -> bool:
    """math-verify's verdict; runs in a grading worker process (its main thread, so SIGALRM timeouts work)."""
    from math_verify import parse, verify

    try:
        gold = parse(f"${reference}$", parsing_timeout=_CHECK_TIMEOUT_S)
        pred = parse(f"${predicted}$", parsing_timeout=_CHECK_TIMEOUT_S)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=_CHECK_TIMEOUT_S))
    except Exception:  # noqa: BLE001 - a grader failure is a wrong answer, never a crash
        return False


def _symbolic_either(r: str, p: str, reference: str, predicted: str) -> bool:
    return _symbolic_equal(r, p) or _symbolic_equal(reference, predicted)


def _quiet_worker() -> None:
    """A grading worker: math-verify's and sympy's log lines are not the command's output; Ctrl-C is the
    parent's to handle."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class _Workers:
    """Grading worker processes, started on first use. A check that overruns its deadline cannot be
    interrupted inside sympy's C code (a huge power), so its workers are killed and replaced."""

    def __init__(self, size: int = 2):
        self.size = size
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn: forking a process that runs threads (the solver's, torch's) is unsafe
                self._pool = ProcessPoolExecutor(
                    self.size, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker
                )
            return self._pool

    def _kill(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        for proc in list((pool._processes or {}).values()):  # no public way to stop a busy worker
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def run(self, timeout_s: float, *args: str) -> bool:
        for _attempt in range(2):  # once more when another check's overrun killed the pool under us
            pool = self._get()
            try:
                future = pool.submit(_symbolic_either, *args)
            except BrokenProcessPool:
                self._kill(pool)
                continue
            try:
                return future.result(timeout=timeout_s)
            except FutureTimeout:
                log.warning(
                    "grading %r against %r took over %s s; counted as wrong", args[3], args[2], timeout_s
                )
                self._kill(pool)
                return False
            except BrokenProcessPool:
                self._kill(pool)
        return False


_WORKERS = _Workers()


def grade(predicted: str | None, reference: str, timeout_s: float = GRADE_TIMEOUT_S) -> bool:
    """True when the predicted final answer is equivalent to the reference answer; False (wrong) when the
    symbolic check takes over TIMEOUT_S seconds. Safe from any thread."""
    if predicted is None or not predicted.strip():
        return False
    p, r = normalize(predicted), normalize(reference)
    if not p:
        return False
    if p == r:
        return True
    return _WORKERS.run(timeout_s, r, p, reference, predicted)


def grade_solution(solution_text: str | None, reference: str) -> tuple[str | None, bool]:
    """Extract the final answer from a solution text and grade it: (extracted, correct)."""
    extracted = extract_answer(solution_text)
    return extracted, grade(extracted, reference)

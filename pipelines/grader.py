"""Final-answer extraction and grading for MATH-style answers.

`extract_answer` takes the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces, falling back to
"the final answer is X" / "Answer: X". `grade` first compares normalised strings (so text answers,
units, LaTeX spacing and `x = 3` vs `3` agree), then asks math-verify for symbolic equivalence
(fractions, decimals, radicals, intervals, sets, tuples).
"""

from __future__ import annotations

import re
import threading

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
                return text[start + 1:i], i + 1
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
        s = s[1:s.index("$", 1)]
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
_TRAILING_UNIT = re.compile(r"(?<=[\d}\s])\s*(?:\^\{?\\circ\}?|°|\\%|%|" + _UNITS + r"(?:\^\{?[23]\}?|\^[23])?)\s*$", re.IGNORECASE)
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

def _symbolic_equal(reference: str, predicted: str) -> bool:
    from math_verify import parse, verify

    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(f"${reference}$", parsing_timeout=timeout)
        pred = parse(f"${predicted}$", parsing_timeout=timeout)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - a grader failure is a wrong answer, never a crash
        return False


def grade(predicted: str | None, reference: str) -> bool:
    """True when the predicted final answer is equivalent to the reference answer."""
    if predicted is None or not predicted.strip():
        return False
    p, r = normalize(predicted), normalize(reference)
    if not p:
        return False
    if p == r:
        return True
    return _symbolic_equal(r, p) or _symbolic_equal(reference, predicted)


def grade_solution(solution_text: str | None, reference: str) -> tuple[str | None, bool]:
    """Extract the final answer from a solution text and grade it: (extracted, correct)."""
    extracted = extract_answer(solution_text)
    return extracted, grade(extracted, reference)

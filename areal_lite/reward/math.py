"""Math answer checking: extract the final answer from a completion and compare it exactly.

Extraction (`extract_answer`):
  1. the last final-answer marker: `#### ` (GSM8K style; the rest of its line) or `\\boxed{...}`
     (nested braces allowed; `\\fbox` too), whichever comes later, so a markdown heading
     "#### Step 1" before a boxed answer does not hide it; empty markers and unclosed boxes are skipped;
  2. else the last number in the text (`1,000`, `-3`, `2.5`, `3/4` count as numbers).

Comparison (`answers_match`) is exact. Both sides are parsed as rationals when they are plain
numbers, after removing what does not change the value:
  - thousands separators (`1,000`, LaTeX `1{,}000`), a leading `+`, trailing zeros (`18.50` is 18.5);
  - currency symbols (`$18`, `\\$18`, `€5`), a trailing `%` and trailing unit words (`18 dollars`,
    `5 cm`): "18%" equals "18", NOT 0.18, because GSM8K asks "what percent..." and keeps the bare
    number as the answer; a unit is dropped, never converted;
  - wrappers: `$...$`, `\\boxed{}`, `\\text{}`, `\\mathrm{}`, `\\left`/`\\right`, a trailing period,
    a leading `x =`; `\\frac{a}{b}`, `\\dfrac`, `\\tfrac` and `a/b` are fractions.
Rationals compare with `fractions.Fraction`: 3/4 == 0.75 == \\frac{3}{4}, but 1/3 != 0.333 (no float
tolerance). When a side is not a plain number, the normalised strings are compared (whitespace
runs collapsed, not removed: "1 8" is not "18"), and, when the optional `math-verify` package is
importable, its symbolic check decides (`\\sqrt{2}/2` vs `1/\\sqrt{2}`), with float rounding at
15 digits so it stays close to exact.
"""

from __future__ import annotations

import functools
import re
import threading
from fractions import Fraction

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
# The last number in free text: a sign only when it is not a binary minus ("16-3" is not "-3").
_NUMBER_IN_TEXT = re.compile(rf"(?:(?<![\w)\]}}.])[-+])?(?<![\w.])(?:{_NUM})(?:\s*/\s*(?:{_NUM}))?(?![\w])")
_PLAIN_NUMBER = re.compile(
    rf"""^(?P<sign1>[-+])?\s*(?:[$€£¥]|usd)?\s*(?P<sign2>[-+])?\s*
    (?P<num>{_NUM})(?:\s*/\s*(?P<den>{_NUM}))?
    (?:\s*%|\s+[a-z]+\.?(?:\s+[a-z]+\.?){{0,3}}|[a-z]{{2,}}\.?)?$""",
    re.IGNORECASE | re.VERBOSE,
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?[\d.,]+)\s*\}\s*\{\s*([-+]?[\d.,]+)\s*\}")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox|boxed|fbox)\s*\{([^{}]*)\}")
_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\\displaystyle|\{,\}|\\[()\[\]]")
_LEADING_ASSIGNMENT = re.compile(r"^[a-zA-Z]\w*\s*=\s*")


def extract_answer(text: str | None) -> str | None:
    """The final answer written in `text` (see the module docstring), stripped; None when there is none."""
    if not isinstance(text, str) or not text:
        return None
    marked = [m for m in (_last_hash_marker(text), _last_boxed(text)) if m is not None]
    if marked:
        return max(marked)[1]  # the marker that comes last in the text
    numbers = _NUMBER_IN_TEXT.findall(text)
    return numbers[-1].strip() if numbers else None


def _last_hash_marker(text: str) -> tuple[int, str] | None:
    """(position, rest of the line) of the last non-empty `#### ` marker; `#####` is not one."""
    for m in reversed(list(re.finditer(r"(?<!#)####(?!#)[ \t]*([^\n]*)", text))):
        if m.group(1).strip():
            return m.start(), m.group(1).strip()
    return None


def _last_boxed(text: str) -> tuple[int, str] | None:
    """(position, contents) of the last non-empty `\\boxed{...}` / `\\fbox{...}` whose braces close."""
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*(\{)?", text))):
        if m.group(1) is None:  # `\boxed 5`: the next whitespace-delimited token
            token = re.match(r"\s*(\S+)", text[m.end():])
            if token and token.group(1).rstrip("$"):
                return m.start(), token.group(1).rstrip("$")
            continue
        depth, start = 1, m.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                if text[start:i].strip():
                    return m.start(), text[start:i].strip()
                break
    return None


def normalize_answer(answer: str) -> str:
    """Strip what does not change an answer's meaning: LaTeX wrappers and spacing, a trailing period."""
    s = answer.strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$" and "$" not in s[1:-1]:
        s = s[1:-1]  # inline math, not currency
    s = s.replace("\\$", "$").replace("\\%", "%").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _LATEX_NOISE.sub("", s)
    prev = None
    while prev != s:  # innermost wrappers first, so nested ones peel off one per pass
        prev, s = s, _LATEX_WRAPPERS.sub(r"\1", s)
    s = _LATEX_FRAC.sub(r"\1/\2", s)
    s = _LEADING_ASSIGNMENT.sub("", s.strip())
    return s.strip().rstrip(".;,!").strip()


def parse_number(answer: str) -> Fraction | None:
    """The exact value of a plain numeric answer ("$1,000", "-3/4", "18.50 dollars"), else None."""
    m = _PLAIN_NUMBER.match(normalize_answer(answer))
    if m is None:
        return None
    if m.group("sign1") and m.group("sign2"):
        return None  # "-$-5" is not a number anyone means
    value = Fraction(m.group("num").replace(",", ""))
    if m.group("den") is not None:
        den = Fraction(m.group("den").replace(",", ""))
        if den == 0:
            return None
        value /= den
    return -value if "-" in (m.group("sign1"), m.group("sign2")) else value


def answers_match(pred: str, gold: str) -> bool:
    """Whether the predicted final answer equals the reference one (exact rules in the module docstring)."""
    pv, gv = parse_number(pred), parse_number(gold)
    if pv is not None and gv is not None:
        return pv == gv  # decided exactly; math-verify's float rounding must not overrule it
    if " ".join(normalize_answer(pred).split()) == " ".join(normalize_answer(gold).split()):
        return True
    return _math_verify_match(pred, gold)


@functools.lru_cache(maxsize=1)
def _math_verify():
    try:
        import math_verify
    except ImportError:
        return None
    return math_verify


def _math_verify_match(pred: str, gold: str) -> bool:
    mv = _math_verify()
    if mv is None:
        return False
    # math-verify bounds its own work with signal.alarm, which only the main thread may use; off the
    # main thread the caller (the reward pool's per-call timeout) has to bound it instead.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        g = mv.parse(f"${normalize_answer(gold)}$", parsing_timeout=limit)
        p = mv.parse(f"${normalize_answer(pred)}$", parsing_timeout=limit)
        return bool(g and p and mv.verify(g, p, float_rounding=15, timeout_seconds=limit))
    except Exception:  # a parser failure on model output is a wrong answer, not a crashed reward
        return False


def math_reward(completion: str, answer: str) -> float:
    """1.0 when the completion's final answer equals `answer` exactly, else 0.0 (never raises on bad input).

    Top-level and picklable, so it can run in the rollout worker's reward process pool.
    """
    if isinstance(answer, (int, float, Fraction)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(completion, str) or not isinstance(answer, str) or not answer.strip():
        return 0.0
    gold = extract_answer(answer) if "####" in answer else answer.strip()
    pred = extract_answer(completion)
    if pred is None or gold is None:
        return 0.0
    return 1.0 if answers_match(pred, gold) else 0.0

"""Synthetic arithmetic word problems for the CPU quickstart (`train_dataset.path: synthetic:arith`).

    Eve has 8 coins, gets 5, loses 3, doubles them. How many coins now?
    gets 5: 8+5=13
    loses 3: 13-3=10
    doubles them: 10*2=20
    #### 20

A tiny byte-level model can learn this format by SFT in a minute and then improve by RL. The
number of steps (1-4 by default) sets the solution's length, so correct answers have different
lengths, which is what makes a length-biased loss (as Dr.GRPO corrects) visible.

Each line of work first restates its phrase of the question, as GSM8K solutions restate what
happens. That makes the line the next piece of the question to copy, a pattern a 2-layer model
learns (an induction head) far better than finding the k-th phrase itself: with bare lines, most
of the quickstart model's errors on 3-4 step problems were a wrong operation, not a wrong sum.

Difficulty knobs live in `ArithSpec`: the step counts, the number ranges and the operations.
Splits never share a problem: each arithmetic chain (start number plus operations) is assigned to
the training or the held-out split by a hash of the chain, so held-out questions ask for chains the
model never trained on, not just new names. Generation is deterministic for (seed, split, spec).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, fields

from areal_lite.data.records import DatasetError

NAMES = ("Ann", "Ben", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kim", "Lou", "Max", "Ned", "Pam", "Sam")
OBJECTS = ("apples", "pens", "cards", "coins", "books", "eggs", "shells", "stamps", "cakes", "beads", "rocks", "toys")
ADD_VERBS = ("gets", "buys", "finds", "wins")
SUB_VERBS = ("loses", "sells", "gives away", "uses")
MUL_WORDS = {2: "doubles them", 3: "triples them"}
HALF_WORDS = "keeps half"
HELD_OUT_SPLITS = ("test", "valid", "validation", "eval", "held_out", "heldout")


@dataclass(frozen=True)
class ArithSpec:
    """Difficulty of the synthetic task.

    The defaults (amounts up to 20) give a task a tiny model learns quickly, for tests and short
    experiments. The CPU quickstart raises amounts to 30 (`max_start` 15, `max_operand` 9): its
    warm-started 2-layer model then gets about 1 in 7 held-out answers right when it answers
    without working, and about 6 in 10 when it works the problem out (sampling at temperature 1).
    """

    min_steps: int = 1  # operations per problem, drawn uniformly from [min_steps, max_steps]
    max_steps: int = 4
    max_start: int = 9  # the starting amount is in [1, max_start]
    max_operand: int = 5  # amounts gained or lost are in [1, max_operand]
    max_value: int = 20  # every intermediate amount stays in [0, max_value]
    ops: str = "+-*/"  # allowed operations: + gain, - loss, * doubles/triples, / keeps half (exact only)
    held_out_fraction: float = 0.1  # share of arithmetic chains reserved for the held-out split

    def check(self) -> None:
        """Raise DatasetError on an impossible spec."""
        if not 1 <= self.min_steps <= self.max_steps:
            raise DatasetError(f"arith: need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if not (1 <= self.max_start <= self.max_value and self.max_operand >= 1):
            raise DatasetError("arith: need 1 <= max_start <= max_value and max_operand >= 1")
        if not set(self.ops) <= set("+-*/") or not set(self.ops) & set("+-"):
            raise DatasetError(f"arith: ops {self.ops!r} must be drawn from '+-*/' and include + or -")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise DatasetError(f"arith: held_out_fraction must be in (0, 1), got {self.held_out_fraction}")


def _is_held_out(chain: tuple, fraction: float) -> bool:
    # sha256, not hash(): stable across processes and PYTHONHASHSEED.
    digest = hashlib.sha256(repr(chain).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _draw_chain(rng: random.Random, spec: ArithSpec) -> tuple[int, tuple[tuple[str, int], ...]]:
    """(start, ((op, operand), ...)) with every intermediate amount inside [0, max_value]."""
    value = rng.randint(1, spec.max_start)
    start, steps = value, []
    for _ in range(rng.randint(spec.min_steps, spec.max_steps)):
        choices = []
        if "+" in spec.ops and value < spec.max_value:
            choices.append(("+", rng.randint(1, min(spec.max_operand, spec.max_value - value))))
        if "-" in spec.ops and value > 0:
            choices.append(("-", rng.randint(1, min(spec.max_operand, value))))
        if "*" in spec.ops and 0 < value * 2 <= spec.max_value:
            choices.append(("*", rng.choice([k for k in MUL_WORDS if value * k <= spec.max_value])))
        if "/" in spec.ops and value > 0 and value % 2 == 0:
            choices.append(("/", 2))
        if not choices:  # only when the spec allows just '+' and we are at max_value, or just '-' at 0
            break
        op, x = rng.choice(choices)
        value = _apply(value, op, x)
        steps.append((op, x))
    return start, tuple(steps)


def _apply(value: int, op: str, x: int) -> int:
    return {"+": value + x, "-": value - x, "*": value * x, "/": value // x}[op]


def _render(rng: random.Random, start: int, steps: tuple[tuple[str, int], ...]) -> tuple[str, str, int]:
    """(question, solution, answer) in words and in one line per step."""
    obj = rng.choice(OBJECTS)
    phrases, lines, value = [], [], start
    for op, x in steps:
        if op == "+":
            phrases.append(f"{rng.choice(ADD_VERBS)} {x}")
        elif op == "-":
            phrases.append(f"{rng.choice(SUB_VERBS)} {x}")
        elif op == "*":
            phrases.append(MUL_WORDS[x])
        else:
            phrases.append(HALF_WORDS)
        new = _apply(value, op, x)
        lines.append(f"{phrases[-1]}: {value}{op}{x}={new}")
        value = new
    question = f"{rng.choice(NAMES)} has {start} {obj}, {', '.join(phrases)}. How many {obj} now?"
    return question, "\n".join(lines + [f"#### {value}"]), value


def generate_arith_records(
    num_records: int, *, split: str = "train", seed: int = 0, spec: ArithSpec | None = None
) -> list[dict]:
    """`num_records` distinct problems of `split` ("train", or held-out: "test"/"valid"/...), as records."""
    spec = spec or ArithSpec()
    spec.check()
    if split == "train":
        held_out = False
    elif split in HELD_OUT_SPLITS:
        held_out, split = True, "test"  # every held-out alias names the same problems
    else:
        raise DatasetError(f"arith: unknown split {split!r} (train, or one of {', '.join(HELD_OUT_SPLITS)})")
    rng = random.Random(f"arith:{seed}:{split}")  # str seeds are hashed with sha512: stable everywhere
    records, seen = [], set()
    max_draws = 200 * num_records + 1000
    for _ in range(max_draws):
        if len(records) >= num_records:
            break
        start, steps = _draw_chain(rng, spec)
        if _is_held_out((start, steps), spec.held_out_fraction) != held_out:
            continue
        question, solution, answer = _render(rng, start, steps)
        if question in seen:
            continue
        seen.add(question)
        records.append({"id": f"arith-{split}-{len(records)}", "question": question,
                        "answer": str(answer), "solution": solution})
    if len(records) < num_records:
        raise DatasetError(f"arith: only {len(records)} distinct {split} problems found; widen the spec")
    return records


def arith_option_defaults() -> dict:
    """The options `synthetic:arith` takes and their defaults: `num_records` (train), `seed`, every `ArithSpec` field."""
    return {"num_records": 2000, "seed": 0, **{f.name: f.default for f in fields(ArithSpec)}}


def arith_option_names() -> list[str]:
    return list(arith_option_defaults())


def arith_num_records(options: dict, split: str) -> int:
    """How many records `synthetic:arith` yields for `split` under `options` (default 2000 train, 200 held out)."""
    return int(options.get("num_records", 2000 if split == "train" else 200))


def arith_spec_from_options(options: dict) -> ArithSpec:
    """The checked `ArithSpec` of the options; DatasetError for an unknown option or an impossible spec."""
    unknown = set(options) - set(arith_option_names())
    if unknown:
        raise DatasetError(f"synthetic:arith: unknown option(s) {', '.join(sorted(unknown))}")
    spec_keys = {f.name for f in fields(ArithSpec)}
    try:
        spec = ArithSpec(**{k: v for k, v in options.items() if k in spec_keys})
        spec.check()
    except TypeError as e:  # a value of the wrong type (e.g. max_steps: four)
        raise DatasetError(f"synthetic:arith: {e}") from None
    return spec


def arith_records_from_options(options: dict, split: str) -> list[dict]:
    """Records for `synthetic:arith` from the config's `synthetic` options.

    Options: `num_records` (default 2000 for train, 200 held out), `seed` (default 0) and any
    `ArithSpec` field; unknown keys raise DatasetError.
    """
    spec = arith_spec_from_options(options)
    try:
        return generate_arith_records(arith_num_records(options, split), split=split,
                                      seed=int(options.get("seed", 0)), spec=spec)
    except TypeError as e:
        raise DatasetError(f"synthetic:arith: {e}") from None

"""Reading actions out of a model's reply, in RAGEN's answer format.

A reply holds its actions in an answer block, several separated by "||":

    <answer>Left || Up</answer>                        (think=False)
    <think>the hole is below</think><answer>Left</answer>   (think=True: the think block is required)

As RAGEN does (ragen/llm_agent/ctx_manager.py and es_manager.py): the first answer block counts;
its pieces are stripped, empty ones dropped, at most `max_actions` kept (the rest ignored, not an
error); names match case-insensitively; pieces that name no action are dropped. A reply is a
format error when it has no answer block, when a kept piece names no action, or when no action
is left; the valid actions of a partly wrong reply are still taken.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

ACTION_SEP = "||"
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_ANSWER = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL)
_TAGS = re.compile(r"</?(?:think|answer)>")


@dataclass(frozen=True)
class ParsedActions:
    """The actions of one reply: `actions` in their canonical spelling, `invalid` the other pieces."""

    actions: tuple[str, ...]
    invalid: tuple[str, ...]
    found: bool  # the reply had an answer block (with a think block before it when required)

    @property
    def format_error(self) -> bool:
        return not self.found or bool(self.invalid) or not self.actions


def answer_text(reply: str, *, think: bool = False) -> str | None:
    """The content of the first answer block (None when there is none), nested tags removed."""
    match = (_THINK_ANSWER if think else _ANSWER).search(reply)
    if match is None:
        return None
    return _TAGS.sub("", match.group(match.lastindex)).strip()


def parse_actions(
    reply: str, names: Sequence[str], *, max_actions: int = 1, sep: str = ACTION_SEP, think: bool = False
) -> ParsedActions:
    """The actions named in `reply`'s answer block, matched case-insensitively against `names`."""
    content = answer_text(reply, think=think)
    if content is None:
        return ParsedActions((), (), False)
    by_lower = {n.lower(): n for n in names}
    pieces = [p.strip() for p in content.split(sep) if p.strip()][:max_actions]
    actions = tuple(by_lower[p.lower()] for p in pieces if p.lower() in by_lower)
    invalid = tuple(p for p in pieces if p.lower() not in by_lower)
    return ParsedActions(actions, invalid, True)


def answer_format(names: Sequence[str], *, max_actions: int = 1, think: bool = False) -> str:
    """One line telling the model how to reply (the environments end their observations with it)."""
    think_part = "<think>...</think>" if think else ""
    choices = ", ".join(names)
    if max_actions == 1:
        return f"Reply with {think_part}<answer>CHOICE</answer>, CHOICE being one of: {choices}."
    return (f"Reply with {think_part}<answer>MOVE {ACTION_SEP} MOVE ...</answer>: up to {max_actions} "
            f"moves, each one of: {choices}.")

"""Schema fields with their rules in metadata, and the one generic check of those rules.

    lr: float = setting(1e-5, "Peak learning rate.", ge=0)
    top_p: float = setting(1.0, "Nucleus sampling threshold.", gt=0, le=1)
    top_k: int = setting(-1, "Top-k sampling (-1: off).", ge=1, allow=(-1,))

Every float must be finite unless its field says `finite=False`; `None` (for Optional fields) is
never range-checked; ranges of a list field apply to each element. `check_fields` walks a config
and raises ConfigError naming the first key that breaks its field's rule; `validate` keeps only
rules that involve several keys.
"""

from __future__ import annotations

import math
import sys
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any, Callable, Iterator

from areal_lite.config.errors import ConfigError


def setting(
    default: Any = None,
    help: str = "",
    choices: tuple | None = None,
    *,
    factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    allow: tuple = (),
    finite: bool = True,
    parse: Callable[[str], str] | None = None,
    check: Callable[[Any], str | None] | None = None,
):
    """A dataclass field whose metadata holds its help text, choices and range.

    `allow`: values accepted outside the range (e.g. -1 for "off"); `parse`: canonicalises a choice
    (e.g. an alias), raising ValueError for an invalid one; `check`: returns why a value is invalid
    (None when it is fine), for rules of one field that are not a range (a host name, a plain name).
    """
    metadata: dict[str, Any] = {"help": help, "finite": finite}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if bounds:
        metadata["bounds"] = bounds
    if allow:
        metadata["allow"] = tuple(allow)
    if parse is not None:
        metadata["parse"] = parse
    if check is not None:
        metadata["check"] = check
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def group_class(f, owner: type) -> type | None:
    """The dataclass of a group field (resolving the string annotations of `owner`'s module)."""
    t = f.type
    if isinstance(t, str):
        t = vars(sys.modules[owner.__module__]).get(t)
    return t if isinstance(t, type) and is_dataclass(t) else None


def iter_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, type]]:
    """(dotted key, dataclass Field, owning class) for every leaf and group of a schema class, in order."""
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        yield key, f, cls
        sub = group_class(f, cls)
        if sub is not None:
            yield from iter_fields(sub, key + ".")


def default_of(f) -> Any:
    """The field's default value (MISSING when it has none)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def describe_range(meta: dict) -> str:
    """'>= 0', 'in (0, 1]', '-1 or >= 1', ... for a field's metadata ('' when it has no range)."""
    b = meta.get("bounds", {})
    low = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    high = (b["le"], "]") if "le" in b else (b["lt"], ")") if "lt" in b else None
    if low and high:
        text = f"in {low[0]}{_num(low[1])}, {_num(high[0])}{high[1]}"
    elif low:
        text = (">= " if low[0] == "[" else "> ") + _num(low[1])
    elif high:
        text = ("<= " if high[1] == "]" else "< ") + _num(high[0])
    else:
        return ""
    allow = meta.get("allow", ())
    return " or ".join([*map(_num, allow), text]) if allow else text


def check_fields(node: Any, prefix: str = "") -> None:
    """Check every field of `node` against its metadata (check, choices, finiteness, range); ConfigError on the first.

    Choice values are canonicalised in place: hyphen spellings become underscores and a field's
    `parse` resolves aliases, so later code sees one spelling.
    """
    for f in fields(node):
        key, value = f"{prefix}{f.name}", getattr(node, f.name)
        if is_dataclass(value):
            check_fields(value, key + ".")
            continue
        meta = f.metadata
        reason = meta["check"](value) if meta.get("check") is not None and value is not None else None
        if reason:
            raise ConfigError(f"{key}: {reason}")
        if meta.get("choices") is not None and isinstance(value, str):
            setattr(node, f.name, _choice(key, value, meta))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                _check_number(f"{key}[{i}]", item, meta)
        else:
            _check_number(key, value, meta)


def _choice(key: str, value: str, meta: dict) -> str:
    choices = meta["choices"]
    if meta.get("parse") is not None:
        try:
            return meta["parse"](value)
        except ValueError:
            pass
    elif value in choices or value.replace("-", "_") in choices:
        return value if value in choices else value.replace("-", "_")
    raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def _check_number(key: str, value: Any, meta: dict) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and meta.get("finite", True) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    if value in meta.get("allow", ()):
        return
    b = meta.get("bounds", {})
    ok = (
        ("ge" not in b or value >= b["ge"])
        and ("gt" not in b or value > b["gt"])
        and ("le" not in b or value <= b["le"])
        and ("lt" not in b or value < b["lt"])
    )
    if not ok:
        raise ConfigError(f"{key}: must be {describe_range(meta)}, got {_num(value)}")


def _num(x: Any) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)

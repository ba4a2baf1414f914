"""`--help` text from the schema, and the per-field text docs/config.md shares with it."""

from __future__ import annotations

import difflib
from dataclasses import MISSING, fields

from areal_lite.config.errors import ConfigError
from areal_lite.config.fields import default_of, describe_range, group_class, iter_fields
from areal_lite.config.keys import suggest, type_name
from areal_lite.config.presets import ALGO_PRESETS
from areal_lite.config.schema import ExperimentConfig


def default_text(f) -> str:
    value = default_of(f)
    if value is MISSING:
        return "required"
    if value is None:
        return "`null`"
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def description(f) -> str:
    desc = f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if choices:
        desc += " Choices: " + ", ".join(f"`{c}`" for c in choices) + "."
    rng = describe_range(f.metadata)
    if rng:
        desc += f" Range: {rng}."
    return desc


def help_text(cls: type = ExperimentConfig, group: str | None = None) -> str:
    """`--help`: the sections with their help, or the keys of one section with types, defaults and help."""
    if group is None:
        lines = ["Config sections (`--help SECTION` lists a section's keys; see docs/config.md):"]
        for f in fields(cls):
            kind = "" if group_class(f, cls) is not None else f" [{type_name(f)}]"
            lines.append(f"  {f.name:<22} {f.metadata.get('help', '')}{kind}")
        lines.append(f"  {'algo':<22} Algorithm preset (config group): {', '.join(ALGO_PRESETS)}.")
        return "\n".join(lines)
    lines = []
    for key, f, owner in iter_fields(cls):
        if (key == group or key.startswith(group + ".")) and group_class(f, owner) is None:
            lines.append(f"  {key} ({type_name(f)}, default {default_text(f).strip('`')}): {description(f)}")
    if not lines:
        sections = [k for k, f, owner in iter_fields(cls) if group_class(f, owner) is not None]
        close = difflib.get_close_matches(group, sections, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else suggest(group, cls)
        raise ConfigError(f"no config section {group!r}{hint}")
    return "\n".join(lines)

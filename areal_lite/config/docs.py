"""Generates docs/config.md from the schema: `python -m areal_lite.config.docs [--check] [PATH]`.

A test runs `--check`, which fails when the committed file differs from what the schema produces.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from pathlib import Path

from areal_lite.config.schema import ExperimentConfig, _dataclass_type

HEADER = """# Configuration reference

Generated from `areal_lite/config/schema.py` by `python -m areal_lite.config.docs`; do not edit by hand
(a test fails when this file and the schema disagree).

Every key below can be set in the YAML file given with `--config` or on the command line as
`key=value` (no `+` prefix, ever). Unknown keys, wrong types and invalid combinations stop the
launcher before anything starts, with exit status 2 and one line naming the key. `--help` lists the
groups; `--help GROUP` lists one group's keys. The resolved config of every run is written to
`{cluster.fileroot}/{experiment_name}/{trial_name}/config.yaml`.

Derived values (one home per value): the trainer scores with `gconfig.temperature`;
`actor.loss_norm_constant: null` means `gconfig.max_new_tokens`; `tokenizer_path: ""` means
`actor.path`; `rollout.max_concurrent_rollouts: 0` means `train_dataset.batch_size × (η + 1)`.
"""


def _default(f) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "required"
    if value is None:
        return "`null`"
    if isinstance(value, str):
        return f'`"{value}"`' if value == "" else f"`{value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _type(f) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return str(t).replace("typing.", "")


def _section(cls: type, prefix: str, title: str, help_text: str, out: list[str]) -> None:
    leaves = [f for f in fields(cls) if _dataclass_type(f) is None]
    if leaves:
        out.append(f"\n## `{prefix.rstrip('.') or 'top level'}`" + (f": {title}" if title else ""))
        if help_text:
            out.append(f"\n{help_text}")
        out.append("\n| key | type | default | description |\n|---|---|---|---|")
        for f in leaves:
            desc = f.metadata.get("help", "")
            choices = f.metadata.get("choices")
            if choices:
                desc += " Choices: " + ", ".join(f"`{c}`" for c in choices) + "."
            out.append(f"| `{prefix}{f.name}` | {_type(f)} | {_default(f)} | {desc.replace('|', '/')} |")
    for f in fields(cls):
        sub = _dataclass_type(f)
        if sub is not None:
            _section(sub, f"{prefix}{f.name}.", "", f.metadata.get("help", ""), out)


def render() -> str:
    out = [HEADER]
    _section(ExperimentConfig, "", "run identity and schedule", "", out)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    paths = [a for a in argv if not a.startswith("--")]
    path = Path(paths[0]) if paths else Path(__file__).resolve().parents[2] / "docs" / "config.md"
    text = render()
    if check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(f"{path} is out of date: run python -m areal_lite.config.docs", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

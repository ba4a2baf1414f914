"""docs/config.md and `--help`, generated from the schema: `python -m areal_lite.config.docs [--check] [PATH]`.

A test runs `--check`, which fails when the committed file differs from what the schema produces.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

from areal_lite.config.fields import group_class
from areal_lite.config.help import default_text, description
from areal_lite.config.keys import type_name
from areal_lite.config.presets import ALGO_KEYS, ALGO_PRESETS
from areal_lite.config.schema import ExperimentConfig

HEADER = """# Configuration reference

Generated from `areal_lite/config/schema.py` by `python -m areal_lite.config.docs`; do not edit by hand
(a test fails when this file and the schema disagree).

Every key below can be set in the YAML file given with `--config` or on the command line as
`key=value`, in Hydra's override grammar: no `+` needed for any key (`+key=` and `++key=` are
accepted and mean the same), `~key` resets a key to its default, lists as `key=[a,b]`, mappings as
`key={a: 1}`, and quotes keep commas and spaces in a value (`key='a,b'`). Config groups are chosen
the same way: `algo=drgrpo` (below). Unknown keys, wrong types, values outside a key's range and
invalid combinations stop the launcher before anything starts, with exit status 2 and one line
naming the key. `--cfg job` prints the resolved config and starts nothing; `--help` lists the
sections, `--help SECTION` one section's keys. The resolved config of every run is written to
`{cluster.fileroot}/{experiment_name}/{trial_name}/config.yaml`.

Derived values (one home per value): the trainer scores with `gconfig.temperature`;
`actor.loss_norm_constant: null` means `gconfig.max_new_tokens`; `tokenizer_path: ""` means
`actor.path`; `rollout.max_concurrent_rollouts: 0` means `train_dataset.batch_size × (η + 1)`;
`env.max_total_tokens: null` means `server.context_length`. Every float must be finite.

## Algorithm presets (config group `algo`)

A recipe is the task plus a preset: `--config task.yaml algo=dapo`, or in the YAML
`defaults: [{algo: dapo}, _self_]`. Every preset sets the same keys, so switching presets leaves
nothing of the previous one behind; keys set in the file (after `_self_`) or on the command line
win over the preset. Your own presets: `algo/NAME.yaml` beside your config, starting with
`# @package _global_`. Formulas: docs/algorithms.md; which to use: docs/recipes.md.

"""

SWEEPS = """
## Sweeps

A launch is one run: a sweep value (`key=a,b`, `range(...)`, `choice(...)`) is refused with one
line, and there is no Hydra `--multirun`. A run is a set of supervised processes that owns its
devices and its run directory (`{experiment_name}/{trial_name}`); Hydra's multirun launchers call
an application function per job and would bypass the launchers' supervision, restarts and device
placement. Run the values one after another, each under its own `trial_name`:

    for lr in 1e-4 3e-4; do
      python -m areal_lite.launcher.local examples/math/gsm8k_drgrpo.py \\
        --config examples/math/gsm8k_drgrpo_cpu.yaml actor.optimizer.lr=$lr trial_name=lr$lr
    done

The algorithm comparison is such a sweep, built in: `python -m areal_lite.tools.ablation --config ...`
runs its six variants one after another on CPU or side by side on disjoint GPUs.
"""


def _section(cls: type, prefix: str, help_text: str, out: list[str]) -> None:
    leaves = [f for f in fields(cls) if group_class(f, cls) is None]
    if leaves:
        out.append(f"\n## `{prefix.rstrip('.') or 'top level'}`" + ("" if prefix else ": run identity and schedule"))
        if help_text:
            out.append(f"\n{help_text}")
        out.append("\n| key | type | default | description |\n|---|---|---|---|")
        for f in leaves:
            out.append(f"| `{prefix}{f.name}` | {type_name(f)} | {default_text(f)} | {description(f).replace('|', '/')} |")
    for f in fields(cls):
        sub = group_class(f, cls)
        if sub is not None:
            _section(sub, f"{prefix}{f.name}.", f.metadata.get("help", ""), out)


def _presets() -> str:
    head = "| key | " + " | ".join(f"`algo={name}`" for name in ALGO_PRESETS) + " |"
    rows = [head, "|---|" + "---|" * len(ALGO_PRESETS)]
    for key in ALGO_KEYS:
        cells = []
        for values in ALGO_PRESETS.values():
            v = values[key]
            cells.append("`null`" if v is None else f"`{str(v).lower()}`" if isinstance(v, bool) else f"`{v}`")
        rows.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def render() -> str:
    out = [HEADER + _presets() + SWEEPS]
    _section(ExperimentConfig, "", "", out)
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

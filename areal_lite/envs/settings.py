"""The environment section of an agent run: which environment, how long an episode may be, which seeds.

It lives under `train_dataset.synthetic` with `train_dataset.path: synthetic:env`: the records of an
environment run are its seeds (`seed_start ... seed_start + num_seeds - 1`, one GRPO group each), and
the held-out records are `eval_num_seeds` seeds from `eval_seed_start`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from areal_lite.envs.base import EnvError

ENV_DATASET = "synthetic:env"


@dataclass
class EnvSettings:
    name: str = ""  # a registered environment (areal_lite.envs.registered_envs())
    options: dict = field(default_factory=dict)  # the environment's keyword arguments
    max_turns: int = 5  # replies per episode
    max_total_tokens: int = 2048  # tokens per episode sequence (prompt, replies, observations)
    format_penalty: float = -0.1  # added per unparseable reply (RAGEN's)
    system_prompt: str = ""
    template_kwargs: dict = field(default_factory=dict)  # extra apply_chat_template arguments
    num_seeds: int = 10_000  # training records
    seed_start: int = 0
    eval_num_seeds: int = 0  # held-out seeds for evaluation (0: none)
    eval_seed_start: int = 1_000_000
    warm_start: dict = field(default_factory=dict)  # SFT on scripted episodes first (examples/agents/warm_start.py)


def parse_env_settings(raw: dict) -> EnvSettings:
    """The section's keys checked for names, kinds and ranges (EnvError: one line naming the key).

    The environment's name and options are checked where it is made (`check_env_options`): an entry
    script may register its own environments after the launcher has read the config.
    """
    known = {f.name: f for f in fields(EnvSettings)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise EnvError(f"unknown key(s) {', '.join(unknown)}; the env section's keys: {', '.join(known)}")
    defaults = EnvSettings()
    for key, value in raw.items():
        want = type(getattr(defaults, key))
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else \
            isinstance(value, want) and not (want is int and isinstance(value, bool))
        if not ok:
            raise EnvError(f"{key}: expected {want.__name__}, got {value!r}")
    env = EnvSettings(**raw)
    if not env.name:
        raise EnvError("name: required (the environment, e.g. frozenlake)")
    for key in ("max_turns", "num_seeds", "max_total_tokens"):
        if getattr(env, key) < 1:
            raise EnvError(f"{key}: must be >= 1, got {getattr(env, key)}")
    if env.eval_num_seeds < 0:
        raise EnvError(f"eval_num_seeds: must be >= 0, got {env.eval_num_seeds}")
    return env

"""Option names accepted by the algorithm functions, and their parsing.

The tuples are the contract with the config layer (`areal_lite.config.schema` mirrors them so that
the CLI can validate without importing torch). Hyphen spellings (`seq-mean-token-mean`, as verl
writes them) are accepted everywhere and mean the same as the underscore spelling.
"""

from __future__ import annotations

NORM_LEVELS = ("group", "batch", "none")
LOSS_REDUCTIONS = (
    "token_mean",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
    "token_sum",
    "sequence_mean",  # alias of seq_mean_token_mean (SkyRL's name)
)
LOSS_REDUCTION_ALIASES = {"sequence_mean": "seq_mean_token_mean"}
KL_ESTIMATORS = ("k1", "k2", "k3")
BEHAV_WEIGHT_MODES = ("mask", "clamp")
RATIO_LEVELS = ("token", "sequence")
ADV_WEIGHTINGS = ("sequence", "token")
ENTROPY_SHAPING_MODES = ("none", "token", "sequence")


def parse_option(value: object, choices: tuple[str, ...], name: str) -> str:
    """Canonical (underscore, lower-case) spelling of `value`, or ValueError naming the choices.

    `None` is accepted for `NORM_LEVELS` as a synonym of "none" (AReaL writes `std_level: null`).
    """
    if value is None and "none" in choices:
        return "none"
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        if key in choices:
            return key
    raise ValueError(f"invalid {name}={value!r}; valid choices: {', '.join(choices)} (hyphens also accepted)")


def parse_loss_reduction(mode: object) -> str:
    """Canonical loss-reduction name; `sequence_mean` resolves to `seq_mean_token_mean`."""
    key = parse_option(mode, LOSS_REDUCTIONS, "loss_reduction")
    return LOSS_REDUCTION_ALIASES.get(key, key)

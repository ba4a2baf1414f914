"""Field rules in the schema's metadata, checked generically; the config layer's size budget."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

from areal_lite.config import ConfigError
from areal_lite.config.fields import check_fields, describe_range, group_class, iter_fields, setting
from areal_lite.config.schema import ExperimentConfig


@dataclass
class Inner:
    p: float = setting(0.5, "a probability", gt=0, le=1)
    mode: str = setting("a_b", "a mode", ("a_b", "c"))


@dataclass
class Outer:
    n: int = setting(1, "a count", ge=1)
    k: int = setting(-1, "top-k", ge=1, allow=(-1,))
    x: float = setting(0.0, "anything finite")
    raw: float = setting(0.0, "may be infinite", finite=False)
    cap: Optional[float] = setting(None, "a cap or none", gt=0)
    ids: List[int] = setting(factory=list, help="ids", ge=0)
    name: str = setting("ok", "a name", check=lambda v: "must not be 'bad'" if v == "bad" else None)
    inner: Inner = setting(factory=Inner, help="a section")


@pytest.mark.parametrize("meta,text", [
    ({"bounds": {"ge": 0}}, ">= 0"), ({"bounds": {"gt": 0}}, "> 0"), ({"bounds": {"le": 1}}, "<= 1"),
    ({"bounds": {"gt": 0, "le": 1}}, "in (0, 1]"), ({"bounds": {"ge": 0, "lt": 1}}, "in [0, 1)"),
    ({"bounds": {"ge": 1}, "allow": (-1,)}, "-1 or >= 1"), ({}, ""), ({"bounds": {"ge": 0.5}}, ">= 0.5"),
])
def test_describe_range(meta, text):
    assert describe_range(meta) == text


@pytest.mark.parametrize("change,message", [
    ({"n": 0}, "n: must be >= 1, got 0"),
    ({"k": 0}, "k: must be -1 or >= 1, got 0"),
    ({"x": math.nan}, "x: must be a finite number, got nan"),
    ({"x": -math.inf}, "x: must be a finite number, got -inf"),
    ({"cap": 0.0}, "cap: must be > 0, got 0"),
    ({"ids": [1, -2]}, "ids[1]: must be >= 0, got -2"),
    ({"name": "bad"}, "name: must not be 'bad'"),
    ({"inner": Inner(p=1.5)}, "inner.p: must be in (0, 1], got 1.5"),
    ({"inner": Inner(mode="d")}, "inner.mode: 'd' is not one of a_b, c"),
])
def test_check_fields_names_the_first_broken_rule(change, message):
    cfg = Outer(**change)
    with pytest.raises(ConfigError) as e:
        check_fields(cfg)
    assert str(e.value) == message


def test_check_fields_accepts_edges_and_canonicalises_choices():
    cfg = Outer(n=1, k=-1, raw=math.inf, cap=None, ids=[0], inner=Inner(p=1.0, mode="a-b"))
    check_fields(cfg)
    assert cfg.inner.mode == "a_b"


# Numbers that may take any finite value: offsets, penalties, bounds of a band, names of nothing countable.
UNBOUNDED = {"actor.reward_bias", "actor.clip_cov.cov_lb", "actor.clip_cov.cov_ub", "env.format_penalty"}


def test_every_number_of_the_schema_has_a_range():
    missing = []
    for key, f, owner in iter_fields(ExperimentConfig):
        if group_class(f, owner) is None and any(t in str(f.type) for t in ("int", "float")) \
                and "bounds" not in f.metadata and "check" not in f.metadata and key not in UNBOUNDED:
            missing.append(key)
    assert not missing, f"numeric keys without a range in their metadata: {missing}"


def test_every_field_has_help():
    assert [k for k, f, _ in iter_fields(ExperimentConfig) if not f.metadata.get("help")] == []


def test_config_functions_stay_short():
    """No function of the config layer is over 60 lines (rules live in metadata and small checks)."""
    long = []
    for path in sorted((Path(__file__).resolve().parents[2] / "areal_lite" / "config").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long

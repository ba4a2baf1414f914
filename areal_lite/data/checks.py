"""Checks of a dataset section that need no data read: synthetic dataset names and options, split files.

Used by the config layer before launch, so a typo exits 2 with one line instead of failing in a
child process. Each DatasetError carries `field`, the key of the section it is about.
"""

from __future__ import annotations

import difflib
import os
from typing import Any

from areal_lite.data.arith import arith_num_records, arith_option_defaults, arith_spec_from_options
from areal_lite.data.records import DATA_SUFFIXES, DatasetError, split_files

SYNTHETIC_PREFIX = "synthetic:"
# name -> (options and defaults, a check of the options, the record count for (options, split));
# `loader.SYNTHETIC` builds the records.
SYNTHETIC_CHECKS = {"synthetic:arith": (arith_option_defaults, arith_spec_from_options, arith_num_records)}


def _error(field: str, message: str) -> DatasetError:
    e = DatasetError(message)
    e.field = field  # type: ignore[attr-defined]
    return e


def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def check_synthetic(path: str, options: dict[str, Any], split: str) -> int:
    """The number of records synthetic dataset `path` yields for `split`; DatasetError (with `field`) if invalid."""
    if path not in SYNTHETIC_CHECKS:
        known = list(SYNTHETIC_CHECKS)
        raise _error("path", f"unknown synthetic dataset {path!r}{_hint(path, known)}; known: {', '.join(known)}")
    defaults_fn, check, count = SYNTHETIC_CHECKS[path]
    defaults = defaults_fn()
    for key, value in options.items():
        if key not in defaults:
            raise _error(f"synthetic.{key}", f"{path} has no option {key!r}{_hint(key, list(defaults))}; "
                                              f"its options: {', '.join(defaults)}")
        if not _same_kind(value, defaults[key]):
            raise _error(f"synthetic.{key}", f"expected {type(defaults[key]).__name__}, got {value!r}")
    try:
        check(options)
        n = count(options, split)
    except ValueError as e:
        raise _error("synthetic", str(e).split(": ", 1)[-1]) from None
    if n < 1:
        raise _error("synthetic.num_records", f"must be >= 1, got {n}")
    return n


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def check_local_dataset(path: str, split: str) -> int | None:
    """Check that a local dataset path holds `split`; the number of records of a .jsonl file (else None).

    A missing path, a directory without the split's file or a file of another format raises DatasetError.
    """
    full = os.path.expanduser(path)
    if os.path.isdir(full):
        files = split_files(full, split)
        if not files:
            wanted = ", ".join(split + s for s in DATA_SUFFIXES)
            raise _error("split", f"{path} holds no {wanted} or {split}-*.parquet for split {split!r}")
    elif os.path.isfile(full):
        if not full.endswith(DATA_SUFFIXES):
            raise _error("path", f"{path} is not a {', '.join(DATA_SUFFIXES)} file")
        files = [full]
    else:
        raise _error("path", f"dataset not found: {path}")
    if len(files) == 1 and files[0].endswith(".jsonl"):
        with open(files[0], "rb") as fh:
            return sum(1 for line in fh if line.strip())
    return None

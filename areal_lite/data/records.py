"""Prompt records: reading local files, and validating records under a skip/error policy.

A record is a plain dict that travels over msgpack unchanged:
    {"id": str, "question": str, "answer": str, "solution": str (optional)}
"""

from __future__ import annotations

import glob
import json
import os
from typing import Callable, Iterable

REQUIRED_FIELDS = ("question", "answer")
SKIP_REASONS = ("missing_field", "empty_question", "prompt_too_long")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class DatasetError(ValueError):
    """A dataset that cannot be read or holds a record the policy rejects; the message is one line.

    A user error, not a bug: entry points report it on one line and exit with `exit_code`.
    """

    exit_code = 2


def read_records_file(path: str) -> list[dict]:
    """Rows of a local `.jsonl`, `.json` (a list of objects) or `.parquet` file, as dicts."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: dataset file not found")
    if path.endswith(".parquet"):
        return _read_parquet(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json") and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: invalid JSON ({e})") from None
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: invalid JSON line ({e})") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DatasetError(f"{path}: row {bad} is a {type(rows[bad]).__name__}, not a JSON object")
    return rows


def _read_parquet(path: str) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{path}: reading parquet needs pyarrow (pip install 'areal_lite[math]')") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several unrelated types for a damaged file
        raise DatasetError(f"{path}: cannot read parquet ({type(e).__name__}: {_first_line(e)})") from None


def split_files(directory: str, split: str) -> list[str]:
    """Files holding `split` in a directory: `{split}.jsonl|.json|.parquet`, else `**/{split}-*.parquet`."""
    for suffix in DATA_SUFFIXES:
        path = os.path.join(directory, split + suffix)
        if os.path.isfile(path):
            return [path]
    # The Hugging Face hub's parquet layout: {config}/{split}-00000-of-00001.parquet
    return sorted(glob.glob(os.path.join(directory, "**", f"{split}-*.parquet"), recursive=True))


def check_record(record: dict, prompt_len_fn: Callable[[dict], int] | None, max_prompt_len: int | None) -> str | None:
    """The reason `record` is unusable (one of SKIP_REASONS), or None when it is fine."""
    if any(not isinstance(record.get(k), str) for k in REQUIRED_FIELDS):
        return "missing_field"
    if not record["question"].strip():
        return "empty_question"
    if max_prompt_len and prompt_len_fn is not None and prompt_len_fn(record) > max_prompt_len:
        return "prompt_too_long"
    return None


def validate_records(
    records: Iterable[dict],
    *,
    policy: str = "skip",
    max_prompt_len: int | None = None,
    prompt_len_fn: Callable[[dict], int] | None = None,
    limit: int = 0,
) -> tuple[list[dict], dict[str, int]]:
    """Keep the usable records; `policy` "skip" counts the rest by reason, "error" raises DatasetError.

    `prompt_len_fn(record)` gives the prompt length in tokens (checked against `max_prompt_len`);
    `limit` > 0 stops once that many records are kept. Returns (kept, counts) with counts
    {"seen", "kept", "missing_field", "empty_question", "prompt_too_long"}.
    """
    if policy not in ("skip", "error"):
        raise ValueError(f"invalid-record policy {policy!r} is not 'skip' or 'error'")
    counts = {"seen": 0, "kept": 0, **{r: 0 for r in SKIP_REASONS}}
    kept = []
    for record in records:
        if limit and len(kept) >= limit:
            break
        counts["seen"] += 1
        reason = check_record(record, prompt_len_fn, max_prompt_len)
        if reason is None:
            kept.append(record)
            continue
        if policy == "error":
            problem = _describe(reason, record, prompt_len_fn, max_prompt_len)
            raise DatasetError(f"record {record.get('id', '?')}: {problem}")
        counts[reason] += 1
    counts["kept"] = len(kept)
    return kept, counts


def _describe(reason: str, record: dict, prompt_len_fn, max_prompt_len) -> str:
    if reason == "missing_field":
        missing = [k for k in REQUIRED_FIELDS if not isinstance(record.get(k), str)]
        return f"missing or non-string field(s) {', '.join(missing)}"
    if reason == "empty_question":
        return "empty question"
    return f"prompt is {prompt_len_fn(record)} tokens, longer than max_prompt_len={max_prompt_len}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

"""GSM8K-style question/answer data from local files or the Hugging Face hub, as prompt records.

    records = load_dataset_records("../shared/data/gsm8k", split="test")      # {split}.jsonl in a dir
    records = load_dataset_records("data/my_train.parquet", split="train")    # one file
    records = load_dataset_records("openai/gsm8k", split="train")             # hub (config "main")

GSM8K's `answer` field is the worked solution ending in "#### 18": the record keeps the whole text
as `solution` and the number after the last "####", without thousands separators, as `answer`.
Rows that already have a bare `answer` (and perhaps a `solution`) pass through unchanged.
"""

from __future__ import annotations

import os
import re

from areal_lite.data.records import DATA_SUFFIXES, DatasetError, read_records_file, split_files

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Hub datasets whose rows need a config name; the user may name another with `name=`.
_DEFAULT_HUB_CONFIGS = {"openai/gsm8k": "main", "gsm8k": "main"}


def parse_gsm8k_answer(text: str) -> tuple[str, str] | None:
    """(final answer, full solution) from GSM8K's "...#### 1,000" text; None without a "####" marker."""
    if "####" not in text:
        return None
    final = text.rsplit("####", 1)[1].strip().replace(",", "")
    return final, text


def to_record(row: dict, *, split: str, index: int) -> dict:
    """A prompt record from a raw row; an `id` of `{split}-{index}` when the row has none.

    Missing or malformed fields are kept as they are, so `validate_records` can count them.
    """
    record = dict(row)
    record["id"] = str(row["id"]) if row.get("id") is not None else f"{split}-{index}"
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        record["answer"] = str(answer)
    elif isinstance(answer, str):
        parsed = parse_gsm8k_answer(answer)
        if parsed is not None:
            record["answer"], solution = parsed
            record.setdefault("solution", solution)
        else:
            record["answer"] = answer.strip()
    return record


def load_dataset_records(path_or_id: str, *, split: str, name: str | None = None) -> list[dict]:
    """Records of one split from a local file or directory, or a Hugging Face hub dataset id.

    A directory is searched for `{split}.jsonl|.json|.parquet` (or the hub's `{split}-*.parquet`);
    a single file is read whatever the split. Anything else that looks like `owner/name` goes to
    the hub through `datasets` (config `name`, "main" for GSM8K). Raises DatasetError, naming the
    path and the reason, when nothing can be read.
    """
    path = os.path.expanduser(path_or_id)
    if os.path.isdir(path):
        files = split_files(path, split)
        if not files:
            wanted = ", ".join(split + s for s in DATA_SUFFIXES)
            raise DatasetError(f"{path_or_id}: no {wanted} or {split}-*.parquet in the directory")
        rows = [row for f in files for row in read_records_file(f)]
    elif os.path.isfile(path):
        rows = read_records_file(path)
    elif _looks_like_path(path_or_id):
        raise DatasetError(f"{path_or_id}: dataset not found")
    else:
        rows = _load_hub(path_or_id, split, name if name is not None else _DEFAULT_HUB_CONFIGS.get(path_or_id))
    return [to_record(row, split=split, index=i) for i, row in enumerate(rows)]


def _looks_like_path(path: str) -> bool:
    return (
        path.startswith(("/", ".", "~"))
        or path.endswith(DATA_SUFFIXES)
        or path.count("/") > 1  # a hub id is `name` or `owner/name`
        or not _HUB_ID.match(path)
    )


def _load_hub(hub_id: str, split: str, name: str | None) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            f"{hub_id}: not a local path, and loading from the hub needs `datasets` (pip install 'areal_lite[math]')"
        ) from None
    try:
        ds = datasets.load_dataset(hub_id, name, split=split)
    except Exception as e:  # offline, unknown id, unknown split: all mean "cannot read it"
        text = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
        raise DatasetError(f"{hub_id}: cannot load split {split!r} from the Hugging Face hub ({reason})") from None
    return [dict(row) for row in ds]

"""From a dataset config section to validated prompt records."""

from __future__ import annotations

import logging

from areal_lite.data.arith import arith_records_from_options
from areal_lite.data.gsm8k import load_dataset_records
from areal_lite.data.prompts import check_template, prompt_token_ids
from areal_lite.data.records import DatasetError, validate_records

logger = logging.getLogger(__name__)
SYNTHETIC = {"synthetic:arith": arith_records_from_options}


def load_prompt_records(ds, tokenizer=None) -> tuple[list[dict], dict[str, int]]:
    """Records of one dataset section (`DatasetConfig`: path, split, prompt_template, system_prompt,
    max_prompt_len, invalid_records, max_records, synthetic), validated, and the counts by reason.

    `path` is a local file or directory, a hub id, or "synthetic:arith". Prompts longer than
    `max_prompt_len` tokens under the configured template are checked only when `tokenizer` is given.
    """
    if not ds.path:
        raise DatasetError("dataset path is empty: give a file, a directory, a hub id or synthetic:arith")
    check_template(ds.prompt_template)
    if ds.path.startswith("synthetic:"):
        if ds.path not in SYNTHETIC:
            raise DatasetError(f"{ds.path}: unknown synthetic dataset (known: {', '.join(SYNTHETIC)})")
        raw = SYNTHETIC[ds.path](dict(ds.synthetic or {}), ds.split)
    else:
        raw = load_dataset_records(ds.path, split=ds.split)

    def prompt_len(record: dict) -> int:
        return len(prompt_token_ids(record, tokenizer, ds.prompt_template, ds.system_prompt))

    records, counts = validate_records(
        raw,
        policy=ds.invalid_records,
        max_prompt_len=ds.max_prompt_len if tokenizer is not None else None,
        prompt_len_fn=prompt_len if tokenizer is not None else None,
        limit=ds.max_records,
    )
    skipped = {k: v for k, v in counts.items() if k not in ("seen", "kept") and v}
    if skipped:
        logger.warning("%s [%s]: skipped %s of %d records", ds.path, ds.split, skipped, counts["seen"])
    if not records:
        raise DatasetError(f"{ds.path} [{ds.split}]: no usable records ({counts})")
    return records, counts

"""Prompt data: GSM8K-style records from files or the hub, synthetic arithmetic, prompt templates.

A record is a plain dict that travels over msgpack: {"id", "question", "answer", "solution"?}.
"""

from areal_lite.data.arith import ArithSpec, arith_records_from_options, generate_arith_records
from areal_lite.data.gsm8k import load_dataset_records, parse_gsm8k_answer, to_record
from areal_lite.data.loader import load_prompt_records
from areal_lite.data.prompts import (
    CHAT_USER_TEMPLATE,
    PLAIN_TEMPLATE,
    check_template,
    completion_text,
    load_tokenizer,
    prompt_text,
    prompt_token_ids,
    sft_token_ids,
)
from areal_lite.data.records import DatasetError, read_records_file, validate_records

__all__ = [
    "ArithSpec",
    "CHAT_USER_TEMPLATE",
    "DatasetError",
    "PLAIN_TEMPLATE",
    "arith_records_from_options",
    "check_template",
    "completion_text",
    "generate_arith_records",
    "load_dataset_records",
    "load_prompt_records",
    "load_tokenizer",
    "parse_gsm8k_answer",
    "prompt_text",
    "prompt_token_ids",
    "read_records_file",
    "sft_token_ids",
    "to_record",
    "validate_records",
]

"""Prompt templates: a record's question as prompt text and token ids, and SFT examples.

Templates (`template=`):
  - "plain": `PLAIN_TEMPLATE`. "Question: ...\\nAnswer:" is the layout of GSM8K few-shot evaluation,
    so base models already continue it with a solution; the middle line asks for the "#### <number>"
    ending that the reference solutions use and `areal_lite.reward.math` reads first.
  - "chat": the tokenizer's chat template, one user message (`CHAT_USER_TEMPLATE`), an optional
    system message, `add_generation_prompt=True`; for instruction-tuned models.
  - any other string containing "{question}": a format of your own. `{question}` is the only
    placeholder; other braces are literal, so `\\boxed{}` needs no escaping.
With "plain" or a format string, a non-empty `system_prompt` goes first, followed by a blank line.
"""

from __future__ import annotations

from areal_lite.data.records import DatasetError

PLAIN_TEMPLATE = 'Question: {question}\nSolve it step by step and end with "#### <number>".\nAnswer:'
CHAT_USER_TEMPLATE = '{question}\nSolve it step by step and end with "#### <number>".'
TEMPLATE_NAMES = ("plain", "chat")


def check_template(template: str) -> None:
    """Raise DatasetError unless `template` is "plain", "chat" or a string with a {question} placeholder."""
    if template not in TEMPLATE_NAMES and "{question}" not in template:
        raise DatasetError(f"prompt template {template!r} is not 'plain', 'chat' or a format string with {{question}}")


def prompt_text(record: dict, tokenizer=None, template: str = "plain", system_prompt: str = "") -> str:
    """The prompt for `record["question"]` as text (the tokenizer is needed only for "chat")."""
    check_template(template)
    question = record["question"]
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DatasetError("prompt template 'chat' needs a tokenizer with a chat template; use 'plain'")
        messages = [{"role": "user", "content": CHAT_USER_TEMPLATE.replace("{question}", question)}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    fmt = PLAIN_TEMPLATE if template == "plain" else template
    text = fmt.replace("{question}", question)
    return f"{system_prompt}\n\n{text}" if system_prompt else text


def prompt_token_ids(record: dict, tokenizer, template: str = "plain", system_prompt: str = "") -> list[int]:
    """Token ids of the prompt for `record` (what the inference server is asked to continue)."""
    text = prompt_text(record, tokenizer, template, system_prompt)
    # A rendered chat template already holds any BOS text; plain text gets the tokenizer's own
    # special tokens (a BOS for Llama-style tokenizers, nothing for Qwen's).
    return list(tokenizer(text, add_special_tokens=template != "chat")["input_ids"])


def completion_text(record: dict, prompt: str) -> str:
    """The reference completion for SFT: the solution, after a space when the prompt ends in a word or ':'."""
    solution = record.get("solution") or f"#### {record['answer']}"
    sep = "" if not prompt or prompt[-1].isspace() or solution[:1].isspace() else " "
    return sep + solution


def sft_token_ids(
    record: dict, tokenizer, template: str = "plain", system_prompt: str = ""
) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of prompt + reference solution + EOS; the loss covers the completion only.

    The completion is tokenized on its own after the prompt ids, exactly as generated tokens follow
    a prompt at rollout time, so SFT and RL see the same token boundaries.
    """
    prompt_ids = prompt_token_ids(record, tokenizer, template, system_prompt)
    prompt = prompt_text(record, tokenizer, template, system_prompt)
    completion_ids = list(tokenizer(completion_text(record, prompt), add_special_tokens=False)["input_ids"])
    completion_ids.append(tokenizer.eos_token_id)
    return prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)


def load_tokenizer(path: str):
    """The Hugging Face tokenizer at `path` (a model directory or hub id), with a pad token set."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer

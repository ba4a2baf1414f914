"""GSM8K loading, record validation, prompt templates and SFT examples (no downloads)."""

from __future__ import annotations

import importlib.util
import json

import msgpack
import pytest

from areal_lite.config.schema import DatasetConfig
from areal_lite.data import (
    PLAIN_TEMPLATE,
    DatasetError,
    load_dataset_records,
    load_prompt_records,
    load_tokenizer,
    parse_gsm8k_answer,
    prompt_text,
    prompt_token_ids,
    sft_token_ids,
    to_record,
    validate_records,
)

JANET = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def test_parse_gsm8k_answer():
    assert parse_gsm8k_answer(JANET) == ("18", JANET)
    assert parse_gsm8k_answer("a\n#### 1,234,000") == ("1234000", "a\n#### 1,234,000")
    assert parse_gsm8k_answer("#### -3") == ("-3", "#### -3")
    assert parse_gsm8k_answer("no marker") is None


def test_to_record_shapes():
    assert to_record({"question": "Q?", "answer": JANET}, split="train", index=7) == {
        "question": "Q?", "answer": "18", "solution": JANET, "id": "train-7"}
    # Canonical rows pass through; an existing id and solution are kept; numbers become strings.
    row = {"id": 42, "question": "Q", "answer": " 5 ", "solution": "2+3=5\n#### 5"}
    assert to_record(row, split="x", index=0) == {
        "id": "42", "question": "Q", "answer": "5", "solution": "2+3=5\n#### 5"}
    assert to_record({"question": "Q", "answer": 7}, split="s", index=1)["answer"] == "7"
    assert "answer" not in to_record({"question": "Q"}, split="s", index=1)


def test_load_shared_gsm8k_dir(gsm8k_dir):
    test = load_dataset_records(str(gsm8k_dir), split="test")
    train = load_dataset_records(str(gsm8k_dir), split="train")
    assert (len(train), len(test)) == (7473, 1319)
    first = test[0]
    assert first["id"] == "test-0" and first["answer"] == "18"
    assert first["question"].startswith("Janet") and first["solution"].endswith("#### 18")
    assert {r["id"] for r in test}.isdisjoint({r["id"] for r in train})
    assert all("," not in r["answer"] for r in train)
    # Records travel over msgpack unchanged.
    assert msgpack.unpackb(msgpack.packb(test[:50])) == test[:50]
    # A single file is read whatever the split.
    one = load_dataset_records(str(gsm8k_dir / "test.jsonl"), split="eval")
    assert one[5]["answer"] == test[5]["answer"] and one[5]["id"] == "eval-5"


def test_json_and_parquet_files(tmp_path):
    rows = [{"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}, {"question": "1+1?", "answer": "#### 2"}]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    got = load_dataset_records(str(tmp_path), split="train")
    assert [(r["id"], r["answer"]) for r in got] == [("train-0", "4"), ("train-1", "2")]

    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    hub_layout = tmp_path / "hub" / "main"
    hub_layout.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), hub_layout / "test-00000-of-00001.parquet")
    got = load_dataset_records(str(tmp_path / "hub"), split="test")
    assert [r["answer"] for r in got] == ["4", "2"]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("data.jsonl", '{"question": "a"}\nnot json\n', "data.jsonl:2: invalid JSON line"),
        ("data.jsonl", "[1, 2]\n", "row 0 is a list, not a JSON object"),
        ("data.json", "[1, 2]\n", "row 0 is a int, not a JSON object"),
        ("data.json", "[{]", "data.json: invalid JSON"),
    ],
)
def test_malformed_files_raise_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset_records(str(path), split="train")
    assert "\n" not in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "path,reason",
    [
        ("./no/such/file.jsonl", "dataset not found"),
        ("owner/name/extra", "dataset not found"),
        ("areal-lite-test/no-such-dataset", "cannot load split 'train' from the Hugging Face hub"),
    ],
)
def test_unreachable_sources_raise_dataset_error(path, reason):
    if reason.endswith("hub") and importlib.util.find_spec("datasets") is None:
        reason = "loading from the hub needs `datasets`"
    # conftest sets HF_DATASETS_OFFLINE, so the hub id fails without touching the network.
    with pytest.raises(DatasetError) as info:
        load_dataset_records(path, split="train")
    assert str(info.value).startswith(path) and reason in str(info.value)
    assert "\n" not in str(info.value) and info.value.exit_code == 2


def test_directory_without_the_split(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    with pytest.raises(DatasetError, match="no test.jsonl"):
        load_dataset_records(str(tmp_path), split="test")


# --------------------------------------------------------------------------- validation

ROWS = [
    {"id": "ok", "question": "short?", "answer": "1"},
    {"id": "noanswer", "question": "q?"},
    {"id": "empty", "question": "   ", "answer": "2"},
    {"id": "long", "question": "x" * 50, "answer": "3"},
    {"id": "badtype", "question": ["q"], "answer": "4"},
    {"id": "ok2", "question": "fine?", "answer": "5"},
]


def test_validate_skip_counts_by_reason():
    kept, counts = validate_records(ROWS, policy="skip", max_prompt_len=20, prompt_len_fn=lambda r: len(r["question"]))
    assert [r["id"] for r in kept] == ["ok", "ok2"]
    assert counts == {"seen": 6, "kept": 2, "missing_field": 2, "empty_question": 1, "prompt_too_long": 1}
    # `limit` stops after that many kept records.
    kept, counts = validate_records(ROWS, limit=1)
    assert [r["id"] for r in kept] == ["ok"] and counts["seen"] == 1


@pytest.mark.parametrize(
    "rows,message",
    [
        (ROWS[1:2], "record noanswer: missing or non-string field\\(s\\) answer"),
        (ROWS[2:3], "record empty: empty question"),
        (ROWS[3:4], "record long: prompt is 50 tokens, longer than max_prompt_len=20"),
    ],
)
def test_validate_error_names_record_and_problem(rows, message):
    with pytest.raises(DatasetError, match=message):
        validate_records(rows, policy="error", max_prompt_len=20, prompt_len_fn=lambda r: len(r["question"]))


def test_validate_rejects_unknown_policy():
    with pytest.raises(ValueError, match="'drop'"):
        validate_records(ROWS, policy="drop")


# --------------------------------------------------------------------------- templates


def test_plain_and_custom_templates(tokenizer):
    record = {"question": "What is 2+3?", "answer": "5"}
    plain = prompt_text(record)
    assert plain == 'Question: What is 2+3?\nSolve it step by step and end with "#### <number>".\nAnswer:'
    assert plain == PLAIN_TEMPLATE.replace("{question}", record["question"])
    assert prompt_text(record, template="Q: {question} \\boxed{}\nA:") == "Q: What is 2+3? \\boxed{}\nA:"
    with_system = prompt_text(record, template="Q: {question}\nA:", system_prompt="Be brief.")
    assert with_system == "Be brief.\n\nQ: What is 2+3?\nA:"
    # Byte-level tokenizer: one token per byte, no BOS, and the ids decode back to the text.
    ids = prompt_token_ids(record, tokenizer)
    assert len(ids) == len(plain.encode()) and tokenizer.decode(ids) == plain
    with pytest.raises(DatasetError, match="not 'plain', 'chat'"):
        prompt_text(record, template="no placeholder")


def test_chat_template(tokenizer):
    record = {"question": "What is 2+3?", "answer": "5"}
    text = prompt_text(record, tokenizer, "chat", system_prompt="Be brief.")
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        '<|im_start|>user\nWhat is 2+3?\nSolve it step by step and end with "#### <number>".<|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    ids = prompt_token_ids(record, tokenizer, "chat", "Be brief.")
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(im_start) == 3 and ids[0] == im_start  # special tokens are single tokens
    assert tokenizer.decode(ids) == text
    no_system = prompt_text(record, tokenizer, "chat")
    assert no_system.startswith("<|im_start|>user\n")


def test_sft_example_masks_the_prompt(tokenizer):
    record = {"question": "What is 2+3?", "answer": "5", "solution": "2+3=5\n#### 5"}
    ids, mask = sft_token_ids(record, tokenizer, template="Q: {question}\nA:")
    prompt_len = len("Q: What is 2+3?\nA:")
    completion = " 2+3=5\n#### 5"  # a space after "A:", then the solution, then EOS
    assert len(ids) == prompt_len + len(completion) + 1 and len(mask) == len(ids)
    assert mask == [0] * prompt_len + [1] * (len(completion) + 1)
    assert ids[-1] == tokenizer.eos_token_id == 0
    assert tokenizer.decode(ids[prompt_len:-1]) == completion
    # After a chat prompt (ends in a newline) no space is added; without a solution, "#### answer".
    ids, mask = sft_token_ids({"question": "q", "answer": "7"}, tokenizer, template="chat")
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m]) == "#### 7<|endoftext|>"


# --------------------------------------------------------------------------- from the config section


def test_load_prompt_records_from_config(gsm8k_dir, tokenizer):
    ds = DatasetConfig(path=str(gsm8k_dir), split="test", max_prompt_len=200, max_records=20)
    records, counts = load_prompt_records(ds, tokenizer)
    assert len(records) == counts["kept"] == 20
    assert counts["seen"] == 20 + counts["prompt_too_long"] > 20  # most GSM8K prompts exceed 200 bytes
    assert all(len(prompt_token_ids(r, tokenizer)) <= 200 for r in records)
    with pytest.raises(DatasetError, match=r"record test-\d+: prompt is \d+ tokens"):
        load_prompt_records(DatasetConfig(path=str(gsm8k_dir), split="test", max_prompt_len=200,
                                          invalid_records="error"), tokenizer)


def test_load_prompt_records_synthetic(tokenizer):
    ds = DatasetConfig(path="synthetic:arith", split="test", synthetic={"num_records": 30, "seed": 3})
    records, counts = load_prompt_records(ds, tokenizer)
    assert len(records) == 30 and counts["prompt_too_long"] == 0
    assert records[0]["id"] == "arith-test-0"
    for bad, message in [
        (DatasetConfig(path="synthetic:nope"), "unknown synthetic dataset"),
        (DatasetConfig(path="synthetic:arith", synthetic={"num_record": 3}), "unknown option\\(s\\) num_record"),
        (DatasetConfig(path="synthetic:arith", prompt_template="chatty"), "not 'plain', 'chat'"),
        (DatasetConfig(path=""), "dataset path is empty"),
    ]:
        with pytest.raises(DatasetError, match=message):
            load_prompt_records(bad, tokenizer)

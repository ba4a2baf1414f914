"""Tiny transformers models and a byte-level tokenizer, built locally (no downloads).

Tests, benchmarks and the CPU quickstart use these: a Qwen2-architecture causal LM built
from a config, with a byte-level tokenizer the project builds with the `tokenizers`
library, saved as an ordinary Hugging Face model directory that `AutoModelForCausalLM`,
`AutoTokenizer`, the embedded inference server and the trainer all load.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyModelSpec:
    """Shape of a tiny Qwen2 model (defaults: ~0.1M parameters, fast on one CPU core)."""

    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True
    seed: int = 0


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode symbols (the ByteLevel alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def build_char_tokenizer():
    """A byte-level tokenizer with no merges: one token per byte, plus three special tokens.

    It is a ByteLevel BPE (like Qwen2's) with an empty merge list, so `AutoTokenizer` loads it
    back as the Qwen2 tokenizer class with identical behaviour; 259 tokens in all.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for symbol in _bytes_to_unicode().values():
        vocab[symbol] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_config(vocab_size: int, spec: TinyModelSpec, eos_token_id: int):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        torch_dtype="float32",
    )


def build_tiny_model_dir(path: str | os.PathLike, spec: TinyModelSpec | None = None) -> Path:
    """Write a randomly initialised tiny Qwen2 model and its tokenizer to `path`.

    Deterministic for a given spec (the seed is part of it). Returns the directory.
    """
    from transformers import Qwen2ForCausalLM

    spec = spec or TinyModelSpec()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer()
    config = build_tiny_config(len(tokenizer), spec, tokenizer.eos_token_id)
    # A local generator keeps library code free of global seeding side effects.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "areal_lite_tiny.json").write_text(json.dumps(asdict(spec), indent=2))
    return path

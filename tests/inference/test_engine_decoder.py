"""The engine's own decoder against the transformers forward of the same model (fp32, within 1e-4).

Each supported architecture is built small from its config (random weights, nothing downloaded).
Prompts of different lengths are prefilled packed into slots, a second group joins in later
slots, and every row then decodes teacher-forced tokens; each step's logits must equal the last
position's logits of one full forward over that row's whole sequence.
"""

from __future__ import annotations

import pytest
import torch

from areal_lite.inference.embedded.decoder import Decoder, unsupported_reason
from areal_lite.inference.embedded.kv_cache import SlotKVCache

SMALL = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, max_position_embeddings=256)


def _build(name: str):
    import transformers as tf

    if name == "qwen2":
        config = tf.Qwen2Config(**SMALL)
    elif name == "qwen3":  # per-head q/k norms, head_dim not hidden / heads
        config = tf.Qwen3Config(**SMALL, head_dim=24)
    elif name == "llama3-rope-biases":  # scaled rotary (the model's own rotary module), every bias present
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16, "rope_theta": 10000.0}
        config = tf.LlamaConfig(**SMALL, attention_bias=True, mlp_bias=True, rope_parameters=rope)
    elif name == "llama-dynamic-rope":  # frequencies follow the sequence length: the rotary module per step
        rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
        config = tf.LlamaConfig(**SMALL, rope_parameters=rope)
    elif name == "mistral-mha":  # as many key/value heads as query heads
        config = tf.MistralConfig(**{**SMALL, "num_key_value_heads": 4}, sliding_window=None)
    else:
        raise ValueError(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
        for p in model.parameters():  # random biases and norm weights too, so that each one matters
            p.data.normal_(0.0, 0.2)
    return model.eval()


def _packed(prompts: list[list[int]]):
    ids = torch.tensor([t for p in prompts for t in p])
    rows = torch.cat([torch.full((len(p),), i) for i, p in enumerate(prompts)])
    positions = torch.cat([torch.arange(len(p)) for p in prompts])
    last = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1
    return ids, positions, rows, max(len(p) for p in prompts), last


def _reference(model, seq: list[int]) -> torch.Tensor:
    return model(torch.tensor([seq])).logits[0, -1]


@pytest.mark.parametrize("name", ["qwen2", "qwen3", "llama3-rope-biases", "llama-dynamic-rope", "mistral-mha"])
def test_decoder_logits_equal_the_model_forward(name):
    model = _build(name)
    assert unsupported_reason(model) is None
    cache = SlotKVCache(model.config.num_hidden_layers, 5, 64, align=8)  # grows three times below
    decoder = Decoder(model, cache)
    assert (decoder._rope is None) == (name == "llama-dynamic-rope")
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 97, (n,), generator=gen).tolist() for n in (5, 13, 1)]
    late = [torch.randint(0, 97, (n,), generator=gen).tolist() for n in (9, 2)]
    with torch.inference_mode():
        cache.reserve(14)
        ids, positions, rows, width, last = _packed(seqs)
        logits = decoder.prefill(ids, positions, rows, 0, 3, width, last)
        for row, seq in enumerate(seqs):
            torch.testing.assert_close(logits[row], _reference(model, seq), atol=1e-4, rtol=0)
        for step in range(12):
            if step == 4:  # a second group joins in slots 3-4 while 0-2 hold their sequences
                ids, positions, rows, width, last = _packed(late)
                logits = decoder.prefill(ids, positions, rows, 3, 2, width, last)
                for row, seq in enumerate(late):
                    torch.testing.assert_close(logits[row], _reference(model, seq), atol=1e-4, rtol=0)
                seqs += late
            nxt = torch.randint(0, 97, (len(seqs),), generator=gen)
            lens = torch.tensor([len(s) for s in seqs])
            cache.reserve(int(lens.max()) + 1)
            logits = decoder.decode(nxt, lens, int(lens.max()) + 1)  # [B, V]
            for row, tok in enumerate(nxt.tolist()):
                seqs[row] = seqs[row] + [tok]
                torch.testing.assert_close(logits[row], _reference(model, seqs[row]), atol=1e-4, rtol=0)
    assert cache.length_capacity == 32  # grew 16 -> 24 -> 32, a quarter at least, in multiples of 8


def test_unsupported_models_say_why():
    import transformers as tf

    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50))
    assert "gpt2" in unsupported_reason(gpt2)
    gelu = tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL, hidden_act="gelu"))
    assert "gelu" in unsupported_reason(gelu)
    with pytest.raises(ValueError, match="gelu"):
        Decoder(gelu, SlotKVCache(2, 1, 8))


def test_engine_refuses_a_sliding_window_shorter_than_the_context(tmp_path):
    # Mistral-style configs name no layer types: the window applies to every layer.
    import transformers as tf

    from areal_lite.inference.embedded.engine import Engine, EngineConfig

    tf.MistralConfig(**SMALL, sliding_window=16).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="sliding-window"):
        Engine(EngineConfig(model_path=str(tmp_path), skip_tokenizer_init=True, context_length=64))
    engine = Engine(EngineConfig(model_path=str(tmp_path), skip_tokenizer_init=True, context_length=16))
    assert engine.batch.decoder is not None


def test_decoder_in_bfloat16_runs_the_same_math():
    # bf16 rounds differently in every op order, so this checks dtypes flow (masks, softmax in
    # float32, norms), not 1e-4 agreement: logits within bf16's few-percent reach of the model's.
    model = _build("qwen2").to(torch.bfloat16)
    cache = SlotKVCache(model.config.num_hidden_layers, 2, 32)
    decoder = Decoder(model, cache)
    seq = list(range(3, 14))
    with torch.inference_mode():
        cache.reserve(len(seq) + 1)
        ids, positions, rows, width, last = _packed([seq[:-1]])
        decoder.prefill(ids, positions, rows, 0, 1, width, last)
        logits = decoder.decode(torch.tensor(seq[-1:]), torch.tensor([len(seq) - 1]), len(seq))
        assert logits.dtype == torch.bfloat16
        ref = _reference(model, seq).float()
    assert (logits[0].float() - ref).abs().max() < 0.1 * ref.abs().max()
    assert int(logits[0].argmax()) == int(ref.argmax())


def test_weight_updates_in_place_reach_the_fused_projections():
    model = _build("qwen2")
    decoder = Decoder(model, SlotKVCache(model.config.num_hidden_layers, 1, 16))
    seq = [5, 9, 2, 7]

    def last_logits():
        decoder.cache.clear()
        decoder.cache.reserve(len(seq))
        ids, positions, rows, width, last = _packed([seq])
        return decoder.prefill(ids, positions, rows, 0, 1, width, last)[0]

    with torch.inference_mode():
        before = last_logits()
        attn = model.model.layers[1].self_attn
        # As weights.apply_named_tensors loads a checkpoint: a copy into each parameter's data.
        attn.k_proj.weight.data.copy_(torch.randn_like(attn.k_proj.weight))
        model.model.layers[0].mlp.up_proj.weight.data.mul_(1.5)
        updated = last_logits()
        torch.testing.assert_close(updated, _reference(model, seq), atol=1e-4, rtol=0)
        assert (updated - before).abs().max() > 1e-2
        # A parameter rebound to new storage (not an in-place update) is picked up too.
        attn.v_proj.weight = torch.nn.Parameter(torch.randn_like(attn.v_proj.weight))
        torch.testing.assert_close(last_logits(), _reference(model, seq), atol=1e-4, rtol=0)

"""ChatTurns: an episode built turn by turn (prompt, reply tokens as generated, observation ids) has
exactly the ids of the tokenizer's own `apply_chat_template` on the whole conversation, for three
template families on a BPE tokenizer with real merges (trained here with the `tokenizers` library);
templates that rewrite earlier turns are refused up front."""

from __future__ import annotations

import pytest

from areal_lite.envs import make_env
from areal_lite.rollout.multi_turn import ChatTemplateError, ChatTurns

CHATML = (  # Qwen2.5's layout, with its default system message when none is given
    r"{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    r"{%- endif %}{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    r"{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
LLAMA3 = (  # BOS, role headers, trimmed contents, no newline after the end-of-turn token
    r"{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
    r" + m['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    r"{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)
GEMMA = (  # no system role; the assistant is called "model"
    r"{{- bos_token }}{%- for m in messages %}{%- set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    r"{{- '<start_of_turn>' + role + '\n' + m['content'] + '<end_of_turn>\n' }}{%- endfor %}"
    r"{%- if add_generation_prompt %}{{- '<start_of_turn>model\n' }}{%- endif %}"
)
# Qwen3's behaviour: an empty think block on the last reply only, so adding a turn rewrites the one before.
DROPS_THINK = (
    r"{%- for m in messages %}{%- if m['role'] == 'assistant' and loop.last %}"
    r"{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' + m['content'] + '<|im_end|>\n' }}"
    r"{%- else %}{{- '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    r"{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
REPLIES = [
    "<answer>Left || Up</answer>",
    "The hole is below me, so I go right.\n<answer>Right</answer>",
    "<think>box at X, target at O</think> <answer>Down || Down</answer>",
    "Hmm",
]


def observations() -> list[str]:
    """Real observations: our environments' first messages and replies to the moves above."""
    out = []
    for name in ("frozenlake", "sokoban", "bandit"):
        env = make_env(name)
        out.append(env.reset(seed=0)[0])
        out.append(env.step(REPLIES[1])[0])
    return out


# Qwen2's (and, but for \p{N}{1,3}, Llama 3's) pre-tokenizer pattern: a run of newlines is a piece of
# its own, so the template's boundaries ("assistant\n", "<|end_header_id|>\n\n") never merge with the
# text that follows. GPT-2's pattern does not promise that ("\n\n<" splits as "\n", "\n", "<").
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE tokenizer laid out as Qwen2's, its merges trained on the texts of this test."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = observations() + REPLIES + ["system user assistant model helpful\n\n"] * 20
    core.train_from_iterator(corpus * 5, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|begin_of_text|>",
                                  additional_special_tokens=SPECIALS[2:])
    assert len(tok) > 600  # merges exist: multi-byte tokens, unlike the tiny model's char tokenizer
    return tok


def template_ids(tok, messages, generation_prompt):
    return list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)["input_ids"])


@pytest.mark.parametrize("template,system", [
    (CHATML, None), (CHATML, "Solve the puzzle."), (LLAMA3, None), (LLAMA3, "Solve the puzzle."), (GEMMA, None),
])
@pytest.mark.parametrize("closed", [True, False])
def test_incremental_ids_equal_the_template_of_the_whole_conversation(bpe, template, system, closed):
    bpe.chat_template = template
    turns = ChatTurns(bpe, system)
    obs = observations()
    ids = turns.prompt_ids(obs[0])
    messages = turns.messages(obs[0])
    for k, reply in enumerate(REPLIES):
        # What the model is asked to continue is exactly the template's prompt for the conversation so far.
        assert ids == template_ids(bpe, messages, True)
        # The reply as the model would sample it: the tokenizer's encoding, then its end-of-turn
        # token (closed) or nothing (cut off by the token budget).
        ids += turns.encode(reply) + ([turns.eot_id] if closed else [])
        messages.append({"role": "assistant", "content": reply})
        if k + 1 < len(REPLIES):
            ids += turns.observation_ids(obs[k + 1], reply_closed=closed)
            messages.append({"role": "user", "content": obs[k + 1]})
    whole = template_ids(bpe, messages, False)
    assert whole[: len(ids)] == ids and bpe.decode(whole[len(ids):]) == (turns._eot_rest if closed else turns.eot_text)



@pytest.mark.parametrize("template,system", [(CHATML, None), (LLAMA3, "Solve the puzzle."), (GEMMA, None)])
def test_a_demonstration_is_laid_out_as_a_sampled_episode(bpe, template, system):
    """episode_ids (SFT on scripted episodes) gives the ids of the whole conversation's template and
    trains exactly the replies and the end-of-turn token that closes each."""
    bpe.chat_template = template
    turns = ChatTurns(bpe, system)
    obs = observations()[: len(REPLIES)]
    ids, mask = turns.episode_ids(obs, REPLIES)
    messages = [*turns.messages(obs[0]), {"role": "assistant", "content": REPLIES[0]}]
    for o, r in zip(obs[1:], REPLIES[1:]):
        messages += [{"role": "user", "content": o}, {"role": "assistant", "content": r}]
    whole = template_ids(bpe, messages, False)
    assert whole[: len(ids)] == ids and bpe.decode(whole[len(ids):]) == turns._eot_rest
    trained = [i for i, m in zip(ids, mask) if m]
    assert trained == [t for r in REPLIES for t in [*turns.encode(r), turns.eot_id]]
    # each trained run starts right where the template's generation prompt ends
    starts = [k for k in range(len(mask)) if mask[k] and not mask[k - 1]]
    assert [ids[:k] for k in starts[:1]] == [turns.prompt_ids(obs[0])]
    with pytest.raises(ValueError, match="one observation before each reply"):
        turns.episode_ids(obs[:2], REPLIES[:1])

def test_end_of_turn_detection(bpe):
    for template, eot_text, eot_token in [(CHATML, "<|im_end|>\n", "<|im_end|>"), (LLAMA3, "<|eot_id|>", "<|eot_id|>"),
                                          (GEMMA, "<end_of_turn>\n", "<end_of_turn>")]:
        bpe.chat_template = template
        turns = ChatTurns(bpe)
        assert turns.eot_text == eot_text and bpe.convert_ids_to_tokens(turns.eot_id) == eot_token


def test_templates_that_cannot_grow_turn_by_turn_are_refused(bpe):
    bpe.chat_template = DROPS_THINK  # the reply before the last user message loses its think block
    with pytest.raises(ChatTemplateError, match="rewrites earlier turns"):
        ChatTurns(bpe)
    # As Qwen3 with thinking on: the generation prompt lacks the think block its rendered replies have.
    bpe.chat_template = DROPS_THINK.replace(r"'<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{%- endif %}",
                                            r"'<|im_start|>assistant\n' }}{%- endif %}")
    with pytest.raises(ChatTemplateError, match="does not render a reply as the generation prompt followed by"):
        ChatTurns(bpe)
    bpe.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        ChatTurns(bpe)

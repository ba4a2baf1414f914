"""The SFT warm start's examples: answer-only targets in the configured share, seeded, never in RL data."""

from __future__ import annotations

from areal_lite.config import load_config
from areal_lite.data import load_tokenizer
from areal_lite.tiny.prepare import _sft_examples


def _examples(tiny_model_dir, *overrides):
    cfg = load_config(["train_dataset.path=synthetic:arith", "prepare.sft.num_examples=400",
                       f"actor.path={tiny_model_dir}", *overrides])
    tok = load_tokenizer(str(tiny_model_dir))
    return [tok.decode(answer, skip_special_tokens=True) for _, answer in _sft_examples(cfg, tok)]


def test_answer_only_fraction_sets_the_share_of_bare_answers(tiny_model_dir):
    worked = _examples(tiny_model_dir)
    assert len(worked) == 400 and all("=" in a and "####" in a for a in worked)  # every target shows its work

    mixed = _examples(tiny_model_dir, "prepare.sft.answer_only_fraction=0.6")
    bare = [a for a in mixed if "=" not in a]
    assert all(a.strip().startswith("####") for a in bare)
    assert 0.5 < len(bare) / len(mixed) < 0.7  # 240 expected; binomial sd ~10
    # Same problems, same order: only the chosen targets lose their working, and the answer stays.
    for w, m in zip(worked, mixed):
        assert m == w or m.strip() == w.split("\n")[-1].strip()
    assert mixed == _examples(tiny_model_dir, "prepare.sft.answer_only_fraction=0.6")  # seeded
    # The draw follows the warm start's own seed, not the run's: every run of a recipe gets the same warm model.
    assert mixed == _examples(tiny_model_dir, "prepare.sft.answer_only_fraction=0.6", "seed=2")
    assert mixed != _examples(tiny_model_dir, "prepare.sft.answer_only_fraction=0.6", "prepare.sft.seed=2")

"""Run by test_rl_alignment.py (one gloo rank): the RL update's token alignment and gradient direction.

On arithmetic problems' reference solutions (the SFT path's data), with several micro-batches:
  - the engine's per-token log-probs (packed micro-batches) equal a plain per-sequence transformers
    forward's, on the answer tokens;
  - the engine's SFT gradient equals the plain forward's answer-NLL gradient;
  - the PPO actor's loss with advantage +1 on every answer token, proximal = behaviour = current
    log-probs (ratio 1) and token_mean reduction has the same gradient as the SFT loss.
Writes `{out}/alignment.json` with the measured differences and cosines.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import AutoModelForCausalLM

from areal_lite.config.schema import ActorConfig
from areal_lite.data import generate_arith_records, load_tokenizer, sft_token_ids
from areal_lite.trainer.batch import balance_across_ranks, build_microbatch
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.trainer.ppo import LossInputs, StepRows, build_ppo_loss_fn
from areal_lite.trainer.sft import sft_batch, sft_loss_fn
from areal_lite.utils.distributed import init_trainer_dist


def _flat_grad(params) -> torch.Tensor:
    return torch.cat([(p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).reshape(-1).clone()
                      for p in params])


def main() -> int:
    model_dir, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    d = init_trainer_dist("cpu")
    device = d.device
    tok = load_tokenizer(model_dir)
    examples = []
    for r in generate_arith_records(12, split="train"):
        ids, mask = sft_token_ids(r, tok, "{question}\n", None)
        cut = mask.index(1)
        examples.append((ids[:cut], ids[cut:]))
    batch = sft_batch(examples)
    # A small budget: several packed micro-batches, so the scatter back to sequences is exercised.
    engine = FSDPEngine(EngineSpec(path=model_dir, max_tokens_per_mb=256, weight_decay=0.0), d,
                        total_optimizer_steps=1)
    engine.initialize()
    mbs = engine.microbatches(batch, balance_across_ranks([int(x) for x in batch.seqlens], 1))[0]
    params = list(engine.model.parameters())
    total = float(batch.loss_mask.sum())

    def grad_of(loss_fn) -> torch.Tensor:
        engine.model.train()
        engine.optimizer.zero_grad(set_to_none=True)
        for seq_index in mbs:
            mb = build_microbatch(batch, seq_index, packed=True, device=device)
            lp, ent = engine._forward(mb, with_entropy=True)
            loss, _ = loss_fn(lp, ent, mb)
            loss.backward()
        return _flat_grad(params)

    cur = engine.forward_logp(batch, mbs)
    g_sft = grad_of(sft_loss_fn(batch, total))

    cfg = ActorConfig(path=model_dir)
    cfg.loss_reduction, cfg.use_decoupled_loss = "token_mean", True
    loss_fn = build_ppo_loss_fn(cfg, loss_norm_constant=64.0)
    rows = StepRows.of(batch)
    rows.behav_logp = rows.prox_logp = cur  # ratio 1, behaviour weight 1
    adv = rows.mask.float()  # advantage +1 on every answer token
    gen = batch.gen_lens()
    totals = (float(gen.sum()), float((gen > 0).sum()))
    g_ppo = grad_of(lambda lp, ent, mb: loss_fn(LossInputs.for_microbatch(mb, lp, ent, rows, adv, decoupled=True,
                                                                            totals=totals)))

    ref = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    ref.train()
    off = batch.offsets
    logp_diff = 0.0
    nll = torch.zeros(())
    for i, (prompt, answer) in enumerate(examples):
        ids = torch.tensor([prompt + answer])
        lp = ref(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
        ans = lp[len(prompt) - 1:]
        mine = cur[i, len(prompt): len(prompt) + len(answer)]  # [B, T] rows: sequence i's answer tokens
        logp_diff = max(logp_diff, float((ans.detach() - mine).abs().max()))
        nll = nll - ans.sum()
    (nll / total).backward()
    g_ref = _flat_grad(list(ref.parameters()))

    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    res = {
        "n_microbatches": len(mbs),
        "answer_tokens": total,
        "mask_is_answer": bool(all(int(batch.loss_mask[off[i]: off[i + 1]].sum()) == len(a)
                                   and not batch.loss_mask[off[i]: off[i] + len(p)].any()
                                   for i, (p, a) in enumerate(examples))),
        "max_logp_diff_vs_plain": logp_diff,
        "cos_sft_vs_plain": cos(g_sft, g_ref), "rel_sft_vs_plain": rel(g_sft, g_ref),
        "cos_ppo_vs_sft": cos(g_ppo, g_sft), "rel_ppo_vs_sft": rel(g_ppo, g_sft),
        "grad_norm": float(g_sft.norm()),
    }
    with open(f"{out}/alignment.json", "w") as f:
        json.dump(res, f)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

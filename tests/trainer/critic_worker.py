"""Run under torchrun by test_critic.py: the value model of adv_estimator=gae on a tiny model.

argv: model_dir out_dir. Writes, from rank 0, `{out}/w{world}.json` (facts) and
`{out}/{layout}-w{world}.safetensors` (values of a pass and the parameter delta of one update).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from areal_lite.config.schema import ActorConfig
from areal_lite.run.checkpoint import RecoverCheckpointer
from areal_lite.trainer.advantage import Advantages
from areal_lite.trainer.critic import build_critic, with_critic
from areal_lite.trainer.engine import EngineSpec, FSDPEngine
from areal_lite.trainer.rows import StepRows
from areal_lite.utils.distributed import init_trainer_dist, run_and_exit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layout_update_worker import make_batch  # noqa: E402


def critic_cfg(model: str, *, packing: bool, lr: float = 1e-2) -> ActorConfig:
    cfg = ActorConfig(path=model, adv_estimator="gae")
    cfg.mb_spec.packing, cfg.mb_spec.max_tokens_per_mb = packing, 96
    o = cfg.critic.optimizer
    # Adam with eps = 1 and tiny gradients moves each parameter by ≈ lr·g: the delta shows the gradient.
    o.lr, o.eps, o.weight_decay, o.gradient_clipping = lr, 1.0, 0.0, 0.0
    cfg.critic.value_clip = 0.05
    return cfg


def targets(batch, rows: StepRows) -> Advantages:
    """Returns the critic should learn: +1 on the answers of reward-1 sequences, −1 on the others."""
    sign = torch.as_tensor(batch.rewards, dtype=torch.float32) * 2 - 1
    ret = torch.where(rows.mask, sign[:, None], 0.0)
    return Advantages(keep=torch.ones(batch.num_seqs, dtype=torch.bool), rows=ret, stats={}, returns=ret)


def minibatches(batch, n: int):
    gen = batch.gen_lens()
    return [(s, (float(gen[s].sum()), float((gen[s] > 0).sum()))) for s in np.array_split(np.arange(batch.num_seqs), n)]


def reference_values(model_dir: str, state: dict, batch) -> torch.Tensor:
    """The same value model unsharded in plain transformers, one sequence at a time: row t = V(x_<t)."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(model_dir, num_labels=1)
    config.classifier_dropout = 0.0
    ref = AutoModelForTokenClassification.from_pretrained(model_dir, config=config, attn_implementation="eager")
    ref.load_state_dict({k: v.float() for k, v in state.items()})
    ref.eval()
    out = torch.zeros(batch.num_seqs, batch.max_len)
    off = batch.offsets
    with torch.no_grad():
        for i in range(batch.num_seqs):
            ids = torch.as_tensor(batch.input_ids[off[i]: off[i + 1]])[None]
            v = ref(input_ids=ids).logits[0, :, 0]
            out[i, 1: len(v)] = v[:-1]
    return out


def main() -> int:
    model, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    d = init_trainer_dist("cpu")
    world, facts = d.world_size, {}
    batch = make_batch(vocab=200)
    rows = StepRows.of(batch)
    for layout, packing in (("packed", True), ("padded", False)):
        torch.manual_seed(0)  # the same fresh head in every layout
        critic = build_critic(critic_cfg(model, packing=packing), d, total_optimizer_steps=100)
        rows.values = critic.values(batch)
        before = {k: v.clone() for k, v in critic.engine.full_state_dict().items()}
        if layout == "packed":
            facts["head_keys"] = sorted(k for k in before if "score" in k)
            if d.rank == 0:
                ref = reference_values(model, before, batch)
                facts["max_abs_vs_transformers"] = float((ref - rows.values)[:, 1:].abs().max())
                facts["value_scale"] = float(rows.values.abs().max())
        stats = critic.update(batch, rows, targets(batch, rows), minibatches(batch, 2))
        after = critic.engine.full_state_dict()
        if d.rank == 0:
            save_file({"values": rows.values.contiguous(), **{f"delta.{k}": (after[k] - before[k]).contiguous()
                                                                for k in after}},
                      os.path.join(out, f"{layout}-w{world}.safetensors"))
            facts[f"{layout}_stats"] = stats
        del critic
    facts.update(learning_and_checkpoint(model, d, batch, out))
    if d.rank == 0:
        with open(os.path.join(out, f"w{world}.json"), "w") as fh:
            json.dump(facts, fh)
    return 0


def learning_and_checkpoint(model: str, d, batch, out: str) -> dict:
    """The critic learns its targets; the recover checkpoint brings back policy, critic and both optimizers."""
    torch.manual_seed(0)
    cfg = critic_cfg(model, packing=True, lr=3e-3)
    cfg.critic.optimizer.eps = 1e-8
    critic = build_critic(cfg, d, total_optimizer_steps=100)
    actor = FSDPEngine(EngineSpec(path=model, lr=1e-3), d, total_optimizer_steps=100)
    actor.initialize()
    rows = StepRows.of(batch)
    mse = []
    for _ in range(12):
        rows.values = critic.values(batch)
        mse.append(critic.update(batch, rows, targets(batch, rows), minibatches(batch, 1))["critic/mse"])
    trained = with_critic(actor, critic)
    ckpt = RecoverCheckpointer(os.path.join(out, f"recover-w{d.world_size}"))
    path = ckpt.save(trained, {"step": 7}, 7)
    actor_saved = {k: v.clone() for k, v in actor.full_state_dict().items()}
    rows.values = saved = critic.values(batch)
    critic.update(batch, rows, targets(batch, rows), minibatches(batch, 1))
    next_after_save = critic.values(batch)
    for _ in range(3):  # move both models away from the checkpoint
        rows.values = critic.values(batch)
        critic.update(batch, rows, targets(batch, rows), minibatches(batch, 1))
    with torch.no_grad():
        for p in actor.model.parameters():
            p.add_(0.1)
    moved = critic.values(batch)
    state = ckpt.load(trained, path)
    restored = critic.values(batch)
    rows.values = restored
    critic.update(batch, rows, targets(batch, rows), minibatches(batch, 1))  # Adam's moments came back too
    next_after_load = critic.values(batch)
    actor_loaded = actor.full_state_dict()
    actor_error = max((float((actor_loaded[k] - v).abs().max()) for k, v in actor_saved.items()), default=0.0)
    return {
        "mse": mse,
        "trainer_state": state,
        "moved_by": float((moved - saved).abs().max()),
        "restored_error": float((restored - saved).abs().max()),
        "next_step_error": float((next_after_load - next_after_save).abs().max()),
        "next_step_moved": float((next_after_save - saved).abs().max()),
        "actor_restored_error": actor_error,
    }


if __name__ == "__main__":
    run_and_exit(main)

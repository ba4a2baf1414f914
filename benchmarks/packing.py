"""Trained tokens/s and padding waste of the PPO update with and without sequence packing.

    python -m benchmarks.packing [--json out.json] [--num-seqs 64] [--repeats 3] [--threads 1]

Workload: one RL batch of `--num-seqs` sequences (groups of 8 sharing a prompt of 32-96 tokens) whose
answer lengths are long-tailed (log-normal, median ~60 tokens, clipped to [8, max-len]), as RL answers
are: most short, a few near the budget. Same random Qwen2 model (hidden 256, 4 layers by default,
built locally), same token budget per micro-batch (`--max-tokens-per-mb`), same real PPO actor update
(decoupled loss, one optimizer step), one gloo rank in this process. Compared:
- packed: sequences side by side in rows as long as the micro-batch's longest sequence (or
  `--row-tokens`; first-fit decreasing; only each row's tail is padding), the trainer's default;
- packed_one_row: the whole micro-batch in one row (no padding; attention over a row costs its
  length squared, since on CPU the block-diagonal mask is dense);
- padded: `[B, T]` rows padded to the longest sequence of the micro-batch, in batch order;
- varlen: `actor.attn_impl: varlen`: the whole micro-batch in one row, causal attention per sequence
  (no mask, no padding), with `actor.mb_spec.share_prompts: false`;
- shared: varlen with shared prompts (the CPU default): a group's samples in one micro-batch carry their
  prompt once. The first three run transformers' SDPA (`attn_impl: sdpa`).
All layouts run on identical copies of the model, interleaved (packed, one row, padded, ...), and the
table reports the median over `--repeats`. Trained tokens/s counts real (unpadded) sequence tokens
through forward, backward and the optimizer step; padding waste is 1 - real / model tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Sequence

import numpy as np
import torch

from areal_lite.utils.distributed import init_trainer_dist, run_and_exit


def build_batch(num_seqs: int, vocab: int, max_len: int, seed: int, group_size: int = 8):
    """A long-tailed mixed-length batch with 0/1 rewards (both present in every group)."""
    from areal_lite.trainer.batch import SeqBatch

    rng = np.random.default_rng(seed)
    ids, mask, behav, seqlens, plens, rewards, gids = [], [], [], [], [], [], []
    n_groups = max(1, num_seqs // group_size)
    for g in range(n_groups):
        plen = int(rng.integers(32, 97))
        prompt = rng.integers(3, vocab, plen)
        for s in range(group_size):
            alen = int(np.clip(rng.lognormal(np.log(60), 0.9), 8, max_len - plen))
            ids.append(np.concatenate([prompt, rng.integers(3, vocab, alen)]))
            mask.append(np.concatenate([np.zeros(plen, bool), np.ones(alen, bool)]))
            behav.append(np.concatenate([np.zeros(plen), np.full(alen, -np.log(vocab))]).astype(np.float32))
            seqlens.append(plen + alen)
            plens.append(plen)
            rewards.append(float(s % 2))
            gids.append(g)
    flat = np.concatenate(ids).astype(np.int64)
    return SeqBatch(
        input_ids=flat, loss_mask=np.concatenate(mask), behav_logp=np.concatenate(behav),
        versions=np.zeros(flat.shape[0], np.int32), seqlens=np.asarray(seqlens), prompt_lens=np.asarray(plens),
        rewards=np.asarray(rewards), group_ids=np.asarray(gids), truncated=np.zeros(len(seqlens), bool),
        prompt_ids=[str(g) for g in gids],
    )


def _init_single_rank() -> None:
    import torch.distributed as dist

    from areal_lite.inference.embedded.local_server import free_port

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        dist.init_process_group("gloo", rank=0, world_size=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.packing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="Write the results here.")
    parser.add_argument("--num-seqs", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=512, help="Longest sequence (prompt + answer).")
    parser.add_argument("--max-tokens-per-mb", type=int, default=2048)
    parser.add_argument("--row-tokens", type=int, default=0,
                        help="Packed row length (actor.mb_spec.max_row_tokens; 0: the longest sequence).")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.max_tokens_per_mb < args.max_len:
        print("error: --max-tokens-per-mb must hold one sequence of --max-len tokens", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    _init_single_rank()

    from areal_lite.config.schema import ActorConfig
    from areal_lite.tiny.model import TinyModelSpec, build_tiny_model_dir
    from areal_lite.trainer.ppo import PPOActor, StepRows
    from areal_lite.trainer.engine import EngineSpec, FSDPEngine

    spec = TinyModelSpec(hidden_size=args.hidden_size, num_hidden_layers=args.num_layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=4 * args.hidden_size,
                         max_position_embeddings=max(512, args.max_len), seed=args.seed)
    # packed: rows of --row-tokens; packed_one_row: the whole micro-batch in one row; varlen: one row, attention
    # per sequence; shared: varlen with each group's prompt carried once. (packing, row tokens, attention, share)
    layouts = {"packed": (True, args.row_tokens, "sdpa", False),
               "packed_one_row": (True, args.max_tokens_per_mb, "sdpa", False), "padded": (False, 0, "sdpa", False),
               "varlen": (True, 0, "varlen", False), "shared": (True, 0, "varlen", True)}
    runs: dict[str, list[dict]] = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model_dir(f"{tmp}/model", spec))
        engines = {}
        d = init_trainer_dist("cpu")
        for name, (packed, row_tokens, attn, share) in layouts.items():
            e = FSDPEngine(EngineSpec(path=model_dir, lr=1e-6, max_tokens_per_mb=args.max_tokens_per_mb, packing=packed,
                                      max_row_tokens=row_tokens, attn_impl=attn, share_prompts=share),
                           d, total_optimizer_steps=args.repeats + 1)
            e.initialize()
            engines[name] = e
        n_params = sum(p.numel() for p in engines["packed"].model.parameters())
        vocab = engines["packed"].model.config.vocab_size
        actor = PPOActor.build(ActorConfig(path=model_dir), max_new_tokens=args.max_len,
                               loss_norm_constant=float(args.max_len), seed=args.seed)
        batch = build_batch(args.num_seqs, vocab, args.max_len, args.seed)
        gen = batch.gen_lens()
        print(f"model: hidden {spec.hidden_size}, {spec.num_hidden_layers} layers, {n_params / 1e6:.2f}M params; "
              f"{batch.num_seqs} sequences, {int(batch.seqlens.sum())} tokens (lengths {int(batch.seqlens.min())}-"
              f"{int(batch.seqlens.max())}, median {int(np.median(batch.seqlens))}; answers median {int(np.median(gen))}, "
              f"p90 {int(np.percentile(gen, 90))}, max {int(gen.max())}); budget {args.max_tokens_per_mb} tokens/mb; "
              f"{args.threads} torch thread(s)", flush=True)
        adv = actor.advantage_fn(batch, StepRows.of(batch))
        for rep in range(args.repeats + 1):  # the first round warms up every layout and is not counted
            for name, engine in engines.items():
                rows = actor.step_rows(engine, batch)  # no model pass: the proximal one is fused into the update
                t1 = time.perf_counter()
                stats = actor.ppo_update(engine, batch, rows, adv, step=rep)
                t2 = time.perf_counter()
                n_mb = len(actor.layout(engine, batch))
                if rep > 0:
                    runs[name].append({"train_s": t2 - t1, "microbatches": n_mb,
                                       "trained_tokens_per_s": stats["perf/trained_tokens_per_s"],
                                       "padding_waste": stats["perf/padding_waste"],
                                       "model_tokens_per_seq_token": stats["perf/model_tokens_per_seq_token"]})
                print(f"  round {rep}{' (warm-up)' if rep == 0 else ''} {name}: train {t2 - t1:.2f} s, "
                      f"{stats['perf/trained_tokens_per_s']:.0f} tok/s, waste {stats['perf/padding_waste']:.3f}",
                      flush=True)

    real_tokens = int(batch.seqlens.sum())
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "microbatches": rs[0]["microbatches"],
            "padding_waste": rs[0]["padding_waste"],
            "model_tokens_per_seq_token": rs[0]["model_tokens_per_seq_token"],
            "train_s": statistics.median(r["train_s"] for r in rs),
            "trained_tokens_per_s": statistics.median(r["trained_tokens_per_s"] for r in rs),
        }
    base = summary["padded"]["trained_tokens_per_s"]
    print(f"\n{'layout':<15}{'micro-batches':>15}{'padding waste':>15}{'model tok/seq tok':>19}{'train s':>10}"
          f"{'trained tok/s':>15}{'vs padded':>11}")
    for name, s in summary.items():
        print(f"{name:<15}{s['microbatches']:>15d}{s['padding_waste']:>15.3f}{s['model_tokens_per_seq_token']:>19.3f}"
              f"{s['train_s']:>10.2f}"
              f"{s['trained_tokens_per_s']:>15.0f}{s['trained_tokens_per_s'] / base:>11.2f}")
    report = {
        "workload": {
            "num_seqs": batch.num_seqs, "real_tokens": real_tokens,
            "seq_len": [int(batch.seqlens.min()), int(np.median(batch.seqlens)), int(batch.seqlens.max())],
            "answer_len": {"median": int(np.median(gen)), "p90": int(np.percentile(gen, 90)), "max": int(gen.max())},
            "max_tokens_per_mb": args.max_tokens_per_mb, "repeats": args.repeats,
            "model": {"hidden_size": spec.hidden_size, "num_layers": spec.num_hidden_layers, "params": n_params},
            "threads": args.threads, "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        },
        "results": summary,
        "runs": runs,
        "speedup_packed_vs_padded": summary["packed"]["trained_tokens_per_s"] / base,
        **{f"speedup_{name}_vs_packed": summary[name]["trained_tokens_per_s"] / summary["packed"]["trained_tokens_per_s"]
           for name in ("varlen", "shared")},
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    run_and_exit(main)

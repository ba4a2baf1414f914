"""Model preparation before a run: `python -m areal_lite.tiny.prepare --config CFG.yaml`.

With `prepare.model: tiny`, builds a tiny Qwen2 model with the project's byte-level tokenizer at
`actor.path` when that directory is missing, and, with `prepare.sft.enabled`, warm-starts it by SFT
on the configured data (synthetic arithmetic by default) through the FSDP engine. The result is
cached: a later run with the same `actor.path` reuses it. Concurrent runs that share the path
(e.g. an ablation) build it once, under a file lock; the directory appears atomically.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import random
import shutil
import sys
import time

from areal_lite.config import ExperimentConfig, exit_on_config_error, load_config

logger = logging.getLogger("areal_lite.prepare")


def _sft_examples(cfg: ExperimentConfig, tokenizer) -> list[tuple[list[int], list[int]]]:
    from areal_lite.data import load_prompt_records, sft_token_ids

    sft = cfg.prepare.sft
    ds = dataclasses.replace(cfg.train_dataset, path=sft.dataset, max_records=sft.num_examples, split="train")
    if sft.dataset.startswith("synthetic:"):
        # Warm-start problems come from a different seed than the RL prompts.
        options = dict(ds.synthetic)
        options["seed"] = int(options.get("seed", 0)) + 7919
        options["num_records"] = sft.num_examples
        ds = dataclasses.replace(ds, synthetic=options)
    records, _ = load_prompt_records(ds, tokenizer)
    # Answer-only examples: a seeded draw (the warm start's own seed), the same for every run of this recipe.
    rng = random.Random(f"sft-answer-only:{sft.seed}")
    examples = []
    for record in records:
        if rng.random() < sft.answer_only_fraction:
            record = {**record, "solution": f"#### {record['answer']}"}
        ids, mask = sft_token_ids(record, tokenizer, ds.prompt_template, ds.system_prompt)
        cut = mask.index(1)
        examples.append((ids[:cut], ids[cut:]))
    return examples


def run_sft_warm_start(cfg: ExperimentConfig, model_dir: str) -> list[float]:
    """SFT of the model in `model_dir`, in place (one process, gloo); returns the loss curve."""
    import torch
    import torch.distributed as dist

    from areal_lite.data import load_tokenizer
    from areal_lite.trainer.engine import EngineSpec, FSDPEngine
    from areal_lite.trainer.sft import run_sft
    from areal_lite.utils.distributed import init_trainer_dist
    from areal_lite.utils.net import free_port

    sft = cfg.prepare.sft
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port())), ("RANK", "0"),
                       ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    dist_ctx = init_trainer_dist("cpu")
    torch.manual_seed(sft.seed)
    tokenizer = load_tokenizer(model_dir)
    examples = _sft_examples(cfg, tokenizer)
    steps = sft.epochs * -(-len(examples) // sft.batch_size)
    longest = max(len(p) + len(a) for p, a in examples)
    spec = EngineSpec(path=model_dir, lr=sft.lr, weight_decay=0.0, lr_scheduler_type="cosine",
                      warmup_steps_proportion=0.05, min_lr_ratio=0.1, gradient_clipping=1.0,
                      max_tokens_per_mb=max(4096, longest), temperature=1.0, attn_impl=cfg.actor.attn_impl)
    engine = FSDPEngine(spec, dist_ctx, total_optimizer_steps=steps)
    engine.initialize()
    # The launcher's console reads these lines (areal_lite/launcher/common.py run_prepare): keep their form.
    logger.info("sft step 0/%d: %d examples, batch %d, %d epoch(s)", steps, len(examples), sft.batch_size, sft.epochs)
    t0 = time.time()

    def log(step: int, m: dict) -> None:
        if step % 10 == 0 or step == steps - 1:
            logger.info("sft step %d/%d nll %.4f lr %.2e (%.0fs)", step + 1, steps, m["sft/nll"], m["train/lr"],
                        time.time() - t0)

    losses = run_sft(engine, examples, epochs=sft.epochs, batch_size=sft.batch_size, seed=sft.seed, log_fn=log)
    out = f"{model_dir}.sft"
    engine.save_hf(out, tokenizer_path=model_dir)
    shutil.rmtree(model_dir)
    os.replace(out, model_dir)
    dist.destroy_process_group()
    return losses


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = load_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s prepare: %(message)s")
    path = os.path.abspath(cfg.actor.path)
    if cfg.prepare.model == "none" or os.path.isfile(os.path.join(path, "config.json")):
        return 0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(path, "config.json")):
            return 0  # another run built it while we waited
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        from areal_lite.tiny.model import TinyModelSpec, build_tiny_model_dir

        t0 = time.time()
        build_tiny_model_dir(tmp, TinyModelSpec(**dataclasses.asdict(cfg.prepare.tiny)))
        logger.info("built a tiny model in %s (%.1fs)", tmp, time.time() - t0)
        if cfg.prepare.sft.enabled:
            run_sft_warm_start(cfg, tmp)
        os.replace(tmp, path)
        logger.info("model ready at %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

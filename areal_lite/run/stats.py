"""Metrics sinks: `metrics.jsonl` (one object per step), a console progress line, wandb.

Only trainer rank 0 writes. wandb is optional: `stats_logger.wandb.mode` disabled | offline | online;
tests run it offline or disabled (online mode needs the network).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from areal_lite.run.rundir import writing

logger = logging.getLogger("areal_lite.stats")


class Timer:
    """Named phase timings for one step: `with timer("train"): ...` → `time/train`."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[f"time/{name}"] = self.times.get(f"time/{name}", 0.0) + time.perf_counter() - t0


def batch_metrics(batch, step: int, head_versions: Sequence[int], step_time: float) -> dict[str, float]:
    """Reward, length, staleness and throughput statistics of one training batch (a `SeqBatch`).

    `head_versions` are the policy versions at which each group's generation started; staleness of a
    group is `step - head_version`.
    """
    import numpy as np

    gen = batch.gen_lens().astype(np.float64)
    prompt = np.asarray(batch.prompt_lens, np.float64)
    stale = [step - v for v in head_versions] or [0]
    token_versions = batch.versions[batch.loss_mask]
    total_tokens = float(batch.seqlens.sum())
    return {
        "reward/mean": float(batch.rewards.mean()),
        "reward/std": float(batch.rewards.std()),
        "reward/max": float(batch.rewards.max()),
        "reward/min": float(batch.rewards.min()),
        "len/gen_mean": float(gen.mean()),
        "len/gen_max": float(gen.max()),
        "len/gen_min": float(gen.min()),
        "len/prompt_mean": float(prompt.mean()),
        "len/truncated_frac": float(batch.truncated.mean()),
        "staleness/max": float(max(stale)),
        "staleness/mean": float(np.mean(stale)),
        # The newest weights any trained token came from: never ahead of the trainer (≤ step).
        "staleness/newest_token_version": float(token_versions.max()) if token_versions.size else 0.0,
        "train/num_seqs": float(batch.num_seqs),
        "throughput/trained_tokens_per_s": total_tokens / max(step_time, 1e-9),
        "throughput/trained_gen_tokens_per_s": float(gen.sum()) / max(step_time, 1e-9),
    }


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class StatsLogger:
    def __init__(self, cfg, *, run_dir: str, run_name: str, config_dict: dict | None, rank: int, total_steps: int):
        self.cfg = cfg
        self.rank = rank
        self.total_steps = total_steps
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._fh = None
        self._wandb = None
        if rank != 0:
            return
        os.makedirs(run_dir, exist_ok=True)
        if cfg.wandb.mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity or None,
                name=cfg.wandb.name or run_name,
                mode=cfg.wandb.mode,
                dir=run_dir,
                config=config_dict,
                resume="allow",
            )

    def commit(self, step: int, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        record = {"step": step, **{k: _clean(v) for k, v in sorted(metrics.items())}}
        with writing("the metrics", self.path):
            if self._fh is None:
                # NOTE: opened at the first row, not before: resume() replaces the file (dropping the rows
                # of replayed steps), and a handle opened earlier would write to the replaced file.
                self._fh = open(self.path, "a", buffering=1)
            self._fh.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        if self.cfg.console:
            try:
                print(self.progress_line(step, metrics), file=sys.stdout, flush=True)
            except OSError:  # a full disk under the log file: the metrics file is the record
                pass

    def progress_line(self, step: int, m: dict[str, Any]) -> str:
        def g(key: str, fmt: str) -> str:
            v = m.get(key)
            return format(v, fmt) if isinstance(v, (int, float)) else "-"

        parts = [
            f"step {step + 1}/{self.total_steps}",
            f"v{m.get('version', '-')}",
            f"reward {g('reward/mean', '.3f')}",
            f"staleness max {g('staleness/max', '.0f')}",
            f"{g('throughput/trained_tokens_per_s', '.0f')} tok/s",
            f"{g('time/step', '.2f')} s/step",
        ]
        if "eval/accuracy" in m:
            parts.append(f"eval acc {g('eval/accuracy', '.3f')}")
        return "[areal_lite] " + " | ".join(parts)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

"""Metrics sinks: `metrics.jsonl` (one object per step), a console progress line, wandb, TensorBoard;
and what readers of a run directory need: its metrics parsed, their summary, the progress of a
phase inside the trainer (`progress.json`, read by the launcher's console).

Only trainer rank 0 writes. wandb is optional: `stats_logger.wandb.mode` disabled | offline | online;
tests run it offline or disabled (online mode needs the network).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import string
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

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


PROGRESS_FILE = "progress.json"  # in the run directory: the phase the trainer is in (an evaluation)


class ProgressFile:
    """Evaluation progress, `progress(set_name, done, total)`, written to `{run}/progress.json` for the
    launcher's console (which cannot see inside the trainer).

    Written atomically (temporary name, then rename), at most every `every_s` seconds and always at
    the first and the last prompt, so a reader never sees half a file and the trainer never waits.
    """

    def __init__(self, run_dir: str, every_s: float = 0.5):
        self.path = os.path.join(run_dir, PROGRESS_FILE)
        self.every_s = every_s
        self._last = 0.0
        self._started = 0.0

    def __call__(self, name: str, done: int, total: int) -> None:
        now = time.time()
        if done == 0:
            self._started = now
        elif done < total and now - self._last < self.every_s:
            return
        self._last = now
        phase = f"evaluation ({name})" if name else "evaluation"
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump({"phase": phase, "done": done, "total": total, "started": self._started}, fh)
            os.replace(tmp, self.path)
        except OSError as e:  # progress is for the eyes only: never stop the run for it
            logger.debug("progress file: %s", e)


def parse_progress(text: str) -> dict | None:
    """The contents of a progress file ({phase, done, total, started}), None when unreadable."""
    try:
        p = json.loads(text)
    except ValueError:
        return None
    if isinstance(p, dict) and isinstance(p.get("done"), int) and isinstance(p.get("total"), int):
        return p
    return None


def parse_metrics(text: str) -> list[dict]:
    """The step records of a `metrics.jsonl` text, in step order.

    A torn last line (a run killed mid-write) is skipped; when a run resumed and repeated steps, the
    last record of each step wins.
    """
    by_step: dict[int, dict] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def metric_series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have a numeric `key`; x is the number of steps trained."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:  # skip NaN
            xs.append(r["step"] + 1)
            ys.append(float(v))
    return xs, ys


def eval_series(records: Sequence[dict], prefix: str = "eval") -> tuple[list[int], list[float]]:
    """Held-out accuracy over steps trained, starting at 0 with the initial weights when logged.

    `prefix`: `eval` for valid_dataset, `eval/<name>` for a set of evaluator.extra_datasets.
    """
    xs, ys = metric_series(records, f"{prefix}/accuracy")
    init = [r[f"{prefix}/accuracy_initial"] for r in records
            if isinstance(r.get(f"{prefix}/accuracy_initial"), (int, float))]
    if init:
        xs, ys = [0, *xs], [float(init[0]), *ys]
    return xs, ys


def eval_set_names(records: Sequence[dict]) -> list[str]:
    """The metric prefixes of the held-out sets a run logged: `eval` first, then `eval/<name>`."""
    names = {k.rsplit("/", 1)[0] for r in records for k in r if k.startswith("eval") and k.endswith("/accuracy")}
    return sorted(names, key=lambda n: (n != "eval", n))


def algo_name(get: Callable[[str], Any]) -> str:
    """The `algo=` preset whose keys match a config's (`get("actor.loss_reduction")` -> its value), else 'custom'."""
    from areal_lite.config.presets import ALGO_PRESETS

    for name, preset in ALGO_PRESETS.items():
        if all(get(k) == v for k, v in preset.items()):
            return name
    return "custom"


def metrics_summary(records: Sequence[dict], fraction: float = 0.1) -> dict[str, float]:
    """Mean reward over the first and the last `fraction` of steps, eval accuracy at start and end,
    answer length at start and end, training wall time."""
    def ends(values: list[float]) -> tuple[float, float]:
        k = max(1, round(len(values) * fraction))
        return sum(values[:k]) / k, sum(values[-k:]) / k

    out: dict[str, float] = {"steps": float(len(records))}
    _, reward = metric_series(records, "reward/mean")
    if reward:
        out["reward_first"], out["reward_last"] = ends(reward)
        out["reward_gain"] = out["reward_last"] - out["reward_first"]
    for prefix in eval_set_names(records):
        _, acc = eval_series(records, prefix)
        if acc:
            tag = "eval" if prefix == "eval" else "eval_" + prefix.split("/", 1)[1]
            out[f"{tag}_accuracy_start"], out[f"{tag}_accuracy_end"] = acc[0], acc[-1]
    _, length = metric_series(records, "len/gen_mean")
    if length:
        out["gen_len_first"], out["gen_len_last"] = ends(length)
    _, elapsed = metric_series(records, "time/elapsed")
    if elapsed:
        out["train_wall_s"] = elapsed[-1]
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


WANDB_ID_FILE = "wandb_id"  # in the run directory: a resumed run continues the same wandb run
TENSORBOARD_DIR = "tensorboard"


class StatsLogger:
    """The trainer's metrics, on rank 0: `metrics.jsonl`, the console, wandb and TensorBoard.

    wandb gets the resolved config (`config_dict`) as the run's hyperparameters, and the run's id is
    kept in the run directory so that a resumed trainer continues the same wandb run. Its charts use
    our `step` as the x axis: the steps a resumed run repeats are logged again at their own step.
    TensorBoard's event files (`stats_logger.tensorboard`) start at the first step committed, and
    events of later steps an earlier attempt wrote are purged (they run again).
    """

    def __init__(self, cfg, *, run_dir: str, run_name: str, config_dict: dict | None, rank: int, total_steps: int):
        self.cfg = cfg
        self.rank = rank
        self.total_steps = total_steps
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._fh = None
        self._wandb = None
        self._tb = None
        if rank != 0:
            return
        os.makedirs(run_dir, exist_ok=True)
        if cfg.tensorboard:
            _require_tensorboard()
        if cfg.wandb.mode != "disabled":
            import wandb

            self._wandb = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity or None,
                name=cfg.wandb.name or run_name,
                mode=cfg.wandb.mode,
                dir=run_dir,
                config=config_dict,
                id=self._wandb_id(),
                resume="allow",
            )
            self._wandb.define_metric("step")
            self._wandb.define_metric("*", step_metric="step")

    def _wandb_id(self) -> str:
        """The run directory's wandb run id (a new one, recorded, on the first start)."""
        path = os.path.join(self.run_dir, WANDB_ID_FILE)
        try:
            with open(path) as fh:
                run_id = fh.read().strip()
            if run_id:
                return run_id
        except FileNotFoundError:
            pass
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # wandb's form
        with open(f"{path}.tmp", "w") as fh:
            fh.write(run_id + "\n")
        os.replace(f"{path}.tmp", path)
        return run_id

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
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._wandb is not None:
            self._wandb.log({**numbers, "step": step})
        if self.cfg.tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(self.run_dir, TENSORBOARD_DIR), purge_step=step)
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, global_step=step)
            self._tb.flush()
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
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard writes through it)
    except ImportError:
        from areal_lite.config.errors import ConfigError

        raise ConfigError("stats_logger.tensorboard=true needs the tensorboard package: "
                          "pip install tensorboard (or areal_lite[tensorboard])") from None

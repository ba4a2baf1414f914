"""What a person sees on the launcher's console: a start banner, a progress bar with ETA for each long
phase (model preparation, RL steps, evaluation), one line per step, and an end summary.

On a terminal the bars are tqdm's, drawn below the scrolling lines. Anywhere else (a CI log, a pipe,
the Slurm job log that the login node relays) there are no bars: the same progress arrives as plain
lines, at most one per tenth of a phase, each with its ETA. The lines tests and users grep for
(`started <name> (pid`, `step N/M | vN | reward`, `training finished`) are the same either way.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

import psutil
from tqdm import tqdm

from areal_lite.config.schema import ExperimentConfig, run_dir
from areal_lite.run.stats import PROGRESS_FILE, algo_name, metrics_summary, parse_metrics, parse_progress

PLAIN_EVERY_S = 10.0  # a plain progress line at most this often, unless a tenth of the phase went by
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}]"


def banner_lines(cfg: ExperimentConfig) -> list[str]:
    """Model, task, algorithm, staleness bound, steps and run directory, one line each."""
    model = cfg.actor.path
    if cfg.prepare.model == "tiny":
        t, sft = cfg.prepare.tiny, cfg.prepare.sft
        warm = f", SFT warm start on {sft.num_examples:,} examples" if sft.enabled else ""
        model = f"tiny Qwen2 ({t.num_hidden_layers} layers, hidden {t.hidden_size}{warm}) at {cfg.actor.path}"
    task = cfg.train_dataset.path + (f", environment {cfg.env.name}" if cfg.env.name else "")
    steps = f"{cfg.total_train_steps} steps" if cfg.total_train_steps else f"{cfg.total_train_epochs} epoch(s)"
    return [
        f"run       {cfg.experiment_name}/{cfg.trial_name}, seed {cfg.seed}",
        f"model     {model}",
        f"task      {task} ({cfg.train_dataset.batch_size} prompts x {cfg.gconfig.n_samples} answers per step, "
        f"{steps})",
        f"algorithm {algo_name(lambda key: _get(cfg, key))}, lr {cfg.actor.optimizer.lr:g}, staleness bound eta = "
        f"{cfg.rollout.max_head_offpolicyness}",
        f"run dir   {run_dir(cfg)}",
    ]


class Phase:
    """One long phase's progress: a tqdm bar on a terminal, throttled plain lines elsewhere."""

    def __init__(self, console: "Console", name: str, total: int, *, unit: str = "step", start: int = 0,
                 plain_lines: bool = True):
        self.console, self.name, self.total, self.unit = console, name, max(1, total), unit
        self.plain_lines = plain_lines  # False: the caller prints its own line per unit (RL steps)
        self.start = self.n = self._last_n = min(start, self.total)
        self.t0 = time.monotonic()
        self._last_line = 0.0
        self.bar = None
        if console.tty:
            self.bar = tqdm(total=self.total, initial=self.n, desc=name, unit=unit, file=console.file,
                            dynamic_ncols=True, leave=False)

    def update(self, n: int, **postfix: str) -> None:
        """The phase has done `n` of its `total` units (`postfix`: figures shown beside the bar)."""
        n = min(max(n, self.n), self.total)
        if self.bar is not None:
            self.bar.update(n - self.bar.n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=True)
            self.n = n
            return
        self.n = n
        now = time.monotonic()
        tenth = max(1, (self.total - self.start) // 10)
        due = n >= self.total or (n - self._last_n >= tenth and now - self._last_line >= 1.0) \
            or now - self._last_line >= PLAIN_EVERY_S
        if due and n > self._last_n and self.plain_lines:
            self.console.say(self.line(now) + "".join(f", {k} {v}" for k, v in postfix.items()))
            self._last_line, self._last_n = now, n

    def line(self, now: float | None = None) -> str:
        """`name: n/total (p%) [elapsed<remaining, rate]` (tqdm's figures, without the bar)."""
        elapsed = (now or time.monotonic()) - self.t0
        return tqdm.format_meter(self.n, self.total, elapsed, prefix=self.name, unit=self.unit,
                                 initial=self.start, bar_format=PLAIN_FORMAT)

    def eta(self) -> str:
        """The remaining time at the phase's rate so far ('?' before the first unit)."""
        if self.n <= self.start:
            return "?"
        rate = (self.n - self.start) / max(time.monotonic() - self.t0, 1e-9)
        return tqdm.format_interval((self.total - self.n) / rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Console:
    """The launcher's voice. `say` prints a line (above any bar); `phase` opens a progress bar."""

    def __init__(self, say: Callable[[str], None] | None = None, *, tty: bool | None = None, file=None):
        self.file = file or sys.stdout
        # A launcher given its own `say` (the Slurm job script's `[job]` lines) writes to a log: no bars.
        self.tty = (say is None and _isatty(self.file)) if tty is None else tty
        self._say = say or (lambda msg: self._write(f"[launcher] {msg}"))

    def _write(self, line: str) -> None:
        if self.tty:
            tqdm.write(line, file=self.file)
        else:
            print(line, file=self.file, flush=True)

    def say(self, msg: str) -> None:
        self._say(msg)

    def phase(self, name: str, total: int, *, unit: str = "step", start: int = 0, plain_lines: bool = True) -> Phase:
        return Phase(self, name, total, unit=unit, start=start, plain_lines=plain_lines)

    def banner(self, cfg: ExperimentConfig) -> None:
        for line in banner_lines(cfg):
            self.say(line)


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def launcher_wall_s() -> float:
    """Seconds since this launcher process started (the time a user waited, preparation included)."""
    return time.time() - psutil.Process().create_time()


def _isatty(f) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


class RunProgress:
    """The run as the supervisor follows it: a line per step logged in `metrics.jsonl` (with the ETA
    where there is no bar), the steps' bar, the trainer's evaluations (`progress.json`, once a
    second), and the end summary. Files are read through `read_file(path, offset)`, the backend's
    (a Ray actor or a shared file system may hold them)."""

    def __init__(self, console: Console, cfg: ExperimentConfig, root: str, *,
                 read_file: Callable[[str, int], str], line_fn: Callable[[dict, ExperimentConfig], str],
                 local_files: bool = True):
        self.console, self.cfg, self.root = console, cfg, root
        self.read_file, self.line_fn, self.local_files = read_file, line_fn, local_files
        self.metrics_path = os.path.join(root, "metrics.jsonl")
        self.progress_path = os.path.join(root, PROGRESS_FILE)
        self._pos = 0
        self._steps: Phase | None = None
        self._eval: Phase | None = None
        self._eval_started: float | None = None
        self._attempt: tuple[int, float] | None = None  # (steps before the trainer's clock began, its last reading)
        self._polled = 0.0

    def poll(self) -> None:
        chunk = self.read_file(self.metrics_path, self._pos)
        chunk = chunk[: chunk.rfind("\n") + 1]
        self._pos += len(chunk.encode())
        for line in chunk.splitlines():
            try:
                m = json.loads(line)
            except ValueError:
                continue
            self._step(m)
        if time.monotonic() - self._polled >= 1.0:
            self._polled = time.monotonic()
            self._evaluation()

    def _step(self, m: dict) -> None:
        self._close_eval()
        step = int(m.get("step", 0)) + 1
        if self._steps is None:  # a resumed run's bar starts where it resumed
            self._steps = self.console.phase("RL steps", self.cfg.total_train_steps or step, start=step - 1,
                                             plain_lines=False)
        reward = m.get("reward/mean")
        self._steps.update(step, **({"reward": f"{reward:.3f}"} if isinstance(reward, (int, float)) else {}))
        eta = "" if self.console.tty or step >= self._steps.total else f" | ETA {self._eta(m, step)}"
        self.console.say(self.line_fn(m, self.cfg) + eta)

    def _eta(self, m: dict, step: int) -> str:
        """The remaining steps at the trainer's pace: `time/elapsed` is its clock since it (re)started."""
        elapsed = m.get("time/elapsed")
        if not isinstance(elapsed, (int, float)):
            return self._steps.eta() if self._steps is not None else "?"
        if self._attempt is None or elapsed < self._attempt[1]:  # a (re)started trainer: a new clock
            self._attempt = (step - 1, elapsed)
        self._attempt = (self._attempt[0], elapsed)
        per_step = elapsed / max(step - self._attempt[0], 1)
        return tqdm.format_interval(per_step * (self._steps.total - step))

    def _evaluation(self) -> None:
        p = parse_progress(self.read_file(self.progress_path, 0))
        if p is None or not str(p.get("phase", "")).startswith("eval"):
            return
        if p.get("started") != self._eval_started:
            self._close_eval()
            self._eval_started = p.get("started")
            if p["done"] >= p["total"]:
                return  # it ended before we looked: its figures come with the step's line
            self._eval = self.console.phase(p["phase"], p["total"], unit="prompt")
        if self._eval is not None:
            self._eval.update(p["done"])
            if p["done"] >= p["total"]:
                self._close_eval()

    def _close_eval(self) -> None:
        if self._eval is not None:
            self._eval.close()
            self._eval = None

    def clear(self) -> None:
        """A launch starts without the last one's phase (a resumed run's stale evaluation)."""
        try:
            os.remove(self.progress_path)
        except OSError:
            pass

    def summary(self) -> None:
        """The end of a run in a few lines (after `training finished`)."""
        self._close_eval()
        if self._steps is not None:
            self._steps.close()
        records = parse_metrics(self.read_file(self.metrics_path, 0))
        for line in summary_lines(metrics_summary(records), self.cfg, self.root, launcher_wall_s(),
                                  final_model=self._final_model()):
            self.console.say(line)

    def _final_model(self) -> str | None:
        path = os.path.join(self.root, "checkpoints", "final")
        if not self.cfg.saver.save_final:
            return None
        if self.local_files and not os.path.isfile(os.path.join(path, "config.json")):
            return None
        return path


def summary_lines(s: dict[str, float], cfg: ExperimentConfig, root: str, wall_s: float, *,
                  final_model: str | None) -> list[str]:
    """The end summary from `run.stats.metrics_summary` figures: time, reward and held-out accuracy
    from first to last, answer length, where the model is, how to plot the curves."""
    lines = [f"summary: {s.get('steps', 0):.0f} steps, {tqdm.format_interval(wall_s)} in all "
             f"(the launcher's wall time, model preparation included)"]
    if "reward_gain" in s:
        lines.append(f"reward: {s['reward_first']:.3f} -> {s['reward_last']:.3f} ({s['reward_gain']:+.3f}; "
                     "mean of the first and the last 10% of steps)")
    for key in sorted(k for k in s if k.endswith("_accuracy_start")):
        tag = key.removesuffix("_accuracy_start")
        name = "held-out accuracy" + ("" if tag == "eval" else f" ({tag.removeprefix('eval_')})")
        lines.append(f"{name}: {s[key]:.3f} -> {s[tag + '_accuracy_end']:.3f} (before training -> last evaluation)")
    if "gen_len_first" in s:
        lines.append(f"answer length: {s['gen_len_first']:.0f} -> {s['gen_len_last']:.0f} tokens")
    if final_model:
        lines.append(f"final model: {final_model} (Hugging Face format, with its tokenizer)")
    elif cfg.saver.save_final:
        lines.append(f"final model: not found under {os.path.join(root, 'checkpoints')}")
    else:
        lines.append("final model: not saved (saver.save_final=false)")
    rel = os.path.relpath(root)
    lines.append(f"curves: python -m areal_lite.tools.plot {root if rel.startswith('..') else rel}")
    return lines

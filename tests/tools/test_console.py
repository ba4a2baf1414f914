"""The launcher's console (areal_lite/launcher/console.py): the banner, progress as tqdm bars on a terminal
and as throttled plain lines elsewhere, the per-step lines with their ETA, the trainer's evaluation
progress read from the run directory, and the end summary."""

from __future__ import annotations

import io
import json
import os
import re

import pytest

from areal_lite.config import load_config
from areal_lite.launcher import console as console_mod
from areal_lite.launcher.console import Console, RunProgress, banner_lines
from areal_lite.launcher.supervisor import progress_line
from areal_lite.run.stats import ProgressFile

CPU = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "math", "gsm8k_drgrpo_cpu.yaml")
GPU_TASK = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "math", "gsm8k.yaml")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(console_mod.time, "monotonic", c)
    return c


def plain_console():
    lines: list[str] = []
    return Console(lines.append, tty=False), lines


def test_banner_names_model_task_algorithm_eta_and_run_dir():
    cfg = load_config(["--config", CPU])
    lines = banner_lines(cfg)
    assert lines[0] == "run       quickstart/cpu, seed 1"
    assert "tiny Qwen2 (2 layers, hidden 128, SFT warm start on 40,000 examples)" in lines[1]
    assert lines[2] == "task      synthetic:arith (32 prompts x 8 answers per step, 80 steps)"
    assert lines[3] == "algorithm drgrpo, lr 0.0002, staleness bound eta = 2"
    assert lines[4] == "run dir   ./runs/quickstart/cpu"
    for preset in ("grpo", "drgrpo", "drgrpo_soft", "dapo"):
        assert banner_lines(load_config(["--config", GPU_TASK, f"algo={preset}"]))[3].startswith(
            f"algorithm {preset},")
    custom = load_config(["--config", GPU_TASK, "actor.loss_reduction=token_mean"])
    assert banner_lines(custom)[3].startswith("algorithm custom,")


def test_plain_lines_are_throttled_and_carry_the_eta(clock):
    console, lines = plain_console()
    phase = console.phase("SFT warm start", 100)
    for n in range(1, 101):
        clock.t += 0.5
        phase.update(n, nll="0.5")
    # the first unit, then one line per tenth of the phase (each at least a second apart), and the end
    done = [int(re.match(r"SFT warm start: (\d+)/100 \(\d+%\) \[\d\d:\d\d<\d\d:\d\d, ", x).group(1)) for x in lines]
    assert done == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100], lines
    assert lines[1].startswith("SFT warm start: 11/100 (11%) [00:05<00:44,  2.00step/s]"), lines[1]
    assert all(x.endswith(", nll 0.5") for x in lines)


def test_a_slow_phase_still_speaks_every_ten_seconds(clock):
    console, lines = plain_console()
    phase = console.phase("evaluation", 1000, unit="prompt")
    for n in range(1, 31):
        clock.t += 4.0
        phase.update(n)
    assert [int(x.split()[1].split("/")[0]) for x in lines] == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_under_the_lines():
    term = FakeTerminal()
    console = Console(file=term)
    assert console.tty
    phase = console.phase("RL steps", 4)
    for n in range(1, 5):
        console.say(f"step {n}/4")
        phase.update(n, reward="0.500")
    phase.close()
    out = term.getvalue()
    assert "\r" in out and re.search(r"RL steps: +100%\|[^|]+\| 4/4 \[", out)
    for n in range(1, 5):
        assert f"[launcher] step {n}/4\n" in out  # whole lines, above the bar
    assert Console(lambda _: None, file=term).tty is False  # a launcher with its own `say` writes a log


def write_metrics(path, steps, start=0):
    with open(path, "a") as fh:
        for s in range(start, steps):
            rec = {"step": s, "version": s + 1, "reward/mean": 0.2 + 0.1 * s, "staleness/max": 1.0,
                   "time/step": 2.0, "len/gen_mean": 10.0 + s, "time/elapsed": 2.0 * (s + 1)}
            if s == 0:
                rec["eval/accuracy_initial"] = 0.1
            if s == steps - 1:
                rec["eval/accuracy"] = 0.6
            fh.write(json.dumps(rec) + "\n")


def test_run_progress_lines_evaluation_and_summary(tmp_path, clock):
    cfg = load_config(["--config", CPU, "total_train_steps=4", f"cluster.fileroot={tmp_path}"])
    root = tmp_path / "quickstart" / "cpu"
    root.mkdir(parents=True)
    console, lines = plain_console()
    progress = RunProgress(console, cfg, str(root), read_file=console_mod_read, line_fn=progress_line)
    write_metrics(root / "metrics.jsonl", 2)
    clock.t += 3.0
    progress.poll()
    # ETA at the trainer's pace (time/elapsed: 2 s a step): 3 steps left, then 2
    assert lines[0].startswith("step 1/4 | v1 | reward 0.200") and lines[0].endswith(" | ETA 00:06")
    assert lines[1].startswith("step 2/4 | v2 | reward 0.300") and lines[1].endswith(" | ETA 00:04")
    # The trainer's evaluation, read from progress.json once a second.
    evals = ProgressFile(str(root), every_s=0.0)
    evals("", 0, 50)
    evals("", 20, 50)
    clock.t += 1.5
    progress.poll()
    assert lines[-1].startswith("evaluation: 20/50 (40%)"), lines
    evals("", 50, 50)
    clock.t += 1.5
    progress.poll()
    assert lines[-1].startswith("evaluation: 50/50 (100%)"), lines
    write_metrics(root / "metrics.jsonl", 4, start=2)
    progress.poll()
    assert lines[-1].startswith("step 4/4 | v4") and "ETA" not in lines[-1] and "eval acc 0.600" in lines[-1]
    del lines[:]
    progress.summary()
    assert lines[0].startswith("summary: 4 steps, ")
    assert lines[1] == "reward: 0.200 -> 0.500 (+0.300; mean of the first and the last 10% of steps)"
    assert lines[2] == "held-out accuracy: 0.100 -> 0.600 (before training -> last evaluation)"
    assert lines[3] == "answer length: 10 -> 13 tokens"
    assert lines[4] == f"final model: not found under {root / 'checkpoints'}"
    assert lines[5].startswith("curves: python -m areal_lite.tools.plot ")
    (root / "checkpoints" / "final").mkdir(parents=True)
    (root / "checkpoints" / "final" / "config.json").write_text("{}")
    del lines[:]
    progress.summary()
    assert f"final model: {root / 'checkpoints' / 'final'} (Hugging Face format, with its tokenizer)" in lines


def console_mod_read(path, pos):
    from areal_lite.launcher.common import read_from

    return read_from(path, pos)

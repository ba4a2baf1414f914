"""A new user's run through the real local launcher: what the console shows, the model that is kept,
the README's snippet that loads it, the evaluation command, and the metrics sinks (wandb offline,
TensorBoard) written in a real run directory.

One short run serves every test of this file (module fixture): a tiny model prepared by the
launcher with a short SFT warm start (so its progress shows), 3 RL steps, an evaluation of
valid_dataset and of a second held-out set before training and after step 3.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.e2e.conftest import REPO, explain, launch, read_jsonl, write_config
from tests.tools.wandb_records import read_records, run_config

STEPS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ux")
    extra = {
        "prepare": {"model": "tiny", "sft": {"enabled": True, "num_examples": 640, "batch_size": 32}},
        "saver": {"save_final": True},
        "evaluator": {"freq_steps": STEPS, "extra_datasets": {"easy": "synthetic:arith"}},
        "stats_logger": {"tensorboard": True, "wandb": {"mode": "offline", "project": "ux-test"}},
        "total_train_steps": STEPS,
    }
    cfg = write_config(tmp, tmp / "model", extra)
    proc = launch("areal_lite.launcher.local", cfg, timeout=900,
                  env={"OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "WANDB_MODE": "offline"})
    rdir = tmp / "runs" / "e2e" / "t0"
    assert proc.returncode == 0, explain(proc, rdir)
    return proc, rdir, cfg


def test_console_banner_progress_and_summary(run):
    proc, rdir, _ = run
    out = proc.stdout
    # The banner comes first: run, model, task, algorithm, eta, run directory.
    first = [line for line in out.splitlines() if line.startswith("[launcher] ")][:5]
    assert [line.split()[1] for line in first] == ["run", "model", "task", "algorithm", "run"], out
    assert "staleness bound eta = 1" in out and f"run dir   {rdir}" in out
    # The SFT warm start as plain lines with the ETA (no terminal here), then the model.
    sft = re.findall(r"SFT warm start: (\d+)/(\d+) \(\d+%\) \[[\d:]+<[\d:?]+, [^\]]+\], nll [0-9.]+", out)
    assert len(sft) >= 2 and sft[-1][0] == sft[-1][1], out
    assert "preparing the model" in out and re.search(r"model ready in \d+s", out)
    # One line per step, with the ETA until the last; the lines tests grep for are unchanged.
    for step in range(1, STEPS + 1):
        assert re.search(rf"step {step}/{STEPS} \| v{step} \| reward [0-9.]+", out), out
    assert re.search(rf"step 1/{STEPS} .*\| ETA [\d:]+", out) and "started trainer (pid" in out
    assert "training finished" in out
    # The summary after it: steps and time, reward, both held-out sets, the model, the plot command.
    tail = out[out.index("training finished"):]
    assert re.search(rf"summary: {STEPS} steps, [\d:]+ in all", tail)
    assert re.search(r"reward: [0-9.]+ -> [0-9.]+ \([+-][0-9.]+", tail)
    assert re.search(r"held-out accuracy: [0-9.]+ -> [0-9.]+", tail)
    assert re.search(r"held-out accuracy \(easy\): [0-9.]+ -> [0-9.]+", tail)
    assert f"final model: {rdir / 'checkpoints' / 'final'}" in tail
    assert "curves: python -m areal_lite.tools.plot " in tail
    assert "\x1b[" not in out and "\r" not in out  # no bar drawing in a log


def test_final_model_is_kept_and_the_readme_snippet_samples_from_it(run):
    _, rdir, _ = run
    final = rdir / "checkpoints" / "final"
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    assert (final / "tokenizer.json").is_file() and (final / "tokenizer_config.json").is_file()
    readme = (REPO / "README.md").read_text()
    snippet = re.search(r"<!-- use-model:start -->\n```python\n(.*?)```\n<!-- use-model:end -->", readme, re.S).group(1)
    assert 'path = "runs/quickstart/cpu/checkpoints/final"' in snippet
    code = snippet.replace("runs/quickstart/cpu/checkpoints/final", str(final))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("--- ") == 4  # one greedy answer, then four sampled ones


def test_metrics_of_each_held_out_set(run):
    _, rdir, _ = run
    metrics = read_jsonl(rdir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    first, last = metrics[0], metrics[-1]
    for prefix in ("eval", "eval/easy"):
        assert 0 <= first[f"{prefix}/accuracy_initial"] <= 1 and 0 <= last[f"{prefix}/accuracy"] <= 1
        assert last[f"{prefix}/num_prompts"] == last["eval/num_prompts"] > 0  # the same records, read twice
        assert last[f"{prefix}/pass@1"] == last[f"{prefix}/accuracy"]  # one sample: pass@1 is accuracy
    progress = json.loads((rdir / "progress.json").read_text())
    assert progress["phase"] == "evaluation (easy)" and progress["done"] == progress["total"] > 0


def test_wandb_offline_run_has_the_config_and_tensorboard_the_scalars(run):
    _, rdir, _ = run
    run_id = (rdir / "wandb_id").read_text().strip()
    runs = list((rdir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1, list((rdir / "wandb").iterdir())
    run_id, wandb_cfg = run_config(read_records(next(runs[0].glob("run-*.wandb"))))
    assert run_id == rdir.joinpath("wandb_id").read_text().strip()
    assert wandb_cfg["total_train_steps"] == STEPS and wandb_cfg["actor"]["optimizer"]["lr"] == 1e-3
    assert wandb_cfg["evaluator"]["extra_datasets"] == {"easy": "synthetic:arith"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(rdir / "tensorboard"))
    acc.Reload()
    metrics = read_jsonl(rdir / "metrics.jsonl")
    rewards = acc.Scalars("reward/mean")
    assert [e.step for e in rewards] == list(range(STEPS))
    assert [e.value for e in rewards] == pytest.approx([m["reward/mean"] for m in metrics])
    assert [e.step for e in acc.Scalars("eval/easy/accuracy")] == [STEPS - 1]


def test_evaluate_command_scores_the_run(run, tmp_path):
    _, rdir, _ = run
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, "-m", "areal_lite.tools.evaluate", str(rdir), "--n", "4", "--temperature", "1.0",
         "--max-prompts", "8", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["model"] == str(rdir / "checkpoints" / "final") and report["n"] == 4
    assert set(report["sets"]) == {"valid", "easy"}
    for figures in report["sets"].values():
        assert 0 < figures["num_prompts"] <= 8
        assert 0 <= figures["greedy_accuracy"] <= 1
        # pass@k rises with k, from avg@4 (pass@1 is the mean correctness of one answer)
        assert figures["pass@1"] == pytest.approx(figures["avg@4"])
        assert figures["pass@1"] <= figures["pass@2"] <= figures["pass@4"] <= 1
    assert re.search(r"valid: num_prompts \d+, greedy_accuracy [0-9.]+, greedy_gen_len_mean [0-9.]+, avg@4", proc.stdout)


def test_evaluate_command_mistakes_are_one_line(tmp_path):
    cases = [
        ([str(tmp_path / "nope")], "model not found"),
        ([str(tmp_path)], "is neither a model directory"),
    ]
    for args, expected in cases:
        proc = subprocess.run([sys.executable, "-m", "areal_lite.tools.evaluate", *args],
                              capture_output=True, text=True, timeout=120)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and expected in err and "\n" not in err, err

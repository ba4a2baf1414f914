"""`python -m areal_lite.tools.plot`: a PNG of reward, eval accuracy, answer length, staleness, throughput and step
time from metrics.jsonl, titled from config.yaml; several runs overlaid; steps or wall time on the x axis."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from areal_lite.tools.plot import eval_series, main, moving_average, read_metrics, summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(path, steps=20, *, eval_every=5, torn_tail=False):
    """A synthetic metrics.jsonl shaped like the trainer's: reward rises from 0.2 to 0.7."""
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in range(steps):
        rec = {"step": s, "version": s + 1, "reward/mean": 0.2 + 0.5 * s / (steps - 1),
               "staleness/max": float(s % 3), "staleness/mean": (s % 3) / 2,
               "throughput/trained_tokens_per_s": 1000.0 + 10 * s, "len/gen_mean": 30.0 - s * 0.5,
               "time/elapsed": 2.0 * (s + 1)}
        if s == 0:
            rec["eval/accuracy_initial"] = 0.25
        if (s + 1) % eval_every == 0:
            rec["eval/accuracy"] = 0.25 + 0.02 * (s + 1)
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n"
    if torn_tail:
        text += '{"step": 99, "reward/me'
    (path / "metrics.jsonl").write_text(text)
    return path


def test_cli_writes_png_and_prints_summary(tmp_path):
    run = write_run(tmp_path / "run", torn_tail=True)
    out = tmp_path / "img" / "curves.png"
    proc = subprocess.run([sys.executable, "-m", "areal_lite.tools.plot", str(run), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000  # four panels with curves, not an empty canvas
    assert "reward_first 0.213" in proc.stdout and "reward_last 0.687" in proc.stdout


def test_default_output_and_several_runs(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", steps=10)
    assert main([str(a)]) == 0
    assert (a / "curves.png").read_bytes().startswith(PNG_MAGIC)
    out = tmp_path / "cmp.png"
    assert main([str(a), str(b), "--labels", "grpo,drgrpo", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(SystemExit):  # argparse refuses a call without a run
        main([])


def test_missing_metrics_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no metrics.jsonl") and "\n" not in err
    run = write_run(tmp_path / "r")
    assert main([str(run), str(run), "--labels", "only-one"]) == 2


def test_summary_and_series(tmp_path):
    run = write_run(tmp_path / "run", steps=20, torn_tail=True)
    recs = read_metrics(str(run))
    assert [r["step"] for r in recs] == list(range(20))  # the torn line is skipped
    s = summary(recs)
    # first/last 10% of 20 steps = 2 steps each
    assert s["reward_first"] == pytest.approx((0.2 + 0.2 + 0.5 / 19) / 2)
    assert s["reward_last"] == pytest.approx((0.7 + 0.2 + 0.5 * 18 / 19) / 2)
    assert s["eval_accuracy_start"] == 0.25 and s["eval_accuracy_end"] == pytest.approx(0.65)
    assert s["train_wall_s"] == 40.0
    xs, ys = eval_series(recs)
    assert xs == [0, 5, 10, 15, 20] and ys[0] == 0.25
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


def test_resumed_run_keeps_last_record_of_a_step(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "reward/mean": r}) for s, r in [(0, 0.1), (1, 0.2), (1, 0.3), (2, 0.4)])
    )
    assert [r["reward/mean"] for r in read_metrics(str(run))] == [0.1, 0.3, 0.4]


RUN_CONFIG = """experiment_name: quickstart
trial_name: {trial}
seed: {seed}
train_dataset: {{batch_size: 32}}
gconfig: {{n_samples: 8}}
rollout: {{max_head_offpolicyness: 2, dynamic_filter: none}}
actor:
  optimizer: {{lr: 0.0002}}
  adv_norm: {{mean_level: group, std_level: none}}
  loss_reduction: seq_mean_token_sum_norm
  loss_norm_constant: null
  eps_clip_higher: null
  overlong_penalty: {{enabled: false}}
  group_filter: {{soft_reweight: false}}
  policy_loss: ppo
  adv_estimator: normalize
  kl_loss_reduction: null
"""


def write_config(run, seed=1):
    """The keys of a run's config.yaml that the title reads (the Dr.GRPO preset's values)."""
    (run / "config.yaml").write_text(RUN_CONFIG.format(trial=run.name, seed=seed))


def test_title_names_run_algorithm_and_seed(tmp_path):
    from areal_lite.tools.plot import describe_run, read_run_config

    run = write_run(tmp_path / "cpu")
    write_config(run, seed=3)
    assert describe_run(read_run_config(str(run))) == "quickstart/cpu: drgrpo, lr 0.0002, eta 2, 32x8 per step, seed 3"
    assert describe_run({}) == ""


def test_several_runs_labelled_by_seed_and_a_wall_time_axis(tmp_path, capsys):
    from areal_lite.tools.plot import default_labels, read_run_config

    runs = []
    for seed in (1, 2, 3):
        run = write_run(tmp_path / f"s{seed}" / "cpu", steps=10 + seed)
        write_config(run, seed=seed)
        runs.append(str(run))
    configs = [read_run_config(r) for r in runs]
    assert default_labels(runs, configs) == ["s1/cpu (seed 1)", "s2/cpu (seed 2)", "s3/cpu (seed 3)"]
    out = tmp_path / "seeds.png"
    assert main([*runs, "--x", "time", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    printed = capsys.readouterr().out
    assert printed.count("reward_first") == 3 and "s3/cpu (seed 3): steps 13" in printed
    with pytest.raises(SystemExit):  # argparse refuses an unknown axis
        main([runs[0], "--x", "tokens"])


def test_wall_minutes_continue_across_a_resumed_trainer():
    from areal_lite.tools.plot import wall_minutes

    recs = [{"step": s, "time/elapsed": t} for s, t in [(0, 60.0), (1, 120.0), (2, 30.0), (3, 90.0)]]
    assert wall_minutes(recs) == {0: 0.0, 1: 1.0, 2: 2.0, 3: 2.5, 4: 3.5}


def test_answer_length_and_extra_sets_are_plotted(tmp_path):
    from areal_lite.run.stats import eval_set_names

    run = write_run(tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "eval/hard/accuracy_initial": 0.05})
    lines[-1] = json.dumps({**json.loads(lines[-1]), "eval/hard/accuracy": 0.3, "len/truncated_frac": 0.01})
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    recs = read_metrics(str(run))
    assert eval_set_names(recs) == ["eval", "eval/hard"]
    s = summary(recs)
    assert s["eval_hard_accuracy_start"] == 0.05 and s["eval_hard_accuracy_end"] == 0.3
    assert s["gen_len_first"] == pytest.approx((30.0 + 29.5) / 2) and s["gen_len_last"] == pytest.approx((21.0 + 20.5) / 2)
    assert main([str(run)]) == 0

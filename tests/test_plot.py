"""`python -m areal_lite.tools.plot`: a PNG of reward, eval accuracy, staleness and throughput from metrics.jsonl."""

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

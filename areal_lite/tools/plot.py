"""Training curves of a run: `python -m areal_lite.tools.plot RUN_DIR [--out PNG]`.

Reads `RUN_DIR/metrics.jsonl` (one JSON object per training step) and writes one PNG with four
panels over training steps: reward (per step and a moving average), held-out accuracy
(`eval/accuracy`, with the starting weights' `eval/accuracy_initial` at step 0), staleness (max and
mean policy-version lag of the trained tokens) and throughput (trained tokens per second).
Default output: `RUN_DIR/curves.png`. Matplotlib runs headless (Agg); nothing is shown on screen.

`python -m areal_lite.tools.plot RUN_A RUN_B ... --out cmp.png --labels a,b,...` overlays several runs
(the ablation uses this).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence


class PlotError(Exception):
    """A missing or unreadable metrics file (reported as one line, exit status 2)."""


def read_metrics(run_dir: str) -> list[dict]:
    """The step records of `run_dir/metrics.jsonl` (or of the file itself), in step order.

    A torn last line (a run killed mid-write) is skipped; when a run resumed and repeated steps, the
    last record of each step wins.
    """
    path = run_dir if os.path.isfile(run_dir) else os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise PlotError(f"no metrics.jsonl in {run_dir}")
    by_step: dict[int, dict] = {}
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                by_step[rec["step"]] = rec
    if not by_step:
        raise PlotError(f"{path} has no step records")
    return [by_step[s] for s in sorted(by_step)]


def series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have a numeric `key`; x is the number of steps trained."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and v == v:  # skip NaN
            xs.append(r["step"] + 1)
            ys.append(float(v))
    return xs, ys


def eval_series(records: Sequence[dict]) -> tuple[list[int], list[float]]:
    """Held-out accuracy over steps trained, starting at 0 with the initial weights when logged."""
    xs, ys = series(records, "eval/accuracy")
    init = [r["eval/accuracy_initial"] for r in records if isinstance(r.get("eval/accuracy_initial"), (int, float))]
    if init:
        xs, ys = [0, *xs], [float(init[0]), *ys]
    return xs, ys


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def summary(records: Sequence[dict], fraction: float = 0.1) -> dict[str, float]:
    """Mean reward over the first and the last `fraction` of steps, eval accuracy at start and end."""
    _, reward = series(records, "reward/mean")
    out: dict[str, float] = {"steps": float(len(records))}
    if reward:
        k = max(1, round(len(reward) * fraction))
        out["reward_first"] = sum(reward[:k]) / k
        out["reward_last"] = sum(reward[-k:]) / k
        out["reward_gain"] = out["reward_last"] - out["reward_first"]
    _, acc = eval_series(records)
    if acc:
        out["eval_accuracy_start"] = acc[0]
        out["eval_accuracy_end"] = acc[-1]
    _, length = series(records, "len/gen_mean")
    if length:
        k = max(1, round(len(length) * fraction))
        out["gen_len_last"] = sum(length[-k:]) / k
    _, elapsed = series(records, "time/elapsed")
    if elapsed:
        out["train_wall_s"] = elapsed[-1]
    return out


def plot_runs(runs: Sequence[tuple[str, Sequence[dict]]], out: str, title: str = "") -> str:
    """Write the four-panel PNG for one or more (label, records) runs; returns `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=100)
    ax_r, ax_e, ax_s, ax_t = axes.ravel()
    single = len(runs) == 1
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, recs) in enumerate(runs):
        c = colors[i % len(colors)]
        xs, ys = series(recs, "reward/mean")
        window = max(1, len(ys) // 10)
        if single:
            ax_r.plot(xs, ys, color=c, alpha=0.35, lw=1, label="per step")
            ax_r.plot(xs, moving_average(ys, window), color=c, lw=2, label=f"mean of last {window}")
        else:
            ax_r.plot(xs, moving_average(ys, window), color=c, lw=1.8, label=label)
        ex, ey = eval_series(recs)
        ax_e.plot(ex, ey, color=c, marker="o", lw=1.8, label=label if not single else "eval/accuracy")
        sx, smax = series(recs, "staleness/max")
        _, smean = series(recs, "staleness/mean")
        if single:
            ax_s.step(sx, smax, where="mid", color=c, lw=1.5, label="max")
            ax_s.plot(sx[: len(smean)], smean, color=colors[(i + 1) % len(colors)], lw=1.2, label="mean")
        else:
            ax_s.plot(sx[: len(smean)], smean, color=c, lw=1.2, label=label)
        tx, ty = series(recs, "throughput/trained_tokens_per_s")
        ax_t.plot(tx, moving_average(ty, max(1, len(ty) // 10)), color=c, lw=1.5, label=label if not single else None)
    ax_r.set(title="reward (mean over the batch)", xlabel="step", ylabel="reward", ylim=(-0.02, 1.02))
    ax_e.set(title="held-out accuracy", xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.02))
    ax_s.set(title="staleness of trained tokens (versions)" + ("" if single else ", mean"),
             xlabel="step", ylabel="versions behind")
    ax_t.set(title="throughput (trained tokens/s, smoothed)", xlabel="step", ylabel="tokens/s")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m areal_lite.tools.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory (or its metrics.jsonl)")
    parser.add_argument("--out", help="output PNG (default: RUN_DIR/curves.png)")
    parser.add_argument("--labels", help="comma-separated labels, one per run (default: directory names)")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args(argv)
    try:
        runs = [read_metrics(d) for d in args.run_dirs]
        labels = args.labels.split(",") if args.labels else [os.path.basename(os.path.normpath(d)) for d in args.run_dirs]
        if len(labels) != len(runs):
            raise PlotError(f"--labels has {len(labels)} names for {len(runs)} runs")
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    first = args.run_dirs[0]
    out = args.out or os.path.join(first if os.path.isdir(first) else os.path.dirname(first) or ".", "curves.png")
    plot_runs(list(zip(labels, runs)), out, title=args.title)
    s = summary(runs[0])
    figures = ", ".join(f"{k} {v:.0f}" if k == "steps" else f"{k} {v:.3f}" for k, v in s.items())
    print(f"wrote {out} ({figures})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

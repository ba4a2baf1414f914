"""Training curves of one run or several: `python -m areal_lite.tools.plot RUN_DIR [RUN_DIR ...]`.

Reads each `RUN_DIR/metrics.jsonl` (one JSON object per training step) and its `config.yaml`, and
writes one PNG with six panels: reward (per step and a moving mean), held-out accuracy
(`eval/accuracy`, the starting weights at step 0; each of `evaluator.extra_datasets` dashed), answer
length (mean generated tokens, and the share cut off by the budget), staleness of the trained tokens
(max and mean policy-version lag), throughput (trained tokens per second) and seconds per step. The
title names the run, its algorithm, learning rate, staleness bound and seed.

    python -m areal_lite.tools.plot runs/quickstart/cpu                       # -> runs/quickstart/cpu/curves.png
    python -m areal_lite.tools.plot RUN_A RUN_B RUN_C --out cmp.png           # runs overlaid, one colour each
    python -m areal_lite.tools.plot RUN_A RUN_B --labels seed1,seed2 --x time # x axis: wall time (minutes)

Matplotlib runs headless (Agg); nothing is shown on screen. It also prints the mean reward of the
first and the last 10% of steps and the held-out accuracy at start and end.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from areal_lite.run.stats import algo_name, eval_series, eval_set_names, metric_series, metrics_summary, parse_metrics

X_AXES = ("step", "time")


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
    with open(path, errors="replace") as fh:
        records = parse_metrics(fh.read())
    if not records:
        raise PlotError(f"{path} has no step records")
    return records


def read_run_config(run_dir: str) -> dict:
    """The run's resolved `config.yaml` as a dict ({} when there is none: a bare metrics file)."""
    import yaml

    path = os.path.join(run_dir if os.path.isdir(run_dir) else os.path.dirname(run_dir), "config.yaml")
    try:
        with open(path) as fh:
            cfg = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def describe_run(cfg: dict, *, name: bool = True, seed: bool = True) -> str:
    """`experiment/trial: algorithm, lr, eta, batch, seed` from a run's config ('' without one)."""
    if not cfg:
        return ""

    def get(key: str):
        node = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    parts = [algo_name(get)]
    if get("actor.optimizer.lr") is not None:
        parts.append(f"lr {get('actor.optimizer.lr'):g}")
    if get("rollout.max_head_offpolicyness") is not None:
        parts.append(f"eta {get('rollout.max_head_offpolicyness')}")
    if get("train_dataset.batch_size") and get("gconfig.n_samples"):
        parts.append(f"{get('train_dataset.batch_size')}x{get('gconfig.n_samples')} per step")
    if seed:
        parts.append(f"seed {get('seed')}")
    text = ", ".join(parts)
    return f"{get('experiment_name')}/{get('trial_name')}: {text}" if name else text


def series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that have a numeric `key`; x is the number of steps trained."""
    return metric_series(records, key)


def summary(records: Sequence[dict], fraction: float = 0.1) -> dict[str, float]:
    """Mean reward over the first and the last `fraction` of steps, eval accuracy at start and end, ..."""
    return metrics_summary(records, fraction)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def wall_minutes(records: Sequence[dict]) -> dict[int, float]:
    """Minutes of training at the end of each step (x = steps trained; 0 -> 0), from `time/elapsed`.

    A resumed trainer's clock starts again at 0: its times continue from where the last attempt's
    records end, so the axis never runs backwards.
    """
    out, offset, last = {0: 0.0}, 0.0, 0.0
    for r in records:
        t = r.get("time/elapsed")
        if not isinstance(t, (int, float)):
            continue
        if t + offset < last:
            offset = last
        last = t + offset
        out[r["step"] + 1] = last / 60.0
    return out


def _x(xs: Sequence[int], axis: dict[int, float] | None) -> tuple[list, list[int]]:
    """The x values of `xs` on the chosen axis, and which of them have one (a step without a time is skipped)."""
    if axis is None:
        return list(xs), list(range(len(xs)))
    keep = [i for i, x in enumerate(xs) if x in axis]
    return [axis[xs[i]] for i in keep], keep


def _plot(ax, xs, ys, axis, **kw) -> None:
    x, keep = _x(xs, axis)
    ax.plot(x, [ys[i] for i in keep], **kw)


def plot_runs(runs: Sequence[tuple[str, Sequence[dict]]], out: str, title: str = "", *, x: str = "step") -> str:
    """Write the six-panel PNG for one or more (label, records) runs; returns `out`.

    `x`: 'step' (steps trained) or 'time' (minutes of training, from `time/elapsed`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if x not in X_AXES:
        raise PlotError(f"--x must be one of {', '.join(X_AXES)}, got {x!r}")
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), dpi=100)
    ax_r, ax_e, ax_l, ax_s, ax_t, ax_d = axes.ravel()
    single = len(runs) == 1
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, recs) in enumerate(runs):
        c = colors[i % len(colors)]
        axis = wall_minutes(recs) if x == "time" else None
        xs, ys = series(recs, "reward/mean")
        window = max(1, len(ys) // 10)
        if single:
            _plot(ax_r, xs, ys, axis, color=c, alpha=0.35, lw=1, label="per step")
        _plot(ax_r, xs, moving_average(ys, window), axis, color=c, lw=2 if single else 1.8,
              label=f"mean of last {window}" if single else label)
        for j, prefix in enumerate(eval_set_names(recs)):
            ex, ey = eval_series(recs, prefix)
            name = "valid_dataset" if prefix == "eval" else prefix.split("/", 1)[1]
            _plot(ax_e, ex, ey, axis, color=c, marker="o", lw=1.8, ls="-" if j == 0 else "--",
                  label=name if single else (label if j == 0 else f"{label}: {name}"))
        lx, ly = series(recs, "len/gen_mean")
        _plot(ax_l, lx, moving_average(ly, window), axis, color=c, lw=1.8, label="mean" if single else label)
        tx, tr = series(recs, "len/truncated_frac")
        if single and tr:
            ax_l2 = ax_l.twinx()
            _plot(ax_l2, tx, tr, axis, color="0.5", lw=1, ls=":", label="cut off (right axis)")
            ax_l2.set(ylabel="share cut off", ylim=(-0.01, max(0.05, max(tr) * 1.2)))
            ax_l2.legend(fontsize=8, loc="lower right")
        sx, smax = series(recs, "staleness/max")
        mx, smean = series(recs, "staleness/mean")
        if single:
            _plot(ax_s, sx, smax, axis, color=c, lw=1.5, drawstyle="steps-mid", label="max")
            _plot(ax_s, mx, smean, axis, color=colors[(i + 1) % len(colors)], lw=1.2, label="mean")
        else:
            _plot(ax_s, mx, smean, axis, color=c, lw=1.2, label=label)
        hx, hy = series(recs, "throughput/trained_tokens_per_s")
        _plot(ax_t, hx, moving_average(hy, window), axis, color=c, lw=1.5, label=None if single else label)
        dx, dy = series(recs, "time/step")
        _plot(ax_d, dx, moving_average(dy, window), axis, color=c, lw=1.5, label=None if single else label)
    label_panels(axes, x=x, single=single)
    return save_figure(fig, out, title)


def save_figure(fig, out: str, title: str = "") -> str:
    """Title, lay out and write `fig` to `out` (its folder made), then close it; returns `out`."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def label_panels(axes, *, x: str, single: bool) -> None:
    """Titles, axis labels, grids and legends of the six panels."""
    ax_r, ax_e, ax_l, ax_s, ax_t, ax_d = axes.ravel()
    ax_r.set(title="reward (mean over the batch)", ylabel="reward", ylim=(-0.02, 1.02))
    ax_e.set(title="held-out accuracy (step 0: before training)", ylabel="accuracy", ylim=(-0.02, 1.02))
    ax_l.set(title="answer length (generated tokens, smoothed)", ylabel="tokens")
    ax_s.set(title="staleness of trained tokens" + ("" if single else ", mean"), ylabel="versions behind")
    ax_t.set(title="throughput (trained tokens/s, smoothed)", ylabel="tokens/s")
    ax_d.set(title="time per step (s, smoothed)", ylabel="seconds")
    for ax in axes.ravel():
        ax.set_xlabel("step" if x == "step" else "wall time (minutes of training)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")


def default_labels(run_dirs: Sequence[str], configs: Sequence[dict]) -> list[str]:
    """Each run's directory name (with its experiment when two share one), and its seed when seeds differ."""
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if len(set(names)) < len(names):
        names = [os.path.join(*os.path.normpath(d).split(os.sep)[-2:]) for d in run_dirs]
    seeds = [c.get("seed") for c in configs]
    if len(names) > 1 and len(set(seeds)) > 1:
        names = [f"{n} (seed {s})" for n, s in zip(names, seeds)]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m areal_lite.tools.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory (or its metrics.jsonl)")
    parser.add_argument("--out", help="output PNG (default: the first RUN_DIR/curves.png)")
    parser.add_argument("--labels", help="comma-separated labels, one per run (default: directory names)")
    parser.add_argument("--title", help="figure title (default: the run's name, algorithm, lr, eta and seed)")
    parser.add_argument("--x", default="step", choices=X_AXES, help="x axis: steps trained or wall time")
    args = parser.parse_args(argv)
    try:
        runs = [read_metrics(d) for d in args.run_dirs]
        configs = [read_run_config(d) for d in args.run_dirs]
        labels = args.labels.split(",") if args.labels else default_labels(args.run_dirs, configs)
        if len(labels) != len(runs):
            raise PlotError(f"--labels has {len(labels)} names for {len(runs)} runs")
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.title is not None:
        title = args.title
    elif len(runs) == 1:
        title = describe_run(configs[0])
    else:
        described = {describe_run(c, name=False, seed=False) for c in configs}  # what the runs share
        title = described.pop() if len(described) == 1 else ""
    first = args.run_dirs[0]
    out = args.out or os.path.join(first if os.path.isdir(first) else os.path.dirname(first) or ".", "curves.png")
    plot_runs(list(zip(labels, runs)), out, title=title, x=args.x)
    for label, recs in zip(labels, runs):
        s = summary(recs)
        figures = ", ".join(f"{k} {v:.0f}" if k == "steps" else f"{k} {v:.3f}" for k, v in s.items())
        print(f"{label}: {figures}" if len(runs) > 1 else f"wrote {out} ({figures})")
    if len(runs) > 1:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

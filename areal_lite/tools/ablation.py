"""The six-way algorithm comparison in one command.

    python -m areal_lite.tools.ablation [--task math|bandit|frozenlake|sokoban] [--config CFG.yaml] [--steps N]
                                  [--presets P,...] [--gpus 0,1,...] [--parallel K] [--out DIR] [--only NAME,...]
                                  [--dry-run] [key=value ...]

Runs GRPO, Dr.GRPO and Dr.GRPO+ soft reweighting, each without filtering and with top-k group
filtering (keep the half of each batch's groups with the largest reward std), from the same config,
seed, model and step budget, through the local launcher; `--presets drgrpo,cispo,gpg` compares any
presets of the `algo=` group instead (each with and without the filter). Each run has its own run directory
`DIR/runs/<experiment>-ablation/<variant>/` and the launcher picks free ports for each, so runs may
overlap. On CPU they run one after another by default (`--parallel 1`); with `--gpus` the listed
devices are split among concurrent runs (each run sees only its share via CUDA_VISIBLE_DEVICES).

`--task` picks the entry script and the config: the math example (default) or an agent task of
examples/agents/ (RAGEN's bandit, FrozenLake, Sokoban), its CPU recipe `<task>_cpu.yaml`, or with
`--gpus` its GPU recipe `<task>.yaml`; `--config` / `--entry` override them.

Writes `DIR/ablation.md` (final reward, held-out accuracy, answer length, wall time per variant; for
agent tasks the success rate of the episodes at the start and the end of training instead),
`DIR/ablation.json` (the same figures and every run's exit status) and `DIR/ablation.png` (the
curves of all six runs). Extra `key=value` overrides apply to every run. The model is prepared
(built and SFT-warm-started when the config says so) once, before the runs start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from areal_lite.config import ConfigError, load_config
from areal_lite.config.schema import resolved_trainer_world_size

# Advantage normalisation and loss reduction of each algorithm (docs/algorithms.md, "Presets").
ALGORITHMS: dict[str, list[str]] = {
    "grpo": ["actor.adv_norm.mean_level=group", "actor.adv_norm.std_level=group",
             "actor.loss_reduction=seq_mean_token_mean", "actor.group_filter.soft_reweight=false"],
    "drgrpo": ["actor.adv_norm.mean_level=group", "actor.adv_norm.std_level=none",
               "actor.loss_reduction=seq_mean_token_sum_norm", "actor.group_filter.soft_reweight=false"],
    "drgrpo_soft": ["actor.adv_norm.mean_level=group", "actor.adv_norm.std_level=none",
                    "actor.loss_reduction=seq_mean_token_sum_norm", "actor.group_filter.soft_reweight=true"],
}
FILTERS: dict[str, list[str]] = {
    "all": ["actor.group_filter.top_k_ratio=1.0"],
    "topk50": ["actor.group_filter.top_k_ratio=0.5"],
}


# task -> (entry script, CPU config, GPU config)
TASKS: dict[str, tuple[str, str, str]] = {
    "math": ("examples/math/gsm8k_drgrpo.py", "examples/math/gsm8k_drgrpo_cpu.yaml", "examples/math/gsm8k_grpo.yaml"),
    **{task: ("examples/agents/train_env.py", f"examples/agents/{task}_cpu.yaml", f"examples/agents/{task}.yaml")
       for task in ("bandit", "frozenlake", "sokoban")},
}


@dataclass
class Variant:
    name: str
    overrides: list[str]
    gpus: list[str] = field(default_factory=list)


def variants(presets: list[str] | None = None) -> list[Variant]:
    """The six runs: every algorithm with and without top-k group filtering. With `presets` (names
    of the `algo=` group: docs/config.md, "Algorithm presets"), those presets instead of the three
    algorithms, each with and without the filter."""
    if presets:
        return [Variant(f"{p}-{f}", [f"algo={p}", *FILTERS[f]]) for p in presets for f in FILTERS]
    return [Variant(f"{a}-{f}", [*ALGORITHMS[a], *FILTERS[f]]) for a in ALGORITHMS for f in FILTERS]


def run_overrides(variant: Variant, *, experiment: str, out_dir: str, steps: int | None, extra: list[str]) -> list[str]:
    """The overrides of one run: user extras, then the variant's algorithm lines, then its own run dir."""
    out = [*extra, *variant.overrides, f"cluster.fileroot={os.path.join(out_dir, 'runs')}",
           f"experiment_name={experiment}-ablation", f"trial_name={variant.name}"]
    if steps is not None:
        out.append(f"total_train_steps={steps}")
    return out


def devices_per_run(cfg) -> int:
    """Accelerators one run needs: its servers' devices plus its trainer ranks (0 on CPU)."""
    if cfg.allocation.device != "cuda":
        return 0
    inf = cfg.allocation.inference
    per_server = inf.tp_size if inf.backend == "sglang" else 1
    return inf.num_servers * per_server + resolved_trainer_world_size(cfg)


def assign_gpus(runs: list[Variant], gpus: list[str], need: int) -> int:
    """Give each run a disjoint slice of `gpus` within its wave; returns how many runs fit at once."""
    if need <= 0 or not gpus:
        return 0
    slots = len(gpus) // need
    if slots < 1:
        raise ConfigError(f"--gpus: one run needs {need} devices but only {len(gpus)} were given")
    for i, run in enumerate(runs):
        k = i % slots
        run.gpus = gpus[k * need:(k + 1) * need]
    return slots


def summarize(run_dir: str) -> dict[str, float]:
    """Final reward (mean of the last 10% of steps), eval accuracy, answer length, soft weights."""
    from areal_lite.tools.plot import PlotError, read_metrics, series, summary

    try:
        recs = read_metrics(run_dir)
    except PlotError:
        return {}
    out = summary(recs)
    for key in ("train/soft_reweight_min", "train/soft_reweight_max", "train/soft_reweight_mean"):
        _, vals = series(recs, key)
        if vals:
            out[key] = sum(vals) / len(vals)
    _, success = series(recs, "env/success")  # agent tasks: the episodes' success rate
    if success:
        k = max(1, round(len(success) * 0.1))
        out["success_first"], out["success_last"] = sum(success[:k]) / k, sum(success[-k:]) / k
    _, kept = series(recs, "filter/kept_seqs")  # logged when top-k filtering is on
    if not kept:
        _, kept = series(recs, "train/num_seqs")
    if kept:
        out["seqs_per_step"] = sum(kept) / len(kept)
    return out


def _fmt(v, spec: str = ".3f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def markdown_table(results: list[dict]) -> str:
    if any("success_last" in r.get("summary", {}) for r in results):
        return _task_table(results)
    head = ("| variant | exit | final reward (last 10%) | reward gain | eval acc start → end | answer length "
            "| soft weight min/mean/max | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        s = r.get("summary", {})
        soft = _soft(s)
        acc = f"{_fmt(s.get('eval_accuracy_start'))} → {_fmt(s.get('eval_accuracy_end'))}"
        lines.append(f"| {r['name']} | {r['returncode']} | {_fmt(s.get('reward_last'))} | {_fmt(s.get('reward_gain'), '+.3f')} "
                     f"| {acc} | {_fmt(s.get('gen_len_last'), '.1f')} | {soft} | {_fmt(r.get('wall_s'), '.0f')} |")
    return "\n".join(lines) + "\n"


def _soft(s: dict) -> str:
    if "train/soft_reweight_mean" not in s:
        return "-"
    return "/".join(_fmt(s[f"train/soft_reweight_{k}"], ".2f") for k in ("min", "mean", "max"))


def _task_table(results: list[dict]) -> str:
    """The agent tasks' table: reward and success rate of the first and last 10% of steps."""
    head = ("| variant | exit | reward first → last 10% | success first → last 10% | eval success start → end "
            "| soft weight min/mean/max | wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        s = r.get("summary", {})
        lines.append(
            f"| {r['name']} | {r['returncode']} | {_fmt(s.get('reward_first'))} → {_fmt(s.get('reward_last'))} "
            f"| {_fmt(s.get('success_first'))} → {_fmt(s.get('success_last'))} "
            f"| {_fmt(s.get('eval_accuracy_start'))} → {_fmt(s.get('eval_accuracy_end'))} | {_soft(s)} "
            f"| {_fmt(r.get('wall_s'), '.0f')} |")
    return "\n".join(lines) + "\n"


def plot_task_runs(runs: list[tuple[str, list[dict]]], out: str, title: str = "") -> str:
    """Four panels over steps for agent tasks: reward, success rate (both smoothed over a tenth of
    the run), held-out success, and the mean soft-reweighting weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from areal_lite.tools.plot import eval_series, moving_average, series

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), dpi=100)
    panels = [("reward/mean", "reward (mean over the batch)"), ("env/success", "success rate of the episodes"),
              (None, "held-out success (eval)"), ("train/soft_reweight_mean", "soft reweighting: mean weight")]
    for ax, (key, name) in zip(axes.ravel(), panels):
        for label, recs in runs:
            if key is None:
                xs, ys = eval_series(recs)
                style = {"marker": "o"}
            else:
                xs, ys = series(recs, key)
                ys = moving_average(ys, max(1, len(ys) // 10)) if key.startswith(("reward", "env")) else ys
                style = {}
            if xs:
                ax.plot(xs, ys, lw=1.6, label=label, **style)
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    from areal_lite.tools.plot import save_figure

    return save_figure(fig, out, title)


def _launch(entry: str, config: str, overrides: list[str], gpus: list[str], log_path: str) -> subprocess.Popen:
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    log = open(log_path, "w")
    try:
        return subprocess.Popen([sys.executable, "-m", "areal_lite.launcher.local", entry, "--config", config, *overrides],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=False)
    finally:
        log.close()


def _prepare(config: str, overrides: list[str], log_path: str) -> None:
    with open(log_path, "w") as log:
        rc = subprocess.call([sys.executable, "-m", "areal_lite.tiny.prepare", "--config", config, *overrides],
                             stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"model preparation failed (exit {rc}); see {log_path}")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The options, and the key=value overrides shared by every run."""
    parser = argparse.ArgumentParser(prog="python -m areal_lite.tools.ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="math", choices=list(TASKS),
                        help="what to train: the math example or an agent task (picks --entry and --config)")
    parser.add_argument("--config", default="", help="base config (default: the task's CPU recipe, or its GPU "
                                                      "recipe with --gpus)")
    parser.add_argument("--entry", default="", help="entry script (default: the task's)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the config's)")
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids to spread the runs over")
    parser.add_argument("--parallel", type=int, default=0,
                        help="runs at once (default: 1 on CPU; on GPU as many as --gpus can hold)")
    parser.add_argument("--out", default="", help="output directory (default: runs/ablation-<time>)")
    parser.add_argument("--presets", default="", help="comma-separated algo= presets to compare instead of GRPO, "
                                                      "Dr.GRPO and Dr.GRPO+ soft (e.g. drgrpo,cispo,gpg)")
    parser.add_argument("--only", default="", help="comma-separated variant names to run (default: all six)")
    parser.add_argument("--dry-run", action="store_true", help="print each run's launcher plan; start nothing")
    args, extra = parser.parse_known_args(argv)
    entry, cpu_config, gpu_config = TASKS[args.task]
    args.entry = args.entry or entry
    args.config = args.config or (gpu_config if args.gpus.strip() else cpu_config)
    return args, extra


@dataclass
class Sweep:
    """The checked sweep: the base config, the variants with their overrides, where and how many at once."""

    base: Any
    runs: list
    overrides: dict[str, list[str]]
    out_dir: str
    gpus: list[str]
    parallel: int


def check_sweep(args: argparse.Namespace, extra: list[str]) -> Sweep:
    """Every run's config loads and the GPUs fit, before anything starts (ConfigError otherwise)."""
    if not os.path.isfile(args.config):
        raise ConfigError(f"config not found: {args.config}")
    for item in extra:
        if item.startswith("-") or "=" not in item:
            raise ConfigError(f"unexpected argument {item!r} (overrides are key=value)")
    if args.steps is not None and args.steps < 1:
        raise ConfigError("--steps must be >= 1")
    if not os.path.isfile(args.entry):
        raise ConfigError(f"entry script not found: {args.entry}")
    base = load_config(["--config", args.config, *extra])
    runs = variants([p.strip() for p in args.presets.split(",") if p.strip()])
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {v.name for v in runs})
        if unknown:
            raise ConfigError(f"--only: unknown variant(s) {', '.join(unknown)} "
                              f"(known: {', '.join(v.name for v in runs)})")
        runs = [v for v in runs if v.name in wanted]
    out_dir = os.path.abspath(args.out or os.path.join("runs", f"ablation-{time.strftime('%Y%m%d-%H%M%S')}"))
    overrides = {}
    for v in runs:
        ov = run_overrides(v, experiment=base.experiment_name, out_dir=out_dir, steps=args.steps, extra=extra)
        load_config(["--config", args.config, *ov])
        overrides[v.name] = ov
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    need = devices_per_run(base)
    if gpus and need == 0:
        raise ConfigError("--gpus given but the config runs on CPU (allocation.device=cpu)")
    slots = assign_gpus(runs, gpus, need)
    parallel = args.parallel or (slots if slots else 1)
    return Sweep(base, runs, overrides, out_dir, gpus, min(parallel, slots) if slots else parallel)


def dry_run(args: argparse.Namespace, sweep: Sweep) -> int:
    """Each run's launcher plan, from the local launcher's --dry-run."""
    for v in sweep.runs:
        print(f"== {v.name}" + (f" (CUDA_VISIBLE_DEVICES={','.join(v.gpus)})" if v.gpus else ""))
        proc = subprocess.run([sys.executable, "-m", "areal_lite.launcher.local", args.entry, "--config",
                               args.config, *sweep.overrides[v.name], "--dry-run"],
                              capture_output=True, text=True,
                              env={**os.environ, **({"CUDA_VISIBLE_DEVICES": ",".join(v.gpus)} if v.gpus else {})})
        print(proc.stdout, end="")
        if proc.returncode != 0:
            print(proc.stderr, end="", file=sys.stderr)
            return proc.returncode
    return 0


def run_sweep(args: argparse.Namespace, sweep: Sweep) -> dict[str, dict] | None:
    """Run the variants, `sweep.parallel` at a time; their exit codes and wall times (None if interrupted)."""
    results: dict[str, dict] = {}
    pending = list(sweep.runs)
    active: dict[str, tuple[subprocess.Popen, float]] = {}
    try:
        while pending or active:
            while pending and len(active) < sweep.parallel:
                v = pending.pop(0)
                log = os.path.join(sweep.out_dir, f"{v.name}.log")
                active[v.name] = (_launch(args.entry, args.config, sweep.overrides[v.name], v.gpus, log),
                                  time.monotonic())
                print(f"[ablation] started {v.name}" + (f" on GPUs {','.join(v.gpus)}" if v.gpus else ""), flush=True)
            time.sleep(1.0)
            for name, (proc, started) in list(active.items()):
                if proc.poll() is not None:
                    del active[name]
                    results[name] = {"name": name, "returncode": proc.returncode, "wall_s": time.monotonic() - started}
                    print(f"[ablation] {name} finished (exit {proc.returncode}, {results[name]['wall_s']:.0f}s)",
                          flush=True)
    except KeyboardInterrupt:
        for proc, _ in active.values():
            proc.terminate()  # the launcher stops its own processes on SIGTERM
        for proc, _ in active.values():
            proc.wait()
        print("[ablation] interrupted", flush=True)
        return None
    return results


def write_report(args: argparse.Namespace, sweep: Sweep, results: dict[str, dict], command: str,
                 wall_s: float) -> list[dict]:
    """ablation.md (the table with how it was run), ablation.json and ablation.png; the rows."""
    rows = []
    for v in sweep.runs:
        r = results[v.name]
        r["run_dir"] = os.path.join(sweep.out_dir, "runs", f"{sweep.base.experiment_name}-ablation", v.name)
        r["overrides"] = v.overrides
        r["summary"] = summarize(r["run_dir"])
        rows.append(r)
    table = markdown_table(rows)
    machine = f"{os.cpu_count()} CPU cores" + (f", GPUs {args.gpus}" if sweep.gpus else "")
    note = (f"# Ablation: {args.task}, {args.config}\n\n`{command}` on {time.strftime('%Y-%m-%d')}. "
            f"Same seed ({sweep.base.seed}), model and budget ({args.steps or sweep.base.total_train_steps} steps) "
            f"for every run; {machine}; {sweep.parallel} run(s) at a time; total {wall_s:.0f}s.\n\n")
    with open(os.path.join(sweep.out_dir, "ablation.md"), "w") as fh:
        fh.write(note + table)
    with open(os.path.join(sweep.out_dir, "ablation.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    done = [(r["name"], r["run_dir"]) for r in rows if r["summary"]]
    if done:
        from areal_lite.tools.plot import plot_runs, read_metrics

        curves = [(n, read_metrics(d)) for n, d in done]
        plot = plot_runs if args.task == "math" else plot_task_runs
        plot(curves, os.path.join(sweep.out_dir, "ablation.png"), title=f"ablation: {os.path.basename(args.config)}")
    print(table, end="")
    return rows


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    try:
        sweep = check_sweep(args, extra)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(args, sweep)

    os.makedirs(sweep.out_dir, exist_ok=True)
    print(f"[ablation] {len(sweep.runs)} runs, {sweep.parallel} at a time, output in {sweep.out_dir}", flush=True)
    try:
        _prepare(args.config, extra, os.path.join(sweep.out_dir, "prepare.log"))
    except RuntimeError as e:
        print(f"[ablation] error: {e}", flush=True)
        return 1
    t0 = time.monotonic()
    results = run_sweep(args, sweep)
    if results is None:
        return 130
    command = " ".join(["python -m areal_lite.tools.ablation", *(argv if argv is not None else sys.argv[1:])])
    rows = write_report(args, sweep, results, command, time.monotonic() - t0)
    print(f"[ablation] wrote {sweep.out_dir}/ablation.md, ablation.json, ablation.png", flush=True)
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

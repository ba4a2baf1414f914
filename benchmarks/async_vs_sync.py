"""Asynchronous vs synchronous RL, side by side: same config, model, data, seed and machine.

    python -m benchmarks.async_vs_sync --out bench_out            # η = 0, 1, 2, 4; 12 steps each
    python -m benchmarks.async_vs_sync --out /tmp/x --quick       # seconds-long harness check

Each variant is a real run through the local launcher (server, rollout worker, controller, FSDP
trainer, weight sync through disk); only `rollout.max_head_offpolicyness` (η) differs. The variants
run back to back in one invocation (with `--repeats`, in alternating order) so that the ratios
compare like with like on a shared machine.

Why η = 0 is the synchronous baseline: the controller admits a new group only while
`(η + version + 1) × batch_size − accepted − running > 0`. With η = 0 and version v, every group of
batches < v has been accepted (and trained), so at most one batch is ever granted, and only once
version v exists: generation of batch v starts after the weights of step v − 1 reach the servers,
and the trainer waits for the whole batch (the longest answer) before it trains. That is
"generate, then train, then sync weights", with no overlap. With η ≥ 1 the workers generate the
next η batches while the trainer trains, and the staleness bound still holds per trajectory.

Reported per run (over the steps after `--warmup`): wall time, trained tokens/s (prompt + answer
tokens of the trained sequences), inference-server utilisation (fraction of wall time the engine
was stepping requests: `busy_time_s` from /get_server_info), trainer utilisation (1 − time waiting
for data / step time), server paused fraction (weight updates), mean/max staleness, final reward.
The ideal overlap bound comes from the synchronous run's stage times: T_gen = its mean wait for data
per step, T_train = the rest of its step; bound = (T_gen + T_train) / max(T_gen, T_train).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks.runs import Workload, fmt, launch, machine, md_table, summarize

# The long-tail workload: 4 prompts × 2 answers per step; one extra stop token, so an answer ends
# with probability ≈ 2/259 per token (mean ≈ 130 tokens, the longest of a batch ≈ 2.5-3× that,
# a few cut at 768). Tiny random model (hidden 128, 4 layers).
DEFAULT = Workload(steps=12, batch_size=4, n_samples=2, stop_tokens=1, max_new_tokens=768)
QUICK = Workload(steps=3, batch_size=2, n_samples=2, stop_tokens=20, max_new_tokens=32, hidden_size=32,
                 num_layers=1)
# `--model 25m`: the same workload on a 25M-parameter model (hidden 512, 8 layers, the engine benchmark's
# "25m" shape), where generation and training are both heavy on a CPU.
MODELS = {
    "tiny": {},
    "25m": {"hidden_size": 512, "num_layers": 8,
            "extra": {"prepare": {"tiny": {"intermediate_size": 1536, "num_attention_heads": 8,
                                           "num_key_value_heads": 4}}}},
}

TARGET_SPEEDUP = 1.8
TARGET_BOUND_FRACTION = 0.85  # within 15% of the ideal overlap bound
TARGET_PAUSE_FRACTION = 0.05


def overlap_bound(sync: dict[str, Any]) -> dict[str, float]:
    """Stage times of the synchronous run and the speedup perfect overlap of the two would give."""
    t_gen = float(sync["phase_wait_data_s"])
    t_train = max(float(sync["step_s_mean"]) - t_gen, 0.0)
    bound = (t_gen + t_train) / max(t_gen, t_train, 1e-9)
    return {"t_gen_s": t_gen, "t_train_s": t_train, "bound": bound}


def reward_noise(summary: dict[str, Any], seqs_per_step: int) -> float:
    """Standard error of the final reward (mean of the last 3 steps' 0/1 rewards)."""
    p = min(max(float(summary.get("reward_final") or 0.0), 0.0), 1.0)
    n = seqs_per_step * min(3, summary.get("steps", 1))
    return math.sqrt(max(p * (1 - p), 1.0 / n) / n)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each figure over the repeats of one variant; throughput pooled (Σ tokens / Σ wall)."""
    out: dict[str, Any] = {}
    for key in runs[0]["summary"]:
        vals = [r["summary"].get(key) for r in runs]
        nums = [v for v in vals if isinstance(v, (int, float))]
        out[key] = sum(nums) / len(nums) if len(nums) == len(vals) and nums else vals[0]
    out["staleness_max"] = max(r["summary"]["staleness_max"] for r in runs)
    # Throughput pooled over the repeats: all their trained tokens over all their wall time.
    wall = sum(r["summary"]["wall_s"] for r in runs)
    out["trained_tokens_per_s"] = sum(r["summary"]["trained_tokens"] for r in runs) / max(wall, 1e-9)
    out["trained_gen_tokens_per_s"] = sum(r["summary"]["trained_gen_tokens_per_s"] * r["summary"]["wall_s"]
                                          for r in runs) / max(wall, 1e-9)
    return out


def compare(per_eta: dict[int, dict[str, Any]], workload: Workload) -> dict[str, Any]:
    sync = per_eta.get(0)
    if sync is None:
        return {}
    bound = overlap_bound(sync)
    base = sync["trained_tokens_per_s"]
    rows = {}
    for eta, s in sorted(per_eta.items()):
        speedup = s["trained_tokens_per_s"] / max(base, 1e-9)
        rows[str(eta)] = {"speedup": speedup, "bound_fraction": speedup / bound["bound"]}
    asyncs = [e for e in per_eta if e > 0]
    best = max(asyncs, key=lambda e: rows[str(e)]["speedup"]) if asyncs else None
    result: dict[str, Any] = {"overlap": bound, "per_eta": rows, "best_eta": best}
    if best is not None:
        b = per_eta[best]
        seqs = workload.batch_size * workload.n_samples
        noise = math.hypot(reward_noise(sync, seqs), reward_noise(b, seqs))
        pause = max(float(per_eta[e].get("server_paused_frac") or 0.0) for e in asyncs)
        result["targets"] = {
            "speedup": {"target": f">= {TARGET_SPEEDUP}x", "measured": rows[str(best)]["speedup"],
                        "met": rows[str(best)]["speedup"] >= TARGET_SPEEDUP},
            "bound": {"target": f">= {TARGET_BOUND_FRACTION:.0%} of the bound",
                      "measured": rows[str(best)]["bound_fraction"],
                      "met": rows[str(best)]["bound_fraction"] >= TARGET_BOUND_FRACTION},
            "pause": {"target": f"< {TARGET_PAUSE_FRACTION:.0%} of wall time", "measured": pause,
                      "met": pause < TARGET_PAUSE_FRACTION},
            "reward": {"target": "within noise (2 s.e.) of sync", "measured": b["reward_final"] - sync["reward_final"],
                       "noise_2se": 2 * noise, "met": abs(b["reward_final"] - sync["reward_final"]) <= 2 * noise},
        }
    return result


def by_repeat(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each η's speedup over the sync run of the same repeat (the spread shows the machine's noise)."""
    sync = {r["repeat"]: r["summary"]["trained_tokens_per_s"] for r in runs if r["eta"] == 0}
    out: dict[str, list[float]] = {}
    for r in runs:
        if r["eta"] > 0 and r["repeat"] in sync:
            out.setdefault(str(r["eta"]), []).append(r["summary"]["trained_tokens_per_s"] / max(sync[r["repeat"]], 1e-9))
    return out


def run(out: Path, workload: Workload, etas: Sequence[int], repeats: int, warmup: int,
        log=print) -> dict[str, Any]:
    """Run every η (repeats in alternating order), summarise, compare; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    runs: list[dict[str, Any]] = []
    for rep in range(repeats):
        order = list(etas) if rep % 2 == 0 else list(reversed(etas))
        for eta in order:
            w = Workload(**{**vars(workload), "eta": eta})
            trial = f"eta{eta}-r{rep}"
            log(f"[async_vs_sync] run {trial}: {w.label()} ...")
            res = launch(w, root=out, model_dir=model_dir, trial=trial, warmup=warmup)
            if not res.ok:
                raise RuntimeError(f"run {trial} failed (exit {res.returncode}); logs in {res.run_dir}/logs\n{res.log_tail}")
            s = summarize(res.metrics, warmup, res.cpu_window)
            log(f"[async_vs_sync]   {fmt(s['trained_tokens_per_s'], '.0f')} tok/s, {fmt(s['step_s_mean'])} s/step, "
                f"server busy {fmt(s.get('server_busy_frac'), '.0%')}, trainer {fmt(s['trainer_util'], '.0%')}, "
                f"trainer threads {fmt(s.get('trainer_threads_mean'))}")
            runs.append({"eta": eta, "repeat": rep, "trial": trial, "run_dir": str(res.run_dir),
                         "launcher_wall_s": res.wall_s, "loadavg": res.loadavg, "summary": s})
    return report_from_runs(runs, workload, etas, repeats, warmup)


def report_from_runs(runs: list[dict[str, Any]], workload: Workload, etas: Sequence[int], repeats: int,
                     warmup: int) -> dict[str, Any]:
    """Per-η figures (repeats pooled) and the comparison, from the runs' summaries."""
    per_eta = {eta: aggregate([r for r in runs if r["eta"] == eta]) for eta in etas}
    for eta in etas:  # the machine's load while the variant ran (others' processes included)
        loads = [x for r in runs if r["eta"] == eta for x in r["loadavg"]]
        per_eta[eta]["loadavg"] = sum(loads) / len(loads)
    return {
        "benchmark": "async_vs_sync",
        "machine": machine(),
        "workload": {k: v for k, v in vars(workload).items() if k != "eta"},
        "etas": list(etas),
        "repeats": repeats,
        "warmup_steps": warmup,
        "runs": runs,
        "per_eta": {str(k): v for k, v in per_eta.items()},
        "comparison": {**compare(per_eta, workload), "speedup_by_repeat": by_repeat(runs)},
    }


def markdown(report: dict[str, Any]) -> str:
    per_eta = {int(k): v for k, v in report["per_eta"].items()}
    cmp = report.get("comparison", {})
    rows = []
    for eta, s in sorted(per_eta.items()):
        c = cmp.get("per_eta", {}).get(str(eta), {}) if cmp else {}
        rows.append([
            "sync (η=0)" if eta == 0 else f"async η={eta}",
            fmt(s["wall_s"], ".1f"),
            fmt(s["trained_tokens_per_s"], ".0f"),
            fmt(c.get("speedup"), ".2f") + "×" if c else "-",
            fmt(s.get("server_busy_frac"), ".0%"),
            fmt(s["trainer_util"], ".0%"),
            fmt(s.get("server_paused_frac"), ".2%"),
            f"{fmt(s['staleness_mean'], '.2f')} / {fmt(s['staleness_max'], '.0f')}",
            fmt(s["reward_final"], ".3f"),
            f"{fmt(s['gen_len_mean'], '.0f')} / {fmt(s['gen_len_max'], '.0f')}",
            f"{fmt(s.get('cpu_cores_server'))} / {fmt(s.get('cpu_cores_trainer'))}",
            fmt(s.get("trainer_threads_mean")),
            fmt(s.get("loadavg"), ".1f"),
        ])
    w = report["workload"]
    k = w["steps"] - report["warmup_steps"]
    text = [md_table(
        ["variant", f"wall s ({k} steps)", "trained tok/s", "vs sync", "server busy", "trainer busy",
         "server paused", "staleness mean/max", "final reward", "answer len mean/max", "cores used server/trainer", "trainer threads",
         "machine load"], rows)]
    if cmp:
        o = cmp["overlap"]
        best = cmp.get("best_eta")
        text.append("")
        text.append(f"Stage times of the sync run: T_gen = {o['t_gen_s']:.2f} s (waiting for the batch), "
                    f"T_train = {o['t_train_s']:.2f} s (log-probs, update, weight sync); ideal overlap bound "
                    f"(T_gen + T_train) / max(T_gen, T_train) = **{o['bound']:.2f}×**.")
        if best is not None:
            b = cmp["per_eta"][str(best)]
            text.append(f"Best async: η = {best}, **{b['speedup']:.2f}×** sync = {b['bound_fraction']:.0%} of the bound.")
            spread = cmp.get("speedup_by_repeat", {})
            if report.get("repeats", 1) > 1 and spread:
                text.append("Speedup over the sync run of the same repeat: " + "; ".join(
                    f"η={e}: " + ", ".join(f"{x:.2f}×" for x in v) for e, v in sorted(spread.items(), key=lambda kv: int(kv[0]))) + ".")
            text.append("")
            trow = []
            names = {"speedup": "async (best η) trained tok/s vs sync", "bound": "fraction of the ideal overlap bound",
                     "pause": "servers paused for weight sync (max over async runs)",
                     "reward": "final reward, async − sync"}
            for key, t in cmp["targets"].items():
                m = t["measured"]
                shown = f"{m:.2f}×" if key == "speedup" else (f"{m:.1%}" if key in ("bound", "pause") else
                                                            f"{m:+.3f} (2 s.e. {t['noise_2se']:.3f})")
                trow.append([names[key], t["target"], shown, "met" if t["met"] else "**not met**"])
            text.append(md_table(["target", "goal", "measured", ""], trow))
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.async_vs_sync", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Directory for the runs, async_vs_sync.json and .md.")
    p.add_argument("--quick", action="store_true", help="A seconds-long harness check (tiny model, 3 steps).")
    p.add_argument("--steps", type=int, default=None, help="Training steps per run.")
    p.add_argument("--etas", default="0,1,2,4", help="Comma-separated η values (0 = synchronous).")
    p.add_argument("--repeats", type=int, default=1, help="Runs per η, in alternating order.")
    p.add_argument("--warmup", type=int, default=None, help="Steps excluded from the figures (default 2; quick 1).")
    p.add_argument("--model", choices=sorted(MODELS), default="tiny",
                   help="The random model: tiny (hidden 128, 4 layers) or 25m (hidden 512, 8 layers).")
    args = p.parse_args(argv)
    try:
        etas = [int(x) for x in args.etas.split(",") if x.strip()]
    except ValueError:
        print(f"error: --etas: not a comma-separated list of integers: {args.etas!r}", file=sys.stderr)
        return 2
    if not etas or min(etas) < 0:
        print("error: --etas: give η values ≥ 0", file=sys.stderr)
        return 2
    w = QUICK if args.quick else DEFAULT
    w = Workload(**{**vars(w), **MODELS[args.model]})
    if args.steps:
        w = Workload(**{**vars(w), "steps": args.steps})
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if warmup >= w.steps:
        print(f"error: --warmup {warmup} leaves no measured step of {w.steps}", file=sys.stderr)
        return 2
    out = Path(args.out)
    t0 = time.time()
    report = run(out, w, etas, args.repeats, warmup)
    report["command"] = "python -m benchmarks.async_vs_sync " + shlex.join(sys.argv[1:] if argv is None else argv)
    report["elapsed_s"] = time.time() - t0
    (out / "async_vs_sync.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (out / "async_vs_sync.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

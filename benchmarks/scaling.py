"""How step time grows with group size, answer length and the number of rollout workers.

    python -m benchmarks.scaling --out bench_out
    python -m benchmarks.scaling --out /tmp/x --quick --knobs workers   # harness check

One knob at a time from the async-vs-sync workload (η = 1 here): the group size (answers per prompt),
the answer length (fewer extra stop tokens → longer answers, the same 768-token cap) and the number
of rollout worker processes. Each variant is a real run through the local launcher; they run back to
back in one invocation. Reported: step time, the trainer's wait for data and compute per step,
trained tokens per step and per second, server busy fraction, mean/max answer length.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks.async_vs_sync import DEFAULT, QUICK
from benchmarks.runs import Workload, fmt, launch, machine, md_table, summarize

ETA = 1
KNOBS = {
    # knob: (field, values other than the base's)
    "group_size": ("n_samples", (4, 8)),
    "answer_length": ("stop_tokens", (4, 0)),
    "workers": ("num_workers", (2,)),
}
QUICK_KNOBS = {"group_size": ("n_samples", (4,)), "answer_length": ("stop_tokens", (5,)),
               "workers": ("num_workers", (2,))}


def variants(base: Workload, knobs: dict[str, tuple[str, tuple]]) -> list[tuple[str, Workload]]:
    out = [("base", base)]
    for knob, (fld, values) in knobs.items():
        for v in values:
            out.append((f"{knob}={v}", Workload(**{**vars(base), fld: v})))
    return out


def describe(w: Workload) -> str:
    return f"{w.batch_size}×{w.n_samples} answers, {w.stop_tokens} stop ids (cap {w.max_new_tokens}), {w.num_workers} worker(s)"


def run(out: Path, base: Workload, knobs: dict, warmup: int, log=print,
        base_run: tuple[str, dict] | None = None) -> dict[str, Any]:
    """Every variant back to back; `base_run` (run dir, summary) reuses a finished run of `base`."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, w in variants(base, knobs):
        if name == "base" and base_run is not None:
            rows.append({"variant": name, "workload": vars(w), "run_dir": base_run[0], "summary": base_run[1]})
            continue
        trial = "scaling-" + name.replace("=", "")
        log(f"[scaling] run {trial}: {describe(w)} ...")
        res = launch(w, root=out, model_dir=out / "model", trial=trial, warmup=warmup)
        if not res.ok:
            raise RuntimeError(f"run {trial} failed (exit {res.returncode}); logs in {res.run_dir}/logs\n{res.log_tail}")
        s = summarize(res.metrics, warmup, res.cpu_window)
        log(f"[scaling]   {fmt(s['step_s_mean'])} s/step, {fmt(s['trained_tokens_per_s'], '.0f')} tok/s")
        rows.append({"variant": name, "workload": vars(w), "run_dir": str(res.run_dir), "summary": s})
    return {"benchmark": "scaling", "machine": machine(), "eta": base.eta, "warmup_steps": warmup, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    base = report["rows"][0]["summary"]["step_s_mean"]
    rows = []
    for r in report["rows"]:
        s, w = r["summary"], r["workload"]
        tokens_per_step = s["trained_tokens"] / max(s["window_steps"], 1)
        rows.append([
            r["variant"], f"{w['batch_size']}×{w['n_samples']}", w["stop_tokens"], w["num_workers"],
            f"{fmt(s['gen_len_mean'], '.0f')} / {fmt(s['gen_len_max'], '.0f')}",
            f"{tokens_per_step:.0f}", fmt(s["step_s_mean"]), f"{s['step_s_mean'] / max(base, 1e-9):.2f}×",
            fmt(s["phase_wait_data_s"]), fmt(s["step_s_mean"] - s["phase_wait_data_s"]),
            fmt(s["trained_tokens_per_s"], ".0f"), fmt(s.get("server_busy_frac"), ".0%"),
            f"{fmt(s.get('cpu_cores_server'))} / {fmt(s.get('cpu_cores_trainer'))}",
        ])
    return md_table(["variant", "prompts×answers", "stop ids", "workers", "answer len mean/max", "tokens/step",
                     "step s", "vs base", "wait s", "compute s", "trained tok/s", "server busy", "cores server/trainer"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Directory for the runs, scaling.json and scaling.md.")
    p.add_argument("--quick", action="store_true", help="A seconds-long harness check.")
    p.add_argument("--steps", type=int, default=None, help="Training steps per run (default: as async_vs_sync).")
    p.add_argument("--knobs", default=",".join(KNOBS), help=f"Comma-separated subset of {', '.join(KNOBS)}.")
    args = p.parse_args(argv)
    table = QUICK_KNOBS if args.quick else KNOBS
    names = [k.strip() for k in args.knobs.split(",") if k.strip()]
    unknown = [k for k in names if k not in table]
    if unknown:
        print(f"error: --knobs: unknown knob {unknown[0]!r} (choose from {', '.join(table)})", file=sys.stderr)
        return 2
    base = Workload(**{**vars(QUICK if args.quick else DEFAULT), "eta": ETA,
                       "steps": args.steps or (QUICK if args.quick else DEFAULT).steps})
    warmup = 1 if args.quick else 2
    if warmup >= base.steps:
        print(f"error: --steps must be more than {warmup}", file=sys.stderr)
        return 2
    out = Path(args.out)
    t0 = time.time()
    report = run(out, base, {k: table[k] for k in names}, warmup)
    report["elapsed_s"] = time.time() - t0
    (out / "scaling.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (out / "scaling.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

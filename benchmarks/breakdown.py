"""Where the time of a training step and of a rollout goes, from a run's metrics.

    python -m benchmarks.breakdown --out bench_out                 # runs sync (η=0) and η=2
    python -m benchmarks.breakdown --out /tmp/x --from RUN_DIR...  # tables of finished runs
    python -m benchmarks.breakdown --out /tmp/x --quick            # seconds-long harness check

Training step (trainer rank 0, seconds per step): waiting for data, proximal log-probs, advantages,
forward/backward, optimizer (clip + step), weight sync (writing the weights; servers paused while
they load them), checkpointing, the rest (batching, metrics, the controller's bookkeeping).

Rollout: per request on the server, the queueing before admission (`queue_time_s` / admitted); per
step, the server's busy time in batched prefill and in decode (one request's prefill or decode
share is not separable under continuous batching, so these are engine seconds per training step);
the generation latency a worker sees per answer (HTTP + queue + prefill + decode); the reward time
per group; how long a finished group waits in the trainer's buffer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from benchmarks.runs import Workload, fmt, launch, machine, md_table, summarize

TRAIN_PHASES = [
    ("wait for data", "phase_wait_data_s"),
    ("proximal log-probs", "phase_prox_logp_s"),
    ("advantages", "phase_advantages_s"),
    ("forward/backward", "phase_fwd_bwd_s"),
    ("optimizer", "phase_optimizer_s"),
    ("weight sync: write", "phase_weight_write_s"),
    ("weight sync: servers paused", "phase_weight_pause_s"),
    ("checkpoint (saver)", "phase_save_s"),
]


def train_rows(s: dict[str, Any]) -> list[tuple[str, float]]:
    step = float(s["step_s_mean"])
    rows = [(name, float(s.get(key) or 0.0)) for name, key in TRAIN_PHASES]
    # The train phase minus its forward/backward and optimizer: loss set-up, micro-batching.
    rest_train = float(s.get("phase_train_s") or 0.0) - float(s.get("phase_fwd_bwd_s") or 0.0) - float(
        s.get("phase_optimizer_s") or 0.0)
    rest_sync = float(s.get("phase_weight_sync_s") or 0.0) - float(s.get("phase_weight_write_s") or 0.0) - float(
        s.get("phase_weight_pause_s") or 0.0)
    rows.insert(5, ("update: micro-batching, loss", max(rest_train, 0.0)))
    rows.insert(8, ("weight sync: other", max(rest_sync, 0.0)))
    rows.append(("other (batching, metrics, bookkeeping)", max(step - sum(v for _, v in rows), 0.0)))
    rows.append(("step", step))
    return rows


def rollout_rows(s: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("server queueing per request (s)", s.get("server_queue_s_per_request")),
        ("server prefill per training step (s)", s.get("server_prefill_s_per_step")),
        ("server decode per training step (s)", s.get("server_decode_s_per_step")),
        ("server busy (fraction of wall)", s.get("server_busy_frac")),
        ("server paused for weight updates (fraction of wall)", s.get("server_paused_frac")),
        ("generation latency per answer, worker view (s)", s.get("rollout_gen_latency_s")),
        ("reward per group (s)", s.get("rollout_reward_s")),
        ("finished group waiting in the trainer buffer (s)", s.get("rollout_buffer_wait_s")),
        ("CPU cores used: server / trainer / worker / reward", _cores(s)),
        ("answer length mean / max (tokens)", f"{fmt(s.get('gen_len_mean'), '.0f')} / {fmt(s.get('gen_len_max'), '.0f')}"),
    ]


def _cores(s: dict[str, Any]) -> str:
    return " / ".join(fmt(s.get(f"cpu_cores_{r}"), ".2f") for r in ("server", "trainer", "worker", "reward"))


def tables(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"train": {run: {phase: s}}, "rollout": {run: {item: value}}} for the runs given."""
    return {
        "train": {name: dict(train_rows(s)) for name, s in summaries.items()},
        "rollout": {name: dict(rollout_rows(s)) for name, s in summaries.items()},
    }


def markdown(summaries: dict[str, dict[str, Any]]) -> str:
    names = list(summaries)
    per = {n: train_rows(s) for n, s in summaries.items()}
    rows = []
    for i, (phase, _) in enumerate(per[names[0]]):
        row = [f"**{phase}**" if phase == "step" else phase]
        for n in names:
            v = per[n][i][1]
            step = per[n][-1][1]
            row.append(f"{v:.3f} ({v / max(step, 1e-9):.0%})")
        rows.append(row)
    out = ["Training step, seconds per step (share of the step):", "",
           md_table(["phase"] + [f"{n}" for n in names], rows), "", "Rollout:", ""]
    rr = {n: rollout_rows(s) for n, s in summaries.items()}
    rows = []
    for i, (item, _) in enumerate(rr[names[0]]):
        rows.append([item] + [fmt(rr[n][i][1], ".3f") if not isinstance(rr[n][i][1], str) else rr[n][i][1]
                              for n in names])
    out.append(md_table(["item"] + names, rows))
    return "\n".join(out)


def _load(run_dir: Path, warmup: int) -> dict[str, Any]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    metrics = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return summarize(metrics, warmup)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.breakdown", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Directory for runs, breakdown.json and breakdown.md.")
    p.add_argument("--from", dest="runs", nargs="*", default=None, help="Finished run directories to tabulate.")
    p.add_argument("--quick", action="store_true", help="A seconds-long harness check.")
    p.add_argument("--warmup", type=int, default=2, help="Steps excluded from the figures.")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict[str, Any]] = {}
    if args.runs:
        for r in args.runs:
            try:
                summaries[Path(r).name] = _load(Path(r), args.warmup)
            except FileNotFoundError as e:
                print(f"error: --from: {e}", file=sys.stderr)
                return 2
    else:
        from benchmarks.async_vs_sync import DEFAULT, QUICK

        base = QUICK if args.quick else DEFAULT
        warmup = 1 if args.quick else args.warmup
        for eta in (0, 2):
            w = Workload(**{**vars(base), "eta": eta})
            res = launch(w, root=out, model_dir=out / "model", trial=f"breakdown-eta{eta}", warmup=warmup)
            if not res.ok:
                print(f"error: run failed (exit {res.returncode}); logs in {res.run_dir}/logs\n{res.log_tail}",
                      file=sys.stderr)
                return 1
            summaries["sync (η=0)" if eta == 0 else f"async η={eta}"] = summarize(res.metrics, warmup, res.cpu_window)
    report = {"benchmark": "breakdown", "machine": machine(), **tables(summaries), "summaries": summaries}
    (out / "breakdown.json").write_text(json.dumps(report, indent=2))
    md = markdown(summaries)
    (out / "breakdown.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

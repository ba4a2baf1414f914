"""This tree against another commit, side by side in one run: `python -m benchmarks.compare --base REV`.

    python -m benchmarks.compare --base 9b6d84b --out DIR                    # the CPU quickstart's RL steps
    python -m benchmarks.compare --base 9b6d84b --out DIR --steps 20 --seeds 1,2,3 --repeats 1

The other commit is checked out beside this one (`git worktree add`, removed afterwards). Both trees
run the same workload through their own local launcher, entry script and CPU quickstart config,
alternating which goes first from one repeat to the next, so that a change of load on a shared
machine falls on both. Both start from one warm model (this tree's model preparation, built once
and passed as `actor.path` with `prepare.model=none`), so only the RL loop is compared. Reported per
tree: seconds per RL step (median over steps after the first `--warmup`), wall time, reward first →
last 10% of steps, held-out accuracy when evaluated; and the ratio base / this per seed with its
median and range. Written to DIR/compare.json and DIR/compare.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = Path("examples/math/gsm8k_drgrpo.py")
CONFIG = Path("examples/math/gsm8k_drgrpo_cpu.yaml")


def checkout(rev: str, dest: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(dest), rev], check=True,
                   capture_output=True, text=True)
    return dest


def warm_model(out: Path) -> Path:
    """This tree's prepared model (tiny + SFT warm start per the quickstart config), built once."""
    model = out / "model"
    if (model / "config.json").is_file():
        return model
    cmd = [sys.executable, "-m", "areal_lite.tiny.prepare", "--config", str(REPO / CONFIG), f"actor.path={model}"]
    subprocess.run(cmd, check=True, cwd=REPO, timeout=3600)
    return model


def run(tree: Path, out: Path, name: str, model: Path, steps: int, seed: int) -> dict:
    root = out / "runs" / name
    cmd = [sys.executable, "-m", "areal_lite.launcher.local", str(tree / ENTRY), "--config", str(tree / CONFIG),
           f"actor.path={model}", "prepare.model=none", f"total_train_steps={steps}", f"seed={seed}",
           f"cluster.fileroot={root}", "experiment_name=cmp", "trial_name=t", "saver.save_final=false"]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=6 * 3600)
    wall = time.monotonic() - t0
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    path = root / "cmp" / "t" / "metrics.jsonl"
    metrics = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "metrics": metrics, "load": os.getloadavg()[0]}


def summarize(r: dict, warmup: int) -> dict:
    m = r["metrics"]
    if r["rc"] != 0 or not m:
        return {"ok": False, "rc": r["rc"], "wall_s": r["wall_s"]}
    k = max(1, len(m) // 10)
    rewards = [x["reward/mean"] for x in m]
    acc = [x["eval/accuracy"] for x in m if "eval/accuracy" in x]
    init = next((x["eval/accuracy_initial"] for x in m if "eval/accuracy_initial" in x), None)
    return {"ok": True, "wall_s": r["wall_s"], "load": round(r["load"], 1),
            "step_s": statistics.median(x["time/step"] for x in m[warmup:] or m),
            "reward_first": statistics.mean(rewards[:k]), "reward_last": statistics.mean(rewards[-k:]),
            "eval_initial": init, "eval_final": acc[-1] if acc else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit (or any git revision) to compare with")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--seeds", default="1")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--model", default="", help="a model directory to start both from (default: prepare one)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base_tree = out / "base-src"
    shutil.rmtree(base_tree, ignore_errors=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
    checkout(args.base, base_tree)
    rows = []
    try:
        model = Path(args.model).resolve() if args.model else warm_model(out)
        trees = {"base": base_tree, "this": REPO}
        for rep in range(args.repeats):
            for seed in [int(s) for s in args.seeds.split(",")]:
                order = ["base", "this"] if (rep + seed) % 2 == 0 else ["this", "base"]
                res = {}
                for name in order:
                    res[name] = summarize(run(trees[name], out, f"{name}-s{seed}-r{rep}", model, args.steps, seed),
                                          args.warmup)
                ratio = res["base"]["step_s"] / res["this"]["step_s"] if res["base"].get("ok") and res["this"].get("ok") \
                    else None
                rows.append({"seed": seed, "repeat": rep, "order": order, **res, "speedup": ratio})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], capture_output=True)
    ratios = [r["speedup"] for r in rows if r["speedup"]]
    report = {"base": args.base, "steps": args.steps, "rows": rows,
              "speedup_median": statistics.median(ratios) if ratios else None,
              "speedup_range": [min(ratios), max(ratios)] if ratios else None}
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    lines = [f"# {args.base} vs this tree: {args.steps} RL steps of the CPU quickstart", "",
             "| seed | order | base s/step | this s/step | speedup | base reward first→last | this reward first→last |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        b, t = r["base"], r["this"]
        if b.get("ok") and t.get("ok"):
            lines.append(f"| {r['seed']} | {' then '.join(r['order'])} | {b['step_s']:.2f} | {t['step_s']:.2f} | "
                         f"{r['speedup']:.2f}x | {b['reward_first']:.2f}→{b['reward_last']:.2f} | "
                         f"{t['reward_first']:.2f}→{t['reward_last']:.2f} |")
    if ratios:
        lines.append(f"\nspeedup median {report['speedup_median']:.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ratios else 1


if __name__ == "__main__":
    sys.exit(main())

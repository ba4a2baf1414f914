"""Every benchmark in one command: one JSON and one markdown report.

    python -m benchmarks.suite --out bench_out            # the full suite (~20-30 min on 2 cores)
    python -m benchmarks.suite --out /tmp/x --quick       # a short harness check of everything

In order, back to back:
1. async vs sync (`async_vs_sync`): η = 0, 1, 2, 4 through the real launcher;
2. the time breakdown (`breakdown`) of the sync run and the best async run (no extra runs);
3. scaling (`scaling`): group size, answer length, rollout workers (its base is the η = 1 run of 1);
4. the component benchmarks, each in its own process, when its module exists (others may be absent):
   engine_throughput, transport_throughput, packing, logprob_memory, weight_sync.
Writes DIR/suite.json (every figure, the machine, the commands) and DIR/suite.md (the tables).
A component that fails or is missing is recorded as such; the suite goes on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks import async_vs_sync, breakdown, scaling
from benchmarks.runs import Workload, machine, md_table


@dataclass
class Component:
    module: str
    what: str  # the comparison, one line
    full: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)  # used only when the module has no --quick flag
    headline: Callable[[dict], str] | None = None
    section: str = ""  # the docs/benchmarks.md section with the details


def _engine(r: dict) -> str:
    res = r["results"]
    e = res["engine"]["tokens_per_s"]
    parts = [f"engine {e:,.0f} tok/s"]
    for key, name in (("generate_padded_batch", "padded generate"), ("generate_one_by_one", "one-by-one")):
        if key in res:
            parts.append(f"{name} {res[key]['tokens_per_s']:,.0f} ({e / res[key]['tokens_per_s']:.1f}× slower)")
    return "; ".join(parts)


def _logprob(r: dict) -> str:
    by = {(x["path"], x["mode"]): x["peak_extra_mib"] for x in r["results"]}
    parts = []
    for mode in ("train", "no_grad"):
        if ("naive", mode) in by and ("chunked", mode) in by:
            parts.append(f"{mode}: naive {by[('naive', mode)]:,.0f} MiB vs chunked {by[('chunked', mode)]:,.0f} MiB")
    return "; ".join(parts)


def _transport(r: dict) -> str:
    return "; ".join(f"{x['size'] >> 10} KB groups: {x['mode']} {x['median_mb_per_s']:,.0f} MB/s "
                     f"({x['ratio_to_raw']:.2f}× raw ZeroMQ)" for x in r["results"] if x["mode"] != "raw")


def _packing(r: dict) -> str:
    res = r["results"]
    pk, pd = res["packed"], res["padded"]
    one = res.get("packed_one_row")
    one_s = f", one packed row per micro-batch {one['trained_tokens_per_s']:,.0f}" if one else ""
    return (f"packed rows {pk['trained_tokens_per_s']:,.0f} vs padded {pd['trained_tokens_per_s']:,.0f}{one_s} trained tok/s "
            f"({r['speedup_packed_vs_padded']:.2f}×); padding waste {pk['padding_waste']:.0%} vs {pd['padding_waste']:.0%}")


def _weight_sync(r: dict) -> str:
    parts = []
    for name, size in r["results"].items():
        modes = ", ".join(f"{mode} {m['total_s_per_gb']:.1f} s/GB (paused {m['pause_s_per_gb']:.1f})"
                          for mode, m in size["modes"].items())
        parts.append(f"{name} ({size['bytes'] / 1e6:.1f} MB): {modes}")
    return "; ".join(parts)


def _generic(r: dict) -> str:
    """A component's own one-line summary (`headline` in its JSON), or nothing."""
    h = r.get("headline") or r.get("summary")
    return h if isinstance(h, str) else ""


COMPONENTS = [
    Component("benchmarks.engine_throughput", "embedded engine vs `model.generate`", [],
              ["--num-prompts", "4", "--hidden-size", "32", "--num-layers", "1", "--skip-one-by-one"], _engine,
              "Embedded engine vs `model.generate`"),
    Component("benchmarks.transport_throughput", "trajectory transport vs the raw ZeroMQ ceiling", [],
              ["--sizes", "64K", "--rounds", "1", "--mb-per-trial", "4"], _transport, "Transport throughput"),
    Component("benchmarks.packing", "sequence packing vs padding", [],
              ["--num-seqs", "8", "--repeats", "1", "--hidden-size", "32", "--num-layers", "1", "--max-len", "128",
               "--max-tokens-per-mb", "512"], _packing, "Packing"),
    Component("benchmarks.logprob_memory", "chunked vs naive log-prob memory", [],
              ["--tokens", "64", "--vocab", "1000"], _logprob, "Chunked vs naive log-prob memory"),
    Component("benchmarks.weight_sync", "weight sync time per GB, each mode", [],
              ["--sizes", "tiny", "--repeats", "1"], _weight_sync, "Weight sync"),
]


def _flags(module: str) -> str:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    return out.stdout


def run_component(c: Component, out: Path, quick: bool, timeout: float) -> dict[str, Any]:
    """Run one component benchmark in its own process; its JSON and a one-line headline."""
    name = c.module.rsplit(".", 1)[-1]
    rec: dict[str, Any] = {"module": c.module, "what": c.what, "section": c.section}
    if importlib.util.find_spec(c.module) is None:
        return {**rec, "status": "absent"}
    helptext = _flags(c.module)
    path = out / f"{name}.json"
    args = list(c.full)
    if quick:
        args = ["--quick"] if "--quick" in helptext else list(c.quick)
    for flag in ("--json", "--out"):  # a JSON file (or, for some, a directory to write into)
        if flag in helptext:
            args += [flag, str(path)]
            break
    cmd = [sys.executable, "-m", c.module, *args]
    rec["command"] = "python -m " + shlex.join(cmd[2:])
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        rc, text = 124, f"timed out after {timeout:.0f}s"
    rec["elapsed_s"] = time.monotonic() - t0
    rec["stdout_tail"] = text[-4000:]
    if rc != 0:
        return {**rec, "status": f"failed (exit {rc})"}
    files = sorted(path.glob("*.json")) if path.is_dir() else [path] if path.is_file() else []
    result = json.loads(files[0].read_text()) if files else None
    if result is None:
        return {**rec, "status": "ok (no JSON)"}
    try:
        headline = c.headline(result) if c.headline else ""
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        headline = ""
    return {**rec, "status": "ok", "headline": headline, "result": result}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="Output directory (suite.json, suite.md, the runs).")
    p.add_argument("--quick", action="store_true", help="A short harness check of every benchmark.")
    p.add_argument("--repeats", type=int, default=1, help="Runs per η in async vs sync (alternating order).")
    p.add_argument("--skip", default="", help="Comma-separated parts to skip: async,scaling,components.")
    p.add_argument("--component-timeout", type=float, default=1200.0, help="Seconds per component benchmark.")
    args = p.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bad = skip - {"async", "scaling", "components"}
    if bad:
        print(f"error: --skip: unknown part {sorted(bad)[0]!r} (async, scaling, components)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.suite " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    report: dict[str, Any] = {"command": command, "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.monotonic()
    base = async_vs_sync.QUICK if args.quick else async_vs_sync.DEFAULT
    warmup = 1 if args.quick else 2
    etas = [0, 1] if args.quick else [0, 1, 2, 4]

    avs = None
    if "async" not in skip:
        avs = async_vs_sync.run(out / "async_vs_sync", base, etas, args.repeats, warmup)
        report["async_vs_sync"] = avs
        per_eta = {int(k): v for k, v in avs["per_eta"].items()}
        best = avs["comparison"].get("best_eta")
        parts = {"sync (η=0)": per_eta[0]}
        if best is not None:
            parts[f"async η={best}"] = per_eta[best]
        report["breakdown"] = {**breakdown.tables(parts), "summaries": parts}
        report["breakdown_md"] = breakdown.markdown(parts)

    if "scaling" not in skip:
        knobs = scaling.QUICK_KNOBS if args.quick else scaling.KNOBS
        if args.quick:
            knobs = {"workers": knobs["workers"]}
        sbase = Workload(**{**vars(base), "eta": scaling.ETA})
        reuse = None
        if avs is not None and scaling.ETA in avs["etas"]:
            first = next(r for r in avs["runs"] if r["eta"] == scaling.ETA)
            reuse = (first["run_dir"], first["summary"])
        report["scaling"] = scaling.run(out / "scaling", sbase, knobs, warmup, base_run=reuse)

    if "components" not in skip:
        comp_dir = out / "components"
        comp_dir.mkdir(exist_ok=True)
        report["components"] = []
        for c in COMPONENTS:
            print(f"[suite] component {c.module} ...", flush=True)
            rec = run_component(c, comp_dir, args.quick, args.component_timeout)
            print(f"[suite]   {rec['status']}{': ' + rec['headline'] if rec.get('headline') else ''}", flush=True)
            report["components"].append(rec)

    report["elapsed_s"] = time.monotonic() - t0
    (out / "suite.json").write_text(json.dumps(report, indent=2, default=str))
    md = markdown(report)
    (out / "suite.md").write_text(md + "\n")
    print(md)
    return 0


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"Machine: {m['nproc']} CPU(s), {m['cpu']}, {m['mem_gib']} GiB RAM"
             f"{', GPU ' + m['gpu'] if m.get('gpu') else ', no GPU'}; load average at start "
             f"{', '.join(f'{x:.1f}' for x in m['loadavg_at_start'] or [])}.", f"Command: `{report['command']}`", ""]
    if "async_vs_sync" in report:
        lines += ["### Async vs sync", "", async_vs_sync.markdown(report["async_vs_sync"]), ""]
        lines += ["### Where the time goes", "", report["breakdown_md"], ""]
    if "scaling" in report:
        lines += ["### Scaling", "", scaling.markdown(report["scaling"]), ""]
    if "components" in report:
        rows = [[c["what"], c["status"], c.get("headline") or "-", c.get("section") or "-"]
                for c in report["components"]]
        lines += ["### Components", "", md_table(["component", "status", "figures", "section"], rows), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Node names and ports inside a Slurm allocation (used by areal_lite.launcher.slurm_job).

    python -m areal_lite.launcher.slurm_step ports N
        Prints N distinct free TCP ports of this machine, one per line (run on another node of the
        job by a one-task `srun`, so that each port is picked on the node that binds it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from areal_lite.utils.net import free_ports


def job_hostnames(environ: dict[str, str] | None = None) -> list[str]:
    """The job's node names in Slurm's order (the batch script runs on the first)."""
    env = os.environ if environ is None else environ
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise RuntimeError("SLURM_JOB_NODELIST is not set: not inside a Slurm job")
    if not any(c in nodelist for c in "[],"):
        return [nodelist]
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"scontrol show hostnames {nodelist} failed: {out.stderr.strip()}")
    return out.stdout.split()


def ports_on_node(host: str, n: int) -> list[int]:
    """n free ports of another node of the job, picked there by a one-task srun."""
    out = subprocess.run(
        ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={host}", "--job-name=ports",
         sys.executable, "-m", "areal_lite.launcher.slurm_step", "ports", str(n)],
        capture_output=True, text=True, timeout=120,
    )
    ports = [int(p) for p in out.stdout.split() if p.isdigit()]
    if out.returncode != 0 or len(ports) != n:
        raise RuntimeError(f"could not pick ports on {host}: {out.stderr.strip()[-500:]}")
    return ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="areal_lite.launcher.slurm_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ports").add_argument("n", type=int)
    args = parser.parse_args(argv)
    print("\n".join(map(str, free_ports(args.n))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

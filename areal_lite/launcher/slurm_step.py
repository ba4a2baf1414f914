"""Helpers the generated sbatch script runs inside the allocation (see areal_lite.launcher.slurm).

    python -m areal_lite.launcher.slurm_step resolve --nodes 2 --port-nodes 0,0,1,1,1,1,1
        Prints `export AREAL_NODE<i>=<hostname>` for every node of the job (from SLURM_JOB_NODELIST,
        expanded by `scontrol show hostnames`) and `export AREAL_PORT_<k>=<port>` for every port
        the plan needs, each free on the node that binds it (`--port-nodes` lists that node per
        port). Ports of other nodes are picked there, by a one-task `srun` of `ports`.
    python -m areal_lite.launcher.slurm_step ports N
        Prints N distinct free TCP ports of this machine, one per line.
    python -m areal_lite.launcher.slurm_step wait-health --timeout S --server NAME PID URL ...
        Waits until every server's /health answers 200. Exits 1 with `[job] error: step NAME ...`
        when a server's srun (PID, a child of the batch script) is gone first or S seconds pass.

Addresses travel from here to the steps through the batch script's environment: no shared
filesystem is needed to find each other.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request

from areal_lite.utils.net import free_port


def free_ports(n: int, exclude: set[int] | None = None) -> list[int]:
    taken = set(exclude or ())
    out: list[int] = []
    while len(out) < n:
        port = free_port("")
        if port not in taken:
            taken.add(port)
            out.append(port)
    return out


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


def resolve(n_nodes: int, port_nodes: list[int], environ: dict[str, str] | None = None) -> dict[str, str]:
    hosts = job_hostnames(environ)
    if len(hosts) < n_nodes:
        raise RuntimeError(f"the job has {len(hosts)} node(s) ({', '.join(hosts)}) but the plan needs {n_nodes}")
    here = set(os.uname().nodename.split(".")[:1]) | {"localhost"}
    env = {f"AREAL_NODE{i}": hosts[i] for i in range(n_nodes)}
    by_node: dict[int, list[int]] = {}
    for k, node in enumerate(port_nodes):
        by_node.setdefault(node, []).append(k)
    for node, ks in sorted(by_node.items()):
        # The batch script runs on the job's first node: pick its ports locally.
        local = node == 0 or hosts[node].split(".")[0] in here
        ports = free_ports(len(ks)) if local else ports_on_node(hosts[node], len(ks))
        for k, port in zip(ks, ports):
            env[f"AREAL_PORT_{k}"] = str(port)
    return env


def health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by the batch shell) is gone too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def wait_health(servers: list[tuple[str, int, str]], timeout: float, poll: float = 0.5) -> int:
    deadline = time.monotonic() + timeout
    pending = list(servers)
    while pending:
        for name, pid, url in list(pending):
            if health_ok(url):
                pending.remove((name, pid, url))
            elif not pid_alive(pid):
                print(f"[job] error: step {name} exited while starting", flush=True)
                return 1
        if pending and time.monotonic() > deadline:
            print(f"[job] error: step {pending[0][0]} not healthy after {timeout:.0f}s "
                  f"({', '.join(n for n, _, _ in pending)} pending)", flush=True)
            return 1
        if pending:
            time.sleep(poll)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="areal_lite.launcher.slurm_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("resolve")
    r.add_argument("--nodes", type=int, required=True)
    r.add_argument("--port-nodes", default="", help="comma-separated node index of every port")
    p = sub.add_parser("ports")
    p.add_argument("n", type=int)
    w = sub.add_parser("wait-health")
    w.add_argument("--timeout", type=float, required=True)
    w.add_argument("--server", nargs=3, action="append", default=[], metavar=("NAME", "PID", "URL"))
    args = parser.parse_args(argv)
    if args.cmd == "ports":
        print("\n".join(map(str, free_ports(args.n))))
        return 0
    if args.cmd == "wait-health":
        return wait_health([(n, int(pid), url) for n, pid, url in args.server], args.timeout)
    try:
        env = resolve(args.nodes, [int(x) for x in args.port_nodes.split(",") if x != ""])
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"[job] error: step resolve: {e}", file=sys.stderr, flush=True)
        return 1
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

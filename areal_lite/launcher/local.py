"""Run everything on this machine: `python -m areal_lite.launcher.local ENTRY.py --config X.yaml k=v ...`

    python -m areal_lite.launcher.local examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo_cpu.yaml
    python -m areal_lite.launcher.local examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo.yaml --dry-run

Start order: (model preparation) → inference servers → wait for /health → trainer (torchrun; rank 0
binds the controller) → rollout workers. Each child runs in its own session with its output in
`{run}/logs/<name>.log`. A child that dies is noticed within a fraction of a second: with
`recover.mode=disabled` everything stops and the launcher exits 1 naming the process and the tail of
its log; otherwise the child is restarted (a server from the newest weights, a worker fresh, the
trainer from its recover checkpoint) up to `recover.retries` times. The trainer exiting 0 is a clean
finish: workers are given a moment to leave, servers are stopped, exit 0. Ctrl-C or SIGTERM stops
every child (its whole process group) before the launcher exits (130 / 143).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from areal_lite.config import ConfigError, exit_on_config_error
from areal_lite.config.schema import ExperimentConfig
from areal_lite.launcher.common import load_for_launcher, read_from, run_prepare, tail, write_run_config
from areal_lite.launcher.plan import Plan, ProcessSpec, build_plan, server_command

POLL_S = 0.2
STOP_GRACE_S = 10.0
WORKER_LEAVE_S = 10.0


class LaunchError(RuntimeError):
    """A process failed and could not (or may not) be restarted."""


@dataclass
class Child:
    spec: ProcessSpec
    log_path: str
    proc: subprocess.Popen | None = None
    restarts: int = 0
    done: bool = False
    log_fh: object = field(default=None, repr=False)


def latest_weights(run_dir: str) -> tuple[str, int] | None:
    """The newest complete `weights/v{N}` directory and N, for restarting a server."""
    wdir = os.path.join(run_dir, "weights")
    try:
        versions = sorted(int(n[1:]) for n in os.listdir(wdir) if n.startswith("v") and n[1:].isdigit())
    except FileNotFoundError:
        return None
    return (os.path.join(wdir, f"v{versions[-1]}"), versions[-1]) if versions else None


class LocalSupervisor:
    def __init__(self, cfg: ExperimentConfig, plan: Plan):
        self.cfg = cfg
        self.plan = plan
        logs = os.path.join(plan.run_dir, "logs")
        self.children = [Child(spec, os.path.join(logs, f"{spec.name}.log")) for spec in plan.all()]
        self.stop_signal: int | None = None
        self._metrics_pos = 0

    # ------------------------------------------------------------------ process control

    def _spawn(self, child: Child) -> None:
        if child.log_fh is None:
            child.log_fh = open(child.log_path, "ab", buffering=0)
        env = {**os.environ, **child.spec.env}
        child.proc = subprocess.Popen(
            child.spec.cmd,
            stdout=child.log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: we stop torchrun's children too
        )
        child.done = False
        self._say(f"started {child.spec.name} (pid {child.proc.pid}, log {child.log_path})")

    def _signal_group(self, child: Child, sig: int) -> None:
        """Send `sig` to the child's whole process group (a no-op once the group is gone)."""
        try:
            os.killpg(child.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _tail(self, child: Child) -> str:
        return tail(child.log_path)

    def _read_metrics(self, pos: int) -> str:
        """metrics.jsonl from byte offset `pos` ('' before the trainer writes it)."""
        return read_from(os.path.join(self.plan.run_dir, "metrics.jsonl"), pos)

    def _kill(self, child: Child, sig: int) -> None:
        if child.proc is not None and child.proc.poll() is None:
            self._signal_group(child, sig)

    def stop_all(self, children: list[Child] | None = None) -> None:
        """SIGTERM every process group, then SIGKILL what is left after the grace period."""
        children = self.children if children is None else children
        for c in children:
            self._kill(c, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for c in children:
            if c.proc is None:
                continue
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Kill the group even when the leader exited: torchrun's ranks may outlive it.
            self._signal_group(c, signal.SIGKILL)
            try:
                c.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _wait_healthy(self, servers: list[Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(servers)
        while pending:
            self._check_signal()
            for c in list(pending):
                rc = c.proc.poll() if c.proc else None
                if rc is not None:
                    raise LaunchError(f"{c.spec.name} exited with status {rc} while starting; "
                                      f"tail of {c.log_path}:\n{self._tail(c)}")
                if _http_ok(c.spec.health_url):
                    pending.remove(c)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.spec.name for c in pending)
                raise LaunchError(f"{names} not healthy after {timeout:.0f}s; tail of {pending[0].log_path}:\n"
                                  f"{self._tail(pending[0])}")
            time.sleep(POLL_S)

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        servers = [c for c in self.children if c.spec.role == "server"]
        trainers = [c for c in self.children if c.spec.role == "trainer"]
        workers = [c for c in self.children if c.spec.role == "rollout"]
        try:
            for c in servers:
                self._spawn(c)
            self._wait_healthy(servers, self.cfg.server.startup_timeout)
            self._say(f"{len(servers)} server(s) healthy: {', '.join(self.plan.server_urls)}")
            for c in trainers + workers:
                self._spawn(c)
            return self._supervise(trainers, workers)
        except LaunchError as e:
            self._say(f"error: {e}")
            self.stop_all()
            return 1
        except _Stopped as e:
            self._say(f"received {signal.Signals(e.signum).name}: stopping every process")
            self.stop_all()
            return 128 + e.signum
        finally:
            for c in self.children:
                if c.log_fh is not None:
                    c.log_fh.close()

    def _supervise(self, trainers: list[Child], workers: list[Child]) -> int:
        while True:
            self._check_signal()
            self._print_progress()
            for c in self.children:
                if c.done or c.proc is None:
                    continue
                rc = c.proc.poll()
                if rc is None:
                    continue
                if c.spec.role == "trainer" and rc == 0:
                    c.done = True
                    if all(t.done for t in trainers):
                        self._print_progress()
                        self._finish(workers)
                        self._say("training finished")
                        return 0
                    continue
                if c.spec.role == "rollout" and rc == 0:
                    c.done = True  # it left after the controller's shutdown
                    continue
                self._on_failure(c, rc)
            time.sleep(POLL_S)

    def _finish(self, workers: list[Child]) -> None:
        deadline = time.monotonic() + WORKER_LEAVE_S
        for c in workers:
            if c.proc is not None:
                try:
                    c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        self.stop_all()

    def _on_failure(self, c: Child, rc: int) -> None:
        what = f"{c.spec.name} exited with status {rc}" if rc >= 0 else f"{c.spec.name} was killed by signal {-rc}"
        if self.cfg.recover.mode == "disabled" or c.restarts >= self.cfg.recover.retries:
            why = "recover.mode is disabled" if self.cfg.recover.mode == "disabled" else \
                f"it already restarted {c.restarts} time(s) (recover.retries={self.cfg.recover.retries})"
            raise LaunchError(f"{what}; stopping the run ({why}). Tail of {c.log_path}:\n{self._tail(c)}")
        c.restarts += 1
        self._say(f"{what}; restarting it ({c.restarts}/{self.cfg.recover.retries})")
        if c.spec.role == "trainer":
            # Torchrun's surviving ranks (if any) must go before a new group forms on the same port.
            self.stop_all([c])
            c.spec.env["AREAL_LITE_RESTARTS"] = str(c.restarts)
        if c.spec.role == "server":
            newest = latest_weights(self.plan.run_dir)
            if newest is not None:
                path, version = newest
                c.spec.cmd = server_command(
                    self.cfg, host=self.cfg.cluster.bind_host, port=c.spec.port, seed=self.cfg.seed * 1000 + c.restarts,
                    weights_dir=os.path.join(self.plan.run_dir, "weights"), model_path=path, weight_version=version,
                )
        if c.spec.role == "rollout":
            c.spec.env["AREAL_LITE_RESTARTS"] = str(c.restarts)
        self._spawn(c)
        if c.spec.role == "server":
            self._wait_healthy([c], self.cfg.server.startup_timeout)
        if c.spec.role == "trainer":
            # Workers that left on the failed trainer's shutdown message are needed by the new one.
            for w in self.children:
                if w.spec.role == "rollout" and w.done:
                    self._spawn(w)

    # ------------------------------------------------------------------ console

    def _print_progress(self) -> None:
        chunk = self._read_metrics(self._metrics_pos)
        if not chunk.endswith("\n"):
            chunk = chunk[: chunk.rfind("\n") + 1]
        self._metrics_pos += len(chunk.encode())
        for line in chunk.splitlines():
            try:
                m = json.loads(line)
            except ValueError:
                continue
            self._say(_progress(m, self.cfg))

    def _say(self, msg: str) -> None:
        print(f"[launcher] {msg}", flush=True)

    def _check_signal(self) -> None:
        if self.stop_signal is not None:
            raise _Stopped(self.stop_signal)


class _Stopped(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _progress(m: dict, cfg: ExperimentConfig) -> str:
    def f(key: str, fmt: str) -> str:
        v = m.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    total = cfg.total_train_steps or "?"
    line = (f"step {m.get('step', 0) + 1}/{total} | v{m.get('version', '-')} | reward {f('reward/mean', '.3f')} | "
            f"staleness max {f('staleness/max', '.0f')} | {f('throughput/trained_tokens_per_s', '.0f')} tok/s | "
            f"{f('time/step', '.2f')} s/step")
    if "eval/accuracy" in m:
        line += f" | eval acc {f('eval/accuracy', '.3f')}"
    return line


def _http_ok(url: str | None) -> bool:
    if url is None:
        return True
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _map_visible_devices(plan: Plan) -> None:
    """Plan device i is the i-th GPU this launcher was given: honour an inherited CUDA_VISIBLE_DEVICES
    (e.g. the ablation runs several launchers side by side, each on its own GPUs)."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    for spec in plan.all() if visible else []:
        if spec.devices and all(d < len(visible) for d in spec.devices):
            spec.env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[d] for d in spec.devices)


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = load_for_launcher(argv, "areal_lite.launcher.local")
    cfg = args.cfg
    if cfg.cluster.n_nodes > 1:
        raise ConfigError(f"cluster.n_nodes={cfg.cluster.n_nodes}: the local launcher runs on one machine; "
                          "use areal_lite.launcher.ray or areal_lite.launcher.slurm for several nodes")
    from areal_lite.config.schema import run_dir

    config_path = os.path.join(os.path.abspath(run_dir(cfg)), "config.yaml")
    plan = build_plan(cfg, args.entry, config_path=config_path)
    _map_visible_devices(plan)
    if args.dry_run:
        print(plan.describe())
        return 0
    write_run_config(cfg)
    supervisor = LocalSupervisor(cfg, plan)

    def on_signal(signum, _frame):
        supervisor.stop_signal = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        run_prepare(cfg, config_path, os.path.join(plan.run_dir, "logs", "prepare.log"))
    except RuntimeError as e:
        print(f"[launcher] error: {e}", flush=True)
        return 1
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())

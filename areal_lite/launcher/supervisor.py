"""One supervisor for every launcher: start order, health, watching, the restart policy, stopping.

The launchers differ only in how a process is started, signalled and read, which a `Backend` does:
`LocalProcesses` (this module: subprocesses of the launcher), `RayActors` (launcher/ray.py: one
actor per process) and `SlurmSteps` (launcher/slurm_job.py: one `srun` step per process, inside
the allocation). Everything else is here, written once:

- start order: servers → every `/health` answers → trainer → rollout workers;
- a dead process is noticed within a fraction of a second (a poll every 0.2 s);
- restart policy (recover.mode not disabled, up to recover.retries times each): a server restarts
  from the trainer's newest weights at their version; a worker restarts fresh; the trainer's whole
  process tree (torchrun and every rank) is killed and reaped first, then it resumes from its
  recover checkpoint. A process that failed with an error no restart can fix (it wrote the run
  directory's `fatal` file: a configuration or environment mistake) ends the run at once;
- the trainer exiting 0 is a clean finish: workers get a moment to leave, servers are stopped;
- SIGINT, SIGTERM or SIGHUP stop every process tree (SIGTERM, then SIGKILL after a grace period)
  and the launcher exits 128 + the signal.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil

from areal_lite.config.schema import ExperimentConfig
from areal_lite.launcher.common import Stopped, kill_process_tree, read_from, tail
from areal_lite.launcher.console import Console, RunProgress
from areal_lite.launcher.plan import Plan, ProcessSpec, server_command
from areal_lite.run.checkpoint import RecoverCheckpointer
from areal_lite.run.rundir import RunDir
from areal_lite.utils.net import http_ok

POLL_S = 0.2
STOP_GRACE_S = 10.0
WORKER_LEAVE_S = 10.0
KILL_WAIT_S = 30.0
TRACK_S = 5.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Every process a launched process starts inherits this variable: its value names the launch, so the
# whole tree is found again even after a parent died and its children were re-parented elsewhere.
TREE_TAG = "AREAL_LITE_PROCESS_TAG"


class LaunchError(RuntimeError):
    """A process failed and could not (or may not) be restarted."""


@dataclass
class Child:
    spec: ProcessSpec
    log_path: str
    handle: Any = None  # what the backend returned from start(): poll(), wait(timeout), pid
    restarts: int = 0
    done: bool = False
    tag: str = ""  # TREE_TAG of the current incarnation (local backend)


class Backend:
    """How processes are started and controlled. Subclasses override what differs."""

    where = "this machine"

    def start(self, child: Child) -> Any:
        raise NotImplementedError

    def kill_tree(self, child: Child, sig: int) -> None:
        raise NotImplementedError

    def tail(self, child: Child) -> str:
        return tail(child.log_path)

    def read_file(self, path: str, pos: int) -> str:
        return read_from(path, pos)

    def track(self, children: list[Child]) -> None:
        """Note the processes each child has started so far (called every few seconds)."""

    def release(self) -> None:
        pass


class LocalProcesses(Backend):
    """Each process a subprocess of the launcher in its own session, its output in its log file."""

    def __init__(self) -> None:
        self._logs: dict[str, Any] = {}
        self._launches = itertools.count()
        self._found: dict[str, dict[int, psutil.Process]] = {}  # tag → processes found by it

    def start(self, child: Child) -> subprocess.Popen:
        log = self._logs.get(child.spec.name)
        if log is None:
            log = self._logs[child.spec.name] = open(child.log_path, "ab", buffering=0)
        child.tag = f"{os.getpid()}-{child.spec.name}-{next(self._launches)}"
        return subprocess.Popen(child.spec.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **child.spec.env, TREE_TAG: child.tag}, start_new_session=True)

    def kill_tree(self, child: Child, sig: int) -> None:
        """Signal the process, its descendants and every process of its launch that left the tree:
        when torchrun dies first, its ranks (each in a session of its own) are orphans that keep
        running and holding the run's ports. After SIGKILL, wait until they are gone."""
        kill_process_tree(child.handle.pid, sig)
        # NOTE: remembered across calls: a process that is exiting has no environment left to match,
        # but still holds its sockets until it is gone.
        known = self._found.setdefault(child.tag, {})
        known.update({p.pid: p for p in tagged_processes(child.tag)[child.tag]})
        procs = [p for p in known.values() if p.is_running()]
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        if sig == signal.SIGKILL:
            # A process in uninterruptible sleep (an fsync under heavy I/O) dies only when it returns.
            _, stuck = psutil.wait_procs(procs, timeout=KILL_WAIT_S)
            if stuck:
                print(f"[launcher] warning: {child.spec.name}: pid(s) {[p.pid for p in stuck]} still alive "
                      f"{KILL_WAIT_S:.0f}s after SIGKILL", flush=True)

    def track(self, children: list[Child]) -> None:
        """One scan for every child: a process found once is killed with its tree even after it left
        the tree and its environment is gone (a process that is exiting)."""
        for tag, procs in tagged_processes(*(c.tag for c in children if c.handle is not None)).items():
            self._found.setdefault(tag, {}).update({p.pid: p for p in procs})

    def release(self) -> None:
        for fh in self._logs.values():
            fh.close()
        self._logs.clear()


def tagged_processes(*tags: str) -> dict[str, list[psutil.Process]]:
    """Every live process whose environment has TREE_TAG set to one of `tags` (a launch and all it
    started), by tag."""
    found: dict[str, list[psutil.Process]] = {t: [] for t in tags if t}
    if not found:
        return found
    for p in psutil.process_iter():
        try:
            tag = p.environ().get(TREE_TAG) if p.pid != os.getpid() else None
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if tag in found:
            found[tag].append(p)
    return found


class Supervisor:
    def __init__(self, cfg: ExperimentConfig, plan: Plan, backend: Backend, *,
                 say: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.plan = plan
        self.backend = backend
        self.run_dir = RunDir(plan.run_dir)
        self.children = [Child(spec, self.run_dir.log_path(spec.name)) for spec in plan.all()]
        self.stop_signal: int | None = None
        self.console = Console(say)
        self.progress = RunProgress(self.console, cfg, self.run_dir.root, read_file=backend.read_file,
                                    line_fn=progress_line, local_files=backend.where == "this machine")

    # ------------------------------------------------------------------ process control

    def _spawn(self, child: Child) -> None:
        child.handle = self.backend.start(child)
        child.done = False
        where = "" if self.backend.where == "this machine" else f" on {child.spec.host}"
        self._say(f"started {child.spec.name} (pid {child.handle.pid}{where}, log {child.log_path})")

    def _alive(self, child: Child) -> bool:
        return child.handle is not None and child.handle.poll() is None

    def stop(self, children: list[Child] | None = None) -> None:
        """SIGTERM every process tree, then SIGKILL what is left after the grace period, and reap."""
        children = self.children if children is None else children
        for c in children:
            if c.handle is not None:
                self.backend.kill_tree(c, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for c in children:
            if c.handle is None:
                continue
            try:
                c.handle.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Kill the tree even when its root exited: torchrun's ranks may outlive it.
            self.backend.kill_tree(c, signal.SIGKILL)
            try:
                c.handle.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def _wait_healthy(self, servers: list[Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(servers)
        while pending:
            self._check_signal()
            for c in list(pending):
                rc = c.handle.poll()
                if rc is not None:
                    raise LaunchError(f"{c.spec.name} exited with status {rc} while starting; "
                                      f"tail of {c.log_path}:\n{self.backend.tail(c)}")
                if http_ok(c.spec.health_url):
                    pending.remove(c)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.spec.name for c in pending)
                raise LaunchError(f"{names} not healthy after {timeout:.0f}s; tail of {pending[0].log_path}:\n"
                                  f"{self.backend.tail(pending[0])}")
            time.sleep(POLL_S)

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        servers = [c for c in self.children if c.spec.role == "server"]
        trainers = [c for c in self.children if c.spec.role == "trainer"]
        workers = [c for c in self.children if c.spec.role == "rollout"]
        self.run_dir.clear_fatal()
        self.progress.clear()
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
            return 1
        except Stopped as e:
            self._say(f"received {signal.Signals(e.signum).name}: stopping every process")
            return 128 + e.signum
        finally:
            # Whatever ended the run (even an error of the launcher itself), nothing outlives it.
            self.stop()
            self.backend.release()

    def _supervise(self, trainers: list[Child], workers: list[Child]) -> int:
        next_track = 0.0
        while True:
            self._check_signal()
            self._print_progress()
            if time.monotonic() >= next_track:
                self.backend.track(self.children)
                next_track = time.monotonic() + TRACK_S
            for c in self.children:
                if c.done or c.handle is None:
                    continue
                rc = c.handle.poll()
                if rc is None:
                    continue
                if c.spec.role == "trainer" and rc == 0:
                    c.done = True
                    if all(t.done for t in trainers):
                        self._print_progress()
                        self._finish(workers)
                        self._say("training finished")
                        self.progress.summary()
                        return 0
                    continue
                if c.spec.role == "rollout" and rc == 0:
                    c.done = True  # it left after the controller's shutdown
                    continue
                self._on_failure(c, rc)
            time.sleep(POLL_S)

    def _finish(self, workers: list[Child]) -> None:
        """Give the workers a moment to leave on the controller's shutdown (run() then stops the rest)."""
        deadline = time.monotonic() + WORKER_LEAVE_S
        for c in workers:
            if c.handle is not None:
                try:
                    c.handle.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass

    # ------------------------------------------------------------------ the restart policy

    def _on_failure(self, c: Child, rc: int) -> None:
        what = f"{c.spec.name} exited with status {rc}" if rc >= 0 else f"{c.spec.name} was killed by signal {-rc}"
        fatal = self.run_dir.read_fatal()
        if fatal:
            raise LaunchError(f"{what}: {fatal}; stopping the run (a restart cannot fix this). Log: {c.log_path}")
        # A full or read-only run directory fails every restart alike (and leaves no room for `fatal`).
        if problem := self.run_dir.write_problem():
            raise LaunchError(f"{what}: {problem}; stopping the run (a restart cannot fix this). Log: {c.log_path}")
        if self.cfg.recover.mode == "disabled" or c.restarts >= self.cfg.recover.retries:
            why = "recover.mode is disabled" if self.cfg.recover.mode == "disabled" else \
                f"it already restarted {c.restarts} time(s) (recover.retries={self.cfg.recover.retries})"
            raise LaunchError(f"{what}; stopping the run ({why}). Tail of {c.log_path}:\n{self.backend.tail(c)}")
        c.restarts += 1
        self._say(f"{what}; restarting it ({c.restarts}/{self.cfg.recover.retries})")
        if c.spec.role == "trainer":
            # Every rank must be gone (and its ports free) before a new group forms.
            self.stop([c])
            # The dead trainer's weights newer than where its successor starts are a policy the
            # run no longer has: drop them now, before a server can restart from them (the new
            # trainer does the same in resume(), but only seconds from now).
            start = RecoverCheckpointer(self.run_dir.recover_dir).start_step()
            if dropped := self.run_dir.drop_weights_after(start):
                self._say(f"dropped weights {dropped}: the trainer resumes at version {start}")
        if c.spec.role == "server":
            self._restart_command(c)
        if c.spec.role in ("trainer", "rollout"):
            c.spec.env["AREAL_LITE_RESTARTS"] = str(c.restarts)
        self._spawn(c)
        if c.spec.role == "server":
            self._wait_healthy([c], self.cfg.server.startup_timeout)
        if c.spec.role == "trainer":
            # Workers that left on the failed trainer's shutdown message are needed by the new one.
            for w in self.children:
                if w.spec.role == "rollout" and w.done:
                    self._spawn(w)

    def _restart_command(self, c: Child) -> None:
        """A restarted server loads the trainer's newest weights (never newer than the trainer's
        state: the trainer drops those when it resumes) and reports their version."""
        newest = self.run_dir.newest_weights()
        if newest is None:
            return
        path, version = newest
        c.spec.cmd = server_command(
            self.cfg, host=self.cfg.cluster.bind_host, port=c.spec.port, seed=self.cfg.seed * 1000 + c.restarts,
            weights_dir=self.run_dir.weights_dir, model_path=path, weight_version=version,
        )

    # ------------------------------------------------------------------ console

    def _print_progress(self) -> None:
        self.progress.poll()  # one line per step logged, the steps' bar, the trainer's evaluation

    def _say(self, msg: str) -> None:
        try:
            self.console.say(msg)
        except OSError:  # the console is gone (a closed terminal or pipe): the logs still have it all
            pass

    def _check_signal(self) -> None:
        if self.stop_signal is not None:
            raise Stopped(self.stop_signal)

    def handle_signals(self) -> None:
        """SIGINT, SIGTERM and SIGHUP (a closed terminal) all stop the run."""

        def on_signal(signum, _frame):
            self.stop_signal = signum

        for sig in STOP_SIGNALS:
            signal.signal(sig, on_signal)


def progress_line(m: dict, cfg: ExperimentConfig) -> str:
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



"""Run everything on this machine: `python -m areal_lite.launcher.local ENTRY.py --config X.yaml k=v ...`

    python -m areal_lite.launcher.local examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo_cpu.yaml
    python -m areal_lite.launcher.local examples/math/gsm8k_drgrpo.py --config examples/math/gsm8k_drgrpo.yaml --dry-run

Every process is a subprocess of the launcher, in its own session, with its output in
`{run}/logs/<name>.log`; start order, supervision, restarts and stopping are the one supervisor's
(areal_lite/launcher/supervisor.py). The trainer exiting 0 is a clean finish (exit 0); a failure
that may not be restarted exits 1 naming the process and the tail of its log; Ctrl-C, SIGTERM or
SIGHUP stop every process tree before the launcher exits (130 / 143 / 129).
"""

from __future__ import annotations

import os
import signal
import sys

from areal_lite.config import ConfigError, exit_on_config_error
from areal_lite.config.schema import run_dir
from areal_lite.launcher.common import Stopped, load_for_launcher, run_prepare, write_run_config
from areal_lite.launcher.plan import Plan, build_plan
from areal_lite.launcher.supervisor import LocalProcesses, Supervisor


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
    config_path = os.path.join(os.path.abspath(run_dir(cfg)), "config.yaml")
    plan = build_plan(cfg, args.entry, config_path=config_path)
    _map_visible_devices(plan)
    if args.dry_run:
        print(plan.describe())
        return 0
    write_run_config(cfg)
    supervisor = Supervisor(cfg, plan, LocalProcesses())
    supervisor.handle_signals()
    try:
        run_prepare(cfg, config_path, os.path.join(plan.run_dir, "logs", "prepare.log"),
                    stop=lambda: supervisor.stop_signal)
    except Stopped as e:
        print(f"[launcher] received {signal.Signals(e.signum).name} while preparing the model: stopped", flush=True)
        return 128 + e.signum
    except RuntimeError as e:
        print(f"[launcher] error: {e}", flush=True)
        return 1
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())

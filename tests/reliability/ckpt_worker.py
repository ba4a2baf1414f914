"""Child process of test_checkpoint_faults: a real FSDP engine (gloo, world size 1) and RecoverCheckpointer.

    python -m tests.reliability.ckpt_worker ROOT MODEL_DIR loop      # resume from `latest` (checked), save forever
    python -m tests.reliability.ckpt_worker ROOT MODEL_DIR diskfull  # one good save, then saves under RLIMIT_FSIZE

Every checkpoint records the checksum of the parameters it holds; loading checks it.
"""

from __future__ import annotations

import json
import os
import resource
import sys

import torch


def checksum(engine) -> float:
    return float(sum(p.detach().double().sum() for p in engine.model.parameters()))


def main(root: str, model_dir: str, mode: str) -> int:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("CKPT_PORT", "29555"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    from areal_lite.run.checkpoint import CheckpointWriteError, RecoverCheckpointer
    from areal_lite.trainer.engine import EngineSpec, FSDPEngine
    from areal_lite.utils.distributed import init_trainer_dist

    d = init_trainer_dist("cpu")
    torch.manual_seed(0)
    engine = FSDPEngine(EngineSpec(path=model_dir), d, total_optimizer_steps=10)
    engine.initialize()
    ckpt = RecoverCheckpointer(root)
    step = 0
    latest = ckpt.latest()
    if latest is not None:
        state = ckpt.load(engine, latest)
        got = checksum(engine)
        print(json.dumps({"resumed": state["step"], "ok": abs(got - state["checksum"]) < 1e-6 * max(1, abs(got)),
                          "path": os.path.basename(latest)}), flush=True)
        step = state["step"] + 1
    if mode == "diskfull":
        ckpt.save(engine, {"step": step, "checksum": checksum(engine)}, step)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))  # files over 64 KiB: EFBIG
        try:
            ckpt.save(engine, {"step": step + 1, "checksum": 0.0}, step + 1)
        except CheckpointWriteError as e:
            print(json.dumps({"error": str(e), "latest": os.path.basename(ckpt.latest() or ""),
                              "entries": sorted(os.listdir(root))}), flush=True)
            return 0
        return 1
    while True:
        with torch.no_grad():
            for p in engine.model.parameters():
                p.mul_(1.001).add_(0.001)
        print(f"saving {step}", flush=True)
        ckpt.save(engine, {"step": step, "checksum": checksum(engine)}, step)
        print(f"saved {step}", flush=True)
        step += 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))

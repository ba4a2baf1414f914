"""What a launcher hands to the processes it starts, through the environment.

The launcher writes these variables; trainer ranks and rollout workers read them with
`RunEnv.from_environ()`. No shared filesystem is needed to find each other: addresses travel here.
The run secret and the API key are never written to logs or to the saved config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

ENV_ROLE = "AREAL_LITE_ROLE"
ENV_RUN_ID = "AREAL_LITE_RUN_ID"
ENV_RUN_DIR = "AREAL_LITE_RUN_DIR"
ENV_SECRET = "AREAL_LITE_RUN_SECRET"
ENV_API_KEY = "AREAL_LITE_API_KEY"
ENV_SERVERS = "AREAL_LITE_SERVER_ADDRS"
ENV_CONTROLLER = "AREAL_LITE_CONTROLLER"
ENV_WORKER_INDEX = "AREAL_LITE_WORKER_INDEX"
ENV_RESTARTS = "AREAL_LITE_RESTARTS"
ENV_WEIGHT_SYNC_PORT = "AREAL_LITE_WEIGHT_SYNC_PORT"
ENV_MAX_THREADS = "AREAL_LITE_MAX_THREADS"  # a CPU trainer may take this many threads while rollouts idle
# Testing: the trainer's default-group backend ("cuda:gloo" on CPU behaves like NCCL: no CPU tensors).
ENV_DEFAULT_BACKEND = "AREAL_LITE_DEFAULT_BACKEND"

ROLES = ("trainer", "rollout")
SECRET_VARS = (ENV_SECRET, ENV_API_KEY)


@dataclass
class RunEnv:
    """The launcher-provided context of one process."""

    role: str = "trainer"
    run_id: str = "local"
    run_dir: str = ""
    secret: bytes | None = None
    api_key: str | None = None
    server_addrs: list[str] = field(default_factory=list)
    controller_host: str = "127.0.0.1"
    trajectory_port: int = 0
    control_port: int = 0
    broadcast_port: int = 0
    worker_index: int = 0
    restarts: int = 0
    weight_sync_port: int = 0
    default_backend: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "RunEnv":
        env = os.environ if environ is None else environ
        role = env.get(ENV_ROLE, "trainer")
        if role not in ROLES:
            raise ValueError(f"{ENV_ROLE}={role!r} is not one of {', '.join(ROLES)}")
        host, traj, ctrl, pub = "127.0.0.1", 0, 0, 0
        if env.get(ENV_CONTROLLER):
            host, traj, ctrl, pub = _parse_controller(env[ENV_CONTROLLER])
        secret = env.get(ENV_SECRET)
        return cls(
            role=role,
            run_id=env.get(ENV_RUN_ID, "local"),
            run_dir=env.get(ENV_RUN_DIR, ""),
            secret=bytes.fromhex(secret) if secret else None,
            api_key=env.get(ENV_API_KEY) or None,
            server_addrs=[a for a in env.get(ENV_SERVERS, "").split(",") if a],
            controller_host=host,
            trajectory_port=traj,
            control_port=ctrl,
            broadcast_port=pub,
            worker_index=int(env.get(ENV_WORKER_INDEX, "0")),
            restarts=int(env.get(ENV_RESTARTS, "0")),
            weight_sync_port=int(env.get(ENV_WEIGHT_SYNC_PORT, "0")),
            default_backend=env.get(ENV_DEFAULT_BACKEND, ""),
        )

    def to_environ(self) -> dict[str, str]:
        env = {
            ENV_ROLE: self.role,
            ENV_RUN_ID: self.run_id,
            ENV_RUN_DIR: self.run_dir,
            ENV_SERVERS: ",".join(self.server_addrs),
            ENV_CONTROLLER: f"{self.controller_host}:{self.trajectory_port}:{self.control_port}:{self.broadcast_port}",
            ENV_WORKER_INDEX: str(self.worker_index),
            ENV_RESTARTS: str(self.restarts),
            ENV_WEIGHT_SYNC_PORT: str(self.weight_sync_port),
        }
        if self.default_backend:
            env[ENV_DEFAULT_BACKEND] = self.default_backend
        if self.secret:
            env[ENV_SECRET] = self.secret.hex()
        if self.api_key:
            env[ENV_API_KEY] = self.api_key
        return env

    def address(self, port: int) -> str:
        return f"tcp://{self.controller_host}:{port}"


def _parse_controller(value: str) -> tuple[str, int, int, int]:
    try:
        host, traj, ctrl, pub = value.rsplit(":", 3)
        return host, int(traj), int(ctrl), int(pub)
    except ValueError:
        raise ValueError(f"{ENV_CONTROLLER}={value!r} is not host:traj_port:control_port:broadcast_port") from None


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` safe to print or log: secrets replaced by '<redacted>'."""
    return {k: ("<redacted>" if k in SECRET_VARS else v) for k, v in env.items()}

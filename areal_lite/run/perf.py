"""Per-step timing metrics for the benchmarks (benchmarks): where a step's and a rollout's time goes."""

from __future__ import annotations

import time

import numpy as np


# rejected_requests: malformed bodies refused (4xx); unauthorized_requests: a missing or wrong API key.
SERVER_COUNTERS = ("busy_time_s", "paused_time_s", "prefill_time_s", "decode_time_s", "queue_time_s",
                   "num_admitted", "uptime_s", "generated_tokens", "rejected_requests", "unauthorized_requests")


def perf_metrics(engine, buffered, admin, t_start: float, t_data: float) -> dict[str, float]:
    """Where the time went (for benchmarks): trainer phases, rollout latencies, server counters.

    Cumulative counters (time/elapsed, time/fwd_bwd_total, server/*_s) let a reader take differences
    over any window of steps.
    """
    out = {"time/elapsed": time.monotonic() - t_start,
           **{f"time/{k}_total": v for k, v in engine.timings.items()}}
    if not buffered or admin is None:  # the buffer's records and the servers are rank 0's
        return out
    out.update(rollout_metrics(buffered, t_data))
    try:
        infos = admin.server_info()
    except Exception:  # a server restarting: skip this step's server counters
        return out
    infos = [i for i in infos if isinstance(i, dict)]
    for key in SERVER_COUNTERS:
        # The embedded engine's counters; SGLang has none of them, and a missing one is not a zero.
        if infos and all(key in i for i in infos):
            out[f"server/{key}"] = float(sum(float(i[key]) for i in infos))
    return out


def rollout_metrics(buffered, t_data: float) -> dict[str, float]:
    """Latencies of the batch's groups (from the workers' per-sample info) and their wait in the buffer."""
    groups = [b.group for b in buffered]
    out = {"rollout/gen_latency_s": float(np.mean(_info_column(groups, "latency_s"))),
           "rollout/reward_s": float(np.mean(_info_column(groups, "reward_s"))),
           "rollout/buffer_wait_s": float(np.mean([t_data - b.t_accept for b in buffered]))}
    # ReMax: groups whose greedy answer's reward failed (scored 0); every sample of a group carries it.
    firsts = [g.info["baseline_reward_failed"][0] for g in groups if g.info.get("baseline_reward_failed")]
    if firsts:
        out["reward/baseline_failures"] = float(sum(bool(v) for v in firsts))
    return out


def _info_column(groups, key: str) -> list[float]:
    """A per-sample info value over every sample of `groups` (0 where a sample has none)."""
    return [0.0 if v is None else float(v) for g in groups
            for v in g.info.get(key) or [None] * g.num_samples]

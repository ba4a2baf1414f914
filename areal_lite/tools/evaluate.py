"""Score a checkpoint on held-out problems: `python -m areal_lite.tools.evaluate MODEL [options] [key=value ...]`.

    python -m areal_lite.tools.evaluate runs/quickstart/cpu                      # the run's final model
    python -m areal_lite.tools.evaluate runs/quickstart/cpu/checkpoints/final --n 8
    python -m areal_lite.tools.evaluate MODEL_DIR --config examples/math/gsm8k.yaml --dataset gsm8k=/data/test.jsonl
    python -m areal_lite.tools.evaluate MODEL_DIR --config ... --servers http://node1:30000,http://node2:30000

MODEL is a Hugging Face model directory, or a run directory (its `checkpoints/final`, else its newest
`weights/v{N}`). The settings (prompt template, generation budget, sampling, the held-out sets)
come from `--config` with overrides, else from the run's own `config.yaml`.

Each held-out set (valid_dataset and evaluator.extra_datasets, or every `--dataset NAME=PATH`) is
scored through inference servers with the workflow and reward function training uses:

- greedy accuracy: one answer per problem at temperature 0;
- with `--n N` > 1, N answers per problem at the sampling temperature (`--temperature`, default
  gconfig.temperature): avg@N (the mean correctness of all answers) and pass@k for k = 1, 2, 4, ..., N
  (the unbiased estimator 1 - C(N-c, k) / C(N, k), c correct of N; Chen et al. 2021).

Without `--servers` it starts one embedded server on MODEL (this machine's CPU, or a GPU with
allocation.device=cuda) and stops it afterwards; with `--servers` it uses those servers (SGLang's
or ours), which must already serve MODEL. The figures are printed and written as JSON (`--out`,
default MODEL/eval.json, or RUN_DIR/eval.json for a run directory). Mistakes exit 2 with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from typing import Sequence

from areal_lite.config import ConfigError, ExperimentConfig, exit_on_config_error, load_config
from areal_lite.config.schema import resolved_serving_dtype, resolved_tokenizer_path
from areal_lite.data import load_prompt_records, load_tokenizer, prompt_token_ids
from areal_lite.inference.client import InferenceClient
from areal_lite.reward.math import math_reward
from areal_lite.rollout.evaluate import aevaluate
from areal_lite.rollout.reward_pool import RewardPool
from areal_lite.rollout.workflow import RLVRWorkflow, sampling_from_gconfig


@dataclasses.dataclass
class Target:
    model: str  # the HF folder to serve
    run_dir: str | None  # the run it belongs to (its config.yaml), if any


def resolve_model(path: str) -> Target:
    """The HF folder MODEL names: itself, or a run directory's final model or newest weights."""
    if not os.path.isdir(path):
        raise ConfigError(f"model not found: {path}")
    if os.path.isfile(os.path.join(path, "config.json")):
        parents = [os.path.dirname(path), os.path.dirname(os.path.dirname(path))]  # checkpoints/<tag>, weights/v{N}
        run = next((p for p in parents if os.path.isfile(os.path.join(p, "config.yaml"))), None)
        return Target(os.path.abspath(path), run)
    if not os.path.isfile(os.path.join(path, "config.yaml")):
        raise ConfigError(f"{path} is neither a model directory (config.json) nor a run directory (config.yaml)")
    final = os.path.join(path, "checkpoints", "final")
    if os.path.isfile(os.path.join(final, "config.json")):
        return Target(os.path.abspath(final), path)
    weights = os.path.join(path, "weights")
    versions = sorted((int(n[1:]) for n in _listdir(weights) if n[:1] == "v" and n[1:].isdigit()
                       and os.path.isfile(os.path.join(weights, n, "config.json"))), reverse=True)
    if versions:
        return Target(os.path.abspath(os.path.join(weights, f"v{versions[0]}")), path)
    raise ConfigError(f"run directory {path} has no checkpoints/final and no weights/v<N> to evaluate")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def eval_sets(cfg: ExperimentConfig, datasets: Sequence[str]) -> dict[str, object]:
    """name -> dataset section: each `--dataset [NAME=]PATH`, else valid_dataset and evaluator.extra_datasets.

    Every set is read with valid_dataset's options (template, prompt length, synthetic options)."""
    chosen: dict[str, str] = {}
    for item in datasets:
        name, _, path = item.rpartition("=")
        name = name or os.path.splitext(os.path.basename(path.rstrip("/")))[0] or path
        if not path:
            raise ConfigError(f"--dataset {item!r}: expected NAME=PATH or PATH")
        chosen[name] = path
    if not chosen:
        if not cfg.valid_dataset.path:
            raise ConfigError("no held-out set: valid_dataset.path is empty; give --dataset NAME=PATH")
        chosen = {"valid": cfg.valid_dataset.path, **cfg.evaluator.extra_datasets}
    return {name: dataclasses.replace(cfg.valid_dataset, path=path) for name, path in chosen.items()}


def build_workflow(cfg: ExperimentConfig, tokenizer, *, temperature: float, n_samples: int,
                   pool: RewardPool) -> RLVRWorkflow:
    """The training workflow (prompt template, generation budget, math reward) at evaluation sampling."""
    ds = cfg.valid_dataset
    sampling = sampling_from_gconfig(cfg.gconfig)
    sampling.temperature = temperature
    return RLVRWorkflow(
        prompt_fn=lambda record: prompt_token_ids(record, tokenizer, template=ds.prompt_template,
                                                  system_prompt=ds.system_prompt),
        decode_fn=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        reward_fn=math_reward, sampling=sampling, n_samples=n_samples, reward_pool=pool,
        reward_failure_policy=cfg.rollout.reward_failure_policy,
    )


async def ascore(cfg: ExperimentConfig, tokenizer, sets: dict[str, list[dict]], servers: list[str], *,
                 n: int, temperature: float, api_key: str | None = None, show_progress: bool = True) -> dict:
    """{set: {greedy_accuracy, avg@n, pass@k, ...}} through `servers`."""
    from tqdm import tqdm

    pool = RewardPool(cfg.rollout.reward_workers, cfg.rollout.reward_timeout)
    passes = [("greedy", 0.0, 1)] + ([("sampled", temperature, n)] if n > 1 else [])
    results: dict[str, dict[str, float]] = {}
    try:
        async with InferenceClient(servers, api_key=api_key, request_timeout=cfg.rollout.request_timeout,
                                   retries=cfg.rollout.request_retries) as client:
            for name, records in sets.items():
                out: dict[str, float] = {"num_prompts": float(len(records))}
                for kind, temp, k in passes:
                    workflow = build_workflow(cfg, tokenizer, temperature=temp, n_samples=k, pool=pool)
                    bar = tqdm(total=len(records), desc=f"{name} ({kind}{f', n={k}' if k > 1 else ''})",
                               unit="prompt", disable=not show_progress, file=sys.stderr)
                    scores = await aevaluate(workflow, client, records, prefix=kind,
                                             progress_fn=lambda done, total: bar.update(done - bar.n))
                    bar.close()
                    out.update(_pick(kind, scores, k))
                results[name] = out
    finally:
        pool.close()
    return results


def _pick(kind: str, scores: dict[str, float], n: int) -> dict[str, float]:
    """The figures of one pass: greedy accuracy; or avg@n and pass@k of the sampled answers."""
    if kind == "greedy":
        return {"greedy_accuracy": scores.get("greedy/accuracy", float("nan")),
                "greedy_gen_len_mean": scores.get("greedy/gen_len_mean", float("nan"))}
    keep = {k.split("/", 1)[1]: v for k, v in scores.items() if k.startswith(("sampled/avg@", "sampled/pass@"))}
    return {**keep, "sampled_gen_len_mean": scores.get("sampled/gen_len_mean", float("nan"))}


def start_server(cfg: ExperimentConfig, model: str, log_path: str):
    """One embedded server on `model` (the launcher's settings for it: context, batch, dtype, device, seed)."""
    from areal_lite.inference.embedded.local_server import start_local_server

    args = ["--skip-tokenizer-init", "--context-length", str(cfg.server.context_length),
            "--max-running-requests", str(cfg.server.max_running_requests), "--dtype", resolved_serving_dtype(cfg),
            "--random-seed", str(cfg.seed), "--device", cfg.allocation.device]
    return start_local_server(model, extra_args=args, log_path=log_path, startup_timeout=cfg.server.startup_timeout)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m areal_lite.tools.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("model", metavar="MODEL", help="HF model directory or run directory")
    p.add_argument("--config", help="config YAML (default: the run's config.yaml)")
    p.add_argument("--dataset", action="append", default=[], metavar="[NAME=]PATH",
                   help="a held-out set (repeatable; default: valid_dataset and evaluator.extra_datasets)")
    p.add_argument("--n", type=int, default=None, help="answers per problem for avg@n and pass@k "
                   "(default: evaluator.n_samples; 1: greedy accuracy only)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature of the n answers "
                   "(default: gconfig.temperature)")
    p.add_argument("--max-prompts", type=int, default=None, help="problems per set (default: evaluator.max_prompts)")
    p.add_argument("--servers", help="comma-separated server URLs that serve MODEL (default: start one)")
    p.add_argument("--out", help="JSON file of the figures (default: MODEL/eval.json or RUN_DIR/eval.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_known_args(argv)


def load_settings(args: argparse.Namespace, overrides: list[str], target: Target) -> ExperimentConfig:
    config = args.config or (os.path.join(target.run_dir, "config.yaml") if target.run_dir else None)
    if config is None:
        raise ConfigError(f"{args.model} belongs to no run directory: give --config CFG.yaml")
    cfg = load_config(["--config", config, *overrides])
    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    if args.temperature is not None and args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")
    return cfg


@exit_on_config_error
def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    target = resolve_model(args.model)
    cfg = load_settings(args, overrides, target)
    n = args.n or cfg.evaluator.n_samples
    temperature = cfg.gconfig.temperature if args.temperature is None else args.temperature
    if n > 1 and temperature == 0:
        raise ConfigError(f"--n {n} answers at temperature 0 are all the same: give --temperature > 0")
    limit = cfg.evaluator.max_prompts if args.max_prompts is None else args.max_prompts
    tok_path = target.model if os.path.isfile(os.path.join(target.model, "tokenizer_config.json")) \
        else resolved_tokenizer_path(cfg)
    tokenizer = load_tokenizer(tok_path)
    sets = {name: load_prompt_records(ds, tokenizer)[0][: limit or None]
            for name, ds in eval_sets(cfg, args.dataset).items()}
    out = args.out or os.path.join(target.run_dir or target.model, "eval.json")
    server = None
    try:
        if args.servers:
            servers = [u.strip() for u in args.servers.split(",") if u.strip()]
        else:
            log = os.path.join(os.path.dirname(os.path.abspath(out)), "eval_server.log")
            server = start_server(cfg, target.model, log)  # ServerStartError: its log's tail, exit 1
            servers = [server.url]
        results = asyncio.run(ascore(cfg, tokenizer, sets, servers, n=n, temperature=temperature,
                                     show_progress=not args.quiet))
    finally:
        if server is not None:
            server.stop()
    report = {"model": target.model, "n": n, "temperature": temperature, "sets": results}
    with open(out, "w") as fh:
        json.dump(report, fh, indent=2)
    for name, figures in results.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.0f}" if k == "num_prompts" else f"{k} {v:.3f}"
                                      for k, v in figures.items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

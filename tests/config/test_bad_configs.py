"""User mistakes in configs are refused before anything starts: exit status 2, one line naming the key.

The table runs through the local launcher's `main` in-process (the same code path as the CLI: argv
parsing, loading, validation, preflight, the `error:` line and SystemExit(2); ~0.1 s a case instead
of ~1 s for a fresh interpreter); a sample of it runs as real `python -m` subprocesses, in parallel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from areal_lite.launcher.local import main as local_main

ENTRY = Path(__file__).resolve().parents[2] / "examples" / "math" / "gsm8k_drgrpo.py"
BASE_YAML = """\
experiment_name: cfgtest
trial_name: t0
cluster: {{fileroot: {root}}}
actor: {{path: {model}}}
train_dataset: {{path: {data}, batch_size: 2, max_prompt_len: 64}}
gconfig: {{n_samples: 4, max_new_tokens: 32}}
"""
RECORDS = 4  # lines of the base config's train.jsonl
SYNTH = "train_dataset.path=synthetic:arith"

# (id, arguments after `--config base.yaml`, text the one line must contain: the key and the problem)
BAD = [
    # The 21 of issue 20: accepted and ran on, or launched and crashed, before.
    ("n_samples=1 with group statistics", ["gconfig.n_samples=1"], "gconfig.n_samples: 1 answer per prompt with "
     "actor.adv_norm.mean_level=group makes every advantage 0"),
    ("reward_scaling nan", ["actor.reward_scaling=nan"], "actor.reward_scaling: must be a finite number, got nan"),
    ("reward_bias inf", ["actor.reward_bias=inf"], "actor.reward_bias: must be a finite number, got inf"),
    ("evaluator.max_prompts -1", ["evaluator.max_prompts=-1"], "evaluator.max_prompts: must be >= 0, got -1"),
    ("huge batch_size (local file)", ["train_dataset.batch_size=1000000000"],
     f"train_dataset.batch_size: 1000000000 prompts per step but {{data}} holds {RECORDS} records"),
    ("huge batch_size (synthetic)", [SYNTH, "train_dataset.batch_size=100000"],
     "train_dataset.batch_size: 100000 prompts per step but synthetic:arith yields 2000 records"),
    ("actor.path is a file", ["actor.path={data}"], "actor.path: {data} is a file: give the model directory"),
    ("recover never writes", ["recover.mode=auto"], "recover.freq_steps: recover.mode=auto but recover.freq_steps "
     "and recover.freq_secs are 0: no recover checkpoint is ever written"),
    ("env section key typo", ["train_dataset.path=synthetic:env", "+train_dataset.synthetic.name=bandit",
                              "+train_dataset.synthetic.max_turn=3"],
     "train_dataset.synthetic (the env section): unknown key(s) max_turn"),
    ("env section without a name", ["train_dataset.path=synthetic:env", "+train_dataset.synthetic.max_turns=3"],
     "train_dataset.synthetic (the env section): name: required"),
    ("env section fewer seeds than a batch", ["train_dataset.path=synthetic:env", "+train_dataset.synthetic.name=bandit",
                                              "+train_dataset.synthetic.num_seeds=2", "train_dataset.batch_size=4"],
     "train_dataset.batch_size: 4 prompts per step but synthetic:env yields 2 records"),
    ("synthetic name typo", ["train_dataset.path=synthetic:arithm"],
     "train_dataset.path: unknown synthetic dataset 'synthetic:arithm' (did you mean synthetic:arith?)"),
    ("synthetic option typo", [SYNTH, "train_dataset.synthetic.max_vlaue=30"],
     "train_dataset.synthetic.max_vlaue: synthetic:arith has no option 'max_vlaue' (did you mean max_value?)"),
    ("tokenizer path missing", ["tokenizer_path=/nonexistent/tok"], "tokenizer_path: tokenizer directory not found"),
    ("beta1 1.5", ["actor.optimizer.beta1=1.5"], "actor.optimizer.beta1: must be in [0, 1), got 1.5"),
    ("negative weight_decay", ["actor.optimizer.weight_decay=-0.1"], "actor.optimizer.weight_decay: must be >= 0"),
    ("negative eps", ["actor.optimizer.eps=-1e-8"], "actor.optimizer.eps: must be >= 0"),
    ("lr inf", ["actor.optimizer.lr=inf"], "actor.optimizer.lr: must be a finite number, got inf"),
    ("negative eval temperature", ["evaluator.temperature=-0.5"], "evaluator.temperature: must be >= 0, got -0.5"),
    ("stop token outside vocab", ["gconfig.stop_token_ids=[5,100000]"],
     "gconfig.stop_token_ids: 100000 is outside the vocabulary of {model} (vocab_size 259"),
    ("bind_host garbage", ["cluster.bind_host=foo_bar"], "cluster.bind_host: 'foo_bar' is neither an IP address"),
    ("bind_host not an IP", ["cluster.bind_host=999.1.1.1"], "cluster.bind_host: '999.1.1.1' is neither"),
    ("bind_host not on this machine", ["cluster.bind_host=192.0.2.7"],
     "cluster.bind_host: cannot bind 192.0.2.7 on this machine"),
    ("seed beyond 2^32", ["seed=4294967296"], "seed: must be in [0, 4294967295], got 4294967296"),
    ("negative startup timeout", ["server.startup_timeout=-5"], "server.startup_timeout: must be > 0, got -5"),
    ("10000 workers", ["allocation.rollout.num_workers=10000"], "allocation: 10002 processes asked (10000 rollout "
     "worker(s) + 1 server(s) + 1 trainer rank(s)) but this machine's {cores} core(s) allow at most"),
    ("10000 servers", ["allocation.inference.num_servers=10000"], "allocation: 10002 processes asked (1 rollout "
     "worker(s) + 10000 server(s) + 1 trainer rank(s)) but this machine's {cores} core(s)"),
    ("more cores than exist", ["cluster.n_cpus_per_node=100000"],
     "cluster.n_cpus_per_node: 100000 cores asked but this machine has {cores}"),
    # Keys, types, grammar.
    ("unknown key", ["foo=1"], "unknown config key 'foo'"),
    ("actor.lr", ["actor.lr=1e-5"], "unknown config key 'actor.lr' (command line) (did you mean actor.optimizer.lr"),
    ("actor.lrr", ["actor.lrr=1"], "unknown config key 'actor.lrr' (command line) (did you mean actor.optimizer.lr"),
    ("lr", ["lr=1"], "unknown config key 'lr' (command line) (did you mean actor.optimizer.lr"),
    ("nsamples", ["gconfig.nsamples=3"], "did you mean gconfig.n_samples"),
    ("offpolicy prefix", ["rollout.max_head_offpolicy=2"], "did you mean rollout.max_head_offpolicyness"),
    ("float expected", ["actor.optimizer.lr=abc"], "actor.optimizer.lr: expected float, got 'abc'"),
    ("int expected", ["gconfig.n_samples=two"], "gconfig.n_samples: expected int"),
    ("int not float", ["rollout.max_head_offpolicyness=1.5"], "rollout.max_head_offpolicyness: expected int"),
    ("bool expected", ["actor.use_decoupled_loss=maybe"], "actor.use_decoupled_loss: expected bool"),
    ("null not allowed", ["actor.eps_clip=null"], "actor.eps_clip: null is not allowed"),
    ("group is not a value", ["actor.optimizer=3"], "actor.optimizer is a group of keys, not a value"),
    ("value is not a group", ["seed.x=3"], "seed is a value, not a group"),
    ("bad key in a mapping value", ["actor.optimizer={{lrr: 1}}"], "unknown config key 'actor.optimizer.lrr'"),
    ("list of int", ["gconfig.stop_token_ids=[a]"], "gconfig.stop_token_ids"),
    ("negative stop token", ["gconfig.stop_token_ids=[-3]"], "gconfig.stop_token_ids[0]: must be >= 0, got -3"),
    ("sweep value", ["actor.optimizer.lr=1e-5,3e-5"], "'actor.optimizer.lr=1e-5,3e-5' is a sweep"),
    ("unclosed list", ["gconfig.stop_token_ids=[1"], "cannot parse override 'gconfig.stop_token_ids=[1'"),
    ("unquoted character", ["trial_name=a!"], "cannot parse override 'trial_name=a!'"),
    ("delete unknown key", ["~actor.lrr"], "unknown config key 'actor.lrr'"),
    ("delete with wrong value", ["~actor.eps_clip=0.3"], "~actor.eps_clip=0.3: actor.eps_clip is 0.2, not 0.3"),
    ("unknown preset", ["algo=nope"], "algo: no config 'nope' in group 'algo' (choices: cispo, dapo, drgrpo, "
     "drgrpo_soft, gpg, grpo, ppo, remax)"),
    ("unknown option", ["--fast"], "unknown option '--fast'"),
    ("unexpected argument", ["foo"], "unexpected argument 'foo'"),
    ("--cfg other than job", ["--cfg", "hydra"], "--cfg hydra: only '--cfg job' is supported"),
    # Choices and single-key ranges.
    ("choice", ["actor.adv_norm.mean_level=grp"], "actor.adv_norm.mean_level: 'grp' is not one of group, batch, none"),
    ("loss reduction", ["actor.loss_reduction=mean"], "actor.loss_reduction: 'mean' is not one of"),
    ("behav weight mode", ["actor.behav_weight_mode=cap"], "actor.behav_weight_mode: 'cap' is not one of"),
    ("policy loss", ["actor.policy_loss=grpo"], "actor.policy_loss: 'grpo' is not one of ppo, cispo"),
    ("kl loss reduction", ["actor.kl_loss_reduction=avg"], "actor.kl_loss_reduction: 'avg' is not one of"),
    ("rollout filter strategy", ["actor.rollout_filter.strategy=top"], "actor.rollout_filter.strategy: 'top' is not"),
    ("n_samples 0", ["gconfig.n_samples=0"], "gconfig.n_samples: must be >= 1, got 0"),
    ("batch_size 0", ["train_dataset.batch_size=0"], "train_dataset.batch_size: must be >= 1, got 0"),
    ("negative staleness", ["rollout.max_head_offpolicyness=-1"], "rollout.max_head_offpolicyness: must be >= 0"),
    ("negative temperature", ["gconfig.temperature=-1"], "gconfig.temperature: must be >= 0"),
    ("top_p 0", ["gconfig.top_p=0"], "gconfig.top_p: must be in (0, 1], got 0"),
    ("top_k 0", ["gconfig.top_k=0"], "gconfig.top_k: must be -1 or >= 1, got 0"),
    ("answer_only_fraction", ["prepare.sft.answer_only_fraction=1.5"], "prepare.sft.answer_only_fraction: must be in "
     "[0, 1], got 1.5"),
    ("total_train_steps 0", ["total_train_steps=0"], "total_train_steps: must be >= 1"),
    ("total_train_epochs 0", ["total_train_epochs=0"], "total_train_epochs: must be >= 1"),
    ("c_clip", ["actor.c_clip=0.5"], "actor.c_clip: must be > 1, got 0.5"),
    ("eps_clip_higher", ["actor.eps_clip_higher=-0.1"], "actor.eps_clip_higher: must be > 0"),
    ("kl_clamp 0", ["actor.kl_clamp=0"], "actor.kl_clamp: must be > 0"),
    ("reward_scaling 0", ["actor.reward_scaling=0"], "actor.reward_scaling: must not be 0"),
    ("gamma", ["actor.gamma=1.5"], "actor.gamma: must be in [0, 1], got 1.5"),
    ("top entropy fraction", ["actor.top_entropy_fraction=0"], "actor.top_entropy_fraction: must be in (0, 1]"),
    ("entropy coef", ["actor.entropy_coef=-0.01"], "actor.entropy_coef: must be >= 0"),
    ("sglang memory", ["sglang.mem_fraction_static=1.5"], "sglang.mem_fraction_static: must be in (0, 1), got 1.5"),
    ("request timeout", ["rollout.request_timeout=0"], "rollout.request_timeout: must be > 0"),
    ("saver freq_secs", ["saver.freq_secs=-1"], "saver.freq_secs: must be >= 0"),
    ("torch threads", ["launcher.torch_threads=-2"], "launcher.torch_threads: must be >= 0"),
    ("max_running_requests", ["server.max_running_requests=0"], "server.max_running_requests: must be >= 1"),
    ("experiment name with /", ["experiment_name=a/b"], "experiment_name: 'a/b' must be a plain name"),
    ("trial name ..", ["trial_name=.."], "trial_name: '..' must be a plain name"),
    ("env max_turns 0", ["env.max_turns=0"], "env.max_turns: must be >= 1, got 0"),
    # Rules of several keys.
    ("minibatches divide", ["actor.ppo_n_minibatches=3"], "actor.ppo_n_minibatches: 3 does not divide the 8 sequences"),
    ("sglang on cpu", ["allocation.inference.backend=sglang"], "sglang needs GPUs"),
    ("cuda without gpus", ["allocation.device=cuda"], "cluster.n_gpus_per_node: allocation.device=cuda needs GPUs"),
    ("gpus do not fit", ["allocation.device=cuda", "cluster.n_gpus_per_node=1"], "allocation: needs 2 GPUs"),
    ("embedded tp", ["allocation.inference.tp_size=2"], "the embedded engine has no tensor parallelism"),
    ("trainer nodes", ["allocation.trainer.nnodes=2"], "do not fit in cluster.n_nodes=1"),
    ("colocate on cpu", ["allocation.colocate=true"], "allocation.colocate: colocation is for GPUs"),
    ("context too short", ["server.context_length=64"], "server.context_length: 64 is shorter than"),
    ("sglang context too short", ["sglang.context_length=50"], "sglang.context_length: 50 is shorter than"),
    ("micro-batch too small", ["actor.mb_spec.max_tokens_per_mb=16"], "actor.mb_spec.max_tokens_per_mb: 16 cannot "
     "hold one full sequence"),
    ("min above max tokens", ["gconfig.min_new_tokens=100"], "gconfig.min_new_tokens: 100 exceeds"),
    ("decoupled without prox", ["actor.recompute_logprob=false"], "the decoupled loss needs proximal log-probs"),
    ("leave one out without mean", ["actor.adv_norm.leave_one_out=true", "actor.adv_norm.mean_level=none",
                                    "actor.adv_norm.std_level=batch"], "actor.adv_norm.leave_one_out: needs"),
    ("drop_all_equal with one sample", ["rollout.dynamic_filter=drop_all_equal", "gconfig.n_samples=1",
                                        "actor.adv_norm.mean_level=batch", "actor.adv_norm.std_level=batch"],
     "rollout.dynamic_filter: drop_all_equal drops every group"),
    ("top_k_ratio keeps nothing", ["actor.group_filter.top_k_ratio=0.2"], "keeps no group of a batch of 2"),
    ("two group filters", ["actor.rollout_filter.enabled=true", "actor.group_filter.top_k_ratio=0.5"],
     "actor.rollout_filter.enabled: two group filters"),
    ("evaluation without data", ["evaluator.freq_steps=5"], "valid_dataset.path: required when evaluator.freq_steps"),
    ("heartbeat timeout", ["rollout.worker_timeout_s=1"], "rollout.worker_timeout_s: must exceed two heartbeats"),
    ("overlong buffer", ["actor.overlong_penalty.enabled=true", "actor.overlong_penalty.buffer_len=64"],
     "actor.overlong_penalty.buffer_len: must be <= gconfig.max_new_tokens=32"),
    ("entropy shaping with kl reward", ["actor.entropy_shaping.mode=token", "actor.kl_ctl=0.1",
                                        "actor.kl_in_reward=true"], "actor.entropy_shaping.mode: entropy shaping"),
    ("critic value clip 0", ["actor.adv_estimator=gae", "actor.critic.value_clip=0"], "actor.critic.value_clip: "),
    ("remax on an agent task", ["actor.adv_estimator=remax", "train_dataset.path=synthetic:env",
                                "+train_dataset.synthetic.name=bandit"],
     "actor.adv_estimator: remax needs each prompt's greedy answer"),
    ("passk with one sample", ["actor.adv_estimator=passk", "gconfig.n_samples=1"],
     "gconfig.n_samples: actor.adv_estimator=passk compares the answers of a group"),
    ("seq_is lower above cap", ["actor.seq_is.enabled=true", "actor.seq_is.lower=3"],
     "actor.seq_is.lower: must be below actor.seq_is.cap=2"),
    ("clip_cov band", ["actor.policy_loss=clip_cov", "actor.clip_cov.cov_lb=6"],
     "actor.clip_cov.cov_lb: must be below actor.clip_cov.cov_ub=5"),
    ("recover freq beyond steps", ["recover.mode=auto", "recover.freq_steps=100", "total_train_steps=10"],
     "recover.freq_steps: 100 exceeds total_train_steps=10"),
    ("tiny heads", ["prepare.model=tiny", "prepare.tiny.num_attention_heads=3"],
     "prepare.tiny.num_attention_heads: 3 does not divide prepare.tiny.hidden_size=64"),
    ("tiny positions", ["prepare.model=tiny", "prepare.tiny.max_position_embeddings=50"],
     "prepare.tiny.max_position_embeddings: 50 is shorter than a prompt and its answer (96 tokens)"),
    ("prompt template", ["train_dataset.prompt_template=question"], "train_dataset.prompt_template: prompt template"),
    ("synthetic option value", [SYNTH, "train_dataset.synthetic.max_start=99"],
     "train_dataset.synthetic: need 1 <= max_start <= max_value"),
    ("synthetic option type", [SYNTH, "train_dataset.synthetic.max_steps=four"],
     "train_dataset.synthetic.max_steps: expected int, got 'four'"),
    ("env name typo", ["env.name=frozenlak"], "env.name: unknown environment 'frozenlak' (did you mean frozenlake?)"),
    ("env option typo", ["env.name=frozenlake", "env.options.sizee=4"], "env.options: env 'frozenlake' has no option "
     "'sizee' (did you mean 'size'?)"),
    ("env options without env", ["env.options.size=4"], "env.options: set without env.name"),
    ("env budget", ["env.name=bandit", "env.max_total_tokens=4096"],
     "env.max_total_tokens: 4096 exceeds server.context_length=1024"),
    ("env seeds overlap", ["env.name=bandit", "env.eval_seed_start=500"], "env.eval_seed_start: held-out seeds "
     "500..599 overlap the training seeds 0..999"),
    # Paths and the machine.
    ("model dir missing", ["actor.path=/nonexistent/areal_lite/model"], "actor.path: model directory not found"),
    ("model dir without config.json", ["actor.path={root}"], "actor.path: {root} has no config.json"),
    ("tokenizer path is a file", ["tokenizer_path={data}"], "tokenizer_path: {data} is a file"),
    ("tokenizer dir without files", ["tokenizer_path={root}"], "tokenizer_path: {root} holds no tokenizer"),
    ("dataset missing", ["train_dataset.path=/nonexistent/train.jsonl"], "train_dataset.path: dataset not found"),
    ("dataset wrong format", ["train_dataset.path={cfg}"], "train_dataset.path: {cfg} is not a .jsonl, .json, .parquet"),
    ("dataset dir without split", ["train_dataset.path={root}", "train_dataset.split=dev"],
     "train_dataset.split: {root} holds no dev.jsonl"),
    ("valid dataset missing", ["evaluator.freq_steps=5", "valid_dataset.path=/nonexistent/test.jsonl"],
     "valid_dataset.path: dataset not found"),
    ("run dir under a file", ["cluster.fileroot={data}/runs"], "cluster.fileroot: cannot write the run directory"),
    # The command line itself.
    ("config file missing", ["--config", "/nonexistent/cfg.yaml"], "config file not found"),
    ("yaml does not parse", ["--config", "{bad_yaml}"], "cannot parse"),
    ("yaml is a list", ["--config", "{list_yaml}"], "the top level must be a mapping"),
    ("unknown key in the yaml", ["--config", "{typo_yaml}"], "unknown config key 'actor.lrr' ({typo_yaml})"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("cfg")
    data = root / "train.jsonl"
    data.write_text("".join(f'{{"question": "{i}+1?", "answer": "{i + 1}"}}\n' for i in range(RECORDS)))
    (root / "bad.yaml").write_text("actor: {path: [unclosed\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "typo.yaml").write_text("actor: {lrr: 1}\n")
    cfg = root / "base.yaml"
    cfg.write_text(BASE_YAML.format(root=root / "runs", model=tiny_model_dir, data=data))
    from areal_lite.config.preflight import cores_here

    return {"cfg": str(cfg), "root": str(root), "data": str(data), "model": str(tiny_model_dir),
            "bad_yaml": str(root / "bad.yaml"), "list_yaml": str(root / "list.yaml"),
            "typo_yaml": str(root / "typo.yaml"), "cores": cores_here()}


def _argv(base: dict, args: list[str]) -> list[str]:
    args = [a.format(**base) for a in args]
    head = [str(ENTRY)] + ([] if "--config" in args else ["--config", base["cfg"]])
    return [*head, *args, "--dry-run"]


def _assert_one_line_error(code, out: str, err: str, needle: str, seconds: float) -> None:
    assert code == 2, (code, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert "[server0]" not in out  # nothing was planned, let alone started
    assert seconds < 10


def test_the_table_has_at_least_60_mistakes():
    assert len(BAD) >= 60 and len({name for name, _, _ in BAD}) == len(BAD)


@pytest.mark.parametrize("args,needle", [(a, n) for _, a, n in BAD], ids=[name for name, _, _ in BAD])
def test_mistake_exits_2_with_one_line(base, capsys, args, needle):
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        local_main(_argv(base, args))
    out, err = capsys.readouterr()
    _assert_one_line_error(exit_info.value.code, out, err, needle.format(**base), time.monotonic() - t0)


SAMPLE = ["n_samples=1 with group statistics", "lr inf", "stop token outside vocab", "10000 workers",
          "synthetic option typo", "actor.lrr", "sweep value", "unknown preset", "yaml does not parse"]


def test_sample_through_the_real_cli(base):
    """The same mistakes as `python -m areal_lite.launcher.local ...` processes (run side by side)."""
    cases = [(args, needle) for name, args, needle in BAD if name in SAMPLE]
    assert len(cases) == len(SAMPLE)
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "areal_lite.launcher.local", *_argv(base, args)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args, _ in cases]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    # Side by side on this machine's cores: each process's share of the wall time is what one
    # command alone would take.
    share = (time.monotonic() - t0) * min(os.cpu_count() or 1, len(procs)) / len(procs)
    for proc, (out, err), (_, needle) in zip(procs, outputs, cases):
        _assert_one_line_error(proc.returncode, out, err, needle.format(**base), share)


def test_missing_entry_script_exits_2(base, capsys):
    with pytest.raises(SystemExit) as exit_info:
        local_main(["/nonexistent/entry.py", "--config", base["cfg"]])
    out, err = capsys.readouterr()
    _assert_one_line_error(exit_info.value.code, out, err, "entry script not found", 0)


def test_unwritable_run_directory_exits_2_without_a_dry_run(base, capsys):
    with pytest.raises(SystemExit) as exit_info:
        local_main([str(ENTRY), "--config", base["cfg"], "cluster.fileroot=/proc/areal_lite_forbidden"])
    out, err = capsys.readouterr()
    _assert_one_line_error(exit_info.value.code, out, err, "cluster.fileroot: cannot write the run directory", 0)
    assert not Path("/proc/areal_lite_forbidden").exists()


def test_valid_config_dry_run_exits_0_and_writes_nothing(base, capsys):
    assert local_main(_argv(base, ["actor.optimizer.lr=3e-4"])) == 0
    out = capsys.readouterr().out
    assert "[server0]" in out and "[trainer]" in out and "[worker0]" in out
    assert not (Path(base["root"]) / "runs").exists()
    assert not [p for p in Path(base["root"]).iterdir() if p.name.startswith("tmp")]  # the write probe is gone

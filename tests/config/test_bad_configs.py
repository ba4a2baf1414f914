"""User mistakes in configs: exit status 2 and one line naming the problem, through the real launcher CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from areal_lite.config import ConfigError, load_config

BASE_YAML = """\
experiment_name: cfgtest
trial_name: t0
cluster: {{fileroot: {root}}}
actor: {{path: {model}}}
train_dataset: {{path: {data}, batch_size: 2, max_prompt_len: 64}}
gconfig: {{n_samples: 4, max_new_tokens: 32}}
"""

ENTRY = Path(__file__).resolve().parents[2] / "examples" / "math" / "gsm8k_drgrpo.py"


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("cfg")
    data = root / "train.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n')
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("actor: {path: [unclosed\n")
    list_yaml = root / "list.yaml"
    list_yaml.write_text("- a\n- b\n")
    cfg = root / "base.yaml"
    cfg.write_text(BASE_YAML.format(root=root / "runs", model=tiny_model_dir, data=data))
    return {"cfg": str(cfg), "bad_yaml": str(bad_yaml), "list_yaml": str(list_yaml), "root": root}


# (overrides, substring the one-line message must contain)
BAD = [
    (["foo=1"], "unknown config key 'foo'"),
    (["actor.lrr=1"], "unknown config key 'actor.lrr'"),
    (["actor.lr=1e-5"], "did you mean actor.optimizer.lr"),
    (["gconfig.nsamples=3"], "did you mean gconfig.n_samples"),
    (["actor.optimizer.lr=abc"], "actor.optimizer.lr: expected float"),
    (["gconfig.n_samples=two"], "gconfig.n_samples: expected int"),
    (["rollout.max_head_offpolicyness=1.5"], "rollout.max_head_offpolicyness: expected int"),
    (["actor.use_decoupled_loss=maybe"], "actor.use_decoupled_loss: expected bool"),
    (["actor.eps_clip=null"], "actor.eps_clip: null is not allowed"),
    (["actor.adv_norm.mean_level=grp"], "actor.adv_norm.mean_level: 'grp' is not one of"),
    (["actor.loss_reduction=mean"], "actor.loss_reduction: 'mean' is not one of"),
    (["actor.ppo_n_minibatches=3"], "actor.ppo_n_minibatches: 3 does not divide the 8 sequences"),
    (["gconfig.n_samples=0"], "gconfig.n_samples: must be >= 1"),
    (["train_dataset.batch_size=0"], "train_dataset.batch_size: must be >= 1"),
    (["rollout.max_head_offpolicyness=-1"], "rollout.max_head_offpolicyness: must be >= 0"),
    (["allocation.inference.backend=sglang"], "sglang needs GPUs"),
    (["allocation.device=cuda"], "cluster.n_gpus_per_node: allocation.device=cuda needs GPUs"),
    (["allocation.inference.tp_size=2"], "the embedded engine has no tensor parallelism"),
    (["allocation.trainer.nnodes=2"], "do not fit in cluster.n_nodes=1"),
    (["server.context_length=64"], "server.context_length: 64 is shorter than"),
    (["prepare.sft.answer_only_fraction=1.5"], "prepare.sft.answer_only_fraction: must be in [0, 1]"),
    (["actor.mb_spec.max_tokens_per_mb=16"], "actor.mb_spec.max_tokens_per_mb: 16 cannot hold one full sequence"),
    (["actor.recompute_logprob=false"], "the decoupled loss needs proximal log-probs"),
    (["actor.c_clip=0.5"], "actor.c_clip: the dual-clip constant must be > 1"),
    (["actor.adv_norm.leave_one_out=true", "actor.adv_norm.mean_level=none"], "actor.adv_norm.leave_one_out"),
    (["rollout.dynamic_filter=drop_all_equal", "gconfig.n_samples=1"], "drops every group"),
    (["actor.group_filter.top_k_ratio=0.2"], "keeps no group of a batch of 2"),
    (["evaluator.freq_steps=5"], "valid_dataset.path: required when evaluator.freq_steps > 0"),
    (["actor.path=/nonexistent/areal_lite/model"], "actor.path: model directory not found"),
    (["train_dataset.path=/nonexistent/train.jsonl"], "train_dataset.path: dataset not found"),
    (["experiment_name=a/b"], "experiment_name: 'a/b' must be a plain name"),
    (["actor.optimizer=3"], "actor.optimizer is a group of keys, not a value"),
    (["gconfig.temperature=-1"], "gconfig.temperature: must be >= 0"),
    (["gconfig.top_p=0"], "gconfig.top_p: must be in (0, 1]"),
    (["actor.loss_reduction=seq_mean_token_sum_norm", "actor.loss_norm_constant=0"], "needs a positive constant"),
    (["rollout.worker_timeout_s=1"], "rollout.worker_timeout_s: must exceed two heartbeats"),
    (["total_train_steps=0"], "total_train_steps: must be >= 1"),
    (["actor.path="], "actor.path: required"),
    (["allocation.device=cuda", "cluster.n_gpus_per_node=1"], "allocation: needs 2 GPUs"),
    (["actor.behav_weight_mode=cap"], "actor.behav_weight_mode: 'cap' is not one of"),
    (["gconfig.stop_token_ids=[a]"], "gconfig.stop_token_ids"),
    (["launcher.torch_threads=-2"], "launcher.torch_threads: must be >= 0"),
]


def _run_launcher(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "areal_lite.launcher.local", str(ENTRY), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("overrides,needle", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_override_exits_2_with_one_line(base, overrides, needle):
    proc = _run_launcher(["--config", base["cfg"], *overrides, "--dry-run"])
    _assert_one_line_error(proc, needle)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config", "/nonexistent/cfg.yaml"], "config file not found"),
        (["--fast"], "unknown option '--fast'"),
        (["foo"], "unexpected argument 'foo'"),
    ],
)
def test_bad_command_line_exits_2(base, args, needle):
    proc = _run_launcher([*args, "--dry-run"] if args[0] != "--config" else args)
    _assert_one_line_error(proc, needle)


def test_unparsable_and_non_mapping_yaml(base):
    _assert_one_line_error(_run_launcher(["--config", base["bad_yaml"], "--dry-run"]), "cannot parse")
    _assert_one_line_error(_run_launcher(["--config", base["list_yaml"], "--dry-run"]), "must be a mapping")


def test_unwritable_run_directory_exits_2(base):
    proc = _run_launcher(["--config", base["cfg"], "cluster.fileroot=/proc/areal_lite_forbidden"])
    _assert_one_line_error(proc, "cluster.fileroot: cannot write the run directory")


def test_missing_entry_script_exits_2(base):
    proc = subprocess.run(
        [sys.executable, "-m", "areal_lite.launcher.local", "/nonexistent/entry.py", "--config", base["cfg"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    _assert_one_line_error(proc, "entry script not found")


def test_valid_config_dry_run_exits_0(base):
    proc = _run_launcher(["--config", base["cfg"], "actor.optimizer.lr=3e-4", "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert "[server0]" in proc.stdout and "[trainer]" in proc.stdout and "[worker0]" in proc.stdout


def test_overrides_need_no_plus_and_hyphen_spelling_is_accepted(base):
    cfg = load_config(
        ["--config", base["cfg"], "+actor.optimizer.lr=3e-4", "actor.loss_reduction=seq-mean-token-sum-norm"]
    )
    assert cfg.actor.optimizer.lr == 3e-4
    assert cfg.actor.loss_reduction == "seq_mean_token_sum_norm"
    cfg = load_config(["--config", base["cfg"], "launcher.env.MY_VAR=1", "gconfig.stop_token_ids=[5,6]"])
    assert cfg.launcher.env == {"MY_VAR": "1"} and cfg.gconfig.stop_token_ids == [5, 6]


def test_suggestions_name_nearest_keys():
    with pytest.raises(ConfigError, match=r"did you mean actor\.optimizer\.lr"):
        load_config(["actor.lr=1"])
    with pytest.raises(ConfigError, match=r"did you mean rollout\.max_head_offpolicyness"):
        load_config(["rollout.max_head_offpolicy=2"])


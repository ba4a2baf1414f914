"""Hugging Face model directories written the one way this project writes them.

`save_hf_dir` is used for everything that leaves the trainer as an HF folder: the per-version
weights the servers load (`weights/v{N}`) and the checkpoints users keep (`checkpoints/...`). The
folder appears complete or not at all: it is written under `{path}.tmp` and renamed.
"""

from __future__ import annotations

import json
import os
import shutil

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """`torch.float32` for "float32", and so on (ValueError naming the choices otherwise)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choices: {', '.join(DTYPES)}") from None


def save_hf_dir(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str, *,
                dtype: torch.dtype | None = None, tokenizer_path: str | None = None) -> None:
    """Write `state` as `model`'s HF checkpoint at `path` (config, safetensors, tokenizer files).

    `dtype`: the floating-point dtype of the saved tensors, recorded in config.json too, so that a
    server started from the folder with `--dtype auto` serves it in that dtype (a float32 config
    makes SGLang serve float16). `tokenizer_path`: a directory or hub id whose tokenizer is saved
    beside the weights (loaded and re-saved by transformers, so hub ids work as well as folders).
    """
    tmp = f"{path}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        if dtype is not None:
            # save_pretrained records the in-memory model's dtype, not the tensors': record theirs.
            _set_config_dtype(os.path.join(tmp, "config.json"), str(dtype).removeprefix("torch."))
        if tokenizer_path:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _set_config_dtype(path: str, name: str) -> None:
    with open(path) as fh:
        config = json.load(fh)
    config["dtype"] = name
    if "torch_dtype" in config:  # written by transformers < 5; SGLang reads either
        config["torch_dtype"] = name
    with open(path, "w") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")

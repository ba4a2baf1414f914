"""Shared helpers for the inference tests: reference generations from plain transformers."""

from __future__ import annotations

import torch


def generate_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """`model.generate` greedy continuation (stops at EOS like the engine does)."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(prompt) :].tolist()


def teacher_forced_logprobs(model, prompt: list[int], output: list[int], temperature: float = 1.0) -> list[float]:
    """log_softmax(logits / T) of each output token under one full forward of prompt + output."""
    full = torch.tensor([prompt + output])
    with torch.no_grad():
        logits = model(full).logits[0, len(prompt) - 1 : -1].float()  # [n, V]
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(1, torch.tensor(output).unsqueeze(1)).squeeze(1).tolist()


def greedy_loop(model, prompt: list[int], n: int) -> list[int]:
    """Naive greedy reference without EOS stopping: a full forward per token, argmax of the last logits."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt) :]

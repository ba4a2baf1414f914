"""The step's per-token values as `[B, T]` rows of the whole batch (sequence b's token t at [b, t]).

Every rank holds all of them: the passes fill each rank's own sequences and a sum over the ranks
completes the rows, so advantages and whole-minibatch statistics are computed identically everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from areal_lite.trainer.batch import SeqBatch


@dataclass
class StepRows:
    """The step's per-token values as `[B, T]` rows; None where the configuration needs none."""

    mask: torch.Tensor  # bool: tokens the policy generated and is trained on
    behav_logp: torch.Tensor  # float32: the inference engine's log-probs
    prox_logp: torch.Tensor | None = None  # float32: recomputed before the update
    ref_logp: torch.Tensor | None = None  # float32: the reference model's (KL)
    entropy: torch.Tensor | None = None  # float32: of the proximal policy (entropy shaping, top-entropy mask)
    versions: torch.Tensor | None = None  # int32: weight version of each token (log-linear proximal log-probs)
    values: torch.Tensor | None = None  # float32: the critic's values before the update (GAE)
    prox_in_update: bool = False  # the proximal log-probs are the update forward's own (one optimizer step)

    @classmethod
    def of(cls, batch: SeqBatch) -> "StepRows":
        return cls(mask=batch.to_rows(batch.loss_mask), behav_logp=batch.to_rows(batch.behav_logp))

    @property
    def old_logp(self) -> torch.Tensor:
        """π_old of the step: the recomputed proximal policy, else the behaviour policy."""
        if self.prox_in_update:
            raise ValueError("the proximal log-probs come from the update's own forward (actor.prox_logp_in_update): "
                             "nothing before the update can read them")
        return self.prox_logp if self.prox_logp is not None else self.behav_logp

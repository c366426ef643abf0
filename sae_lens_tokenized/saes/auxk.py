"""AuxK on the dead latents' activations as Gao et al. (2024) define it: after the ReLU.

AuxK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", App. A.2) models the
main reconstruction's error with the top-``k_aux`` dead latents' *activations*; in the
paper, OpenAI's code and EleutherAI's sparsify those pass through the TopK's ReLU, so a dead
latent whose pre-activation is negative adds nothing. SAELens (6.53-6.54,
``calculate_topk_aux_acts``) decodes the raw pre-activations, so once fewer than ``k_aux``
dead latents are positive the rest are decoded with negative values. That regression can
grow as the dead latents run out, reviving latents with weights fitted to negative values; a
tokenized SAE's held-out NMSE then jumps late in training, and with the ReLU it did not,
though fewer dead latents come back (docs "Results", "The late jumps at layer 9").

The override is the smallest there is: SAELens's own ``calculate_aux_loss`` runs unchanged,
on ``hidden_pre.relu()``. ReLU is monotone, so the same dead latents are picked wherever
``k_aux`` of them are positive, and the rest decode as zero. SAELens's TopK, BatchTopK and
Matryoshka read ``hidden_pre`` in ``calculate_aux_loss`` only to pick and decode the dead
latents (``tests/test_auxk.py`` checks this against SAELens's own loss). The upstream
proposal is entry 16 of docs/upstream-seams.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(kw_only=True)
class ReluAuxKFields:
    """``auxk_relu``: AuxK decodes the dead latents' ReLU'd pre-activations (True, the
    paper's definition) or SAELens's raw ones (False)."""

    auxk_relu: bool = True


class ReluAuxKMixin:
    """Put before the SAELens TopK-family training class: ``class T(ReluAuxKMixin,
    TokenLookupMixin, TopKTrainingSAE)``."""

    cfg: Any

    def calculate_aux_loss(self, step_input: Any, feature_acts: torch.Tensor, hidden_pre: torch.Tensor,
                           sae_out: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cfg.auxk_relu:
            hidden_pre = hidden_pre.relu()
        return super().calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)  # type: ignore[misc]

"""Tokenized Gated: SAELens's gated SAE plus the lookup.

The authors report the lookup "did not improve" gated SAEs (arXiv 2502.17332, Sec. 4);
it is here so that can be measured. What differs: SAELens's gated auxiliary loss
reconstructs ``x`` from the gate path alone (``relu(pi_gate) W_dec + b_dec``) without
going through ``decode``, so the lookup is added to that reconstruction here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig, GatedTrainingSAE, GatedTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
from typing_extensions import override

from sae_lens_tokenized.lookup.config import LookupConfig, LookupTrainingConfig
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin


@dataclass(kw_only=True)
class TokenizedGatedSAEConfig(LookupConfig, GatedSAEConfig):
    """``GatedSAEConfig`` + the lookup's fields."""


@dataclass(kw_only=True)
class TokenizedGatedTrainingSAEConfig(LookupTrainingConfig, GatedTrainingSAEConfig):
    """``GatedTrainingSAEConfig`` (``l1_coefficient``, ...) + the lookup's fields."""


class TokenizedGatedSAE(TokenLookupMixin, GatedSAE):
    cfg: TokenizedGatedSAEConfig  # type: ignore[assignment]


class TokenizedGatedTrainingSAE(TokenLookupMixin, GatedTrainingSAE):
    cfg: TokenizedGatedTrainingSAEConfig  # type: ignore[assignment]

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        # SAELens's GatedTrainingSAE.calculate_aux_loss (sae-lens 6.53-6.54; _compat.py entry
        # 3), with the lookup added where b_dec is in the "via gate" reconstruction. Written
        # out rather than calling super() and recomputing that term, which cost a second
        # gate-path forward and backward (a measurable share of the step:
        # benchmarks/step_time.py). tests/test_architectures.py checks that with a zero
        # lookup both terms equal SAELens's own exactly, so a change in SAELens fails there.
        x = step_input.sae_in
        pi_gate_act = torch.relu((x - self.b_dec * self.cfg.apply_b_dec_to_input) @ self.W_enc + self.b_gate)
        l1_loss = step_input.coefficients["l1"] * torch.sum(pi_gate_act * self.W_dec.norm(dim=1), dim=-1).mean()
        via_gate = pi_gate_act @ self.W_dec + self.b_dec + self.lookup_bias(x.shape[:-1])
        return {"l1_loss": l1_loss, "auxiliary_reconstruction_loss": (via_gate - x).pow(2).sum(dim=-1).mean()}

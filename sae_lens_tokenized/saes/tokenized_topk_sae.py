"""Tokenized TopK: SAELens's TopK SAE plus the per-token lookup.

The authors' main runs used TopK (k=30 on GPT-2 small, k=50 on Pythia-1.4B; arXiv
2502.17332, Sec. 4). Encoder, TopK rule (SAELens's: ReLU on the kept values) and AuxK
loss are SAELens's. AuxK's target is ``x - x_hat`` with the lookup inside ``x_hat``,
detached as in SAELens, so the lookup gets no gradient from it (nor does ``b_dec``).
What differs here: ``topk_relu=False`` keeps the raw top-k values, as the authors' code did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from sae_lens.saes.topk_sae import TopK, TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from torch import nn
from typing_extensions import override

from sae_lens_tokenized.lookup.config import LookupConfig, LookupTrainingConfig
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin
from sae_lens_tokenized.saes.auxk import ReluAuxKFields, ReluAuxKMixin


class RawTopK(nn.Module):
    """TopK keeping the raw top-k pre-activations (no ReLU), as the authors' code did."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(x, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(x).scatter_(-1, indices, values)


@dataclass(kw_only=True)
class TokenizedTopKSAEConfig(LookupConfig, TopKSAEConfig):
    """``TopKSAEConfig`` + the lookup's fields + ``topk_relu``.

    ``topk_relu``: SAELens's TopK applies a ReLU to the kept values (True, default); the
    authors' code kept the raw values (False; set by ``convert_original_checkpoint``).
    """

    topk_relu: bool = True


@dataclass(kw_only=True)
class TokenizedTopKTrainingSAEConfig(ReluAuxKFields, LookupTrainingConfig, TopKTrainingSAEConfig):
    """``TokenizedTopKTrainingSAEConfig(d_in=768, d_sae=12288, k=30)``; ``d_vocab`` is
    taken from the model by the runner when left out.

    ``aux_loss_coefficient`` defaults to 1/32 (Gao et al. 2024's AuxK value), not SAELens's
    1.0: SAELens's value revives dead latents so hard that the tokenized SAE's NMSE turns
    upward while AuxK acts, and at 1/32 its lead over TopK (trained at 1/32 too) grows
    (docs "Results", "AuxK coefficient"). Pass ``aux_loss_coefficient=1.0`` for SAELens's."""

    topk_relu: bool = True
    aux_loss_coefficient: float = 1 / 32


def _topk(cfg: TokenizedTopKSAEConfig | TokenizedTopKTrainingSAEConfig, sparse: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    return TopK(cfg.k, use_sparse_activations=sparse) if cfg.topk_relu else RawTopK(cfg.k)


class TokenizedTopKSAE(TokenLookupMixin, TopKSAE):
    """``sae(x, token_ids=ids)``; ``sae.encode(x)`` needs no ids; ``sae.decode(acts, token_ids=ids)``."""

    cfg: TokenizedTopKSAEConfig  # type: ignore[assignment]

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return _topk(self.cfg)


class TokenizedTopKTrainingSAE(ReluAuxKMixin, TokenLookupMixin, TopKTrainingSAE):
    cfg: TokenizedTopKTrainingSAEConfig  # type: ignore[assignment]

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return _topk(self.cfg, self.cfg.use_sparse_activations)

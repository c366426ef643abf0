"""Tokenized BatchTopK: SAELens's BatchTopK (k per sample on average over the batch) plus
the lookup. Training only: it saves for inference as ``tokenized_jumprelu`` (threshold
from the running top-k threshold), as SAELens saves BatchTopK as JumpReLU."""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

from sae_lens_tokenized.lookup.config import LookupTrainingConfig
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin


@dataclass(kw_only=True)
class TokenizedBatchTopKTrainingSAEConfig(LookupTrainingConfig, BatchTopKTrainingSAEConfig):
    """``BatchTopKTrainingSAEConfig`` + the lookup's fields."""


class TokenizedBatchTopKTrainingSAE(TokenLookupMixin, BatchTopKTrainingSAE):
    cfg: TokenizedBatchTopKTrainingSAEConfig  # type: ignore[assignment]

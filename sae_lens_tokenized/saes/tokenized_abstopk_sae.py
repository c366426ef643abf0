"""Tokenized AbsTopK: SAELens's AbsTopK (top-k by magnitude, sign kept) plus the lookup.

AuxK as for TopK: its target contains the lookup and is detached (see tokenized_topk_sae).
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.abstopk_sae import AbsTopKSAE, AbsTopKSAEConfig, AbsTopKTrainingSAE, AbsTopKTrainingSAEConfig

from sae_lens_tokenized.lookup.config import LookupConfig, LookupTrainingConfig
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin


@dataclass(kw_only=True)
class TokenizedAbsTopKSAEConfig(LookupConfig, AbsTopKSAEConfig):
    """``AbsTopKSAEConfig`` + the lookup's fields."""


@dataclass(kw_only=True)
class TokenizedAbsTopKTrainingSAEConfig(LookupTrainingConfig, AbsTopKTrainingSAEConfig):
    """``AbsTopKTrainingSAEConfig`` + the lookup's fields."""


class TokenizedAbsTopKSAE(TokenLookupMixin, AbsTopKSAE):
    cfg: TokenizedAbsTopKSAEConfig  # type: ignore[assignment]


class TokenizedAbsTopKTrainingSAE(TokenLookupMixin, AbsTopKTrainingSAE):
    cfg: TokenizedAbsTopKTrainingSAEConfig  # type: ignore[assignment]

"""Tokenized Standard (ReLU + L1): SAELens's standard SAE plus the per-token lookup.

The authors also trained the lookup on a ReLU/L1 ("vanilla") SAE, where it helped
(arXiv 2502.17332, Sec. 4). Nothing differs here from SAELens's StandardSAE but the lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig

from sae_lens_tokenized.lookup.config import LookupConfig, LookupTrainingConfig
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin


@dataclass(kw_only=True)
class TokenizedStandardSAEConfig(LookupConfig, StandardSAEConfig):
    """``StandardSAEConfig`` + the lookup's fields."""


@dataclass(kw_only=True)
class TokenizedStandardTrainingSAEConfig(LookupTrainingConfig, StandardTrainingSAEConfig):
    """``StandardTrainingSAEConfig`` (``l1_coefficient``, ...) + the lookup's fields."""


class TokenizedStandardSAE(TokenLookupMixin, StandardSAE):
    cfg: TokenizedStandardSAEConfig  # type: ignore[assignment]


class TokenizedStandardTrainingSAE(TokenLookupMixin, StandardTrainingSAE):
    cfg: TokenizedStandardTrainingSAEConfig  # type: ignore[assignment]

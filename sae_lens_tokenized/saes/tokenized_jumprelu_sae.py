"""Tokenized JumpReLU (Gemma Scope's architecture): SAELens's JumpReLU plus the lookup.

The pre-activation loss (``pre_act_loss_coefficient``) compares pre-activations with the
threshold and reconstructs nothing, so the lookup has no part in it. Tokenized BatchTopK
and Matryoshka SAEs are saved for inference as this class, as SAELens saves theirs as
JumpReLU.
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig, JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

from sae_lens_tokenized.lookup.config import LookupConfig, LookupTrainingConfig
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin


@dataclass(kw_only=True)
class TokenizedJumpReLUSAEConfig(LookupConfig, JumpReLUSAEConfig):
    """``JumpReLUSAEConfig`` + the lookup's fields."""


@dataclass(kw_only=True)
class TokenizedJumpReLUTrainingSAEConfig(LookupTrainingConfig, JumpReLUTrainingSAEConfig):
    """``JumpReLUTrainingSAEConfig`` (``l0_coefficient``, ``jumprelu_*``, ...) + the lookup's fields."""


class TokenizedJumpReLUSAE(TokenLookupMixin, JumpReLUSAE):
    cfg: TokenizedJumpReLUSAEConfig  # type: ignore[assignment]


class TokenizedJumpReLUTrainingSAE(TokenLookupMixin, JumpReLUTrainingSAE):
    cfg: TokenizedJumpReLUTrainingSAEConfig  # type: ignore[assignment]

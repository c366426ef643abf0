"""Tokenized Matryoshka BatchTopK: SAELens's Matryoshka SAE plus the lookup.

Each inner level reconstructs ``b_dec + W_dec[:width] a[:width]``; SAELens builds those in
``_iterable_decode`` without calling ``decode``, but passes each through the same
de-normalisation step as ``decode``, where the mixin adds the lookup. So every level,
inner and outer, includes ``W_lookup[t]`` and trains it: a token's identity is explained
once, by the lookup, at every width. Training only; saves as ``tokenized_jumprelu``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)

from sae_lens_tokenized.lookup.config import LookupTrainingConfig
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin
from sae_lens_tokenized.saes.auxk import ReluAuxKFields, ReluAuxKMixin


@dataclass(kw_only=True)
class TokenizedMatryoshkaBatchTopKTrainingSAEConfig(ReluAuxKFields, LookupTrainingConfig, MatryoshkaBatchTopKTrainingSAEConfig):
    """``MatryoshkaBatchTopKTrainingSAEConfig`` (``matryoshka_widths``, ...) + the lookup's
    fields, with ``aux_loss_coefficient`` 1/32 (Gao et al. 2024's AuxK value) instead of
    SAELens's 1.0, as for tokenized BatchTopK: at SAELens's value its AuxK revivals cost the
    tokenized SAE its lead over the base (docs "Results", "AuxK coefficient"). Set
    ``aux_loss_coefficient=1.0`` to train with SAELens's value."""

    aux_loss_coefficient: float = 1 / 32


class TokenizedMatryoshkaBatchTopKTrainingSAE(ReluAuxKMixin, TokenLookupMixin, MatryoshkaBatchTopKTrainingSAE):
    cfg: TokenizedMatryoshkaBatchTopKTrainingSAEConfig  # type: ignore[assignment]

"""Tokenized Matching Pursuit: SAELens's matching-pursuit SAE plus the lookup.

What differs, and why: matching pursuit's encoder *is* a reconstruction. It greedily
picks decoder atoms until ``x - b_dec`` is explained. Left unchanged (as the method keeps
every other encoder), it would spend atoms on the token's identity and the lookup would
then add that identity a second time. So here the pursuit starts from
``x - b_dec - W_lookup[t]``: the lookup is part of the per-token centring, exactly as
``b_dec`` is for this tied SAE. The encoder therefore needs ids too (``encode(x,
token_ids=ids)`` or ``token_ids_from``). The planted-case test in
tests/test_architectures.py measures it against SAELens's matching pursuit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens.saes.matching_pursuit_sae import (
    MatchingPursuitSAE,
    MatchingPursuitSAEConfig,
    MatchingPursuitTrainingSAE,
    MatchingPursuitTrainingSAEConfig,
)
from typing_extensions import override

from sae_lens_tokenized.lookup.config import LookupConfig, LookupTrainingConfig
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin


@dataclass(kw_only=True)
class TokenizedMatchingPursuitSAEConfig(LookupConfig, MatchingPursuitSAEConfig):
    """``MatchingPursuitSAEConfig`` + the lookup's fields."""


@dataclass(kw_only=True)
class TokenizedMatchingPursuitTrainingSAEConfig(LookupTrainingConfig, MatchingPursuitTrainingSAEConfig):
    """``MatchingPursuitTrainingSAEConfig`` + the lookup's fields."""


class _PursueTheNonLookupPart(TokenLookupMixin):
    @override
    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        centred = super().process_sae_in(sae_in)  # type: ignore[misc]
        return centred - self.lookup_bias(centred.shape[:-1]).to(centred.dtype)


class TokenizedMatchingPursuitSAE(_PursueTheNonLookupPart, MatchingPursuitSAE):
    cfg: TokenizedMatchingPursuitSAEConfig  # type: ignore[assignment]


class TokenizedMatchingPursuitTrainingSAE(_PursueTheNonLookupPart, MatchingPursuitTrainingSAE):
    cfg: TokenizedMatchingPursuitTrainingSAEConfig  # type: ignore[assignment]

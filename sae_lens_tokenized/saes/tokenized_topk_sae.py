"""Tokenized TopK SAE: SAELens's TopK SAE plus a per-token decoder lookup.

The authors' main runs used TopK (k=30 on GPT-2 small, k=50 on Pythia-1.4B), Sec. 4 of
arXiv 2502.17332. The encoder, the TopK rule (SAELens's: ReLU on the kept values) and the
AuxK loss are SAELens's own; the only change is ``+ W_lookup[t]`` in ``decode``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from typing_extensions import override

from sae_lens.saes.topk_sae import (
    TopK,
    TopKSAE,
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    act_times_W_dec,
)

from sae_lens_tokenized.saes.lookup import (
    LookupConfig,
    LookupTrainingConfig,
    TokenLookupMixin,
    validate_lookup_config,
)

ARCHITECTURE = "tokenized_topk"


class RawTopK(nn.Module):
    """TopK keeping the raw top-k pre-activations (no ReLU), as the authors' code did."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(x, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(x).scatter_(-1, indices, values)


def _activation(cfg: TokenizedTopKSAEConfig | TokenizedTopKTrainingSAEConfig, sparse: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    if not cfg.topk_relu:
        return RawTopK(cfg.k)
    return TopK(cfg.k, use_sparse_activations=sparse)


@dataclass(kw_only=True)
class TokenizedTopKSAEConfig(TopKSAEConfig, LookupConfig):
    """Inference config: TopKSAEConfig's fields plus ``d_vocab``, ``unigram_strategy``,
    ``lookup_init_scale`` (see ``LookupConfig``) and ``topk_relu``.

    ``topk_relu``: SAELens's TopK applies a ReLU to the kept values (True, default); the
    authors' code kept the raw values (False; set by ``convert_original_checkpoint``).
    """

    topk_relu: bool = True

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_lookup_config(self)


@dataclass(kw_only=True)
class TokenizedTopKTrainingSAEConfig(TopKTrainingSAEConfig, LookupTrainingConfig):
    """Training config: TopKTrainingSAEConfig's fields plus the lookup's.

    ``TokenizedTopKTrainingSAEConfig(d_in=768, d_sae=12288, k=30, d_vocab=50257)``
    suffices; ``d_vocab`` may be left out and is then taken from the model.
    """

    topk_relu: bool = True

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    def __post_init__(self) -> None:
        validate_lookup_config(self)
        super().__post_init__()


def _decode_with_lookup(
    sae: TokenizedTopKSAE | TokenizedTopKTrainingSAE,
    feature_acts: torch.Tensor,
    token_ids: torch.Tensor | None,
) -> torch.Tensor:
    # Same steps as TopKSAE.decode, with the lookup added next to b_dec: both live in the
    # SAE's (possibly scaled) input space, before hook_sae_recons and de-normalisation.
    sae_out_pre = (
        act_times_W_dec(feature_acts, sae.W_dec, sae.cfg.rescale_acts_by_decoder_norm)
        + sae.b_dec
        + sae.lookup_bias(feature_acts.shape[:-1], token_ids)
    )
    sae_out_pre = sae.hook_sae_recons(sae_out_pre)
    sae_out_pre = sae.run_time_activation_norm_fn_out(sae_out_pre)
    return sae.reshape_fn_out(sae_out_pre, sae.d_head)


class TokenizedTopKSAE(TokenLookupMixin, TopKSAE):
    """Inference tokenized TopK SAE.

    ``sae(x, token_ids=ids)`` with x [..., d_in] and ids [...]; ``sae.encode(x)`` needs no
    ids (the encoder is unchanged); ``sae.decode(acts, token_ids=ids)``.
    """

    cfg: TokenizedTopKSAEConfig  # type: ignore[assignment]

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return _activation(self.cfg)

    @override
    def decode(self, feature_acts: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        return _decode_with_lookup(self, feature_acts, token_ids)


class TokenizedTopKTrainingSAE(TokenLookupMixin, TopKTrainingSAE):
    """Training tokenized TopK SAE (SAELens TopK training: AuxK loss, decoder-norm rescaling)."""

    cfg: TokenizedTopKTrainingSAEConfig  # type: ignore[assignment]

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return _activation(self.cfg, self.cfg.use_sparse_activations)

    @override
    def decode(self, feature_acts: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        return _decode_with_lookup(self, feature_acts, token_ids)

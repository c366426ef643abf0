"""Tokenized BatchTopK: SAELens's BatchTopK (k per sample on average over the batch) plus
the lookup. Training only: it saves for inference as ``tokenized_jumprelu`` (threshold
from the running top-k threshold), as SAELens saves BatchTopK as JumpReLU."""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

from sae_lens_tokenized.lookup.config import LookupTrainingConfig
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin
from sae_lens_tokenized.saes.auxk import ReluAuxKFields, ReluAuxKMixin


@dataclass(kw_only=True)
class TokenizedBatchTopKTrainingSAEConfig(ReluAuxKFields, LookupTrainingConfig, BatchTopKTrainingSAEConfig):
    """``BatchTopKTrainingSAEConfig`` + the lookup's fields, with one default changed:
    ``aux_loss_coefficient`` is 1/32 (the value of Gao et al. 2024, who introduced AuxK),
    not SAELens's 1.0.

    At SAELens's coefficient the tokenized SAE's AuxK revivals swing its reconstruction
    up and down and can leave most latents dead, where the base stays smooth; at 1/32 it
    trains smoothly and keeps more latents alive (docs "Results", "AuxK coefficient").
    Tokenized Matryoshka BatchTopK shares this default, for the same reason.
    Set ``aux_loss_coefficient=1.0`` to train with SAELens's value."""

    aux_loss_coefficient: float = 1 / 32


class TokenizedBatchTopKTrainingSAE(ReluAuxKMixin, TokenLookupMixin, BatchTopKTrainingSAE):
    cfg: TokenizedBatchTopKTrainingSAEConfig  # type: ignore[assignment]

"""Tokenized SAE architectures: the lookup mixin and one file per architecture."""

from sae_lens_tokenized.saes.lookup import (
    LookupConfig,
    LookupTrainingConfig,
    TokenIdsError,
    TokenLookupMixin,
)
from sae_lens_tokenized.saes.tokenized_topk_sae import (
    TokenizedTopKSAE,
    TokenizedTopKSAEConfig,
    TokenizedTopKTrainingSAE,
    TokenizedTopKTrainingSAEConfig,
)

# architecture name -> (inference class, inference config, training class, training config)
ARCHITECTURES = {
    "tokenized_topk": (
        TokenizedTopKSAE,
        TokenizedTopKSAEConfig,
        TokenizedTopKTrainingSAE,
        TokenizedTopKTrainingSAEConfig,
    ),
}

__all__ = [
    "ARCHITECTURES",
    "LookupConfig",
    "LookupTrainingConfig",
    "TokenIdsError",
    "TokenLookupMixin",
    "TokenizedTopKSAE",
    "TokenizedTopKSAEConfig",
    "TokenizedTopKTrainingSAE",
    "TokenizedTopKTrainingSAEConfig",
]

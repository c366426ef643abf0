"""The lookup: one component every tokenized architecture reuses.

``config`` (its config fields), ``ids`` (token ids and what captures hand over),
``mixin`` (``TokenLookupMixin``: the parameter, id resolution, its part of every
reconstruction, folding), ``bigrams`` (pair rows), ``sparse`` (sparse updates: staging and
``TokenizedAdam``) and ``strategies`` (the prompt templates of unigram tables).
"""

from sae_lens_tokenized.lookup.config import (
    DEFAULT_BIGRAM_ROWS,
    METHOD_LOOKUP,
    LookupConfig,
    LookupTrainingConfig,
    validate_lookup_config,
)
from sae_lens_tokenized.lookup.ids import NO_PREV, CapturedIds, TokenIdSource, TokenIdsError, previous_token_ids
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin
from sae_lens_tokenized.lookup.sparse import TokenizedAdam, stage_for_step
from sae_lens_tokenized.lookup.strategies import (
    DATA_STRATEGY,
    DEFAULT_INIT_SCALE,
    PRECOMPUTED_STRATEGY,
    STRATEGIES,
    UnigramStrategy,
    UnigramStrategyError,
)

__all__ = [
    "CapturedIds",
    "DATA_STRATEGY",
    "DEFAULT_INIT_SCALE",
    "DEFAULT_BIGRAM_ROWS",
    "LookupConfig",
    "LookupTrainingConfig",
    "METHOD_LOOKUP",
    "NO_PREV",
    "PRECOMPUTED_STRATEGY",
    "STRATEGIES",
    "TokenIdSource",
    "TokenIdsError",
    "TokenLookupMixin",
    "TokenizedAdam",
    "UnigramStrategy",
    "UnigramStrategyError",
    "previous_token_ids",
    "stage_for_step",
]

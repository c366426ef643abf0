"""Tokenized SAEs for SAELens.

``import sae_lens_tokenized`` registers the tokenized architectures (inference and
training) in SAELens's registry, so ``SAE.load_from_disk``, ``SAE.from_pretrained``,
``LanguageModelSAERunnerConfig(sae=...)`` and SAELens's CLI know them.
"""

from __future__ import annotations

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from sae_lens_tokenized.saes import (
    ARCHITECTURES,
    TokenIdsError,
    TokenizedTopKSAE,
    TokenizedTopKSAEConfig,
    TokenizedTopKTrainingSAE,
    TokenizedTopKTrainingSAEConfig,
)

__version__ = "0.1.0"


def _register() -> None:
    """Register every tokenized architecture; idempotent across imports and reloads.

    SAELens raises on a second registration of a name and has no unregister. A reload of
    this package creates new class objects; we replace the entries directly in that case
    so the registry always points at the classes a user imports now.
    """
    for name, (sae_cls, cfg_cls, train_cls, train_cfg_cls) in ARCHITECTURES.items():
        if name in SAE_CLASS_REGISTRY:
            SAE_CLASS_REGISTRY[name] = (sae_cls, cfg_cls)
        else:
            register_sae_class(name, sae_cls, cfg_cls)
        if name in SAE_TRAINING_CLASS_REGISTRY:
            SAE_TRAINING_CLASS_REGISTRY[name] = (train_cls, train_cfg_cls)
        else:
            register_sae_training_class(name, train_cls, train_cfg_cls)


    from sae_lens_tokenized.saes.topk_raw_sae import RawTopKSAE, RawTopKSAEConfig

    # inference only: converted original baselines are loaded, never trained
    SAE_CLASS_REGISTRY["topk_raw"] = (RawTopKSAE, RawTopKSAEConfig)


_register()

# Imported after registration: building a training config looks the architecture up.
from sae_lens_tokenized.convert import convert_original_checkpoint  # noqa: E402
from sae_lens_tokenized.hub import load_from_hub, push_to_hub  # noqa: E402
from sae_lens_tokenized.splicing import token_ids_from  # noqa: E402
from sae_lens_tokenized.training import TokenizedSAETrainingRunner  # noqa: E402
from sae_lens_tokenized.unigrams import (  # noqa: E402
    UnigramStrategy,
    UnigramStrategyError,
    compute_unigram_table,
    get_unigram_table,
    select_unigram_strategy,
)

__all__ = [
    "TokenIdsError",
    "TokenizedSAETrainingRunner",
    "TokenizedTopKSAE",
    "TokenizedTopKSAEConfig",
    "TokenizedTopKTrainingSAE",
    "TokenizedTopKTrainingSAEConfig",
    "UnigramStrategy",
    "UnigramStrategyError",
    "compute_unigram_table",
    "convert_original_checkpoint",
    "get_unigram_table",
    "load_from_hub",
    "push_to_hub",
    "select_unigram_strategy",
    "token_ids_from",
]

"""Tokenized SAEs for SAELens.

``import sae_lens_tokenized`` registers the tokenized architectures (inference and
training) in SAELens's registry, so ``SAE.load_from_disk``, ``SAE.from_pretrained`` and
``LanguageModelSAERunnerConfig(sae=...)`` know them. A tokenized SAE trains through
``TokenizedSAETrainingRunner`` (or ``sae-lens-tokenized train``, which takes SAELens's CLI
arguments): SAELens's own runners cannot carry token ids and refuse a tokenized config
before any work, and its CLI (``python -m sae_lens.llm_sae_training_runner``) never
imports this package, so it lists no tokenized architecture.

The layout: ``lookup/`` (the lookup component every architecture reuses), ``saes/`` (one
file per architecture), ``lookup_init/`` (what a fresh lookup starts from),
``training/`` (SAELens's runner, store and trainer, carrying ids), ``splicing`` (ids from
a model's input), ``integrations/`` (Hub, SAEBench, evals, converted checkpoints, the
offline model), ``analysis/`` and ``workbench/`` (the demo and benchmarks).
"""

from __future__ import annotations

from sae_lens.registry import (
    SAE_CLASS_REGISTRY,
    SAE_TRAINING_CLASS_REGISTRY,
    register_sae_class,
    register_sae_training_class,
)

from sae_lens_tokenized import _legacy
from sae_lens_tokenized import saes as _saes
from sae_lens_tokenized._version import __version__
from sae_lens_tokenized.saes import *  # noqa: F403  ARCHITECTURES, TokenIdsError, every Tokenized<Base> class


def _register() -> None:
    """Register every tokenized architecture; idempotent across imports and reloads.

    SAELens raises on a second registration of a name and has no unregister. A reload of
    this package creates new class objects; we replace the entries directly in that case
    so the registry always points at the classes a user imports now.
    """
    from sae_lens_tokenized.saes.topk_raw_sae import RawTopKSAE, RawTopKSAEConfig

    # topk_raw: inference only, converted original baselines are loaded, never trained
    for (sae_cls, cfg_cls), registry, register in (
        *(((pair, SAE_CLASS_REGISTRY, register_sae_class))
          for pair in _saes.INFERENCE_CLASSES + _saes.TRANSCODER_INFERENCE_CLASSES),
        ((RawTopKSAE, RawTopKSAEConfig), SAE_CLASS_REGISTRY, register_sae_class),
        *(((pair, SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class))
          for pair in _saes.TRAINING_CLASSES + _saes.TRANSCODER_TRAINING_CLASSES),
    ):
        name = cfg_cls.architecture()
        if name in registry:
            registry[name] = (sae_cls, cfg_cls)
        else:
            register(name, sae_cls, cfg_cls)


_register()
_legacy.install()

# Imported after registration: building a training config looks the architecture up.
from sae_lens_tokenized.integrations.convert import convert_original_checkpoint  # noqa: E402
from sae_lens_tokenized.integrations.hub import load_from_hub, push_to_hub  # noqa: E402
from sae_lens_tokenized.lookup.strategies import UnigramStrategy, UnigramStrategyError  # noqa: E402
from sae_lens_tokenized.lookup_init.fit import select_unigram_strategy  # noqa: E402
from sae_lens_tokenized.lookup_init.statistics import LookupStatistics  # noqa: E402
from sae_lens_tokenized.lookup_init.unigrams import (  # noqa: E402
    compute_unigram_table,
    compute_unigram_tables,
    get_unigram_table,
    get_unigram_tables,
)
from sae_lens_tokenized.splicing import error_term_mode, token_ids_from, token_ids_from_any_model  # noqa: E402
from sae_lens_tokenized.training import TokenizedMultiSAETrainingRunner, TokenizedSAETrainingRunner  # noqa: E402

__all__ = [
    "ARCHITECTURES",
    "LookupStatistics",
    "METHOD_LOOKUP",
    "TokenIdsError",
    "TokenizedMultiSAETrainingRunner",
    "TokenizedSAETrainingRunner",
    *(cls.__name__ for pair in _saes.INFERENCE_CLASSES + _saes.TRAINING_CLASSES for cls in pair),
    *(cls.__name__ for pair in _saes.TRANSCODER_INFERENCE_CLASSES + _saes.TRANSCODER_TRAINING_CLASSES
      for cls in pair),
    "UnigramStrategy",
    "UnigramStrategyError",
    "__version__",
    "compute_unigram_table",
    "compute_unigram_tables",
    "convert_original_checkpoint",
    "error_term_mode",
    "get_unigram_table",
    "get_unigram_tables",
    "load_from_hub",
    "push_to_hub",
    "select_unigram_strategy",
    "token_ids_from",
    "token_ids_from_any_model",
]

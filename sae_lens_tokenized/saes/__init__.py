"""Tokenized SAE architectures: the lookup component and one file per SAELens architecture.

Each ``Tokenized<Base>`` class is SAELens's ``<Base>`` class with ``TokenLookupMixin`` in
front; its architecture name is ``"tokenized_" + <base name>``. BatchTopK and Matryoshka
have no inference class (as in SAELens they save as JumpReLU: here ``tokenized_jumprelu``).
"""

from dataclasses import MISSING, fields

from sae_lens.registry import get_sae_training_class

from sae_lens_tokenized.lookup.config import METHOD_LOOKUP, LookupConfig, LookupTrainingConfig
from sae_lens_tokenized.lookup.ids import TokenIdsError
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin
from sae_lens_tokenized.saes.tokenized_abstopk_sae import (
    TokenizedAbsTopKSAE,
    TokenizedAbsTopKSAEConfig,
    TokenizedAbsTopKTrainingSAE,
    TokenizedAbsTopKTrainingSAEConfig,
)
from sae_lens_tokenized.saes.tokenized_batchtopk_sae import (
    TokenizedBatchTopKTrainingSAE,
    TokenizedBatchTopKTrainingSAEConfig,
)
from sae_lens_tokenized.saes.tokenized_gated_sae import (
    TokenizedGatedSAE,
    TokenizedGatedSAEConfig,
    TokenizedGatedTrainingSAE,
    TokenizedGatedTrainingSAEConfig,
)
from sae_lens_tokenized.saes.tokenized_jumprelu_sae import (
    TokenizedJumpReLUSAE,
    TokenizedJumpReLUSAEConfig,
    TokenizedJumpReLUTrainingSAE,
    TokenizedJumpReLUTrainingSAEConfig,
)
from sae_lens_tokenized.saes.tokenized_matching_pursuit_sae import (
    TokenizedMatchingPursuitSAE,
    TokenizedMatchingPursuitSAEConfig,
    TokenizedMatchingPursuitTrainingSAE,
    TokenizedMatchingPursuitTrainingSAEConfig,
)
from sae_lens_tokenized.saes.tokenized_matryoshka_batchtopk_sae import (
    TokenizedMatryoshkaBatchTopKTrainingSAE,
    TokenizedMatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens_tokenized.saes.tokenized_standard_sae import (
    TokenizedStandardSAE,
    TokenizedStandardSAEConfig,
    TokenizedStandardTrainingSAE,
    TokenizedStandardTrainingSAEConfig,
)
from sae_lens_tokenized.saes.tokenized_topk_sae import (
    TokenizedTopKSAE,
    TokenizedTopKSAEConfig,
    TokenizedTopKTrainingSAE,
    TokenizedTopKTrainingSAEConfig,
)
from sae_lens_tokenized.saes.transcoders import *  # noqa: F403  every transcoder class and config
from sae_lens_tokenized.saes.transcoders import TRANSCODER_INFERENCE_CLASSES, TRANSCODER_TRAINING_CLASSES

# (inference class, inference config) per architecture that has one
INFERENCE_CLASSES = [
    (TokenizedStandardSAE, TokenizedStandardSAEConfig),
    (TokenizedGatedSAE, TokenizedGatedSAEConfig),
    (TokenizedTopKSAE, TokenizedTopKSAEConfig),
    (TokenizedAbsTopKSAE, TokenizedAbsTopKSAEConfig),
    (TokenizedJumpReLUSAE, TokenizedJumpReLUSAEConfig),
    (TokenizedMatchingPursuitSAE, TokenizedMatchingPursuitSAEConfig),
]
# (training class, training config) for every tokenized architecture
TRAINING_CLASSES = [
    (TokenizedStandardTrainingSAE, TokenizedStandardTrainingSAEConfig),
    (TokenizedGatedTrainingSAE, TokenizedGatedTrainingSAEConfig),
    (TokenizedTopKTrainingSAE, TokenizedTopKTrainingSAEConfig),
    (TokenizedAbsTopKTrainingSAE, TokenizedAbsTopKTrainingSAEConfig),
    (TokenizedJumpReLUTrainingSAE, TokenizedJumpReLUTrainingSAEConfig),
    (TokenizedBatchTopKTrainingSAE, TokenizedBatchTopKTrainingSAEConfig),
    (TokenizedMatryoshkaBatchTopKTrainingSAE, TokenizedMatryoshkaBatchTopKTrainingSAEConfig),
    (TokenizedMatchingPursuitTrainingSAE, TokenizedMatchingPursuitTrainingSAEConfig),
]
#: every tokenized architecture name, in SAELens's order
ARCHITECTURES = [cfg.architecture() for _, cfg in TRAINING_CLASSES]


def base_architecture(name: str) -> str:
    """``"tokenized_jumprelu"`` -> ``"jumprelu"``: the SAELens architecture it extends."""
    return name.removeprefix("tokenized_")


__all__ = [
    "ARCHITECTURES",
    "INFERENCE_CLASSES",
    "TRAINING_CLASSES",
    "TRANSCODER_INFERENCE_CLASSES",
    "TRANSCODER_TRAINING_CLASSES",
    "METHOD_LOOKUP",
    "LookupConfig",
    "LookupTrainingConfig",
    "TokenIdsError",
    "TokenLookupMixin",
    "base_architecture",
    *(cls.__name__ for pair in INFERENCE_CLASSES + TRAINING_CLASSES for cls in pair),
    *(cls.__name__ for pair in TRANSCODER_INFERENCE_CLASSES + TRANSCODER_TRAINING_CLASSES for cls in pair),
]


def changed_defaults(arch: str) -> dict[str, object]:
    """The SAELens config fields whose default the tokenized architecture ``arch`` changes,
    with its values (e.g. tokenized BatchTopK's ``aux_loss_coefficient``: docs "Results",
    "AuxK coefficient"). Every other inherited field keeps SAELens's default. A fair
    comparison trains the base with these values too, so that the two differ by the lookup
    alone (the workbench does)."""
    def defaults(cfg_cls: type) -> dict[str, object]:
        return {f.name: f.default for f in fields(cfg_cls) if f.default is not MISSING}

    tokenized = defaults(get_sae_training_class(arch)[1])
    base = defaults(get_sae_training_class(base_architecture(arch))[1])
    return {k: v for k, v in tokenized.items() if k in base and base[k] != v}

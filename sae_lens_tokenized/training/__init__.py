"""Training tokenized SAEs through SAELens's runner, trainer and evals."""

from sae_lens_tokenized.training.activations_store import (
    TokenIdsSideChannel,
    TokenizedActivationsStore,
)
from sae_lens_tokenized.training.optim import TokenizedAdam
from sae_lens_tokenized.training.runner import (
    TokenizedEvaluator,
    TokenizedSAETrainer,
    TokenizedSAETrainingRunner,
)

__all__ = [
    "TokenIdsSideChannel",
    "TokenizedActivationsStore",
    "TokenizedAdam",
    "TokenizedEvaluator",
    "TokenizedSAETrainer",
    "TokenizedSAETrainingRunner",
]

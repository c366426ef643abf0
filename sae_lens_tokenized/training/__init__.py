"""Training tokenized SAEs through SAELens's runner, trainer and evals.

``activations_store`` (ids ride SAELens's buffer), ``trainer`` (SAELens's trainer and
evaluator with ids), ``runner`` (SAELens's runner, orchestrating the lookup init),
``multi_runner`` (SAELens's multi-SAE runner: tokenized and plain SAEs, one LLM forward),
``data_parallel`` (SAELens's trainer under torchrun; the collectives are in
``sae_lens_tokenized.parallel``).
``TokenizedAdam`` (the lookup's lazy Adam) lives with the rest of the sparse-update
protocol in ``sae_lens_tokenized.lookup.sparse``.
"""

from sae_lens_tokenized.lookup.sparse import TokenizedAdam
from sae_lens_tokenized.training.activations_store import TokenIdsSideChannel, TokenizedActivationsStore
from sae_lens_tokenized.training.data_parallel import DataParallelSAETrainer
from sae_lens_tokenized.training.multi_runner import TokenizedMultiSAETrainingRunner
from sae_lens_tokenized.training.runner import TokenizedSAETrainingRunner
from sae_lens_tokenized.training.trainer import TokenizedEvaluator, TokenizedSAETrainer

__all__ = [
    "DataParallelSAETrainer",
    "TokenIdsSideChannel",
    "TokenizedActivationsStore",
    "TokenizedAdam",
    "TokenizedEvaluator",
    "TokenizedMultiSAETrainingRunner",
    "TokenizedSAETrainer",
    "TokenizedSAETrainingRunner",
]

"""Every place this plugin relies on a detail of SAELens that is not public API.

Each entry names the SAELens version it was written against. ``tests/test_compat.py``
checks every one of them, so an SAELens release that moves one fails loudly in CI
instead of silently changing behaviour.
"""

from __future__ import annotations

import inspect

import sae_lens
from sae_lens.training import mixing_buffer as _mixing_buffer_module
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.sae_trainer import SAETrainer

# Written against sae-lens 6.54.12. The supported range is declared in pyproject.toml.
WRITTEN_AGAINST = "6.54.12"

# 1. SAETrainer.step(batch) is documented as a "public seam", but the optimizer and the
#    lr scheduler it builds in __init__ are plain attributes that we rebuild to give the
#    lookup its own parameter group (sae-lens 6.54.12: `self.optimizer`,
#    `self.lr_scheduler`, built by `sae_lens.training.optim.get_lr_scheduler`).
TRAINER_OPTIMIZER_ATTRS = ("optimizer", "lr_scheduler")

# 2. ActivationsStore.get_raw_llm_batch() returns (activations, token_ids) with
#    activations [N, d_in] and token_ids [N] (sae-lens 6.54.12). The stock filtered path
#    drops the ids; we keep them.
RAW_BATCH_METHOD = "get_raw_llm_batch"

# 3. The activation buffer is float32 whatever the model dtype (sae-lens 6.54.12,
#    ActivationsStore.get_activations). We pack token ids as an extra float32 column;
#    float32 holds every integer below 2**24 exactly, and unpacking re-checks that.
MAX_PACKABLE_TOKEN_ID = 2**24

# 4. LLMSaeEvaluator pauses a PrefetchingIterator data provider while it runs evals
#    (isinstance check, sae-lens 6.54.12). We hand it the inner prefetcher.

# 5. The CLI reuses SAELens's private argument parser
#    `sae_lens.llm_sae_training_runner._parse_cfg_args(args)` (sae-lens 6.54.12), so
#    `sae-lens-tokenized train` takes exactly SAELens's arguments.


# 6. PrefetchingIterator.close() exists from sae-lens 6.54; the runner calls it only where
#    present (before 6.54 SAELens never stopped its daemon producer thread either).


def check_seams() -> list[str]:
    """Return a list of problems with the SAELens internals this plugin relies on."""
    problems: list[str] = []
    trainer_init = inspect.getsource(SAETrainer.__init__)
    for attr in TRAINER_OPTIMIZER_ATTRS:
        if f"self.{attr} =" not in trainer_init:
            problems.append(f"SAETrainer.__init__ no longer sets self.{attr}")
    if "clip_grad_norm_" not in inspect.getsource(SAETrainer._train_step):
        problems.append("SAETrainer._train_step no longer clips grad norms")
    if not hasattr(ActivationsStore, RAW_BATCH_METHOD):
        problems.append(f"ActivationsStore.{RAW_BATCH_METHOD} is gone")
    else:
        src = inspect.getsource(getattr(ActivationsStore, RAW_BATCH_METHOD))
        if "return activations, token_ids" not in src:
            problems.append(f"ActivationsStore.{RAW_BATCH_METHOD} no longer returns ids")
    if not hasattr(_mixing_buffer_module, "mixing_buffer"):
        problems.append("sae_lens.training.mixing_buffer.mixing_buffer is gone")
    from sae_lens import llm_sae_training_runner as _runner
    from sae_lens.llm_sae_training_runner import LLMSaeEvaluator

    if not callable(getattr(_runner, "_parse_cfg_args", None)):
        problems.append("sae_lens.llm_sae_training_runner._parse_cfg_args is gone")
    if "PrefetchingIterator" not in inspect.getsource(LLMSaeEvaluator.__call__):
        problems.append("LLMSaeEvaluator no longer pauses a PrefetchingIterator")
    if "torch.zeros(" not in inspect.getsource(ActivationsStore.get_activations):
        problems.append("ActivationsStore.get_activations no longer builds a float32 buffer")
    return problems


SAE_LENS_VERSION = sae_lens.__version__

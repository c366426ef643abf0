"""Train tokenized SAEs through SAELens: same config, same outputs, ids carried along.

``TokenizedSAETrainingRunner`` is SAELens's ``LanguageModelSAETrainingRunner``: its
``__init__`` and ``run`` are SAELens's own, called through ``super()``, with three classes
substituted where SAELens instantiates them (``_compat.runner_classes``):

1. the activation store is ``TokenizedActivationsStore`` (ids ride through SAELens's
   mixing buffer and prefetch thread beside their activations);
2. the trainer is ``TokenizedSAETrainer`` (ids bound to the SAE at each step, the lookup
   in its own Adam group);
3. the evaluator is ``TokenizedEvaluator`` (ids for evals from the model's input).

The runner only orchestrates: before the store and the SAE are built it checks the
config against the model (``lookup_init.plan.check_against_model``); after, it applies the
lookup's init plan (``plan_lookup_init``). It works on its own copy of the config, so
the user's object is never changed; the resolved settings (``d_vocab``, the strategy and
scale used) are in the saved cfg.json and runner_cfg.json. Saving, checkpoints, resuming,
wandb logging, evals, interruption handling and compilation are SAELens's own code.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import HfDataset, LanguageModelSAERunnerConfig
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, LLMSaeEvaluator
from sae_lens.saes.sae import TrainingSAE

from sae_lens_tokenized._compat import guard_runner_init, runner_classes
from sae_lens_tokenized.lookup.config import LookupTrainingConfig
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin
from sae_lens_tokenized.lookup_init.plan import check_against_model, plan_lookup_init, resolve_precomputed_table
from sae_lens_tokenized.lookup_init.sample import SpecialTokensNotExcludedWarning  # noqa: F401  (public here)
from sae_lens_tokenized.models import vocab_size
from sae_lens_tokenized.training.activations_store import ShardedActivationsStore, TokenizedActivationsStore
from sae_lens_tokenized.saes.transcoders import is_transcoder_config
from sae_lens_tokenized.training.data_parallel import check_same_model, data_parallel_setup
from sae_lens_tokenized.training.trainer import TokenizedEvaluator, TokenizedSAETrainer
from sae_lens_tokenized.training.transcoders import (
    TranscoderEvaluator,
    TranscoderSteps,
    check_transcoder_against_model,
)


def saved_lookup_rows(folder: str | Path) -> int:
    """Rows of ``W_lookup`` in a saved SAE or checkpoint folder (read from the weights)."""
    from safetensors import safe_open
    from sae_lens.constants import SAE_WEIGHTS_FILENAME

    with safe_open(str(Path(folder) / SAE_WEIGHTS_FILENAME), framework="pt") as f:
        return int(f.get_slice("W_lookup").get_shape()[0])


def _check_buffer(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    # SAELens would crash on the first batch with a bare "Buffer size must be >= batch size".
    buffer = cfg.n_batches_in_buffer * len(range(cfg.context_size)[slice(*cfg.seqpos_slice)])
    if buffer < cfg.train_batch_size_tokens:
        raise ValueError(
            f"the activation buffer holds n_batches_in_buffer * context_size = {buffer} "
            f"activations, fewer than train_batch_size_tokens={cfg.train_batch_size_tokens}; "
            "raise n_batches_in_buffer or lower train_batch_size_tokens."
        )


class TokenizedSAETrainingRunner(LanguageModelSAETrainingRunner):
    """``LanguageModelSAETrainingRunner`` for tokenized architectures.

    Args:
        cfg: an ordinary ``LanguageModelSAERunnerConfig`` whose ``sae`` is a tokenized
            training config (e.g. ``TokenizedJumpReLUTrainingSAEConfig``). Not modified:
            the runner works on a copy (``runner.cfg``), with the resolved settings.
        override_dataset: as in SAELens.
        override_model: as in SAELens.
        override_sae: as in SAELens.
        unigram_table: a precomputed [d_vocab, d_in] table (overrides
            ``cfg.sae.unigram_table_path`` and the computation).

    The lookup is initialised when the runner builds the SAE itself; an ``override_sae``,
    ``from_pretrained_path`` or ``resume_from_checkpoint`` keeps the lookup it brings.
    """

    #: SAELens's runner guard lets this runner train tokenized configs (``refuse_tokenized_configs``)
    carries_token_ids = True
    #: The activation store and trainer classes; subclasses of these may replace them.
    store_class: type[TokenizedActivationsStore] = TokenizedActivationsStore
    trainer_class: type[TokenizedSAETrainer] = TokenizedSAETrainer
    #: the trainer of a plain SAELens config (SAELens's, data-parallel, transcoder targets split)
    plain_trainer_class: type[TranscoderSteps] = TranscoderSteps

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        override_dataset: HfDataset | None = None,
        override_model: Any | None = None,
        override_sae: TrainingSAE[Any] | None = None,
        unigram_table: torch.Tensor | None = None,
    ):
        self.tokenized = isinstance(cfg.sae, LookupTrainingConfig)
        _check_buffer(cfg)
        cfg = copy.deepcopy(cfg)  # resolved settings go into the runner's copy, never the user's
        self.data_parallel = data_parallel_setup(cfg)
        self._unigram_table_arg = unigram_table
        fresh = override_sae is None and cfg.from_pretrained_path is None
        self._will_init = (self.tokenized and fresh and cfg.sae.init_lookup_from_unigrams
                           and cfg.resume_from_checkpoint is None)
        store_class = self.store_class if self.tokenized else ShardedActivationsStore
        evaluator = (TranscoderEvaluator if is_transcoder_config(cfg.sae)
                     else TokenizedEvaluator if self.tokenized else LLMSaeEvaluator)
        with runner_classes(ActivationsStore=store_class, LLMSaeEvaluator=evaluator):
            super().__init__(cfg, override_dataset, override_model, override_sae)
        if not self.tokenized:
            return
        if not isinstance(self.sae, TokenLookupMixin):
            raise TypeError(f"{type(self.sae).__name__} is not a tokenized SAE")
        if cfg.resume_from_checkpoint is not None and self.sae.cfg.lookup_ngram == 2:
            # the checkpointed lookup holds the bigram rows its init chose: size to them
            # before the trainer's optimizer takes W_lookup
            self.sae.resize_bigram_rows(saved_lookup_rows(cfg.resume_from_checkpoint) - self.sae.cfg.d_vocab)
        self.unigram_report: dict[str, Any] = {}
        if self._will_init:
            # The sample's per-token sums accumulate in the lookup's own token rows (float32),
            # where the data table is then computed: the init holds no second table.
            W = self.sae.W_lookup
            plan = plan_lookup_init(self.model, self.activations_store, cfg, self._table, self._table_strategy,
                                    device=W.device, sums=W.data[: self.sae.cfg.d_vocab]
                                    if W.dtype == torch.float32 else None)
            plan.apply(self.sae)
            cfg.sae.unigram_strategy, cfg.sae.lookup_init_scale = plan.strategy, plan.scale
            # The plan (and its table) is dropped here: the lookup holds its rows now, and a
            # second [d_vocab, d_in] table kept through training would cost the lookup's size again.
            self.unigram_report = plan.report
            del plan
        self.sae.set_lookup_trainable(cfg.sae.train_lookup)

    def _compile_llm_if_needed(self) -> None:
        # SAELens's __init__ calls this right after self.model is set and before it builds
        # the store and the SAE (_compat.py entry 1): the one moment to check the config
        # against the model and size the lookup, before any work.
        cfg = self.cfg
        if self.data_parallel is not None:
            check_same_model(self.data_parallel, self.model)
        if is_transcoder_config(cfg.sae):
            check_transcoder_against_model(self.model, cfg)
        if self.tokenized:
            if cfg.sae.d_vocab is None:
                cfg.sae.d_vocab = vocab_size(self.model)
            check_against_model(self.model, cfg, table_given=self._unigram_table_arg is not None)
            self._table, self._table_strategy = resolve_precomputed_table(
                self.model, cfg, self._unigram_table_arg, self._will_init)
        super()._compile_llm_if_needed()

    def run(self):
        """Train the SAE: SAELens's ``run``, with the tokenized trainer (a plain SAE: with
        SAELens's trainer, data-parallel under ``torchrun``)."""
        with runner_classes(SAETrainer=self.trainer_class if self.tokenized else self.plain_trainer_class):
            return super().run()

    def save_final_sae(self, *args: Any, **kwargs: Any) -> None:
        if self.data_parallel is None or self.data_parallel.is_main:  # rank 0 writes the SAE
            super().save_final_sae(*args, **kwargs)

    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        dp = self.data_parallel
        if dp is None or dp.is_main or checkpoint_path is None:
            return super().save_checkpoint(checkpoint_path)
        self.activations_store.save_to_checkpoint(checkpoint_path)  # other ranks: their data position

    def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
        sae = super().run_trainer_with_interruption_handling(trainer)
        if self.tokenized:
            read = self.activations_store.llm_activations_read
            if self.data_parallel is not None:
                read = int(self.data_parallel.all_reduce_(torch.tensor([read]), what="counting activations read"))
            record_activation_counts(sae, read, trainer.n_training_samples)
        return sae


def record_activation_counts(sae: Any, read: int, trained_on: int) -> None:
    """Write into cfg.json (``metadata.activations``) how many activations the run read
    from the LLM (or the cache) and how many it trained on (all ranks' under torchrun):
    they differ by what SAELens's mixing buffer still held at the end (and a measurement's
    8 sequences, when one ran)."""
    sae.cfg.metadata.activations = {"read": int(read), "trained_on": int(trained_on)}


#: What trains a tokenized SAE, for the errors of the entry points that cannot.
TRAINING_ENTRY_POINTS = (
    "sae_lens_tokenized.TokenizedSAETrainingRunner(cfg).run() (same config), or the CLI "
    "`sae-lens-tokenized train ...` (the same arguments as `python -m sae_lens.llm_sae_training_runner`)"
)
MULTI_TRAINING_ENTRY_POINT = "sae_lens_tokenized.TokenizedMultiSAETrainingRunner(cfg).run() (same config)"


def refuse_tokenized_configs(runner: Any, cfg: Any) -> None:
    """Run first in SAELens's own runners (``_compat.py`` entry 1): a tokenized config
    there would load the model and fill the buffer, then fail at the first step, since
    SAELens's store drops each activation's token id. Refused before any of that."""
    if getattr(type(runner), "carries_token_ids", False):
        return
    sae_cfgs = getattr(cfg, "saes", None)
    multi = isinstance(sae_cfgs, dict)
    named = dict(sae_cfgs) if multi else {"sae": getattr(cfg, "sae", None)}
    tokenized = sorted(name for name, c in named.items() if isinstance(c, LookupTrainingConfig))
    transcoders = sorted(name for name, c in named.items() if is_transcoder_config(c))
    if transcoders and not tokenized:
        raise TypeError(
            f"{'cfg.saes ' + str(transcoders) + ' are' if multi else 'cfg.sae is'} a transcoder config, which "
            f"SAELens's {type(runner).__name__} cannot train: its store reads one hook, and a transcoder "
            "learns from its input and output hooks together. Train it with "
            f"{TRAINING_ENTRY_POINTS if not multi else 'sae_lens_tokenized.TokenizedSAETrainingRunner, one per transcoder'}.")
    if tokenized:
        what = f"cfg.saes {tokenized} are" if multi else "cfg.sae is"
        raise TypeError(
            f"{what} a tokenized SAE config, which SAELens's {type(runner).__name__} cannot train: "
            "its activation store drops the token id of each activation, which the lookup needs "
            f"at every step. Train it with {MULTI_TRAINING_ENTRY_POINT if multi else TRAINING_ENTRY_POINTS}."
        )


def _guard_saelens_runners() -> None:
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner

    for runner_cls in (LanguageModelSAETrainingRunner, MultiSAETrainingRunner):
        guard_runner_init(runner_cls, refuse_tokenized_configs)


_guard_saelens_runners()

__all__ = ["SpecialTokensNotExcludedWarning", "TokenizedSAETrainingRunner", "refuse_tokenized_configs"]

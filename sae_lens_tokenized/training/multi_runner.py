"""Tokenized SAEs in SAELens's multi-SAE runner: several SAEs, one LLM forward per batch.

``TokenizedMultiSAETrainingRunner`` is SAELens's ``MultiSAETrainingRunner`` (its own
``__init__`` and ``run``), with three classes substituted where it instantiates them
(``_compat.runner_classes``, entry 1):

1. the store is ``TokenizedMultiHookStore``: beside each hook's activations, the multi-hook
   batch carries ``[previous id, id]`` as one more "hook" (``TOKEN_IDS_KEY``), so SAELens's
   shared shuffle (``multi_hook_concat_split_iter``) moves ids with their activations;
2. the trainer is ``TokenizedMultiSAETrainer``: it takes the ids off each batch
   (``MultiTokenIdsChannel``) before SAELens routes the hooks' tensors, and trains each
   tokenized SAE with a ``TokenizedSAETrainer`` (its lookup group, sparse updates,
   checkpoints) while plain SAEs keep SAELens's ``SAETrainer``;
3. the evaluator is ``TokenizedMultiSAEEvaluator`` (ids from the model's input).

Tokenized and plain SAEs, at one hook or several, train together. The lookups' data
statistics are sampled once, from one LLM forward per batch over every hook
(``lookup_init.sample.sample_multi_hook_statistics``), and shared by every tokenized SAE at a
hook; each SAE then builds its own rows from them with its own settings.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from sae_lens.multi_sae_training_runner import MultiSAEEvaluator, MultiSAETrainingRunner
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.mixing_buffer import multi_hook_concat_split_iter
from sae_lens.training.multi_sae_trainer import MultiSAETrainer

from sae_lens_tokenized import parallel
from sae_lens_tokenized.saes.transcoders import is_transcoder_config
from sae_lens_tokenized._compat import runner_classes
from sae_lens_tokenized.lookup.config import LookupTrainingConfig
from sae_lens_tokenized.lookup.ids import TOKEN_IDS_KEY, previous_token_ids
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin
from sae_lens_tokenized.lookup_init.plan import check_sae_against_model, plan_lookup_init, resolve_precomputed_table
from sae_lens_tokenized.lookup_init.sample import sample_multi_hook_statistics
from sae_lens_tokenized.models import vocab_size
from sae_lens_tokenized.splicing import token_ids_from
from sae_lens_tokenized.training.activations_store import check_vocab_packable, checked_ids
from sae_lens_tokenized.training.held_batches import HeldBatches
from sae_lens_tokenized.training.runner import record_activation_counts, saved_lookup_rows
from sae_lens_tokenized.training.trainer import TokenizedSAETrainer

MULTI_RUNNER = "sae_lens.multi_sae_training_runner"


class TokenizedMultiHookStore(HeldBatches, ActivationsStore):
    """SAELens's multi-hook store, whose batches also carry each activation's ids."""

    #: rows of the widest lookup; ids are checked against it as they enter (set per run)
    d_vocab: int | None = None
    #: the config of the runner building this store (set on a per-run subclass)
    runner_cfg: Any = None

    @classmethod
    def from_config_multi_hook(cls, model: Any, *args: Any, **kwargs: Any) -> TokenizedMultiHookStore:  # type: ignore[override]
        # SAELens builds the store right after the model and before the SAEs (_compat entry
        # 1): the one moment to size and check every tokenized config, before any work.
        if cls.runner_cfg is not None:
            prepare_multi_store(cls, model)
        return super().from_config_multi_hook(model, *args, **kwargs)  # type: ignore[return-value]

    # a held batch is (tokens, multi-hook activations); llm_activations_read counts per hook
    _replaying: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def get_batch_tokens(self, batch_size: int | None = None, raise_at_epoch_end: bool = False,
                         move_to_model_device: bool = True) -> torch.Tensor:
        # SAELens's multi-hook batch is get_batch_tokens() then get_multi_hook_activations(those
        # tokens) (_compat entry 4): a held batch is served as that pair. Evals ask for their
        # own batch size and always read fresh tokens.
        held = self._next_held() if batch_size is None else None
        if held is not None:
            self._replaying = held
            return held[0]
        return super().get_batch_tokens(batch_size, raise_at_epoch_end, move_to_model_device)

    @torch.no_grad()
    def get_multi_hook_activations(self, batch_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._replaying is not None and self._replaying[0] is batch_tokens:
            out, self._replaying = self._replaying[1], None
            return dict(out)
        out = super().get_multi_hook_activations(batch_tokens)
        tokens = batch_tokens[:, slice(*self.seqpos_slice)]
        checked_ids(tokens.reshape(-1), self.d_vocab)
        ref = next(iter(out.values()))
        # (SAELens's filter flattens every entry alike and drops excluded tokens' rows)
        out[TOKEN_IDS_KEY] = torch.stack([previous_token_ids(tokens), tokens], -1).to(ref.device, torch.float32)
        self.llm_activations_read += tokens.numel()
        self._keep_if_holding((batch_tokens, dict(out)), out[TOKEN_IDS_KEY].numel() // 2)
        return out

    def get_multi_hook_data_loader(self) -> Iterator[dict[str, torch.Tensor]]:  # type: ignore[override]
        # SAELens's loader, with the ids' pseudo-hook in the shared shuffle (_compat entry 4)
        return multi_hook_concat_split_iter(
            buffer_size=self.n_batches_in_buffer * self.training_context_size,
            batch_size=self.train_batch_size_tokens,
            activations_loader=self._iterate_filtered_multi_hook_activations(),
            hook_names=[*self._hook_names, TOKEN_IDS_KEY],  # type: ignore[misc]
            mix_fraction=self.activations_mixing_fraction,
        )


class MultiTokenIdsChannel(Iterator[dict[str, torch.Tensor]]):
    """Takes the ids off each multi-hook batch and gives them back for any of its tensors.

    SAELens's ``MultiSAETrainer`` routes ``batch[hook]`` to each SAE's ``step``; a
    tokenized trainer asks ``ids_for(tensor)``, answered only for a tensor of the latest
    batch (identity), so ids can never be paired with another batch.
    """

    def __init__(self, source: Iterator[dict[str, torch.Tensor]]):
        self.source: Any = source
        self._batch: dict[str, torch.Tensor] = {}
        self._ids: tuple[torch.Tensor, torch.Tensor] | None = None

    def __iter__(self) -> MultiTokenIdsChannel:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = dict(next(self.source))
        packed = batch.pop(TOKEN_IDS_KEY)
        if packed.dtype != torch.float32:
            raise RuntimeError(f"the multi-hook buffer is {packed.dtype}, not float32: the ids riding in it "
                               "may not be exact (SAELens internals changed? see _compat.py)")
        self._batch, self._ids = batch, (packed[:, 1].long(), packed[:, 0].long())
        return batch

    def view(self, with_prev: bool) -> _ChannelView:
        return _ChannelView(self, with_prev)

    def ids_for(self, tensor: torch.Tensor, with_prev: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._ids is None or not any(t is tensor for t in self._batch.values()):
            raise RuntimeError("this batch did not come from the latest multi-hook batch; tokenized SAEs "
                               "must be trained on batches from a TokenizedMultiHookStore")
        return self._ids[0], (self._ids[1] if with_prev else None)


class _ChannelView:
    """One tokenized SAE's view of the channel (the trainer's ``data_provider``)."""

    def __init__(self, channel: MultiTokenIdsChannel, with_prev: bool):
        self.channel, self.with_prev = channel, with_prev
        self.source = channel.source

    def __iter__(self) -> _ChannelView:
        return self

    def __next__(self) -> torch.Tensor:
        raise RuntimeError("in the multi-SAE runner, batches come through MultiSAETrainer, not this view")

    def ids_for(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.channel.ids_for(batch, self.with_prev)


class TokenizedMultiSAETrainer(MultiSAETrainer):
    """SAELens's ``MultiSAETrainer``; tokenized SAEs get a ``TokenizedSAETrainer`` each."""

    #: the run's store (set on a per-run subclass), for the activation counts in cfg.json
    store: Any = None

    def fit(self) -> dict[str, Any]:
        saes = super().fit()
        for sae in saes.values():
            if isinstance(sae, TokenLookupMixin):
                record_activation_counts(sae, self.store.llm_activations_read, self.n_training_samples)
        return saes

    def __init__(self, *args: Any, data_provider: Any, **kwargs: Any):
        channel = MultiTokenIdsChannel(data_provider)
        super().__init__(*args, data_provider=channel, **kwargs)
        for name, sae in self.saes.items():
            if isinstance(sae, TokenLookupMixin):
                plain = self.trainers[name]  # built by SAELens, with the coordinator's settings
                self.trainers[name] = TokenizedSAETrainer(
                    cfg=plain.cfg, sae=sae, data_provider=channel.view(sae.cfg.lookup_ngram == 2),
                    evaluator=None, save_checkpoint_fn=None)


class TokenizedMultiSAEEvaluator(MultiSAEEvaluator):
    """SAELens's multi-SAE evaluator with the tokenized SAEs' ids from the model's input."""

    def __call__(self, saes: dict[str, Any], data_provider: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        inner = data_provider.source if isinstance(data_provider, MultiTokenIdsChannel) else data_provider
        tokenized = [s for s in saes.values() if isinstance(s, TokenLookupMixin)]
        with token_ids_from(self.model, *tokenized) if tokenized else contextlib.nullcontext():
            return super().__call__(saes, inner, *args, **kwargs)


class TokenizedMultiSAETrainingRunner(MultiSAETrainingRunner):
    """``MultiSAETrainingRunner`` for tokenized SAEs next to plain ones.

    Args:
        cfg: an ordinary ``MultiSAETrainingRunnerConfig``; any of ``cfg.saes`` may be
            tokenized training configs. Not modified: the runner works on a copy.
        override_dataset: as in SAELens.
        override_model: as in SAELens.
        override_saes: as in SAELens.

    A tokenized SAE the runner builds itself has its lookup initialised before training;
    statistics for the data-estimated init are sampled once per hook and shared.
    """

    #: SAELens's runner guard lets this runner train tokenized configs
    carries_token_ids = True
    #: the trainer ``run`` uses (a subclass of ``TokenizedMultiSAETrainer``), as
    #: ``TokenizedSAETrainingRunner.trainer_class`` is for one SAE
    trainer_class: type[TokenizedMultiSAETrainer] = TokenizedMultiSAETrainer

    def __init__(self, cfg: Any, override_dataset: Any = None, override_model: Any = None,
                 override_saes: dict[str, Any] | None = None):
        if parallel.launched_with_torchrun() or parallel.current() is not None:
            raise parallel.DataParallelError(
                "TokenizedMultiSAETrainingRunner does not run data-parallel under torchrun yet; train "
                "each SAE with TokenizedSAETrainingRunner under torchrun, or run this runner in one process."
            )
        transcoders = sorted(n for n, c in cfg.saes.items() if is_transcoder_config(c))
        if transcoders:
            raise ValueError(f"cfg.saes {transcoders} are transcoders, which the multi-SAE runner does not train "
                             "yet; train each with TokenizedSAETrainingRunner.")
        cfg = copy.deepcopy(cfg)  # resolved settings go into the runner's copy, never the user's
        tokenized = {n: c for n, c in cfg.saes.items() if isinstance(c, LookupTrainingConfig)}
        if tokenized and cfg.dtype not in ("float32", torch.float32):
            raise ValueError(f"dtype={cfg.dtype!r}: token ids ride SAELens's multi-hook buffer beside the "
                             "activations, exactly only in float32; train with dtype='float32'.")
        store = type("TokenizedMultiHookStore", (TokenizedMultiHookStore,), {"runner_cfg": cfg})
        with runner_classes(MULTI_RUNNER, ActivationsStore=store, MultiSAEEvaluator=TokenizedMultiSAEEvaluator):
            super().__init__(cfg, override_dataset, override_model, override_saes)
        if cfg.resume_from_checkpoint is not None:
            for name in tokenized:  # each checkpointed lookup holds the bigram rows its init chose
                sae = self.saes[name]
                if sae.cfg.lookup_ngram == 2:
                    rows = saved_lookup_rows(Path(cfg.resume_from_checkpoint) / name)
                    sae.resize_bigram_rows(rows - sae.cfg.d_vocab)
        fresh = {n for n, c in tokenized.items() if override_saes is None and c.init_lookup_from_unigrams
                 and cfg.resume_from_checkpoint is None}
        self.unigram_reports: dict[str, dict[str, Any]] = {}
        if fresh:
            hooks = {cfg.hook_names_per_sae[n] for n in fresh}
            stats = sample_multi_hook_statistics(self.activations_store, cfg, {n: cfg.saes[n] for n in sorted(fresh)},
                                                 hooks)
            for name in sorted(fresh):
                hook = cfg.hook_names_per_sae[name]
                single = _single_view(cfg, name)
                table, table_strategy = resolve_precomputed_table(self.model, single, None, will_init=True)
                plan = plan_lookup_init(self.model, self.activations_store, single, table, table_strategy,
                                        shared=stats.get(hook), device=self.saes[name].W_lookup.device)
                plan.apply(self.saes[name])
                cfg.saes[name].unigram_strategy, cfg.saes[name].lookup_init_scale = plan.strategy, plan.scale
                self.unigram_reports[name] = plan.report
        for name in tokenized:
            self.saes[name].set_lookup_trainable(cfg.saes[name].train_lookup)

    def run(self) -> dict[str, Any]:
        trainer = type(self.trainer_class.__name__, (self.trainer_class,), {"store": self.activations_store})
        with runner_classes(MULTI_RUNNER, MultiSAETrainer=trainer):
            return super().run()


def _single_view(cfg: Any, name: str) -> SimpleNamespace:
    """The fields the lookup init reads of a single-SAE runner config, for one SAE."""
    return SimpleNamespace(sae=cfg.saes[name], hook_name=cfg.hook_names_per_sae[name],
                           hook_head_index=cfg.hook_head_indices_per_sae[name], model_name=cfg.model_name,
                           training_tokens=cfg.training_tokens, exclude_special_tokens=cfg.exclude_special_tokens)


def prepare_multi_store(store_cls: type, model: Any) -> None:
    """Before SAELens builds the SAEs: size every tokenized config from the model and check
    it (called from the store's construction, the runner's first point with the model)."""
    cfg = store_cls.runner_cfg  # type: ignore[attr-defined]
    vocab = vocab_size(model)
    for name, sae_cfg in cfg.saes.items():
        if isinstance(sae_cfg, LookupTrainingConfig):
            if sae_cfg.d_vocab is None:
                sae_cfg.d_vocab = vocab
            check_sae_against_model(model, sae_cfg, cfg.hook_names_per_sae[name], cfg.hook_head_indices_per_sae[name],
                                    cfg.seqpos_slice, name=name)
    vocabs = {c.d_vocab for c in cfg.saes.values() if isinstance(c, LookupTrainingConfig)}
    if vocabs:
        check_vocab_packable(max(vocabs))
        store_cls.d_vocab = max(vocabs)  # type: ignore[attr-defined]

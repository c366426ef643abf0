"""SAELens's trainer and evaluator, with token ids for the SAE at every step and eval.

``TokenizedSAETrainer`` is SAELens's ``SAETrainer``: each step binds the batch's ids (from
the store's packed rows, via ``TokenIdsSideChannel``) to the SAE, stages a sparse
lookup's rows (``lookup/sparse.py``), and runs SAELens's own step. Its optimizer is
rebuilt with the lookup in its own Adam group and learning rate (the authors trained it
at 1e-2 against 1e-4 for the SAE). ``TokenizedEvaluator`` takes the ids for SAELens's
evals from the model's input (``token_ids_from``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens.llm_sae_training_runner import LLMSaeEvaluator
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.optim import get_lr_scheduler

from sae_lens_tokenized.lookup.mixin import TokenLookupMixin
from sae_lens_tokenized.lookup.sparse import TokenizedAdam, stage_for_step
from sae_lens_tokenized.splicing import token_ids_from
from sae_lens_tokenized.training.activations_store import TokenIdsSideChannel
from sae_lens_tokenized.training.transcoders import TranscoderSteps, batch_width


class TokenizedSAETrainer(TranscoderSteps):
    """SAELens's SAETrainer, feeding token ids to the SAE and a separate lookup lr
    (data-parallel under ``torchrun``: ``training.data_parallel``; a transcoder's target
    bound per step: ``training.transcoders``)."""

    def __init__(self, cfg: Any, sae: Any, data_provider: Any, **kwargs: Any):
        """``data_provider``: packed rows from a ``TokenizedActivationsStore`` (the store, or
        SAELens's ``PrefetchingIterator`` over it), or anything with ``ids_for(batch)`` and
        ``with_prev`` (a ``TokenIdsSideChannel``; the multi-SAE runner's channel)."""
        if not isinstance(sae, TokenLookupMixin):
            raise TypeError(f"{type(sae).__name__} is not a tokenized SAE")
        with_prev = sae.cfg.lookup_ngram == 2
        if not callable(getattr(data_provider, "ids_for", None)):  # packed rows: split them here
            data_provider = TokenIdsSideChannel(data_provider, with_prev=with_prev)
        if data_provider.with_prev != with_prev:
            raise ValueError(
                f"the data provider {'carries' if data_provider.with_prev else 'does not carry'} previous "
                f"token ids but the SAE has lookup_ngram={sae.cfg.lookup_ngram}; build the store from "
                "a runner config whose sae is this SAE's config"
            )
        super().__init__(cfg=cfg, sae=sae, data_provider=data_provider, **kwargs)
        self.token_ids_channel = data_provider
        # Rebuild Adam with the lookup in its own group (SAETrainer builds
        # Adam(sae.parameters(), lr) in __init__; _compat.py entry 2). A sparse lookup's
        # group is its staged rows, updated lazily (lookup/sparse.py); a dense lookup's is
        # W_lookup itself. A frozen lookup stays in its group with no grad, and the
        # optimizer skips it: it stays bitwise unchanged.
        lookup_lr = sae.cfg.lookup_lr if sae.cfg.lookup_lr is not None else cfg.lr
        sparse = sae.lookup_rows is not None
        lookup = sae.lookup_rows if sparse else sae.W_lookup
        other = [p for n, p in sae.named_parameters() if p is not sae.W_lookup and p is not sae.lookup_rows]
        self.optimizer = TokenizedAdam(
            [
                {"params": other, "lr": cfg.lr, "name": "sae"},
                {"params": [lookup], "lr": lookup_lr, "name": "lookup", "lazy_rows": sparse,
                 "rowwise": getattr(sae.cfg, "lookup_updates", None) == "sparse_rowwise"},
            ],
            sae=sae,
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
        )
        self.lr_scheduler = get_lr_scheduler(
            cfg.lr_scheduler_name,
            lr=cfg.lr,
            optimizer=self.optimizer,
            warm_up_steps=cfg.lr_warm_up_steps,
            decay_steps=cfg.lr_decay_steps,
            training_steps=cfg.total_training_steps,
            lr_end=cfg.lr_end,
            num_cycles=cfg.n_restart_cycles,
        )
        # With normalize_activations="expected_average_only_in" the SAE trains on
        # activations multiplied by a factor estimated at the start of fit(); the lookup
        # was initialised from raw unigrams, so it is scaled by the same factor once.
        self._lookup_scale_pending = sae.cfg.normalize_activations == "expected_average_only_in"

    def step(self, batch: torch.Tensor):  # type: ignore[override]
        ids, prev = self.token_ids_channel.ids_for(batch)
        if batch.shape[-1] != batch_width(self.sae.cfg):
            raise ValueError(
                f"training batch has width {batch.shape[-1]} but the SAE reads {batch_width(self.sae.cfg)}: "
                "the store packs a different number of id columns than this SAE reads (was it built "
                "for another SAE config, e.g. another lookup_ngram?)"
            )
        self.align_replicas()  # under torchrun: rank 0's lookup, the ranks' averaged scaling factor
        if self._lookup_scale_pending and self.activation_scaler.scaling_factor is not None:
            with torch.no_grad():
                self.sae.W_lookup.mul_(self.activation_scaler.scaling_factor)
            self._lookup_scale_pending = False
        # validated where they entered (the store), so binding them costs no host sync
        ids = ids.to(self.sae.device, non_blocking=True)
        if prev is not None:
            prev = prev.to(self.sae.device, non_blocking=True)
        with self.sae.token_ids(ids, prev_token_ids=prev, validated=True):
            stage_for_step(self.sae, ids, prev)  # outside SAELens's (possibly compiled) forward
            return super().step(batch)

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        super().load_trainer_state(checkpoint_path)
        self._lookup_scale_pending = False  # the checkpointed lookup is already scaled


class TokenizedEvaluator(LLMSaeEvaluator):  # type: ignore[type-arg]
    """SAELens's evaluator with the SAE's ids taken from the model's input."""

    def __call__(self, sae: Any, data_provider: Any, activation_scaler: ActivationScaler) -> dict[str, Any]:
        # Hand SAELens the prefetcher itself so it pauses the producer thread during evals.
        inner = data_provider.source if isinstance(data_provider, TokenIdsSideChannel) else data_provider
        with token_ids_from(self.model, sae):
            return super().__call__(sae, inner, activation_scaler)

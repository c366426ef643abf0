"""SAELens's trainer under ``torchrun``: one SAE replica per rank, kept identical.

``DataParallelSAETrainer`` is SAELens's ``SAETrainer`` (the tokenized trainer builds on
it, and plain SAELens SAEs train with it directly). In a single process it *is*
SAELens's trainer. Under ``torchrun`` (a process group of more than one rank) each step

1. runs SAELens's own step on this rank's part of the global batch;
2. averages the gradients across ranks before SAELens clips them
   (``parallel.GradientSync``: one flat all-reduce, plus the exact union of a sparse
   lookup's rows), so every rank's Adam applies the same update;
3. counts the global batch in ``n_training_samples`` (so checkpoints, schedules and the
   run's length mean what they mean in one process), and combines the dead-latent and
   firing statistics across ranks (the TopK auxiliary loss reads them).

At its first step it broadcasts rank 0's parameters (as DDP does at construction) and
averages the activation-norm scaling factor the ranks estimated on their own data.
Checkpoints and the final SAE are written by rank 0 alone; every rank saves its own
activation store position, so a resume on the same world size continues each rank's data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_tokenized import parallel
from sae_lens_tokenized.parallel import DataParallelError, GradientSync


class DataParallelSAETrainer(SAETrainer):  # type: ignore[type-arg]
    """SAELens's ``SAETrainer``; data-parallel when run under ``torchrun``."""

    def __init__(self, cfg: Any, sae: Any, data_provider: Any, **kwargs: Any):
        super().__init__(cfg=cfg, sae=sae, data_provider=data_provider, **kwargs)
        self.data_parallel = parallel.current()
        self._grad_sync = GradientSync(self.data_parallel, sae) if self.data_parallel else None
        self._replicas_aligned = False

    def step(self, batch: torch.Tensor):  # type: ignore[override]
        dp = self.data_parallel
        if dp is None:
            return super().step(batch)
        assert self._grad_sync is not None
        self.align_replicas()
        self._grad_sync.arm()
        synced = self._grad_sync.steps_synced
        freq_before = self.act_freq_scores.clone()
        since_before = self.n_forward_passes_since_fired.clone()
        out = super().step(batch)
        if self._grad_sync.steps_synced != synced + 1:
            raise DataParallelError(
                f"rank {dp.rank}: the step's backward reached no trainable parameter, so the ranks' "
                "gradients were not averaged"
            )
        self.n_training_samples += batch.shape[0] * (dp.world - 1)  # the other ranks' parts
        # Firing statistics of the global batch: counts add up, a latent fired if it fired anywhere.
        fired_here = (self.n_forward_passes_since_fired == 0).float()
        both = dp.all_reduce_(torch.cat([self.act_freq_scores - freq_before, fired_here]),
                              what="combining the latents' firing statistics")
        d = len(fired_here)
        self.act_freq_scores = freq_before + both[:d]
        self.n_forward_passes_since_fired = torch.where(both[d:] > 0, 0.0, since_before + 1)
        return out

    @torch.no_grad()
    def align_replicas(self) -> None:
        """Once, before the first step (and after a resume): every rank takes rank 0's
        parameters and buffers, and the ranks' norm scaling factors are averaged."""
        dp = self.data_parallel
        if dp is None or self._replicas_aligned:
            return
        tensors = {n: t for n, t in [*self.sae.named_parameters(), *self.sae.named_buffers()]
                   if n != "lookup_rows"}  # lookup_rows: per-step scratch, staged from W_lookup
        dp.agree("SAE parameter shapes", {n: (tuple(t.shape), str(t.dtype)) for n, t in tensors.items()})
        for name, t in tensors.items():
            # through a copy_, which bumps the tensor's version: memos keyed on it (the
            # bigram keys') are rebuilt
            t.detach().copy_(dp.broadcast_(t.detach().clone(), what=f"copying rank 0's {name}"))
        scaler = self.activation_scaler
        if scaler.scaling_factor is not None:
            factor = torch.tensor([float(scaler.scaling_factor)], dtype=torch.float64)
            scaler.scaling_factor = float(dp.all_reduce_(factor, what="averaging the norm scaling factor")) / dp.world
        self._replicas_aligned = True

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        super().load_trainer_state(checkpoint_path)
        self._replicas_aligned = False  # broadcast again (the loaded state is rank 0's)

    def save_checkpoint(self, checkpoint_name: str, base_path: Path | str | None = None,
                        wandb_aliases: list[str] | None = None) -> None:
        dp = self.data_parallel
        if dp is None or dp.is_main:
            return super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)
        # Other ranks write only their data position (the runner's save_checkpoint_fn).
        base = base_path if base_path is not None else self.cfg.checkpoint_path
        if base is not None and self.save_checkpoint_fn is not None:
            path = Path(base) / checkpoint_name
            path.mkdir(parents=True, exist_ok=True)
            self.save_checkpoint_fn(checkpoint_path=path)


def check_data_parallel_config(dp: parallel.DataParallel, cfg: Any) -> None:
    """Refuse, before any work, what data parallelism cannot do (or not exactly)."""
    where = "cfg.sae.normalize_activations"
    if getattr(cfg.sae, "normalize_activations", None) == "covariance_whitening":
        raise DataParallelError(
            f"{where}='covariance_whitening' is estimated per rank and is not combined across ranks; "
            "use 'expected_average_only_in' or 'none' under torchrun."
        )
    dp.share_of_batch(cfg.train_batch_size_tokens)
    if getattr(cfg, "compile_sae", False):
        raise DataParallelError("compile_sae is not supported under torchrun yet; set compile_sae=False.")


#: settings that may differ between ranks (each rank resolves them for itself)
_PER_RANK = ("checkpoint_path", "device", "act_store_device")


def data_parallel_setup(cfg: Any) -> parallel.DataParallel | None:
    """Under ``torchrun``, before any work: join the process group, refuse what cannot run
    data-parallel and configs that differ between ranks, and make ``cfg`` (the runner's
    copy) this rank's: its CUDA device, rank 0's checkpoint folder (SAELens appends a random
    id per process), logging and progress bars on rank 0 only. None in a single process."""
    dp = parallel.init_from_env(cfg.device)
    if dp is None:
        return None
    check_data_parallel_config(dp, cfg)
    dp.agree("configs", {k: json.dumps(v, sort_keys=True, default=str)
                         for k, v in cfg.to_dict().items() if k not in _PER_RANK})
    if torch.device(cfg.device).type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        cfg.device = f"cuda:{local}"
        if cfg.act_store_device not in (None, "with_model"):
            cfg.act_store_device = cfg.device
    cfg.checkpoint_path = dp.gather_objects(cfg.checkpoint_path, "sharing rank 0's checkpoint folder")[0]
    if not dp.is_main:
        cfg.logger.log_to_wandb = False
        _silence_progress_bars()
    return dp


def _silence_progress_bars() -> None:
    # One progress bar per run, rank 0's. tqdm reads TQDM_DISABLE only when imported, so
    # this does at run time what that variable does (a default of disable=True).
    from functools import partialmethod

    import tqdm.std

    if not getattr(tqdm.std.tqdm.__init__, "_rank_silenced", False):
        silenced = partialmethod(tqdm.std.tqdm.__init__, disable=True)
        silenced._rank_silenced = True  # type: ignore[attr-defined]
        tqdm.std.tqdm.__init__ = silenced  # type: ignore[method-assign]


def check_same_model(dp: parallel.DataParallel, model: Any) -> None:
    """Refuse ranks that loaded different models or tokenizers (before the store is built)."""
    from sae_lens_tokenized.models import vocab_size

    total = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        total += p.detach().double().sum().cpu()
    tokenizer = getattr(model, "tokenizer", None)
    vocab = tokenizer.get_vocab() if tokenizer is not None and hasattr(tokenizer, "get_vocab") else {}
    dp.agree("models", {"model": type(model).__name__, "d_vocab": vocab_size(model),
                        "parameters": sum(p.numel() for p in model.parameters()),
                        "parameter sum": round(float(total), 3),
                        "tokenizer": hashlib.sha1(json.dumps(sorted(vocab.items())).encode()).hexdigest()})

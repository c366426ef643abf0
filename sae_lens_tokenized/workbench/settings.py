"""What a workbench comparison is: its settings, and each architecture's config at them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig
from sae_lens.registry import get_sae_training_class

from sae_lens_tokenized.lookup.config import LookupTrainingConfig
from sae_lens_tokenized.saes import ARCHITECTURES, base_architecture, changed_defaults


@dataclass
class CompareSettings:
    hook_name: str = "blocks.3.hook_resid_pre"
    expansion: int = 8
    # One "sparsity level", read by each architecture through SPARSITY below.
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 2.0
    training_tokens: int = 400_000
    # lr 3e-3 / batch 1024: the best of a sweep for TopK itself on SmolLM2 L3 at 200k tokens
    # (docs "Results": the baseline gets every advantage).
    batch: int = 1024
    lr: float = 3e-3
    lookup_lr: float = 3e-2  # the config's default (sparse lookup; = dense at 1e-2)
    context_size: int = 128
    unigram_strategy: str = "data"
    lookup_init_scale: float | None = None  # the strategy's default (data 1.0, prompts 0.5)
    lookup_ngram: int = 2
    lookup_init_tokens: int = 500_000  # the config's default
    lookup_init_prior: str = LookupTrainingConfig.lookup_init_prior  # the config's default
    seed: int = 0
    n_curve_points: int = 16
    n_eval_activations: int = 20_000
    n_eval_ce_batches: int = 4
    eval_batch_prompts: int = 8
    # Train on separator positions (<|endoftext|> at the start of each row): excluding them
    # gained nothing on ordinary tokens and made them far worse reconstructed where the
    # spliced SAE still runs (docs "Results", BOS and separator positions). On SmolLM2 True
    # means the same as False here:
    # SAELens's structural ids (<|im_start|>, <|im_end|>) never occur in the text.
    exclude_special_tokens: bool | list[int] = False
    # SAELens counts a latent dead after dead_feature_window steps without firing, and only
    # then gives it AuxK gradient. Its default (1000 steps) is longer than these runs (~400
    # steps), so no latent was ever revived: 62% of both SAEs ended dead on held-out text.
    # 50 steps (~51k tokens) revives them on both sides (benchmarks/results/dead_latents.json).
    dead_feature_window: int = 50
    variants: tuple[str, ...] = ("topk", "tokenized_topk")
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # arch -> extra config kwargs


def stream_tokens(s: CompareSettings) -> int:
    """Activations a run reads: its training tokens (a tokenized run's init sample is the
    start of that stream, held and trained on)."""
    return s.training_tokens


#: how one sparsity level of CompareSettings maps to each SAELens architecture's config
SPARSITY = {
    "standard": lambda s, d_sae: {"l1_coefficient": s.l1_coefficient},
    "gated": lambda s, d_sae: {"l1_coefficient": s.l1_coefficient},
    "topk": lambda s, d_sae: {"k": s.k},
    "abstopk": lambda s, d_sae: {"k": s.k},
    "jumprelu": lambda s, d_sae: {"l0_coefficient": s.l0_coefficient},
    "batchtopk": lambda s, d_sae: {"k": s.k},
    "matryoshka_batchtopk": lambda s, d_sae: {"k": s.k, "matryoshka_widths": [d_sae // 8, d_sae // 2, d_sae]},
    "matching_pursuit": lambda s, d_sae: {"max_iterations": s.k},
}


def is_tokenized(arch: str) -> bool:
    return arch in ARCHITECTURES


def sae_config(arch: str, s: CompareSettings, d_in: int, d_vocab: int, overrides: dict[str, Any] | None = None) -> Any:
    """The training config of ``arch`` at these settings (tokenized: plus the lookup's),
    with ``overrides`` (config fields, e.g. ``{"lookup_ngram": 2}``) applied last."""
    base = base_architecture(arch)
    if base not in SPARSITY:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(SPARSITY)} or "
                         f"their tokenized versions {ARCHITECTURES}")
    d_sae = s.expansion * d_in
    kw: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, **SPARSITY[base](s, d_sae)}
    if not is_tokenized(arch) and "tokenized_" + arch in ARCHITECTURES:
        # the base trains at the defaults its tokenized version changes (BatchTopK's AuxK
        # coefficient), so that the two differ by the lookup alone; a value set in
        # ``s.extra`` (next) is the user's and wins
        kw.update(changed_defaults("tokenized_" + arch))
    kw.update(s.extra.get(arch, {}))
    if is_tokenized(arch):
        kw.update(d_vocab=d_vocab, lookup_lr=s.lookup_lr, unigram_strategy=s.unigram_strategy,
                  lookup_init_scale=s.lookup_init_scale, lookup_ngram=s.lookup_ngram,
                  lookup_init_tokens=s.lookup_init_tokens, lookup_init_prior=s.lookup_init_prior)
    kw.update(overrides or {})
    return get_sae_training_class(arch)[1](**kw)


def runner_config(s: CompareSettings, sae_cfg: Any, model_name: str, output_path: str | None,
                  dataset_path: str = "in-memory") -> LanguageModelSAERunnerConfig[Any]:
    return LanguageModelSAERunnerConfig(sae=sae_cfg, hook_name=s.hook_name, is_dataset_tokenized=True,
                                        **run_fields(s, model_name, output_path, dataset_path))


def multi_runner_config(s: CompareSettings, saes: dict[str, Any], hook_names: dict[str, str], model_name: str,
                        output_path: str | None, dataset_path: str = "in-memory") -> MultiSAETrainingRunnerConfig:
    """SAELens's multi-SAE config for ``saes`` (name -> training config) at ``hook_names``,
    with every run setting as ``runner_config`` gives one SAE (``s.hook_name`` unused)."""
    return MultiSAETrainingRunnerConfig(saes=saes, hook_names=hook_names,
                                        **run_fields(s, model_name, output_path, dataset_path))


def run_fields(s: CompareSettings, model_name: str, output_path: str | None, dataset_path: str) -> dict[str, Any]:
    """The run settings SAELens's single- and multi-SAE runner configs share."""
    return dict(
        model_name=model_name,
        dataset_path=dataset_path,  # the text's name; the runner is always given the dataset itself
        context_size=s.context_size,
        prepend_bos=False,
        training_tokens=s.training_tokens,
        train_batch_size_tokens=s.batch,
        n_batches_in_buffer=max(8, math.ceil(4 * s.batch / s.context_size)),  # buffer = 4 batches
        store_batch_size_prompts=8,
        lr=s.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        device="cpu",
        seed=s.seed,
        exclude_special_tokens=s.exclude_special_tokens,
        dead_feature_window=s.dead_feature_window,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        n_checkpoints=0,
        output_path=output_path,
        eval_batch_size_prompts=s.eval_batch_prompts,
        n_eval_batches=s.n_eval_ce_batches,
        prefetch_llm_batches=False,
    )



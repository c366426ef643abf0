"""Tokenized TopK vs SAELens TopK, identical settings, one process (the demo and benchmarks).

Both SAEs are trained by their real runners (``TokenizedSAETrainingRunner`` and SAELens's
``LanguageModelSAETrainingRunner``) with the same hook, width, k, lr, seed and the same
activations in the same order. To pay the LLM forward pass once, the activations are
computed once and served to both runners by store subclasses whose
``get_raw_llm_batch`` reads from memory; everything downstream (SAELens's mixing
buffer, special-token filter, trainer) is SAELens's. NMSE on held-out activations is
recorded along training through SAELens's checkpoint hook (``n_checkpoints``), and the
final SAEs are evaluated with SAELens's ``run_evals`` on held-out text, plus the
method's NMSE and dead-latent count.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import (
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    TopKTrainingSAEConfig,
    run_evals,
)
from sae_lens.evals import EvalConfig
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore
from tqdm.auto import tqdm

from sae_lens_tokenized.saes.tokenized_topk_sae import TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized.splicing import token_ids_from
from sae_lens_tokenized.training.activations_store import TokenizedActivationsStore
from sae_lens_tokenized.training.runner import TokenizedSAETrainingRunner
from sae_lens_tokenized.unigrams import activations_at_hook


@dataclass
class CompareSettings:
    hook_name: str = "blocks.3.hook_resid_pre"
    expansion: int = 8
    k: int = 32
    training_tokens: int = 400_000
    # lr 3e-3 / batch 1024 chosen by a sweep on SmolLM2 L3 at 200k tokens (both variants):
    # lr 3e-4 / batch 4096 left TopK at NMSE 0.42 (97 steps); 1e-3/1024 -> 0.124; 3e-3/1024 -> 0.104.
    batch: int = 1024
    lr: float = 3e-3
    lookup_lr: float = 1e-2
    context_size: int = 128
    unigram_strategy: str = "auto"
    lookup_init_scale: float = 0.5
    seed: int = 0
    n_curve_points: int = 16
    n_eval_activations: int = 20_000
    n_eval_ce_batches: int = 4
    eval_batch_prompts: int = 8
    # Train on separator positions (<|endoftext|> at the start of each row): excluding them
    # left ordinary-token NMSE unchanged (TopK 0.1134 -> 0.1131, tokenized 0.0649 -> 0.0649)
    # but made them 8-11x worse reconstructed where the spliced SAE still runs
    # (benchmarks/results/bos_positions.json). On SmolLM2 True means the same as False here:
    # SAELens's structural ids (<|im_start|>, <|im_end|>) never occur in the text.
    exclude_special_tokens: bool | list[int] = False
    dead_feature_window: int = 1000
    variants: tuple[str, ...] = ("topk", "tokenized")
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- precomputed activations --
@torch.no_grad()
def precompute(model: Any, dataset: Any, hook_name: str, n_tokens: int, batch_prompts: int = 16, desc: str = "LLM activations") -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [N, d_in] and ids [N] of the first rows of a pretokenized dataset."""
    ctx = len(dataset[0]["tokens"])
    n_rows = min(len(dataset), math.ceil(n_tokens / ctx))
    acts, ids = [], []
    for start in tqdm(range(0, n_rows, batch_prompts), desc=desc):
        tokens = dataset[start : min(start + batch_prompts, n_rows)]["tokens"]
        a = activations_at_hook(model, tokens, hook_name).float()
        acts.append(a.reshape(-1, a.shape[-1]))
        ids.append(tokens.reshape(-1))
    return torch.cat(acts), torch.cat(ids)


class _Precomputed:
    """Mixin: serve get_raw_llm_batch from precomputed tensors (cycling), same shapes as SAELens."""

    _pre: tuple[torch.Tensor, torch.Tensor]
    _pre_pos: int

    def attach(self, acts: torch.Tensor, ids: torch.Tensor) -> None:
        self._pre, self._pre_pos = (acts, ids), 0

    def get_raw_llm_batch(self, raise_on_epoch_end: bool = False):  # type: ignore[override]
        acts, ids = self._pre
        n = self.store_batch_size_prompts * self.training_context_size  # type: ignore[attr-defined]
        if self._pre_pos + n > len(ids):
            self._pre_pos = 0
            if raise_on_epoch_end:
                raise StopIteration
        sl = slice(self._pre_pos, self._pre_pos + n)
        self._pre_pos += n
        return acts[sl], ids[sl]


class PrecomputedStore(_Precomputed, ActivationsStore):
    pass


class PrecomputedTokenizedStore(_Precomputed, TokenizedActivationsStore):
    pass


# ---------------------------------------------------------------- curve recording ----------
class _CurveMixin:
    """SAELens's trainer calls save_checkpoint_fn(None) at each of n_checkpoints thresholds
    when no checkpoint_path is set; we evaluate held-out NMSE there instead of saving."""

    curve: list[tuple[int, float]]
    _eval: tuple[torch.Tensor, torch.Tensor]
    _tokenized: bool
    _thresholds: list[int]

    def save_checkpoint(self, checkpoint_path: Any) -> None:  # type: ignore[override]
        if checkpoint_path is not None:
            super().save_checkpoint(checkpoint_path)  # type: ignore[misc]
            return
        tokens_seen = self._thresholds[len(self.curve)] if len(self.curve) < len(self._thresholds) else -1
        self.curve.append((tokens_seen, heldout_nmse(self.sae, *self._eval, self._tokenized)))  # type: ignore[attr-defined]


class CurveTopKRunner(_CurveMixin, LanguageModelSAETrainingRunner):
    pass


class CurveTokenizedRunner(_CurveMixin, TokenizedSAETrainingRunner):
    store_class = PrecomputedTokenizedStore


@torch.no_grad()
def heldout_nmse(sae: Any, acts: torch.Tensor, ids: torch.Tensor, tokenized: bool, chunk: int = 4096) -> float:
    """The method's NMSE: mean over activations of |x_hat - x|^2 / |x|^2."""
    was_training = sae.training
    sae.eval()
    total = 0.0
    for i in range(0, len(ids), chunk):
        x = acts[i : i + chunk].to(sae.device)
        x_hat = sae(x, token_ids=ids[i : i + chunk].to(sae.device)) if tokenized else sae(x)
        total += float(((x_hat - x).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(1e-12)).sum())
    sae.train(was_training)
    return total / len(ids)


@torch.no_grad()
def dead_latents(sae: Any, acts: torch.Tensor, chunk: int = 4096) -> int:
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for i in range(0, len(acts), chunk):
        fired |= (sae.encode(acts[i : i + chunk].to(sae.device)) > 0).any(0).cpu()
    return int((~fired).sum())


def _thresholds(total: int, n: int, batch: int) -> list[int]:
    # Mirrors SAETrainer.checkpoint_thresholds + _checkpoint_if_needed (sae-lens 6.54.12):
    # the i-th call happens at the first step whose sample count exceeds threshold i.
    step = math.ceil(total / (n + 1))
    return [(t // batch + 1) * batch for t in range(0, total, step)[1:]]


def _runner_cfg(s: CompareSettings, sae_cfg: Any, model_name: str, output_path: str | None) -> LanguageModelSAERunnerConfig[Any]:
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name=model_name,
        hook_name=s.hook_name,
        dataset_path="precomputed",
        is_dataset_tokenized=True,
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
        n_checkpoints=s.n_curve_points,
        output_path=output_path,
        eval_batch_size_prompts=s.eval_batch_prompts,
        n_eval_batches=s.n_eval_ce_batches,
        prefetch_llm_batches=False,
    )


def train_variant(
    variant: str,
    s: CompareSettings,
    model: Any,
    train_ds: Any,
    pre: tuple[torch.Tensor, torch.Tensor],
    eval_acts: tuple[torch.Tensor, torch.Tensor],
    output_path: str | None,
) -> dict[str, Any]:
    d_in = model.cfg.d_model
    base = dict(d_in=d_in, d_sae=s.expansion * d_in, k=s.k)
    torch.manual_seed(s.seed)
    t0 = time.perf_counter()
    if variant == "topk":
        cfg = _runner_cfg(s, TopKTrainingSAEConfig(**base), model.cfg.model_name, output_path)
        runner: Any = CurveTopKRunner(cfg, override_model=model, override_dataset=train_ds)
        store = PrecomputedStore.from_config(model, cfg, override_dataset=train_ds)
        store.attach(*pre)
        runner.activations_store = store
        tokenized = False
    else:
        sae_cfg = TokenizedTopKTrainingSAEConfig(
            **base, d_vocab=model.cfg.d_vocab, lookup_lr=s.lookup_lr,
            unigram_strategy=s.unigram_strategy, lookup_init_scale=s.lookup_init_scale,
            **s.extra.get("tokenized", {}),
        )
        cfg = _runner_cfg(s, sae_cfg, model.cfg.model_name, output_path)
        runner = CurveTokenizedRunner(cfg, override_model=model, override_dataset=train_ds)
        runner.activations_store.attach(*pre)
        tokenized = True
    setup_s = time.perf_counter() - t0
    runner.curve, runner._eval, runner._tokenized = [], eval_acts, tokenized
    runner._thresholds = _thresholds(s.training_tokens, s.n_curve_points, s.batch)
    torch.manual_seed(s.seed)
    t1 = time.perf_counter()
    initial = heldout_nmse(runner.sae, *eval_acts, tokenized)
    sae = runner.run()
    train_s = time.perf_counter() - t1
    final = heldout_nmse(sae, *eval_acts, tokenized)
    curve = [(0, initial), *[(t, v) for t, v in runner.curve if t > 0], (s.training_tokens, final)]
    return {
        "variant": variant, "sae": sae, "runner": runner, "curve": curve, "nmse": final,
        "setup_s": setup_s, "train_s": train_s,
        "unigram_strategy": getattr(sae.cfg, "unigram_strategy", None),
        "unigram_report": getattr(runner, "unigram_report", None),
    }


def evaluate(sae: Any, model: Any, heldout_ds: Any, s: CompareSettings, tokenized: bool, eval_acts: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """SAELens's run_evals on held-out text (ids from the model's input) + NMSE + dead."""
    cfg = _runner_cfg(s, TopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=8, k=1), model.cfg.model_name, None)
    store = ActivationsStore.from_config(model, cfg, override_dataset=heldout_ds)
    sae.cfg.metadata.hook_name = s.hook_name
    eval_cfg = EvalConfig(
        batch_size_prompts=s.eval_batch_prompts,
        n_eval_reconstruction_batches=s.n_eval_ce_batches,
        n_eval_sparsity_variance_batches=s.n_eval_ce_batches,
        compute_ce_loss=True, compute_kl=True, compute_l2_norms=False,
        compute_sparsity_metrics=True, compute_variance_metrics=True,
    )
    ctx = token_ids_from(model, sae) if tokenized else _null()
    with ctx:
        metrics, _ = run_evals(sae, store, model, ActivationScaler(), eval_cfg,
                               exclude_special_tokens=s.exclude_special_tokens)
    perf = metrics["model_performance_preservation"]
    clean, with_sae = perf["ce_loss_without_sae"], perf["ce_loss_with_sae"]
    return {
        "nmse": heldout_nmse(sae, *eval_acts, tokenized),
        "explained_variance": metrics["reconstruction_quality"]["explained_variance"],
        "ce_loss_score": perf["ce_loss_score"],
        "ce_clean": clean,
        "ce_with_sae": with_sae,
        "ce_added": (with_sae - clean) / clean,
        "kl_div_with_sae": metrics["model_behavior_preservation"]["kl_div_with_sae"],
        "l0": metrics["sparsity"]["l0"],
        "dead_latents": dead_latents(sae, eval_acts[0]),
    }


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """First training-token count at which the curve reaches ``target`` (linear interp.)."""
    for (t0, v0), (t1, v1) in zip(curve, curve[1:]):
        if v0 <= target:
            return t0
        if v1 <= target:
            return int(t0 + (t1 - t0) * (v0 - target) / max(v0 - v1, 1e-12))
    return None


def plot_curves(results: dict[str, dict[str, Any]], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set(xlabel="training tokens", ylabel="held-out NMSE", yscale="log", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(obj: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=str))

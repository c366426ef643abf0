"""Train any architecture on a workbench's data and evaluate it the same way.

``train_variant(arch, settings, bench, data)`` trains any SAELens architecture
(``"topk"``, ``"jumprelu"``, ...) through SAELens's ``LanguageModelSAETrainingRunner`` or
any tokenized one (``"tokenized_topk"``, ...) through ``TokenizedSAETrainingRunner``, at
the same hook, width, sparsity, lr, seed and on the same activations in the same order.
Held-out NMSE is recorded along training (at the trainer's ``step``), and ``evaluate``
runs SAELens's ``run_evals`` on held-out text plus the method's NMSE and dead latents.

``train_together(members, bench, eval_data)`` trains several of them (any mix of
architectures, tokenized or not, at one hook or several) through
``TokenizedMultiSAETrainingRunner``: one LLM forward per batch, read live from the
workbench's training text, every SAE on the same batches in the same order.
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
from sae_lens_tokenized.training.multi_runner import TokenizedMultiSAETrainer, TokenizedMultiSAETrainingRunner
from sae_lens_tokenized.training.runner import TokenizedSAETrainingRunner
from sae_lens_tokenized.training.trainer import TokenizedSAETrainer
from sae_lens_tokenized.workbench.data import HookData, Workbench, store_classes
from sae_lens_tokenized.workbench.settings import (CompareSettings, is_tokenized, multi_runner_config, run_fields,
                                                  runner_config, sae_config)


def _record_due_points(trainer: Any, curve: list[tuple[int, float]], eval_data: tuple[torch.Tensor, ...],
                       thresholds: list[int]) -> None:
    while thresholds and trainer.n_training_samples >= thresholds[0]:
        thresholds.pop(0)
        curve.append((trainer.n_training_samples, heldout_nmse(trainer.sae, *eval_data)))


def _recording_step(trainer: Any, curve: list[tuple[int, float]], eval_data: tuple[torch.Tensor, ...],
                    thresholds: list[int]) -> Any:
    """The trainer's own (bound) ``step``, which SAELens's ``fit`` (and the multi trainer's)
    calls once per batch, preceded by held-out NMSE at each due point: before training on a
    batch, the SAE has trained on ``n_training_samples`` activations. The one way a curve is
    recorded, for one runner per SAE and for the multi-SAE runner alike."""
    step = trainer.step

    def recording_step(batch: torch.Tensor) -> Any:
        _record_due_points(trainer, curve, eval_data, thresholds)
        return step(batch)

    return recording_step


def _recording_trainer(trainer_cls: type, curve: list[tuple[int, float]], eval_data: tuple[torch.Tensor, ...],
                       thresholds: list[int]) -> type:
    """``trainer_cls`` (SAELens's or the tokenized trainer), recording a held-out NMSE curve."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        trainer_cls.__init__(self, *args, **kwargs)
        self.step = _recording_step(self, curve, eval_data, thresholds)

    return type(trainer_cls.__name__, (trainer_cls,), {"__init__": __init__})


def _thresholds(s: CompareSettings) -> list[int]:
    """Sample counts at which a curve is recorded: ``n_curve_points`` evenly spaced inside the run."""
    return [round(s.training_tokens * (i + 1) / (s.n_curve_points + 1)) for i in range(s.n_curve_points)]


def _whole_curve(initial: float, points: list[tuple[int, float]], final: float, total: int) -> list[tuple[int, float]]:
    """The recorded points between the SAE before its first step and after its last."""
    return [(0, initial), *[(t, v) for t, v in points if 0 < t < total], (total, final)]


class _CurveMultiTrainer(TokenizedMultiSAETrainer):
    """The multi-SAE trainer with a held-out NMSE curve per SAE: each SAE's trainer (SAELens's
    or the tokenized one the multi trainer built) records at its own ``step``."""

    curves: dict[str, list[tuple[int, float]]]
    eval_data: dict[str, tuple[torch.Tensor, ...]]
    thresholds: list[int]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for name, trainer in self.trainers.items():
            trainer.step = _recording_step(trainer, self.curves[name], self.eval_data[name], list(self.thresholds))


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


class EmbeddedTokens:
    """How many tokens a model embedded while this counter was open (``total``).

    Counted at the model's embedding (a forward pre-hook on ``model.embed``), so every
    forward counts, whoever runs it: the runner's store, a config probe, a lookup init's
    measuring pass. That is the figure a sweep's cost is in: one LLM forward per batch."""

    def __init__(self) -> None:
        self.total = 0

    def _count(self, module: Any, args: tuple) -> None:
        self.total += args[0].numel()


@contextlib.contextmanager
def count_embedded_tokens(model: Any) -> Iterator[EmbeddedTokens]:
    """Count the tokens ``model`` (a TransformerLens model) embeds inside the block."""
    counter = EmbeddedTokens()
    handle = model.embed.register_forward_pre_hook(counter._count)
    try:
        yield counter
    finally:
        handle.remove()


def train_variant(arch: str, s: CompareSettings, bench: Workbench, data: HookData,
                  output_path: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``arch`` (any SAELens or tokenized architecture name) on ``data`` at ``s``
    (``overrides``: SAE config fields for this variant only)."""
    model = bench.model
    sae_cfg = sae_config(arch, s, model.cfg.d_model, model.cfg.d_vocab, overrides)
    cfg = runner_config(s, sae_cfg, model.cfg.model_name, output_path, bench.dataset_name)
    store, tokenized_store = store_classes(data.train)
    curve: list[tuple[int, float]] = []
    thresholds = _thresholds(s)
    torch.manual_seed(s.seed)
    t0 = time.perf_counter()
    with quiet_workbench_notices():
        if is_tokenized(arch):
            trainer = _recording_trainer(TokenizedSAETrainer, curve, data.eval, thresholds)
            runner: Any = type("Runner", (TokenizedSAETrainingRunner,),
                               {"store_class": tokenized_store, "trainer_class": trainer})(
                cfg, override_model=model, override_dataset=bench.train_ds)
        else:
            trainer = _recording_trainer(SAETrainer, curve, data.eval, thresholds)
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
    curve = _whole_curve(initial, curve, final, s.training_tokens)
    init = (getattr(runner, "unigram_report", None) or {}).get("lookup_init") or {}
    return {
        "variant": arch, "sae": sae, "runner": runner, "curve": curve, "nmse": final,
        "setup_s": setup_s, "train_s": train_s,
        "init_sample_tokens": init.get("tokens_drawn_from_training_stream", 0),
        "unigram_strategy": getattr(sae.cfg, "unigram_strategy", None),
        "unigram_report": getattr(runner, "unigram_report", None),
    }


def train_together(members: dict[str, tuple[str, CompareSettings]], bench: Workbench,
                   eval_data: dict[str, tuple[torch.Tensor, ...]], overrides: dict[str, dict[str, Any]] | None = None
                   ) -> dict[str, Any]:
    """Train every member (name -> (architecture, settings)) in one
    ``TokenizedMultiSAETrainingRunner`` run, reading the LLM live on ``bench.train_ds``.

    Members differ in architecture, hook and sparsity; their run settings (tokens, batch,
    lr, seed, ...) must be one run's. ``eval_data`` maps each hook to its held-out
    ``(acts, ids, prev)`` (``Workbench.heldout``); ``overrides`` (name -> config fields)
    apply to one member. Returns each member's SAE (``saes``) and held-out NMSE curve
    (``curves``), the tokenized members' lookup-init reports, the run's ``wall_s``, and its
    counts: ``tokens_embedded`` by the model (one forward per batch for every member, plus a
    2-token config probe per tokenized member, and with ``unigram_strategy="auto"`` the
    forwards that measure its candidates) and ``activations_read`` by the store.
    """
    model = bench.model
    first = next(iter(members.values()))[1]
    fields = run_fields(first, model.cfg.model_name, None, bench.dataset_name)
    for name, (_, s) in members.items():
        if run_fields(s, model.cfg.model_name, None, bench.dataset_name) != fields:
            raise ValueError(f"member {name!r} has other run settings than {next(iter(members))!r}; members of one "
                             "run differ only in architecture, hook and sparsity: train the others in another run")
    saes = {name: sae_config(arch, s, model.cfg.d_model, model.cfg.d_vocab, (overrides or {}).get(name))
            for name, (arch, s) in members.items()}
    hooks = {name: s.hook_name for name, (_, s) in members.items()}
    cfg = multi_runner_config(first, saes, hooks, model.cfg.model_name, None, bench.dataset_name)
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in members}
    per_sae_eval = {name: eval_data[hooks[name]] for name in members}
    thresholds = _thresholds(first)
    trainer = type("CurveMultiTrainer", (_CurveMultiTrainer,),
                   {"curves": curves, "eval_data": per_sae_eval, "thresholds": thresholds})
    with count_embedded_tokens(model) as embedded, quiet_workbench_notices():
        torch.manual_seed(first.seed)
        t0 = time.perf_counter()
        runner = type("Runner", (TokenizedMultiSAETrainingRunner,), {"trainer_class": trainer})(
            cfg, override_model=model, override_dataset=bench.train_ds)
        initial = {name: heldout_nmse(sae, *per_sae_eval[name]) for name, sae in runner.saes.items()}
        trained = runner.run()
        wall_s = time.perf_counter() - t0
    out: dict[str, Any] = {"saes": trained, "curves": {}, "unigram_reports": runner.unigram_reports,
                           "wall_s": wall_s, "tokens_embedded": embedded.total,
                           "activations_read": runner.activations_store.llm_activations_read}
    for name, sae in trained.items():
        final = heldout_nmse(sae, *per_sae_eval[name])
        out["curves"][name] = _whole_curve(initial[name], curves[name], final, first.training_tokens)
    return out


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



"""Training transcoders through SAELens's store and trainer: the target rides with the input.

A transcoder learns (input at ``hook_name``, output at ``cfg.sae.hook_name_out``) pairs.
``TargetColumns`` makes SAELens's ``ActivationsStore`` capture the output hook in the same
forward it runs for the input, and appends the output's ``d_out`` columns to each row
(``get_raw_llm_batch``) before anything else sees the row: the special-token filter, the
token-id columns (``activations_store.py``), SAELens's mixing buffer and prefetch thread
then move input, target and id together, as they move an activation and its id. A row is
``[input | target]`` (a tokenized transcoder's: ``[input | target | (prev) | id]``).

``TranscoderSteps`` (the plugin's trainer, under the tokenized one) splits each batch:
SAELens's step runs on the input, and the target is bound to the transcoder for that step
(``TranscoderTrainingMixin.transcoder_target``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from sae_lens.llm_sae_training_runner import LLMSaeEvaluator

from sae_lens_tokenized.models import device_of, resolve_hook
from sae_lens_tokenized.saes.transcoders import TranscoderTrainingMixin, is_transcoder_config
from sae_lens_tokenized.training.data_parallel import DataParallelSAETrainer


class TargetColumns:
    """An ActivationsStore whose rows also carry the activation at ``hook_name_out``
    (inert unless the runner config's ``sae`` is a transcoder config)."""

    #: the output hook (None: not a transcoder's store) and its width
    hook_name_out: str | None = None
    d_out: int = 0
    _outputs: list[torch.Tensor] | None = None

    @classmethod
    def from_config(cls, model: Any, cfg: Any, override_dataset: Any = None) -> Any:
        store = super().from_config(model, cfg, override_dataset)  # type: ignore[misc]
        if is_transcoder_config(getattr(cfg, "sae", None)):
            if store.cached_activation_dataset is not None:
                raise ValueError(
                    "transcoders cannot train from cached activations yet: SAELens's cache holds one hook, "
                    "and a transcoder needs its input and output hooks. Set use_cached_activations=False.")
            store.hook_name_out, store.d_out = cfg.sae.hook_name_out, cfg.sae.d_out
        return store

    def get_activations(self, batch_tokens: torch.Tensor) -> torch.Tensor:
        if self.hook_name_out is None:
            return super().get_activations(batch_tokens)  # type: ignore[misc]
        # SAELens's own forward for the input, asked for the output hook as well
        # (_compat.py entry 10): a HookedProxyLM stops once every requested hook has run.
        model, out_name, caught = self.model, self.hook_name_out, []  # type: ignore[attr-defined]
        run = model.run_with_cache

        def run_with_output(*args: Any, names_filter: list[str], **kwargs: Any) -> Any:
            result = run(*args, names_filter=[*names_filter, out_name], **kwargs)
            caught.append(result[1][out_name])
            return result

        model.run_with_cache = run_with_output
        try:
            acts = super().get_activations(batch_tokens)  # type: ignore[misc]
        finally:
            del model.run_with_cache
        if len(caught) != 1:
            raise RuntimeError(f"SAELens's store ran {len(caught)} forwards for one batch (expected one); "
                               "see sae_lens_tokenized/_compat.py entry 10")
        out = caught[0][:, slice(*self.seqpos_slice)]  # type: ignore[attr-defined]
        out = out.flatten(2) if out.ndim > 3 else out  # heads concatenated, as SAELens does for the input
        self._outputs = [out.reshape(-1, out.shape[-1])]
        return acts

    def get_raw_llm_batch(self, raise_on_epoch_end: bool = False) -> tuple[torch.Tensor, Any]:
        acts, ids = super().get_raw_llm_batch(raise_on_epoch_end=raise_on_epoch_end)  # type: ignore[misc]
        if self.hook_name_out is None:
            return acts, ids
        assert self._outputs is not None, "get_raw_llm_batch ran no forward (cached activations?)"
        out = self._outputs.pop()
        return torch.cat([acts, out.to(acts.device, acts.dtype)], dim=1), ids


class TranscoderSteps(DataParallelSAETrainer):
    """SAELens's trainer (data-parallel under torchrun); for a transcoder, each step's
    batch ``[input | target]`` is split and the target bound to the transcoder."""

    def step(self, batch: torch.Tensor):  # type: ignore[override]
        if not isinstance(self.sae, TranscoderTrainingMixin):
            return super().step(batch)
        d_in, d_out = self.sae.cfg.d_in, self.sae.cfg.d_out
        if batch.shape[-1] != d_in + d_out:
            raise ValueError(f"training batch has width {batch.shape[-1]} but the transcoder reads "
                             f"d_in + d_out = {d_in} + {d_out}: was the store built for another config?")
        with self.sae.transcoder_target(batch[:, d_in:]):
            return super().step(batch[:, :d_in])


class TranscoderEvaluator(LLMSaeEvaluator):  # type: ignore[type-arg]
    """No evals for a transcoder during training. SAELens's ``run_evals`` measures an SAE at
    one hook: it would compare a transcoder's output with its input, and splice it at the
    input hook. The trainer's own metrics (MSE and explained variance, against the target)
    are still logged."""

    def __call__(self, sae: Any, data_provider: Any, activation_scaler: Any) -> dict[str, Any]:
        return {}


def batch_width(sae_cfg: Any) -> int:
    """Width of the store's activation columns for this SAE: ``d_in`` (+ ``d_out``)."""
    return sae_cfg.d_in + (sae_cfg.d_out if is_transcoder_config(sae_cfg) else 0)


def check_transcoder_against_model(model: Any, cfg: Any) -> None:
    """Before any work: the output hook exists, fires after the input hook in the forward
    the store runs (which stops at the input hook's block), and has width ``d_out``."""
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    sae = cfg.sae
    out, inp = sae.hook_name_out, cfg.hook_name
    resolve_hook(model, out)
    stop_in, stop_out = (extract_stop_at_layer_from_tlens_hook_name(h) for h in (inp, out))
    if stop_in is not None and (stop_out is None or stop_out > stop_in):
        raise ValueError(
            f"the output hook {out!r} is past the input hook {inp!r}'s block, where SAELens's store stops "
            "the forward: a transcoder maps one block's MLP input to its output (e.g. hook_name="
            "'blocks.L.ln2.hook_normalized', hook_name_out='blocks.L.hook_mlp_out').")
    order: list[str] = []
    widths: dict[str, int] = {}

    def seen(name: str, act: torch.Tensor, hook: Any) -> None:
        order.append(name)
        widths[name] = act.flatten(2).shape[-1] if act.ndim > 3 else act.shape[-1]

    probe = torch.zeros((1, 2), dtype=torch.long, device=device_of(model))
    with torch.no_grad():
        model.run_with_hooks(probe, fwd_hooks=[(h, functools.partial(seen, h)) for h in (inp, out)])
    if out in order and inp in order and order.index(out) < order.index(inp):
        raise ValueError(f"the output hook {out!r} runs before the input hook {inp!r} (cfg.hook_name): "
                         "swap them, or choose an output after the input.")
    for name, want, field in ((inp, sae.d_in, "d_in"), (out, sae.d_out, "d_out")):
        if widths.get(name) != want:
            raise ValueError(f"cfg.sae.{field}={want} but activations at {name!r} have width {widths.get(name)}; "
                             f"set {field}={widths.get(name)}.")

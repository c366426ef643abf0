"""What the package needs from a model, for every kind of model SAELens trains on.

SAELens hands the runner a ``HookedRootModule``: a TransformerLens ``HookedTransformer``
(or ``HookedSAETransformer``), or, with ``model_class_name="AutoModelForCausalLM"``, a
``HookedProxyLM`` wrapping a Hugging Face model (hook names are module paths such as
``model.layers.8``). TransformerLens 3's ``TransformerBridge`` (and SAELens's
``SAETransformerBridge``) is a third kind. They differ in where the vocabulary size, the
device and the token embedding live; these functions hide that, and fail with a message
naming the model when something is missing.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def _hf_model(model: Any) -> Any | None:
    """The Hugging Face model inside a HookedProxyLM (or the model itself), else None."""
    for candidate in (getattr(model, "model", None), model):
        if callable(getattr(candidate, "get_input_embeddings", None)) and hasattr(candidate, "config"):
            return candidate
    return None


def embedding_module(model: Any) -> nn.Module:
    """The module that turns token ids into embeddings (its first input is the ids)."""
    embed = getattr(model, "embed", None)  # HookedTransformer / HookedSAETransformer / TransformerBridge
    if isinstance(embed, nn.Module):
        return embed
    hf = _hf_model(model)
    if hf is not None and isinstance(hf.get_input_embeddings(), nn.Module):
        return hf.get_input_embeddings()
    raise TypeError(
        f"cannot find the token embedding of {type(model).__name__} (no .embed and no "
        "get_input_embeddings()), so token ids cannot be taken from its input; pass "
        "token_ids=... to the SAE explicitly."
    )


def vocab_size(model: Any) -> int:
    """Rows of the model's token embedding: the lookup needs one per id the model accepts."""
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "d_vocab", None) is not None and int(cfg.d_vocab) > 0:
        return int(cfg.d_vocab)
    try:
        embed = embedding_module(model)
    except TypeError:
        embed = None
    weight = getattr(embed, "weight", None) if embed is not None else None
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return int(weight.shape[0])
    raise TypeError(
        f"cannot tell the vocabulary size of {type(model).__name__}: it has no cfg.d_vocab and no "
        "input embedding with a [d_vocab, d_model] weight. Set d_vocab=... in the SAE config."
    )


def device_of(model: Any) -> torch.device:
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "device", None) is not None:
        return torch.device(cfg.device)
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_label(model: Any) -> str:
    cfg = getattr(model, "cfg", None)
    name = getattr(cfg, "model_name", None)
    if not name:
        hf = _hf_model(model)
        name = getattr(getattr(hf, "config", None), "_name_or_path", None) if hf is not None else None
    return str(name or type(model).__name__)


def resolve_hook(model: Any, hook_name: str) -> None:
    """Raise a clear error if ``model`` has no hook point ``hook_name``."""
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None:
        raise TypeError(
            f"{type(model).__name__} has no hook points (hook_dict); load it as SAELens does "
            "(HookedTransformer, or model_class_name='AutoModelForCausalLM' for a HookedProxyLM)."
        )
    if hook_name not in hook_dict:
        import difflib

        close = difflib.get_close_matches(hook_name, list(hook_dict), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"the model has no hook point {hook_name!r}.{hint}")


def _hook_to_d_in(act: torch.Tensor, hook_head_index: int | None) -> torch.Tensor:
    # Same reshaping as SAELens's ActivationsStore.get_activations.
    if hook_head_index is not None:
        return act[:, :, hook_head_index]
    if act.ndim > 3:
        return act.flatten(2)
    return act


class _AllHooksSeen(Exception):
    """Raised inside the last hook to fire: nothing after it needs computing."""


@torch.no_grad()
def activations_at_hooks(
    model: Any,
    tokens: torch.Tensor,
    hook_names: Sequence[str],
    hook_head_index: int | None = None,
) -> dict[str, torch.Tensor]:
    """Activations [batch, pos, d_in] at each of ``hook_names`` from one forward pass,
    which stops as soon as the last of them has fired (so its cost is one forward up to
    the deepest hook). Works for every model kind SAELens trains on."""
    wanted = list(dict.fromkeys(hook_names))
    captured: dict[str, torch.Tensor] = {}

    def grab(name: str, act: torch.Tensor, hook: Any) -> None:
        captured[name] = act
        if len(captured) == len(wanted):
            raise _AllHooksSeen

    try:
        model.run_with_hooks(tokens, fwd_hooks=[(name, functools.partial(grab, name)) for name in wanted])
    except _AllHooksSeen:
        pass
    missing = [name for name in wanted if name not in captured]
    if missing:
        raise RuntimeError(f"the forward pass never reached hook(s) {missing} of {type(model).__name__}")
    return {name: _hook_to_d_in(captured[name], hook_head_index) for name in wanted}


def activations_at_hook(
    model: Any, tokens: torch.Tensor, hook_name: str, hook_head_index: int | None = None
) -> torch.Tensor:
    """Activations [batch, pos, d_in] at ``hook_name``; the forward stops there."""
    return activations_at_hooks(model, tokens, [hook_name], hook_head_index)[hook_name]

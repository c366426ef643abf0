"""Supply token ids to tokenized SAEs from the model's own input.

SAELens splices an SAE into a model as a hook that calls ``sae.decode(sae.encode(x))``
(``run_evals``, ``HookedSAETransformer.run_with_saes``): the SAE never sees the tokens.
``token_ids_from(model, *saes)`` captures the tokens of every forward pass of ``model``
(a pre-hook on its embedding) and lets the SAEs read them::

    with token_ids_from(model, sae):
        logits = model.run_with_saes(tokens, saes=[sae])
        metrics, _ = run_evals(sae, store, model, ActivationScaler())

The captured ids are cleared when each forward pass starts and replaced when it reaches
the embedding, so an SAE always gets the ids of the latest forward pass (also after
``run_with_cache`` returns, which is how ``run_evals`` uses them), never older ones; a
forward that skips the embedding (``start_at_layer``) leaves none, and the SAE raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from sae_lens_tokenized.models import embedding_module
from sae_lens_tokenized.saes.lookup import TokenLookupMixin


class ModelTokenCapture:
    """Holds the tokens of ``model``'s latest forward pass (see module docstring)."""

    def __init__(self, model: nn.Module):
        self._model_name = type(model).__name__
        self._tokens: torch.Tensor | None = None
        embed = embedding_module(model)
        self._handles = [
            model.register_forward_pre_hook(self._on_forward_start),
            embed.register_forward_pre_hook(self._on_embed),
        ]

    def _on_forward_start(self, module: nn.Module, args: Any) -> None:
        self._tokens = None

    def _on_embed(self, module: nn.Module, args: Any) -> None:
        tokens = args[0] if args else None
        if isinstance(tokens, torch.Tensor) and not tokens.dtype.is_floating_point:
            self._tokens = tokens

    def current_token_ids(self) -> torch.Tensor | None:
        return self._tokens

    def describe(self) -> str:
        return f"token_ids_from({self._model_name})"

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._tokens = None


@contextlib.contextmanager
def token_ids_from(model: nn.Module, *saes: Any) -> Iterator[ModelTokenCapture]:
    """Within the block, the given tokenized SAEs take their ids from ``model``'s input."""
    if not saes:
        raise ValueError("token_ids_from(model, *saes) needs at least one tokenized SAE")
    for sae in saes:
        if not isinstance(sae, TokenLookupMixin):
            raise TypeError(
                f"{type(sae).__name__} is not a tokenized SAE; only tokenized SAEs take token ids"
            )
    capture = ModelTokenCapture(model)
    for sae in saes:
        sae._push_token_id_source(capture)
    try:
        yield capture
    finally:
        for sae in saes:
            sae._pop_token_id_source(capture)
        capture.close()

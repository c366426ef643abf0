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

Tools that build their own model (SAEBench, ``python -m sae_lens.evals``) never hand it
over; ``token_ids_from_any_model(sae)`` captures the ids of whichever model runs while it
is active (TransformerLens, TransformerBridge, Hugging Face, SAELens's HookedProxyLM), with
the same rule: every top-level forward clears them first.

``error_term_mode(sae)`` is for formulas that decode without a forward pass and add the
error term, ``decode(f') + x - decode(f)`` (SAEBench's SCR/TPP and unlearning, SAELens's
``use_error_term``): the lookup cancels there exactly, so inside the block decode leaves
it out and needs no ids. Anywhere else it would change reconstructions, so it is never
implied: only this explicit block turns it on.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from sae_lens_tokenized.models import embedding_module
from sae_lens_tokenized.saes.lookup import TokenLookupMixin


class _ForwardStarts:
    """When does a new forward of a model start? Its ids must be cleared then.

    A call ``model(...)`` starts one. But TransformerLens's ``run_with_hooks`` calls
    ``model.forward(...)`` directly, which no module hook sees; then the model's top-level
    submodules run one after another without the model around them. They run in the
    order they were registered (embed, pos_embed, blocks, ln_final, unembed), so a
    submodule at or before the last one seen means the model started over: a new forward.
    """

    def __init__(self, model: nn.Module):
        self.order = {id(m): i for i, m in enumerate(self.units(model))}
        self.last = -1

    @staticmethod
    def units(model: nn.Module) -> list[nn.Module]:
        """What ``model.forward`` calls itself: its children, and the items of container
        children (``blocks``). Their own submodules run inside them, in no fixed order."""
        out: list[nn.Module] = []
        for child in model.children():
            if isinstance(child, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
                out.extend(child.children())
            else:
                out.append(child)
        return out

    def after_full_forward(self) -> None:
        """After ``model(...)`` ran every submodule: any submodule run next starts anew."""
        self.last = len(self.order)

    def restarted(self, submodule: nn.Module) -> bool:
        i = self.order.get(id(submodule))
        if i is None:
            return False
        restarted, self.last = i <= self.last, i
        return restarted


class _TokenCapture:
    """What both captures share: the ids held, the hooks to remove, reading ids off an
    embedding's input (only integer tensors are ids; embeddings of floats are not)."""

    _tokens: torch.Tensor | None = None
    _handles: list[Any]

    def _take_tokens(self, args: Any) -> None:
        tokens = args[0] if args else None
        if isinstance(tokens, torch.Tensor) and not tokens.dtype.is_floating_point:
            self._tokens = tokens

    def current_token_ids(self) -> torch.Tensor | None:
        return self._tokens

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._tokens = None


class ModelTokenCapture(_TokenCapture):
    """Holds the tokens of ``model``'s latest forward pass (see module docstring)."""

    def __init__(self, model: nn.Module):
        self._model_name = type(model).__name__
        self._tokens: torch.Tensor | None = None
        self._embed = embedding_module(model)
        self._starts = _ForwardStarts(model)
        self._in_call = False
        self._handles = [
            model.register_forward_pre_hook(self._on_forward_start),
            model.register_forward_hook(self._on_forward_end, always_call=True),
            *(unit.register_forward_pre_hook(self._on_child) for unit in _ForwardStarts.units(model)),
            self._embed.register_forward_pre_hook(self._on_embed),
        ]

    def _on_forward_start(self, module: nn.Module, args: Any) -> None:
        self._tokens = None
        self._in_call = True

    def _on_forward_end(self, module: nn.Module, args: Any, output: Any) -> None:
        self._in_call = False
        self._starts.after_full_forward()

    def _on_child(self, module: nn.Module, args: Any) -> None:
        # a child run outside model(...): model.forward(...) was called directly
        if not self._in_call and self._starts.restarted(module):
            self._tokens = None

    def _on_embed(self, module: nn.Module, args: Any) -> None:
        self._take_tokens(args)

    def describe(self) -> str:
        return f"token_ids_from({self._model_name})"



class AnyModelTokenCapture(_TokenCapture):
    """Holds the tokens of the latest forward of any model (module docstring).

    Two process-wide module hooks (torch's ``register_module_forward_pre_hook`` and
    ``register_module_forward_hook(always_call=True)``) track the depth of nested forwards.
    A module run at depth 0 that has a token embedding (``.embed`` or
    ``get_input_embeddings()``) is a model's top-level call: the ids are cleared and that
    model is remembered. A module of the remembered model run at depth 0 is its
    ``forward`` called directly (TransformerLens's ``run_with_hooks``): ``_ForwardStarts``
    tells when that starts a new forward. When the model's embedding runs on integer
    input, its input is the ids. The SAEs' own modules are not counted, so
    ``sae.encode``/``sae.decode`` after ``run_with_cache`` keep the ids of the forward that
    produced the activations; any other module run at top level (a probe, another model)
    clears them, so the SAE raises rather than use stale ids.
    """

    def __init__(self, saes: tuple[Any, ...]):
        self._sae_modules = {id(m) for sae in saes for m in sae.modules()}
        self._tokens: torch.Tensor | None = None
        self._depth = 0
        self._model_name: str | None = None
        self._embeds: weakref.WeakKeyDictionary[nn.Module, nn.Module | None] = weakref.WeakKeyDictionary()
        self._embed: nn.Module | None = None
        self._starts: _ForwardStarts | None = None
        self._handles = [
            register_module_forward_pre_hook(self._on_forward_start),
            register_module_forward_hook(self._on_forward_end, always_call=True),
        ]

    def _embedding_of(self, module: nn.Module) -> nn.Module | None:
        if module not in self._embeds:
            try:
                self._embeds[module] = embedding_module(module)
            except TypeError:
                self._embeds[module] = None
        return self._embeds[module]

    def _on_forward_start(self, module: nn.Module, args: Any) -> None:
        if id(module) in self._sae_modules:
            return
        if self._depth == 0:
            embed = self._embedding_of(module)
            if embed is not None:  # a model's top-level call: a new forward
                self._tokens, self._embed = None, embed
                self._starts, self._model_name = _ForwardStarts(module), type(module).__name__
                self._starts.after_full_forward()
            elif self._starts is not None and id(module) in self._starts.order:
                if self._starts.restarted(module):  # model.forward(...) called directly, again
                    self._tokens = None
            else:  # not a model we know: whatever it computes, the ids are not its
                self._tokens, self._embed, self._starts = None, None, None
                self._model_name = type(module).__name__
        self._depth += 1
        if module is self._embed:
            self._take_tokens(args)

    def _on_forward_end(self, module: nn.Module, args: Any, output: Any) -> None:
        if id(module) not in self._sae_modules and self._depth > 0:
            self._depth -= 1

    def describe(self) -> str:
        model = f" (last model: {self._model_name})" if self._model_name else ""
        return f"token_ids_from_any_model(){model}"



def _check_tokenized(saes: tuple[Any, ...], what: str) -> None:
    if not saes:
        raise ValueError(f"{what} needs at least one tokenized SAE")
    for sae in saes:
        if not isinstance(sae, TokenLookupMixin):
            raise TypeError(
                f"{type(sae).__name__} is not a tokenized SAE; only tokenized SAEs take token ids"
            )


@contextlib.contextmanager
def _attached(capture: Any, saes: tuple[Any, ...]) -> Iterator[Any]:
    """The SAEs read their ids from ``capture`` until the block ends; then it unhooks."""
    for sae in saes:
        sae._push_token_id_source(capture)
    try:
        yield capture
    finally:
        for sae in saes:
            sae._pop_token_id_source(capture)
        capture.close()


@contextlib.contextmanager
def token_ids_from_any_model(*saes: Any) -> Iterator[AnyModelTokenCapture]:
    """Within the block, the SAEs take their ids from whichever model last ran a forward.

    For tools that build their own model (SAEBench, ``python -m sae_lens.evals``)::

        with token_ids_from_any_model(sae):
            run_the_tool(sae)

    Prefer ``token_ids_from(model, sae)`` when you hold the model."""
    _check_tokenized(saes, "token_ids_from_any_model(*saes)")
    with _attached(AnyModelTokenCapture(saes), saes) as capture:
        yield capture


@contextlib.contextmanager
def error_term_mode(*saes: Any) -> Iterator[None]:
    """Within the block, ``decode`` leaves the lookup out (and needs no token ids).

    Only for callers that add the error term, ``decode(f_edited) + (x - decode(f))``:
    the lookup is added to both decodes and cancels exactly, so the result equals the
    one with ids (to float rounding). SAEBench's SCR/TPP ablate features this way on
    cached activations, where no forward pass could supply ids. ``encode`` is unchanged
    (Matching Pursuit's encoder reads the lookup and still needs ids)."""
    _check_tokenized(saes, "error_term_mode(*saes)")
    for sae in saes:
        sae._lookup_cancelled += 1
    try:
        yield
    finally:
        for sae in saes:
            sae._lookup_cancelled -= 1


@contextlib.contextmanager
def token_ids_from(model: nn.Module, *saes: Any) -> Iterator[ModelTokenCapture]:
    """Within the block, the given tokenized SAEs take their ids from ``model``'s input."""
    _check_tokenized(saes, "token_ids_from(model, *saes)")
    with _attached(ModelTokenCapture(model), saes) as capture:
        yield capture

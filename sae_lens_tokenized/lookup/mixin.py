"""The per-token lookup shared by every tokenized architecture.

A Tokenized SAE (Dooms & Wilhelm, arXiv 2502.17332, Sec. 3) reconstructs

    x_hat_t = W_dec a_t + b_dec + W_lookup[t]

where ``t`` is the input token at the activation's position. The encoder is the base
architecture's, unchanged: the authors found that subtracting unigram directions from
the encoder input stopped features from firing on their own tokens (Sec. 5), so only
the decoder sees the lookup.

``TokenLookupMixin`` holds everything that is about the lookup and not about a
particular sparsity rule, so an architecture file holds only what differs in its sparsity
rule (most hold nothing but their class names): the ``W_lookup`` parameter, token-id
resolution (explicit argument, a scoped context, or the ids captured from a model's
input), range and shape checks, the lookup's part of every reconstruction, lookup-aware
folding and the init. Its bigram rows are in ``bigrams.py``, its sparse updates in
``sparse.py``, its config fields in ``config.py``.

**Where the lookup enters.** Every SAELens reconstruction ends in
``self.run_time_activation_norm_fn_out(W_dec a + b_dec)``: each architecture's
``decode`` and Matryoshka's inner levels (``_iterable_decode``) alike (sae-lens 6.53-6.54;
see ``_compat.py``). The mixin wraps that one step to add ``W_lookup[t]`` first, so no
decode is copied and no reconstruction can miss the lookup. The lookup's contribution
passes through its own hook point, ``hook_sae_lookup``; ``hook_sae_recons`` sees the
latents' part ``W_dec a + b_dec`` and ``hook_sae_output`` the full reconstruction. The
one SAELens reconstruction that bypasses that step, Gated's auxiliary "via gate" term,
is handled in ``tokenized_gated_sae.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

from sae_lens_tokenized.lookup.bigrams import BigramRows
from sae_lens_tokenized.lookup.config import DEFAULT_INIT_SCALE, LAZY_LOOKUP_UPDATES, validate_lookup_config
from sae_lens_tokenized.lookup.ids import CapturedIds, TokenIdSource, TokenIdsError
from sae_lens_tokenized.lookup.sparse import SparseRows


class TokenLookupMixin(BigramRows, SparseRows):
    """Adds ``W_lookup`` and token-id handling to an SAELens SAE class.

    Put it first in the bases (``class TokenizedTopKSAE(TokenLookupMixin, TopKSAE)``) so
    its ``initialize_weights``/``forward``/``decode``/folding wrap the base class's.
    """

    W_lookup: nn.Parameter
    cfg: Any
    dtype: torch.dtype
    device: torch.device

    # ---- construction -------------------------------------------------------------
    def __init__(self, cfg: Any, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)  # type: ignore[call-arg]
        # The lookup's part of every reconstruction (module docstring). A bound method,
        # not a closure, so copy.deepcopy(sae) rebinds it to the copy.
        self._denormalize_out = self.run_time_activation_norm_fn_out
        self.run_time_activation_norm_fn_out = self._add_lookup_then_denormalize
        self.hook_sae_lookup = HookPoint()
        self._lookup_cancelled = 0  # > 0 inside error_term_mode(self)
        self.setup()  # type: ignore[attr-defined]  # register the new hook point

    def _add_lookup_then_denormalize(self, recons: torch.Tensor) -> torch.Tensor:
        if self._lookup_cancelled:
            # error_term_mode (splicing.py): the caller adds x - decode(f), in which the
            # lookup cancels exactly, so it is left out and no ids are needed.
            return self._denormalize_out(recons)
        lookup = self.hook_sae_lookup(self.lookup_bias(recons.shape[:-1]).to(recons.dtype))
        return self._denormalize_out(recons + lookup)

    def initialize_weights(self) -> None:
        super().initialize_weights()  # type: ignore[misc]
        validate_lookup_config(self.cfg)
        if self.cfg.d_vocab is None:
            raise ValueError(
                f"{type(self).__name__} needs d_vocab (the model's cfg.d_vocab) to size its "
                "lookup. Pass d_vocab=..., or train through TokenizedSAETrainingRunner, which "
                "takes it from the model."
            )
        # Zero init: an untrained lookup is exactly the base architecture. The runner
        # overwrites it with lookup_init_scale * unigrams before training.
        sparse = getattr(self.cfg, "lookup_updates", "dense") in LAZY_LOOKUP_UPDATES
        trainable = bool(getattr(self.cfg, "train_lookup", True))
        self.W_lookup = nn.Parameter(
            torch.zeros(self.cfg.lookup_n_rows, self.cfg.lookup_width, dtype=self.dtype, device=self.device),
            requires_grad=trainable and not sparse,
        )
        self._init_bigram_rows()
        self._init_sparse_rows(sparse, trainable)
        self._scoped_token_ids: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._token_id_sources: list[TokenIdSource] = []
        # (source, the ids it gave for the input of the encode/decode/forward call in progress)
        self._captured_ids: list[tuple[TokenIdSource, CapturedIds | None]] = []

    # ---- token ids ----------------------------------------------------------------
    @contextlib.contextmanager
    def token_ids(self, token_ids: torch.Tensor, *, prev_token_ids: torch.Tensor | None = None,
                  validated: bool = False) -> Iterator[None]:
        """Use these ids for every encode/decode inside the ``with`` block (then forget them).

        ``prev_token_ids`` (a bigram lookup only; same shape, ``-1`` where unknown): each
        position's previous token. Without it, ids of shape ``[..., pos]`` give their own
        (shifted along the last dim; position 0 has none).
        ``validated=True`` skips the range check (two device-to-host syncs): for ids that
        were checked where they entered, as the training store does."""
        if not validated:
            token_ids = self._check_id_values(token_ids)
            if prev_token_ids is not None:
                prev_token_ids = self._check_prev_ids(prev_token_ids, token_ids)
        self._scoped_token_ids.append((token_ids, prev_token_ids))
        self._lookup_stage = None  # rows staged under earlier ids (or weights) are never reused
        try:
            yield
        finally:
            self._scoped_token_ids.pop()
            self._rows_memo = None

    def attach_token_id_source(self, source: TokenIdSource) -> None:
        """Read ids from ``source`` where none are given (``token_ids_from`` does this)."""
        self._token_id_sources.append(source)

    def detach_token_id_source(self, source: TokenIdSource) -> None:
        self._token_id_sources.remove(source)

    def _check_id_values(self, token_ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(token_ids, torch.Tensor):
            token_ids = torch.as_tensor(token_ids)
        if token_ids.dtype.is_floating_point or token_ids.dtype == torch.bool:
            raise TokenIdsError(
                f"token_ids must be an integer tensor, got dtype {token_ids.dtype}. "
                "Pass the model's input tokens (torch.long)."
            )
        if token_ids.numel() > 0:
            lo, hi = int(token_ids.min()), int(token_ids.max())
            if lo < 0 or hi >= self.cfg.d_vocab:
                raise TokenIdsError(
                    f"token id out of range: got ids in [{lo}, {hi}] but this SAE's lookup "
                    f"has d_vocab={self.cfg.d_vocab} rows (valid ids 0..{self.cfg.d_vocab - 1}). "
                    "Are these tokens from the model the SAE was trained on?"
                )
        return token_ids

    def _check_prev_ids(self, prev: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(prev, torch.Tensor):
            prev = torch.as_tensor(prev)
        if prev.dtype.is_floating_point or prev.dtype == torch.bool or prev.shape != ids.shape:
            raise TokenIdsError(
                f"prev_token_ids must be an integer tensor of the ids' shape {tuple(ids.shape)}, got "
                f"{prev.dtype} {tuple(prev.shape)} (-1 where a position has no previous token)."
            )
        if prev.numel() and (int(prev.min()) < -1 or int(prev.max()) >= self.cfg.d_vocab):
            raise TokenIdsError(f"prev_token_ids out of range: valid ids are -1 (none) .. {self.cfg.d_vocab - 1}")
        return prev

    def resolve_token_ids(
        self, batch_shape: torch.Size | tuple[int, ...], token_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The ids for activations of batch shape ``batch_shape`` (all dims but the last).

        Order: the explicit argument, then the innermost ``token_ids(...)`` scope, then the
        ids captured from a model by ``token_ids_from(model, sae)`` (those of the forward
        that produced the call's input, else of the latest forward; splicing.py).
        Nothing else: ids are never remembered from an earlier call.
        """
        return self._resolve_ids(batch_shape, token_ids)[0]

    def _resolve_ids(
        self, batch_shape: torch.Size | tuple[int, ...], token_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        prev = None
        if token_ids is not None:
            ids, origin = self._check_id_values(token_ids), "token_ids argument"
        elif self._scoped_token_ids:
            (ids, prev), origin = self._scoped_token_ids[-1], "token_ids(...) scope"
        elif self._token_id_sources:
            source, captured = (self._captured_ids[-1] if self._captured_ids
                                else (self._token_id_sources[-1], self._token_id_sources[-1].ids_of(None)))
            if captured is None:
                raise TokenIdsError(
                    f"{type(self).__name__} is attached to {source.describe()} but that model "
                    "has not run a forward pass with tokens since (a forward with "
                    "start_at_layer skips the embedding). Pass token_ids=... explicitly."
                )
            ids, prev = captured.for_batch(tuple(batch_shape), source.describe())
            return self._check_id_values(ids), prev
        else:
            raise TokenIdsError(
                f"{type(self).__name__} adds a per-token lookup, so it needs the input token id "
                f"of every activation (batch shape {tuple(batch_shape)}). Either pass "
                "token_ids=... (e.g. sae(x, token_ids=tokens)), or run the model inside "
                "`with sae_lens_tokenized.token_ids_from(model, sae): ...` so the ids are "
                "taken from the model's input."
            )
        if tuple(ids.shape) != tuple(batch_shape):
            raise TokenIdsError(
                f"token ids from the {origin} have shape {tuple(ids.shape)} but the activations "
                f"have batch shape {tuple(batch_shape)}: each activation needs exactly one id "
                "(ids [batch, pos] for activations [batch, pos, d_in])."
            )
        return ids, prev

    def lookup_bias(self, batch_shape: torch.Size, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The lookup's part of the reconstruction, ``[*batch_shape, d_in]``: ``W_lookup[t]``,
        or, with a bigram lookup, the row of the position's (previous token, token) pair
        where the pair has one."""
        ids, prev = self._resolve_ids(batch_shape, token_ids)
        rows = self.lookup_row_index(ids, prev)
        staged = self.lookup_rows
        if staged is not None and staged.requires_grad and self.training and torch.is_grad_enabled():
            return self._staged_lookup(rows)
        return nn.functional.embedding(rows.to(self.W_lookup.device), self.W_lookup)


    # ---- forward ------------------------------------------------------------------
    @contextlib.contextmanager
    def _ids_for_call(self, x: torch.Tensor, token_ids: torch.Tensor | None,
                      prev: torch.Tensor | None) -> Iterator[tuple[TokenIdSource, CapturedIds] | None]:
        """The ids of one encode/decode/forward call on ``x``: the explicit ones, else (with a
        capture attached and no enclosing scope) the ids of the forward that produced ``x``
        (splicing.py). Yields (source, ids) when they came from a capture."""
        if token_ids is not None:
            with self.token_ids(token_ids, prev_token_ids=prev):
                yield None
            return
        if prev is not None:
            raise TokenIdsError("prev_token_ids were given without token_ids; pass both")
        if self._scoped_token_ids or not self._token_id_sources:
            yield None
            return
        source = self._token_id_sources[-1]
        captured = source.ids_of(x)
        self._captured_ids.append((source, captured))
        try:
            yield None if captured is None else (source, captured)
        finally:
            self._captured_ids.pop()
            self._rows_memo = None

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None,  # type: ignore[override]
                prev_token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``sae(x, token_ids=ids)``: x is [..., d_in] and ids [...]."""
        with self._ids_for_call(x, token_ids, prev_token_ids):
            return super().forward(x)  # type: ignore[misc]

    def decode(self, feature_acts: torch.Tensor, token_ids: torch.Tensor | None = None,  # type: ignore[override]
               prev_token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``sae.decode(acts, token_ids=ids)``: the base decode, plus the ids' lookup rows."""
        with self._ids_for_call(feature_acts, token_ids, prev_token_ids):
            return super().decode(feature_acts)  # type: ignore[misc]

    def encode(self, x: torch.Tensor, token_ids: torch.Tensor | None = None,  # type: ignore[override]
               prev_token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The base encoder, unchanged: ids are accepted (and ignored by every architecture
        whose encoder does not reconstruct) so callers can pass them uniformly. Latents
        encoded from a model's activations keep those activations' ids for their decode."""
        with self._ids_for_call(x, token_ids, prev_token_ids) as captured:
            feature_acts = super().encode(x)  # type: ignore[misc]
        if captured is not None:
            captured[0].remember(feature_acts, captured[1])
        return feature_acts

    # ---- folding: keep outputs equal, lookup included ----------------------------------
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        # The lookup sits next to b_dec in the (scaled) SAE space, so it scales like b_dec.
        self.W_lookup.data /= scaling_factor
        super().fold_activation_norm_scaling_factor(scaling_factor)  # type: ignore[misc]

    @torch.no_grad()
    def fold_activation_whitening(
        self, mean: torch.Tensor, whitening_matrix: torch.Tensor, unwhitening_matrix: torch.Tensor
    ) -> None:
        # x = z @ M^-1 + mean; the mean is added once through b_dec, the lookup only rotates.
        dtype = torch.promote_types(self.W_lookup.dtype, unwhitening_matrix.dtype)
        self.W_lookup.data.copy_(self.W_lookup.data.to(dtype) @ unwhitening_matrix.to(self.W_lookup.device, dtype))
        super().fold_activation_whitening(mean, whitening_matrix, unwhitening_matrix)  # type: ignore[misc]

    # ---- initialisation from unigrams ----------------------------------------------------
    @torch.no_grad()
    def init_lookup_from_unigrams(self, unigrams: torch.Tensor, scale: float | None = None) -> None:
        """Set the token rows ``W_lookup[:d_vocab] = scale * unigrams`` (scale defaults to
        ``cfg.lookup_init_scale``; bigram rows are set by ``set_bigram_rows``)."""
        expected = (self.cfg.d_vocab, self.cfg.lookup_width)
        if tuple(unigrams.shape) != expected:
            raise ValueError(
                f"unigram table has shape {tuple(unigrams.shape)} but this SAE's lookup needs "
                f"[d_vocab, {self.cfg.lookup_width_name}] = {list(expected)}. Was it computed for another model or hook?"
            )
        if not torch.isfinite(unigrams).all():
            raise ValueError("unigram table contains NaN or inf values; recompute it.")
        if scale is None:
            scale = self.cfg.lookup_init_scale
        if scale is None:
            scale = DEFAULT_INIT_SCALE
        rows = self.W_lookup.data[: self.cfg.d_vocab]
        rows.copy_(unigrams).mul_(scale)  # in place: no second table in memory

    def set_lookup_trainable(self, trainable: bool) -> None:
        if self.lookup_rows is not None:
            self.lookup_rows.requires_grad_(trainable)
        else:
            self.W_lookup.requires_grad_(trainable)


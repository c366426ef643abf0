"""The per-token lookup shared by every tokenized architecture.

A Tokenized SAE (Dooms & Wilhelm, arXiv 2502.17332, Sec. 3) reconstructs

    x_hat_t = W_dec a_t + b_dec + W_lookup[t]

where ``t`` is the input token at the activation's position. The encoder is the base
architecture's, unchanged: the authors found that subtracting unigram directions from
the encoder input stopped features from firing on their own tokens (Sec. 5), so only
the decoder sees the lookup.

This module holds everything that is about the lookup and not about a particular
sparsity rule, so an architecture file holds only what differs in its sparsity rule
(most hold nothing but their class names):

* ``LookupConfig`` / ``LookupTrainingConfig``: the config fields (dataclass mixins). The
  architecture name is derived: ``"tokenized_" + <SAELens base>.architecture()``.
* ``TokenLookupMixin``: the ``W_lookup`` parameter, token-id resolution (explicit
  argument, a scoped context, or the ids captured from a model's input), range and
  shape checks, the lookup's part of every reconstruction, lookup-aware folding and the
  unigram init.

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
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint


class TokenIdsError(ValueError):
    """Token ids are missing, malformed, or do not match the activations."""


@dataclass(kw_only=True)
class LookupConfig:
    """Config fields every tokenized SAE carries (saved in cfg.json).

    Args:
        d_vocab: Rows of the lookup table: the model's ``cfg.d_vocab``, which can exceed
            ``len(tokenizer)`` (Pythia: 50,304 vs 50,277). In a training config it may be
            left ``None`` and is then taken from the model by the runner.
        unigram_strategy: The prompt template the lookup was initialised from (see
            ``sae_lens_tokenized.unigrams``). Recorded so analyses can recompute the same
            unigram table; it has no effect on the forward pass.
        lookup_init_scale: ``W_lookup = lookup_init_scale * U`` at initialisation. ``None``
            (default) takes the strategy's measured default (``default_init_scale``): 0.5 for
            prompt strategies (the authors' final "lookup_scale"; the workshop paper used
            1.0) and 1.0 for ``"data"`` (a mean is already the least-squares row).
        lookup_ngram: 1: one row per token (the method). 2: also one row per frequent
            (previous token, token) pair, read instead of the token's row where the pair
            has one; a pair without a row, and a context's first position (no previous
            token), read the token's row.
        lookup_bigram_rows: how many bigram rows the lookup holds (``lookup_ngram=2``;
            ``None`` = ``DEFAULT_BIGRAM_ROWS``). They are the table's rows
            ``d_vocab .. d_vocab + lookup_bigram_rows - 1``; which pair each row belongs
            to is stored beside the weights (``lookup_bigram_ids``). In a training config
            it is the most the data-estimated init may choose; the trained SAE holds (and
            saves) exactly the rows it chose.
    """

    d_vocab: int | None = None
    unigram_strategy: str = "bos,t"
    lookup_init_scale: float | None = None
    lookup_ngram: int = 1
    lookup_bigram_rows: int | None = None

    @classmethod
    def architecture(cls) -> str:
        # The SAELens base's name, prefixed: TokenizedJumpReLUSAEConfig -> "tokenized_jumprelu".
        return "tokenized_" + super().architecture()  # type: ignore[misc]

    def __post_init__(self) -> None:
        if self.lookup_bigram_rows is None:
            self.lookup_bigram_rows = DEFAULT_BIGRAM_ROWS if self.lookup_ngram == 2 else 0
        validate_lookup_config(self)
        super().__post_init__()  # type: ignore[misc]

    @property
    def lookup_n_rows(self) -> int:
        """Rows of ``W_lookup``: one per token, then the bigram rows."""
        return int(self.d_vocab or 0) + int(self.lookup_bigram_rows or 0)


@dataclass(kw_only=True)
class LookupTrainingConfig(LookupConfig):
    """Training-only lookup fields (recorded in cfg.json metadata, not needed to run).

    Args:
        train_lookup: Train ``W_lookup`` (True) or keep it frozen at its init (False).
        lookup_lr: Learning rate of the lookup's own Adam parameter group. The authors
            used 1e-2 with dense Adam and an SAE lr of 1e-4 (swept 1e-2, 5e-3, 1e-3). The
            default sparse (lazy) updates move a row once per step that touches it, while
            dense Adam keeps moving it on its momentum for ~1/(1-beta1) steps after; 3e-2
            lazy matched 1e-2 dense on SmolLM2 (benchmarks/lookup_updates_quality.py), so
            3e-2 is the default. With ``lookup_updates="dense"`` the authors' 1e-2 is the
            equivalent. ``None`` uses the runner's ``lr``. The lr schedule multiplies both
            groups alike.
        unigram_table_path: A precomputed unigram table (safetensors with a tensor
            ``unigrams`` of shape [d_vocab, d_in]) to initialise from instead of
            computing one. ``None`` computes it from the model.
        init_lookup_from_unigrams: Initialise the lookup from unigrams before training
            (the method). False keeps the zero init (an ablation).
        unigram_cache: Reuse/write computed tables in the user cache folder
            (``sae_lens_tokenized.unigrams.get_unigram_table``).
        lookup_updates: ``"sparse"`` (default): each step, only the rows of the batch's
            tokens get gradient and an optimizer update, and the lookup's Adam moments are
            allocated for rows as they are first touched, so a step costs O(batch * d_in)
            whatever d_vocab is (lazy Adam, as ``torch.optim.SparseAdam``: a row's moments
            decay only on the steps that touch it; bias correction counts every step).
            ``"dense"``: the whole ``[d_vocab, d_in]`` table is one ordinary Adam
            parameter (dense gradient and moments; untouched rows keep moving on their
            momentum). Both give the same first step; ``sae_lens_tokenized.training.optim``.

        lookup_init_tokens: the sample of the training stream the data-estimated init
            (``unigram_strategy="data"``) and the bigram rows (``lookup_ngram=2``) are
            estimated from. The runner draws it from SAELens's activation store before
            training starts, so those activations are not trained on (SAELens's own norm
            estimate draws its batches the same way); never more than the run's
            ``training_tokens`` nor more than one pass over a finite dataset. It records
            what it drew, and which cap applied, in the cfg.json metadata (``lookup_init``).
        lookup_init_pseudo_count: shrinkage of data-estimated token rows: a token seen n
            times gets ``(sum + c * prior) / (n + c)``; an unseen token gets the prior.
            0.5 measured best of 0.5-32.
        lookup_init_prior: the prior of data-estimated token rows. ``"mean"`` (default):
            the sample's mean activation, the same row for every token. Or a prompt
            strategy (``"space,t"``, ...), or ``"auto"`` (the best-measured prompt
            strategy): token t's prior is ``mean + (U[t] - U_mean)``, its unigram ``U[t]``
            shifted so the priors average to the sample mean (``U_mean`` is the unigrams'
            mean weighted by the sample's token counts). Tokens the sample never saw then
            get a row of their own. On the demo's tokenized SAE, the third of SAEBench's
            first-letter words whose tokens the sample never saw lose their first letter
            with the mean row (probe accuracy 0.34 against 0.75 for TopK); a centred
            ``space,t`` row gives 0.85 and halves their NMSE, measured post hoc
            (benchmarks/unseen_token_prior.py). Trained once in the demo's setting it
            lowered held-out NMSE (0.0646 to 0.0559), CE added (0.119 to 0.057) and
            SAEBench absorption (0.165 to 0.043; benchmarks/results/lookup_prior_demo/).
            One seed: the default stays until a multi-seed comparison.
        lookup_bigram_pseudo_count: the same for bigram rows, toward their token's row
            (lookup alone, 2 beat 8; the training benchmark used 0.5, the default).
        lookup_bigram_min_count: a pair seen fewer times in the sample gets no bigram row
            (1 measured better than 2 and 3).

    ``unigram_strategy`` may also be ``"auto"`` in a training config: the runner measures
    the candidate strategies (the prompt strategies and ``"data"``) on a few training
    sequences the sample does not include, keeps the best, and records the measurement in
    the saved cfg.json metadata (``unigram_strategy_selection``).
    """

    # Defaults that differ from the inference config's (which keeps the method's, so a
    # cfg.json without these fields loads as what it is): measured best on SmolLM2
    # (benchmarks/results/lookup_variants/, README "Data-estimated and bigram lookups").
    unigram_strategy: str = "data"
    lookup_ngram: int = 2
    train_lookup: bool = True
    lookup_lr: float | None = 3e-2
    unigram_table_path: str | None = None
    init_lookup_from_unigrams: bool = True
    unigram_cache: bool = True
    lookup_updates: str = "sparse"
    lookup_init_tokens: int = 500_000
    lookup_init_pseudo_count: float = 0.5
    lookup_init_prior: str = "mean"
    lookup_bigram_min_count: int = 1
    lookup_bigram_pseudo_count: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lookup_init_tokens <= 0:
            raise ValueError(f"lookup_init_tokens must be > 0, got {self.lookup_init_tokens}")
        if self.lookup_init_pseudo_count < 0:
            raise ValueError(f"lookup_init_pseudo_count must be >= 0, got {self.lookup_init_pseudo_count}")
        if self.lookup_bigram_pseudo_count < 0:
            raise ValueError(f"lookup_bigram_pseudo_count must be >= 0, got {self.lookup_bigram_pseudo_count}")
        if self.lookup_init_prior not in ("mean", "auto"):
            from sae_lens_tokenized.unigrams import UnigramStrategy, UnigramStrategyError

            try:
                UnigramStrategy.parse(self.lookup_init_prior)
            except (UnigramStrategyError, ValueError) as e:
                raise ValueError(
                    f"lookup_init_prior must be 'mean', 'auto' or a prompt strategy such as 'space,t'; "
                    f"got {self.lookup_init_prior!r} ({e})"
                ) from e
        if self.lookup_bigram_min_count < 1:
            raise ValueError(f"lookup_bigram_min_count must be >= 1, got {self.lookup_bigram_min_count}")
        if self.lookup_ngram == 2 and not self.init_lookup_from_unigrams:
            raise ValueError(
                "lookup_ngram=2 (the default) chooses its bigram rows from the data at "
                "initialisation, so it needs init_lookup_from_unigrams=True; for a zero-initialised "
                "lookup set lookup_ngram=1."
            )

    def get_inference_config_class(self) -> type:
        # SAELens saves BatchTopK and Matryoshka for inference as JumpReLU; a tokenized one
        # saves as the tokenized version of whatever SAELens saves its base as.
        from sae_lens.registry import get_sae_class

        base = super().get_inference_config_class()  # type: ignore[misc]
        if issubclass(base, LookupConfig):
            return base
        return get_sae_class("tokenized_" + base.architecture())[1]


SUPPORTED_NORMALIZATIONS = ("none", "expected_average_only_in")
LOOKUP_UPDATES = ("sparse", "dense")
#: ``unigram_strategy`` value for the lookup estimated from the training data
DATA_STRATEGY = "data"
#: ``unigram_strategy`` recorded for a lookup initialised from a table the user passed
PRECOMPUTED_STRATEGY = "precomputed"
#: default bigram row budget (benchmarks/results/lookup_init.json)
DEFAULT_BIGRAM_ROWS = 65_536
#: largest vocabulary whose bigram ids round-trip through SAELens's loader in any dtype
#: (each id is stored as three base-256 digits; see ``TokenLookupMixin._store_bigram_ids``)
MAX_BIGRAM_VOCAB = 256**3


#: The method's own settings (Dooms & Wilhelm: a unigram lookup initialised from the
#: ``[<bos>, t]`` prompt at half scale), as a named option:
#: ``TokenizedTopKTrainingSAEConfig(**METHOD_LOOKUP, d_in=..., ...)``.
METHOD_LOOKUP: dict = {"unigram_strategy": "bos,t", "lookup_init_scale": 0.5, "lookup_ngram": 1}


def default_init_scale(strategy: str) -> float:
    """The init scale a strategy gets when ``lookup_init_scale`` is left ``None``."""
    return 1.0 if strategy == DATA_STRATEGY else 0.5


def validate_lookup_config(cfg: Any) -> None:
    """Check the lookup fields of a config; raise ``ValueError`` naming the fix."""
    if cfg.d_vocab is not None and (not isinstance(cfg.d_vocab, int) or cfg.d_vocab <= 0):
        raise ValueError(f"d_vocab must be a positive int (the model's cfg.d_vocab), got {cfg.d_vocab!r}")
    if cfg.normalize_activations not in SUPPORTED_NORMALIZATIONS:
        # The lookup lives in the SAE's input space. Per-activation normalisations
        # (layer_norm, constant_norm_rescale) make that space differ per position, and
        # whitening would need the unigram table whitened too; neither is implemented.
        raise ValueError(
            f"normalize_activations={cfg.normalize_activations!r} is not supported by "
            f"tokenized SAEs; use one of {SUPPORTED_NORMALIZATIONS}."
        )
    if getattr(cfg, "lookup_lr", None) is not None and cfg.lookup_lr <= 0:
        raise ValueError(f"lookup_lr must be > 0 or None, got {cfg.lookup_lr}")
    if getattr(cfg, "lookup_updates", "sparse") not in LOOKUP_UPDATES:
        raise ValueError(f"lookup_updates must be one of {LOOKUP_UPDATES}, got {cfg.lookup_updates!r}")
    ngram, rows = getattr(cfg, "lookup_ngram", 1), getattr(cfg, "lookup_bigram_rows", 0)
    if ngram not in (1, 2):
        raise ValueError(
            f"lookup_ngram={ngram!r} is not supported: use 1 (a row per token, the method) or 2 "
            "(plus a row per frequent (previous token, token) pair)."
        )
    if ngram == 2 and (not isinstance(rows, int) or rows < 0):
        raise ValueError(
            f"lookup_ngram=2 needs a bigram row count >= 0, got lookup_bigram_rows={rows!r}; "
            f"leave it None for the default ({DEFAULT_BIGRAM_ROWS}) or use lookup_ngram=1."
        )
    if ngram == 1 and rows:
        raise ValueError(f"lookup_bigram_rows={rows} only applies to lookup_ngram=2; set lookup_ngram=2 or drop it.")
    if ngram == 2 and cfg.d_vocab is not None and cfg.d_vocab > MAX_BIGRAM_VOCAB:
        raise ValueError(f"a bigram lookup supports d_vocab up to {MAX_BIGRAM_VOCAB}, got {cfg.d_vocab}")
    scale = getattr(cfg, "lookup_init_scale", None)
    if scale is not None and (not isinstance(scale, (int, float)) or scale < 0):
        raise ValueError(f"lookup_init_scale must be a number >= 0 or None, got {scale!r}")


def _version(t: torch.Tensor) -> int | None:
    """``t``'s version counter; ``None`` for an inference tensor, which has none."""
    return None if t.is_inference() else t._version


@dataclass(frozen=True)
class CapturedIds:
    """The token ids of one sequence a model ran, as a capture saw them.

    ``seq`` [..., S] holds every position of the sequence so far; the forward that took
    them ran its last ``own`` positions (fewer than S when it continued a sequence from a
    KV cache, as generation does). Activations of that forward have batch shape
    ``[..., own]`` or, when it ran the whole sequence, ``[..., S]``; their previous tokens
    are read off ``seq``, so a cached generation step still knows the token before it.
    """

    seq: torch.Tensor
    own: int

    def for_batch(self, batch_shape: tuple[int, ...], origin: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, previous ids)`` for activations of ``batch_shape`` (-1: no previous token)."""
        from sae_lens_tokenized.lookup_stats import previous_token_ids

        seq = self.seq
        if seq.is_inference() and not torch.is_inference_mode_enabled():
            seq = seq.clone()  # ids taken under inference_mode, used where autograd may save them
        full = tuple(seq.shape)
        if tuple(batch_shape) == full:
            return seq, previous_token_ids(seq)
        if self.own < full[-1] and tuple(batch_shape) == full[:-1] + (self.own,):
            return seq[..., -self.own:], previous_token_ids(seq)[..., -self.own:]
        raise TokenIdsError(
            f"token ids from the {origin} have shape {full}"
            + (f" (the last {self.own} positions ran in its latest forward)" if self.own < full[-1] else "")
            + f" but the activations have batch shape {tuple(batch_shape)}: each activation needs "
            "exactly one id (ids [batch, pos] for activations [batch, pos, d_in]). If these "
            "activations are from another input, pass token_ids=... explicitly."
        )


class TokenIdSource(Protocol):
    """Where a tokenized SAE finds the ids of activations it was not given ids for
    (``sae_lens_tokenized.splicing``: the ids of a model's input)."""

    def ids_of(self, tensor: torch.Tensor | None) -> CapturedIds | None:
        """The ids of the forward that produced ``tensor``, if known, else of the latest
        forward; ``None`` if there are none."""

    def remember(self, tensor: torch.Tensor, ids: CapturedIds) -> None:
        """``tensor`` (an SAE's latents) belongs to ``ids``: a later decode of it reads them."""

    def describe(self) -> str: ...


class TokenLookupMixin:
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
        sparse = getattr(self.cfg, "lookup_updates", "dense") == "sparse"
        trainable = bool(getattr(self.cfg, "train_lookup", True))
        self.W_lookup = nn.Parameter(
            torch.zeros(self.cfg.lookup_n_rows, self.cfg.d_in, dtype=self.dtype, device=self.device),
            requires_grad=trainable and not sparse,
        )
        if self.cfg.lookup_ngram == 2:
            # Which (previous token, token) pair each bigram row belongs to. No pair yet: the
            # rows are unread until the runner (or set_bigram_rows) assigns them.
            self.register_buffer("lookup_bigram_ids", torch.zeros(
                self.cfg.lookup_bigram_rows, 2, 3, dtype=self.dtype, device=self.device))
            self._store_bigram_ids(torch.full((self.cfg.lookup_bigram_rows,), -1, dtype=torch.long))
        # Sparse updates: the step's rows, staged (see _staged_lookup). Not registered, so it
        # is never saved; named_parameters() yields it so SAELens's gradient clipping sees it.
        self.lookup_rows: nn.Parameter | None = None
        if sparse:
            object.__setattr__(self, "lookup_rows", nn.Parameter(
                torch.zeros(0, self.cfg.d_in, dtype=self.dtype, device=self.device), requires_grad=trainable))
        self._lookup_stage: tuple[torch.Tensor, ...] | None = None
        self._staged_version: int | None = None
        self._scoped_token_ids: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._token_id_sources: list[TokenIdSource] = []
        # (source, the ids it gave for the input of the encode/decode/forward call in progress)
        self._captured_ids: list[tuple[TokenIdSource, CapturedIds | None]] = []
        self._rows_memo: tuple[Any, ...] | None = None
        self._keys_memo: tuple[Any, ...] | None = None

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

    # ---- bigram rows ------------------------------------------------------------------
    # A bigram lookup (lookup_ngram=2) holds rows d_vocab.. for frequent (previous token,
    # token) pairs. A position reads its pair's row if the pair has one, else its token's
    # row: one row per position, so sparse updates, folding and saving are unchanged. (A
    # pair row *added* to the token row, the token row training on every position, was
    # tried: at the lookup lr of 3e-2 its training was unstable, held-out NMSE 0.109
    # against 0.067; benchmarks/results/lookup_variants/additive_form_trial.json.)
    # Pairs are identified by the key prev * d_vocab + t, kept sorted for searchsorted.
    # SAELens's loader casts every saved tensor to the SAE's dtype (sae-lens 6.53-6.54,
    # read_sae_components_from_disk; docs/upstream-seams.md), which would round int64 keys;
    # so the saved buffer holds each id as three base-256 digits, exact in every float
    # dtype (bf16 included), and the keys are rebuilt from it when it changes.
    def lookup_row_index(self, token_ids: torch.Tensor, prev_token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The ``W_lookup`` row each position reads: its token's, or with a bigram lookup its
        (previous token, token) pair's where the pair has one (``>= d_vocab``). Token ids
        ``[..., pos]`` supply their own previous tokens; flat ids need ``prev_token_ids``
        (-1 = none)."""
        if self.cfg.lookup_ngram == 1:
            return token_ids
        # Memoised for the same id tensors (the trainer stages rows, then the forward reads
        # them: one lookup per step); an in-place change to the ids, or to the bigram table,
        # bumps a version and misses, and a scope's exit clears it.
        # (Inference tensors, e.g. ids made under TransformerLens's generate, have no version
        # counter: nothing is memoised for them.)
        buf = self.lookup_bigram_ids
        key = (_version(token_ids), None if prev_token_ids is None else _version(prev_token_ids), _version(buf))
        memoisable = None not in key[::2] and (prev_token_ids is None or key[1] is not None)
        memo = self._rows_memo
        if (memoisable and memo is not None and memo[0] is token_ids and memo[1] is prev_token_ids
                and memo[2] is buf and memo[3] == key):
            return memo[4]
        if prev_token_ids is None:
            if token_ids.ndim < 2 and self._bigram_rows_in_use() == 0:
                return token_ids  # no pair has a row yet: every position reads its token's row
            if token_ids.ndim < 2:
                raise TokenIdsError(
                    f"{type(self).__name__} has a bigram lookup, so each activation needs its previous "
                    f"token too; token ids of shape {tuple(token_ids.shape)} have no sequence dimension "
                    "to take it from. Pass ids [batch, pos] (previous tokens are read along pos) or "
                    "prev_token_ids=... (-1 where there is none)."
                )
            from sae_lens_tokenized.lookup_stats import previous_token_ids

            prev = previous_token_ids(token_ids)
        else:
            prev = prev_token_ids
        keys = self._bigram_keys()
        if len(keys) == 0:
            return token_ids  # a bigram lookup that holds no pair rows
        ids = token_ids.to(keys.device)
        prev = prev.to(keys.device).long()
        V = self.cfg.d_vocab
        query = prev.clamp(min=0) * V + ids
        pos = torch.searchsorted(keys, query.reshape(-1)).clamp(max=len(keys) - 1).view(query.shape)
        hit = (keys[pos] == query) & (prev >= 0)
        rows = torch.where(hit, V + pos, ids)
        if memoisable:
            self._rows_memo = (token_ids, prev_token_ids, buf, key, rows)
        return rows

    def _bigram_rows_in_use(self) -> int:
        self._bigram_keys()
        return self._keys_memo[3]  # type: ignore[index]

    def _bigram_keys(self) -> torch.Tensor:
        # rebuilt when the buffer is replaced (load, .to()) or changed in place; the memo
        # holds the buffer itself, so its id cannot be reused by another tensor meanwhile
        buf = self.lookup_bigram_ids
        memo = self._keys_memo
        if memo is None or memo[0] is not buf or memo[1] is None or memo[1] != _version(buf):
            digits = self.lookup_bigram_ids.detach().round().long()  # [B, 2, 3]
            pair = (digits * torch.tensor([1, 256, 65536], device=digits.device)).sum(-1) - 1  # [B, 2]
            V = self.cfg.d_vocab
            B = pair.shape[0]
            unused = pair[:, 0] < 0
            keys = torch.where(unused, V * V + torch.arange(B, device=pair.device), pair[:, 0] * V + pair[:, 1])
            self._keys_memo = (buf, _version(buf), keys, int((~unused).sum()))
        return self._keys_memo[2]

    def _store_bigram_ids(self, keys: torch.Tensor) -> None:
        """Write pair keys (``prev * d_vocab + t``; -1 = unused) into ``lookup_bigram_ids``."""
        V = self.cfg.d_vocab
        keys = keys.long()
        pair = torch.stack([torch.where(keys >= 0, keys // V, -1), torch.where(keys >= 0, keys % V, -1)], -1) + 1
        digits = torch.stack([pair % 256, (pair // 256) % 256, pair // 65536], -1)
        with torch.no_grad():
            self.lookup_bigram_ids.copy_(digits.to(self.lookup_bigram_ids))

    def bigram_pairs(self) -> torch.Tensor:
        """``[lookup_bigram_rows, 2]`` (previous token, token) of each bigram row; -1 = unused."""
        keys = self._bigram_keys()
        V = self.cfg.d_vocab
        used = keys < V * V
        return torch.stack([torch.where(used, keys // V, -1), torch.where(used, keys % V, -1)], -1)

    @torch.no_grad()
    def set_bigram_rows(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """Assign bigram rows: ``keys`` [n] sorted ascending (``prev * d_vocab + t``) and
        their rows [n, d_in] (read instead of the token's row), n <= ``lookup_bigram_rows``;
        the remaining rows are unused."""
        B, V = self.cfg.lookup_bigram_rows, self.cfg.d_vocab
        if self.cfg.lookup_ngram != 2:
            raise ValueError("set_bigram_rows needs a bigram lookup (lookup_ngram=2)")
        if keys.ndim != 1 or len(keys) > B or rows.shape != (len(keys), self.cfg.d_in):
            raise ValueError(f"expected at most {B} sorted keys and rows [n, {self.cfg.d_in}], got "
                             f"{tuple(keys.shape)} and {tuple(rows.shape)}")
        keys = keys.long().cpu()
        if len(keys) and (bool((keys[1:] <= keys[:-1]).any()) or int(keys.min()) < 0 or int(keys.max()) >= V * V):
            raise ValueError("bigram keys must be distinct, sorted and in [0, d_vocab**2)")
        full = torch.full((B,), -1, dtype=torch.long)
        full[: len(keys)] = keys
        self._store_bigram_ids(full)
        self.W_lookup.data[V : V + len(keys)] = rows.to(self.W_lookup)
        self.W_lookup.data[V + len(keys) :] = 0

    @torch.no_grad()
    def resize_bigram_rows(self, n: int) -> None:
        """Hold exactly ``n`` bigram rows: the first ``n`` are kept (as they are), any rows
        added are unused. The runner calls it with the number of pairs the init chose, so
        a saved lookup carries no empty rows. Call it before an optimizer holds
        ``W_lookup`` (it replaces the parameter)."""
        if self.cfg.lookup_ngram != 2:
            raise ValueError("resize_bigram_rows needs a bigram lookup (lookup_ngram=2)")
        if n < 0:
            raise ValueError(f"a lookup cannot hold {n} bigram rows")
        V, old = self.cfg.d_vocab, self.cfg.lookup_bigram_rows
        keep = min(n, old)
        keys = torch.full((n,), -1, dtype=torch.long)
        used = self._bigram_keys()[:keep].cpu()
        keys[:keep] = torch.where(used < V * V, used, torch.full_like(used, -1))
        weight = self.W_lookup.new_zeros(V + n, self.W_lookup.shape[1])
        weight[: V + keep] = self.W_lookup[: V + keep]
        self.W_lookup = nn.Parameter(weight, requires_grad=self.W_lookup.requires_grad)
        self.lookup_bigram_ids = self.lookup_bigram_ids.new_zeros(n, 2, 3)
        self.cfg.lookup_bigram_rows = n
        self._store_bigram_ids(keys)
        self._keys_memo = self._rows_memo = self._lookup_stage = None

    # ---- sparse updates -------------------------------------------------------------
    # With lookup_updates="sparse", a training forward does not read W_lookup through
    # autograd (whose gradient would be a dense [d_vocab, d_in] tensor, and Adam's update
    # a pass over 4 * d_vocab * d_in floats). It stages the step's distinct rows into
    # ``lookup_rows`` [n, d_in] (n = the number of ids; slots past the distinct count are
    # padding that no position reads) and reads those. So the gradient is
    # ``lookup_rows.grad``: exactly the nonzero rows of the dense gradient, one per distinct
    # token. SAELens's clip_grad_norm_ therefore sees the same norm as with a dense lookup,
    # and ``training.optim.TokenizedAdam`` writes the rows' update back into W_lookup.
    # Every shape is fixed by the batch (sort + cumsum, no unique()): no host sync.
    def _staged_lookup(self, ids: torch.Tensor) -> torch.Tensor:
        stage = self._lookup_stage
        if stage is None or stage[0] is not ids:  # once per batch (Matryoshka reads it per level)
            stage = self.stage_lookup_rows(ids)
        return nn.functional.embedding(stage[1], self.lookup_rows)

    @torch.no_grad()
    def stage_lookup_rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stage the distinct rows of ``ids`` for the next training forward (the trainer
        calls this before each step; a forward with other ids stages its own)."""
        assert self.lookup_rows is not None
        if self._staged_version is not None and self.lookup_rows._version != self._staged_version:
            # Something other than TokenizedAdam stepped the staged rows in place (e.g. a
            # plain torch.optim.Adam over sae.parameters()); its updates never reach W_lookup.
            raise RuntimeError(
                "the sparse lookup's staged rows were modified by an optimizer other than "
                "sae_lens_tokenized.training.TokenizedAdam, so W_lookup would silently never "
                "train. Train through TokenizedSAETrainingRunner / TokenizedSAETrainer, or set "
                "lookup_updates='dense' to use another optimizer."
            )
        flat = ids.reshape(-1).to(self.W_lookup.device)
        n = flat.numel()
        sorted_ids, order = torch.sort(flat)
        starts = torch.ones_like(sorted_ids, dtype=torch.bool)
        starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
        slot = torch.cumsum(starts, 0) - 1  # the distinct row each sorted position reads
        inverse = torch.empty_like(slot)
        inverse[order] = slot
        rows = torch.zeros_like(sorted_ids).scatter_(0, slot, sorted_ids)
        valid = torch.arange(n, device=flat.device) <= (slot[-1] if n else -1)
        if self.lookup_rows.shape[0] != n:  # the batch size changed (or the first batch)
            self.lookup_rows.data = self.W_lookup.new_empty(n, self.W_lookup.shape[1])
        torch.index_select(self.W_lookup.detach(), 0, rows, out=self.lookup_rows.data)
        self._staged_version = self.lookup_rows._version
        self.lookup_rows.grad = None
        stage = (ids, inverse.view(ids.shape), rows, valid)
        self._lookup_stage = stage
        return stage

    def take_lookup_stage(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The staged rows' token ids and validity mask, for the optimizer (once per step)."""
        if self._lookup_stage is None:
            raise RuntimeError(
                "lookup_rows has a gradient but no staged rows: a sparse lookup must be "
                "stepped once after each training forward (use TokenizedAdam)."
            )
        _, _, rows, valid = self._lookup_stage
        self._lookup_stage = None
        return rows, valid

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # .to()/.cuda()/.half() move registered parameters; the staged rows follow W_lookup
        # (their content is per-step scratch). SAELens loads on the meta device first.
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        rows = self.lookup_rows
        if rows is not None:
            fresh = self.W_lookup.detach().new_empty(0, self.W_lookup.shape[1])
            if rows.is_meta:
                object.__setattr__(self, "lookup_rows", nn.Parameter(fresh, requires_grad=rows.requires_grad))
            else:
                rows.data = fresh
            self._lookup_stage = None
            self._staged_version = None
        return out

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):  # type: ignore[override]
        yield from super().named_parameters(prefix, recurse, remove_duplicate)  # type: ignore[misc]
        if self.lookup_rows is not None:
            yield (prefix + "." if prefix else "") + "lookup_rows", self.lookup_rows

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
        expected = (self.cfg.d_vocab, self.cfg.d_in)
        if tuple(unigrams.shape) != expected:
            raise ValueError(
                f"unigram table has shape {tuple(unigrams.shape)} but this SAE's lookup needs "
                f"[d_vocab, d_in] = {list(expected)}. Was it computed for another model or hook?"
            )
        if not torch.isfinite(unigrams).all():
            raise ValueError("unigram table contains NaN or inf values; recompute it.")
        if scale is None:
            scale = self.cfg.lookup_init_scale
        if scale is None:
            scale = default_init_scale(self.cfg.unigram_strategy)
        self.W_lookup.data[: self.cfg.d_vocab] = (scale * unigrams).to(self.W_lookup.device, self.W_lookup.dtype)

    def set_lookup_trainable(self, trainable: bool) -> None:
        if self.lookup_rows is not None:
            self.lookup_rows.requires_grad_(trainable)
        else:
            self.W_lookup.requires_grad_(trainable)

"""The lookup's config fields, shared by every tokenized architecture's config.

``LookupConfig`` / ``LookupTrainingConfig`` are dataclass mixins: each
``Tokenized<Base>SAEConfig`` is ``LookupConfig`` + SAELens's ``<Base>SAEConfig``, and its
architecture name is derived (``"tokenized_" + <base>.architecture()``). The evidence
behind each default is on the docs' "Lookup initialisation" and "Results" pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sae_lens_tokenized.lookup.strategies import (
    DATA_STRATEGY,
    DEFAULT_INIT_SCALE,
    PRECOMPUTED_STRATEGY,
    UnigramStrategy,
    UnigramStrategyError,
)

__all__ = ["DATA_STRATEGY", "PRECOMPUTED_STRATEGY", "DEFAULT_INIT_SCALE"]  # re-exported for callers


@dataclass(kw_only=True)
class LookupConfig:
    """Config fields every tokenized SAE carries (saved in cfg.json).

    Args:
        d_vocab: Rows of the lookup table: the model's ``cfg.d_vocab``, which can exceed
            ``len(tokenizer)`` (Pythia: 50,304 vs 50,277). In a training config it may be
            left ``None`` and is then taken from the model by the runner.
        unigram_strategy: The prompt template the lookup was initialised from (see
            ``sae_lens_tokenized.lookup_init``). Recorded so analyses can recompute the same
            unigram table; it has no effect on the forward pass.
        lookup_init_scale: ``W_lookup = lookup_init_scale * U`` at initialisation. ``None``
            (default) takes ``DEFAULT_INIT_SCALE``.
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
    def lookup_width(self) -> int:
        """Columns of ``W_lookup``: the width of what is reconstructed (``d_in``; a
        transcoder's ``d_out``, its output)."""
        return int(getattr(self, "d_out", None) or self.d_in)

    @property
    def lookup_width_name(self) -> str:
        """The config field ``lookup_width`` is read from, for error messages."""
        return "d_out" if getattr(self, "d_out", None) else "d_in"

    @property
    def lookup_n_rows(self) -> int:
        """Rows of ``W_lookup``: one per token, then the bigram rows."""
        return int(self.d_vocab or 0) + int(self.lookup_bigram_rows or 0)


@dataclass(kw_only=True)
class LookupTrainingConfig(LookupConfig):
    """Training-only lookup fields (recorded in cfg.json metadata, not needed to run).

    The defaults and the measurements behind them: docs "Lookup initialisation" (init
    settings) and "Results" (lookup lr, sparse vs dense updates).

    Args:
        train_lookup: Train ``W_lookup`` (True) or keep it frozen at its init (False).
        lookup_lr: Learning rate of the lookup's own Adam parameter group (``None``: the
            runner's ``lr``). The authors used 1e-2 with dense Adam against 1e-4 for the
            SAE. Lazy (sparse) updates move a row once per step that touches it, where dense
            Adam keeps moving it on its momentum, so the sparse default is higher; with
            ``lookup_updates="dense"`` use the authors' 1e-2. The lr schedule multiplies
            both groups alike.
        unigram_table_path: A precomputed unigram table (safetensors with a tensor
            ``unigrams`` of shape [d_vocab, d_in]) to initialise from. ``None`` computes it.
        init_lookup_from_unigrams: Initialise the lookup before training (the method).
            False keeps the zero init (an ablation).
        unigram_cache: Reuse/write computed prompt tables in the user cache folder
            (``get_unigram_table``).
        lookup_updates: ``"sparse_rowwise"`` (the default): a step updates only the rows
            its tokens read, with lazy Adam whose moments are allocated as rows are first
            touched, so it costs O(batch * d_in) whatever d_vocab is (``lookup/sparse.py``);
            it keeps one second moment per row (FBGEMM's partial row-wise Adam for
            embedding tables), which halves the moments a run holds and reconstructed
            held-out text as well or better in most measured runs (docs "Results", "One
            second moment per row"). ``"sparse"``: the same with Adam's second moment per
            element (lazy Adam, as ``torch.optim.SparseAdam``; the default before).
            ``"dense"``: the whole table is one ordinary Adam parameter; its first step
            is ``"sparse"``'s.
        lookup_init_tokens: how many activations of the training stream the data-estimated
            init (``unigram_strategy="data"``) and the bigram rows (``lookup_ngram=2``) are
            estimated from: the first ones of the training stream, held (``lookup_init_hold``)
            and then trained on; never more than the run's ``training_tokens`` nor more
            than one pass over a finite dataset. What was drawn, and which cap applied, is
            recorded in cfg.json (``lookup_init``).
        lookup_init_hold: where that sample waits until training takes it
            (``n * (d_in + 2) * 4`` bytes): ``"disk"``, one unnamed temporary file under
            ``tempfile.gettempdir()`` (set ``TMPDIR`` to move it), closed once served and
            freed by the system however the process ends, so memory holds one batch of it
            at a time; or ``"memory"``, on the store's device. With too little free disk the run stops before writing any.
        lookup_init_pseudo_count: shrinkage of data-estimated token rows: a token seen n
            times gets ``(sum + c * prior) / (n + c)``; an unseen token gets the prior.
        lookup_init_prior: the prior of data-estimated token rows: a prompt strategy
            (the default, ``"space,t"``), ``"auto"`` (the best-measured prompt strategy) or
            ``"mean"`` (the sample's mean activation, the same row for every token). With a
            strategy, token t's prior is ``mean + (U[t] - U_mean)``: its unigram, shifted so
            the priors average to the sample mean, so tokens the sample never saw still get
            a row of their own, and rare ones shrink toward it. U is one forward of the
            vocabulary's prompts up to the hook, cached per model and hook
            (``unigram_cache``); a precomputed table given to the runner is used instead.
            Measured against ``"mean"`` in docs "Results" ("The prior of rare and unseen
            tokens").
        lookup_bigram_pseudo_count: the same shrinkage for bigram rows, toward their
            token's row.
        lookup_bigram_min_count: a pair seen fewer times in the sample gets no bigram row.
            The default, 2, leaves out pairs seen once: such a row is one activation, which
            training then fits exactly, and on small data that cost held-out reconstruction
            (docs "Results", "Do the defaults generalise?").

    ``unigram_strategy`` may also be ``"auto"`` in a training config: the runner measures
    the candidate strategies (the prompt strategies and ``"data"``) on a few training
    sequences the sample does not include, keeps the best, and records the measurement in
    the saved cfg.json metadata (``unigram_strategy_selection``).
    """

    # Defaults that differ from the inference config's (which keeps the method's, so a
    # cfg.json without these fields loads as what it is): measured best on SmolLM2
    # (docs "Lookup initialisation").
    unigram_strategy: str = "data"
    lookup_ngram: int = 2
    train_lookup: bool = True
    lookup_lr: float | None = 3e-2
    unigram_table_path: str | None = None
    init_lookup_from_unigrams: bool = True
    unigram_cache: bool = True
    lookup_updates: str = "sparse_rowwise"
    lookup_init_tokens: int = 500_000
    lookup_init_hold: str = "disk"
    lookup_init_pseudo_count: float = 0.5
    lookup_init_prior: str = "space,t"
    lookup_bigram_min_count: int = 2
    lookup_bigram_pseudo_count: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lookup_init_tokens <= 0:
            raise ValueError(f"lookup_init_tokens must be > 0, got {self.lookup_init_tokens}")
        if self.lookup_init_hold not in HOLD_PLACES:
            raise ValueError(f"lookup_init_hold must be one of {HOLD_PLACES}, got {self.lookup_init_hold!r}")
        if self.lookup_init_pseudo_count < 0:
            raise ValueError(f"lookup_init_pseudo_count must be >= 0, got {self.lookup_init_pseudo_count}")
        if self.lookup_bigram_pseudo_count < 0:
            raise ValueError(f"lookup_bigram_pseudo_count must be >= 0, got {self.lookup_bigram_pseudo_count}")
        if self.lookup_init_prior not in ("mean", "auto"):
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
#: where the init sample waits until trained on (``lookup_init_hold``; ``HeldBatches``)
HOLD_PLACES = ("disk", "memory")
LOOKUP_UPDATES = ("sparse", "dense", "sparse_rowwise")
#: the lookup_updates values whose table is updated lazily, a step's rows only (lookup/sparse.py)
LAZY_LOOKUP_UPDATES = ("sparse", "sparse_rowwise")
#: default bigram row budget (docs "Lookup initialisation")
DEFAULT_BIGRAM_ROWS = 65_536
#: largest vocabulary whose bigram ids round-trip through SAELens's loader in any dtype
#: (each id is stored as three base-256 digits; see ``TokenLookupMixin._store_bigram_ids``)
MAX_BIGRAM_VOCAB = 256**3


#: The method's own settings (Dooms & Wilhelm: a unigram lookup initialised from the
#: ``[<bos>, t]`` prompt at half scale), as a named option:
#: ``TokenizedTopKTrainingSAEConfig(**METHOD_LOOKUP, d_in=..., ...)``.
METHOD_LOOKUP: dict = {"unigram_strategy": "bos,t", "lookup_init_scale": 0.5, "lookup_ngram": 1}


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



"""Transcoders: an MLP's input encoded sparsely, its *output* decoded; plain and tokenized.

SAELens loads transcoders (``sae_lens.saes.transcoder``: ``d_out`` in the config, the
output hook in ``cfg.metadata.hook_name_out``, no decoder bias subtracted from the input)
but has no training classes (SAELens issue #182). Here a transcoder is a SAELens SAE
class with ``TranscoderMixin`` in front, so the architecture's encoder, activation,
auxiliary losses and saving stay SAELens's own:

- the decoder writes ``d_out`` columns (``W_dec`` [d_sae, d_out], ``b_dec`` [d_out]) and
  the input is read as SAELens's ``Transcoder`` reads it (``Transcoder.process_sae_in``);
- in training, SAELens's ``training_forward_pass`` reconstructs the step's ``sae_in``;
  a transcoder's step is given the *target* there (so the MSE and the TopK auxiliary loss
  compare against the MLP's output) and encodes the input bound for the step by the
  trainer (``training/transcoders.py``), as token ids are bound;
- a tokenized transcoder adds ``W_lookup[t]`` to the output: the lookup lives in output
  space (``LookupConfig.lookup_width``), so MLP0's token-determined output (an extended
  token embedding; arXiv 2502.17332 Sec. 5 on single-token latents) leaves the latents.

The output hook is named in the training config (``hook_name_out``) and recorded in
``cfg.metadata.hook_name_out``, where SAELens's ``HookedSAETransformer.add_sae`` looks
for it to read the input at one hook and replace the output at the other.

SAELens has no TopK transcoder class, so a plain TopK transcoder saves as this package's
``topk_transcoder`` (loadable once ``sae_lens_tokenized`` is imported). Skip connections,
JumpReLU and BatchTopK transcoders are not built yet (docs/transcoders.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from sae_lens.registry import get_sae_class
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.transcoder import Transcoder
from torch import nn

from sae_lens_tokenized.saes.tokenized_batchtopk_sae import (
    TokenizedBatchTopKTrainingSAE,
    TokenizedBatchTopKTrainingSAEConfig,
)
from sae_lens_tokenized.saes.tokenized_jumprelu_sae import (
    TokenizedJumpReLUSAE,
    TokenizedJumpReLUSAEConfig,
    TokenizedJumpReLUTrainingSAE,
    TokenizedJumpReLUTrainingSAEConfig,
)
from sae_lens_tokenized.saes.tokenized_standard_sae import (
    TokenizedStandardSAE,
    TokenizedStandardSAEConfig,
    TokenizedStandardTrainingSAE,
    TokenizedStandardTrainingSAEConfig,
)
from sae_lens_tokenized.saes.tokenized_topk_sae import (
    TokenizedTopKSAE,
    TokenizedTopKSAEConfig,
    TokenizedTopKTrainingSAE,
    TokenizedTopKTrainingSAEConfig,
)


@dataclass(kw_only=True)
class TranscoderFields:
    """``d_out``: the output's width; the input is never shifted by ``b_dec`` (which has
    ``d_out`` entries), as in SAELens's ``TranscoderConfig``."""

    d_out: int
    apply_b_dec_to_input: bool = False
    #: add ``x_in @ W_skip.T`` (``W_skip`` [d_out, d_in], zero-initialised), as SAELens's
    #: ``SkipTranscoder``; trained with the rest
    skip_connection: bool = False

    @classmethod
    def architecture(cls) -> str:
        return super().architecture() + "_transcoder"  # type: ignore[misc]

    def get_inference_config_class(self) -> type:
        # What a training config saves as: SAELens's transcoder class where it has one
        # (standard -> "transcoder", JumpReLU -> "jumprelu_transcoder", each with a "skip_"
        # variant), else this package's "<base>_transcoder". BatchTopK saves as JumpReLU,
        # as SAELens saves BatchTopK SAEs.
        name = type(self).architecture().removesuffix("_transcoder").replace("batchtopk", "jumprelu")
        if name in ("standard", "jumprelu"):
            name = {"standard": "", "jumprelu": "jumprelu_"}[name] + ("skip_" if self.skip_connection else "")
            return get_sae_class(name + "transcoder")[1]
        return get_sae_class(name + "_transcoder")[1]

    def __post_init__(self) -> None:
        if self.apply_b_dec_to_input:
            raise ValueError("apply_b_dec_to_input is not supported for transcoders (b_dec has d_out entries); "
                             "leave it False.")
        super().__post_init__()  # type: ignore[misc]


@dataclass(kw_only=True)
class TranscoderTrainingFields(TranscoderFields):
    """``hook_name_out``: where the target is read (e.g. ``blocks.0.hook_mlp_out``, or an
    HF module such as ``model.layers.0.mlp``); the runner config's ``hook_name`` is the
    input. Recorded in ``cfg.metadata.hook_name_out``."""

    hook_name_out: str

    def __post_init__(self) -> None:
        if getattr(self, "normalize_activations", "none") != "none":
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported for transcoders yet "  # type: ignore[attr-defined]
                "(it would scale the input but not the target); use 'none'.")
        super().__post_init__()
        self.metadata.hook_name_out = self.hook_name_out  # type: ignore[attr-defined]


class TranscoderMixin:
    """Put first in the bases: ``class TopKTranscoder(TranscoderMixin, TopKSAE)``."""

    cfg: Any

    def initialize_weights(self) -> None:
        super().initialize_weights()  # type: ignore[misc]
        # SAELens's init sizes the decoder [d_sae, d_in] (and ties W_enc to it); a
        # transcoder's decoder writes d_out, initialised as SAELens's Transcoder does it,
        # at the training config's decoder norm where it has one.
        W_dec = torch.empty(self.cfg.d_sae, self.cfg.d_out, dtype=self.dtype, device=self.device)  # type: ignore[attr-defined]
        nn.init.kaiming_uniform_(W_dec)
        norm = getattr(self.cfg, "decoder_init_norm", None)
        if norm is not None:
            W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * norm
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(self.cfg.d_out, dtype=self.dtype, device=self.device))  # type: ignore[attr-defined]
        if self.cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(self.cfg.d_out, self.cfg.d_in, dtype=self.dtype,  # type: ignore[attr-defined]
                                                   device=self.device))  # type: ignore[attr-defined]

    def skip(self, x_in: torch.Tensor) -> torch.Tensor | float:
        """The skip connection's part of the output (SAELens's ``SkipTranscoder``: ``x @ W_skip.T``)."""
        return x_in.to(self.W_skip.dtype) @ self.W_skip.T if self.cfg.skip_connection else 0.0

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return super().forward(x, *args, **kwargs) + self.skip(x)  # type: ignore[misc]

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        return Transcoder.process_sae_in(self, sae_in)  # type: ignore[arg-type]

    @property
    def d_out(self) -> int:
        return self.cfg.d_out


class TranscoderTrainingMixin(TranscoderMixin):
    """Training: the trainer binds each step's target (``with sae.transcoder_target(y)``)."""

    _target: torch.Tensor | None = None
    _encoding: torch.Tensor | None = None

    @contextlib.contextmanager
    def transcoder_target(self, target: torch.Tensor) -> Iterator[None]:
        """Inside the block, ``training_forward_pass`` reconstructs ``target`` [B, d_out]."""
        if target.shape[-1] != self.cfg.d_out:
            raise ValueError(f"the target has width {target.shape[-1]} but the transcoder has d_out={self.cfg.d_out}")
        self._target = target
        try:
            yield
        finally:
            self._target = None

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if self._target is None:
            raise RuntimeError(
                "a transcoder trains on (input, target) pairs: train it through "
                "sae_lens_tokenized.TokenizedSAETrainingRunner, whose store captures the output hook "
                "(or bind one with `with sae.transcoder_target(y):`).")
        if len(self._target) != len(step_input.sae_in):
            raise ValueError(f"{len(step_input.sae_in)} inputs but {len(self._target)} targets")
        self._encoding = step_input.sae_in
        try:  # SAELens's pass, reconstructing the target and encoding the input
            return super().training_forward_pass(replace(step_input, sae_in=self._target))  # type: ignore[misc]
        finally:
            self._encoding = None

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().encode_with_hidden_pre(x if self._encoding is None else self._encoding)  # type: ignore[misc]

    def decode(self, feature_acts: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = super().decode(feature_acts, *args, **kwargs)  # type: ignore[misc]
        # in training_forward_pass the skip connection belongs to the reconstruction
        return out if self._encoding is None else out + self.skip(self._encoding)


# ---- the architectures ---------------------------------------------------------------
# Plain ones save for inference as SAELens's own class where it has one (standard ->
# ``transcoder``, JumpReLU and BatchTopK -> ``jumprelu_transcoder``, with a skip connection
# ``skip_transcoder`` / ``jumprelu_skip_transcoder``); TopK, which SAELens lacks, as
# ``topk_transcoder``; tokenized ones as ``tokenized_<base>_transcoder``.


@dataclass(kw_only=True)
class TopKTranscoderConfig(TranscoderFields, TopKSAEConfig):
    """SAELens's ``TopKSAEConfig`` + ``d_out`` (architecture ``topk_transcoder``)."""


class TopKTranscoder(TranscoderMixin, TopKSAE):
    cfg: TopKTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class TopKTrainingTranscoderConfig(TranscoderTrainingFields, TopKTrainingSAEConfig):
    """``TopKTrainingTranscoderConfig(d_in=576, d_out=576, d_sae=4608, k=32,
    hook_name_out="blocks.0.hook_mlp_out")``, with ``hook_name="blocks.0.ln2.hook_normalized"``
    in the runner config."""


class TopKTrainingTranscoder(TranscoderTrainingMixin, TopKTrainingSAE):
    cfg: TopKTrainingTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class BatchTopKTrainingTranscoderConfig(TranscoderTrainingFields, BatchTopKTrainingSAEConfig):
    """BatchTopK transcoder; saves as SAELens's ``jumprelu_transcoder``."""


class BatchTopKTrainingTranscoder(TranscoderTrainingMixin, BatchTopKTrainingSAE):
    cfg: BatchTopKTrainingTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class JumpReLUTrainingTranscoderConfig(TranscoderTrainingFields, JumpReLUTrainingSAEConfig):
    """JumpReLU transcoder (Gemma Scope's); saves as SAELens's ``jumprelu_transcoder``."""


class JumpReLUTrainingTranscoder(TranscoderTrainingMixin, JumpReLUTrainingSAE):
    cfg: JumpReLUTrainingTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class StandardTrainingTranscoderConfig(TranscoderTrainingFields, StandardTrainingSAEConfig):
    """ReLU + L1 transcoder; saves as SAELens's ``transcoder``."""


class StandardTrainingTranscoder(TranscoderTrainingMixin, StandardTrainingSAE):
    cfg: StandardTrainingTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class TokenizedTopKTranscoderConfig(TranscoderFields, TokenizedTopKSAEConfig):
    """Tokenized TopK transcoder (architecture ``tokenized_topk_transcoder``)."""


class TokenizedTopKTranscoder(TranscoderMixin, TokenizedTopKSAE):
    """``tc(x_in, token_ids=ids)`` -> the MLP output's reconstruction, lookup included."""

    cfg: TokenizedTopKTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class TokenizedTopKTrainingTranscoderConfig(TranscoderTrainingFields, TokenizedTopKTrainingSAEConfig):
    """``TokenizedTopKTrainingTranscoderConfig(d_in=576, d_out=576, d_sae=4608, k=32,
    hook_name_out="blocks.0.hook_mlp_out")``: the lookup is estimated at the output hook."""


class TokenizedTopKTrainingTranscoder(TranscoderTrainingMixin, TokenizedTopKTrainingSAE):
    cfg: TokenizedTopKTrainingTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class TokenizedJumpReLUTranscoderConfig(TranscoderFields, TokenizedJumpReLUSAEConfig):
    """Tokenized JumpReLU transcoder; tokenized BatchTopK transcoders save as this too."""


class TokenizedJumpReLUTranscoder(TranscoderMixin, TokenizedJumpReLUSAE):
    cfg: TokenizedJumpReLUTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class TokenizedJumpReLUTrainingTranscoderConfig(TranscoderTrainingFields, TokenizedJumpReLUTrainingSAEConfig):
    pass


class TokenizedJumpReLUTrainingTranscoder(TranscoderTrainingMixin, TokenizedJumpReLUTrainingSAE):
    cfg: TokenizedJumpReLUTrainingTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class TokenizedBatchTopKTrainingTranscoderConfig(TranscoderTrainingFields, TokenizedBatchTopKTrainingSAEConfig):
    pass


class TokenizedBatchTopKTrainingTranscoder(TranscoderTrainingMixin, TokenizedBatchTopKTrainingSAE):
    cfg: TokenizedBatchTopKTrainingTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class TokenizedStandardTranscoderConfig(TranscoderFields, TokenizedStandardSAEConfig):
    pass


class TokenizedStandardTranscoder(TranscoderMixin, TokenizedStandardSAE):
    cfg: TokenizedStandardTranscoderConfig  # type: ignore[assignment]


@dataclass(kw_only=True)
class TokenizedStandardTrainingTranscoderConfig(TranscoderTrainingFields, TokenizedStandardTrainingSAEConfig):
    pass


class TokenizedStandardTrainingTranscoder(TranscoderTrainingMixin, TokenizedStandardTrainingSAE):
    cfg: TokenizedStandardTrainingTranscoderConfig  # type: ignore[assignment]


#: (class, config) per transcoder architecture this package registers (plain ones that
#: SAELens can load save as SAELens's own classes and register no inference class)
TRANSCODER_INFERENCE_CLASSES = [
    (TopKTranscoder, TopKTranscoderConfig),
    (TokenizedTopKTranscoder, TokenizedTopKTranscoderConfig),
    (TokenizedJumpReLUTranscoder, TokenizedJumpReLUTranscoderConfig),
    (TokenizedStandardTranscoder, TokenizedStandardTranscoderConfig),
]
TRANSCODER_TRAINING_CLASSES = [
    (StandardTrainingTranscoder, StandardTrainingTranscoderConfig),
    (TopKTrainingTranscoder, TopKTrainingTranscoderConfig),
    (BatchTopKTrainingTranscoder, BatchTopKTrainingTranscoderConfig),
    (JumpReLUTrainingTranscoder, JumpReLUTrainingTranscoderConfig),
    (TokenizedStandardTrainingTranscoder, TokenizedStandardTrainingTranscoderConfig),
    (TokenizedTopKTrainingTranscoder, TokenizedTopKTrainingTranscoderConfig),
    (TokenizedBatchTopKTrainingTranscoder, TokenizedBatchTopKTrainingTranscoderConfig),
    (TokenizedJumpReLUTrainingTranscoder, TokenizedJumpReLUTrainingTranscoderConfig),
]


def is_transcoder_config(cfg: Any) -> bool:
    return isinstance(cfg, TranscoderFields)


__all__ = [
    "TRANSCODER_INFERENCE_CLASSES",
    "TRANSCODER_TRAINING_CLASSES",
    "TranscoderMixin",
    "TranscoderTrainingMixin",
    *(cls.__name__ for pair in TRANSCODER_INFERENCE_CLASSES + TRANSCODER_TRAINING_CLASSES for cls in pair),
]

"""Inference-only TopK SAE without the ReLU: the authors' baseline forward, for converted
checkpoints (``convert_original_checkpoint`` of a ``*_o30.pt`` file). Not for training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from typing_extensions import override

from sae_lens_tokenized.saes.tokenized_topk_sae import RawTopK


@dataclass
class RawTopKSAEConfig(TopKSAEConfig):
    """TopKSAEConfig; the kept top-k values are not passed through a ReLU."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_raw"


class RawTopKSAE(TopKSAE):
    cfg: RawTopKSAEConfig  # type: ignore[assignment]

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return RawTopK(self.cfg.k)

"""The method's metrics, written once (arXiv 2502.17332, Sec. 4: "NMSE", dead latents)."""

from __future__ import annotations

import torch


def nmse_per_activation(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``|x_hat - x|^2 / |x|^2`` for each activation (all dims but the last)."""
    return (x_hat - x).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(1e-12)


def nmse(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """The method's NMSE: ``nmse_per_activation`` averaged over activations."""
    return float(nmse_per_activation(x_hat, x).mean())

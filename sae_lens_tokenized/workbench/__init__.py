"""The workbench: one place that prepares a model, its data splits, activations and
evaluation, for the demo and every benchmark, and trains any architecture on them.

``settings`` (what a comparison is), ``data`` (model, splits, activations computed once
per hook, stores serving them to SAELens's runners), ``runs`` (``train_variant``,
``train_together``, ``evaluate``, ``count_embedded_tokens``), ``report`` (plots, JSON),
``demo`` (the package's main job).
"""

from sae_lens_tokenized.workbench.data import HookData, Workbench, precompute
from sae_lens_tokenized.workbench.report import command_line, plot_curves, write_json
from sae_lens_tokenized.workbench.runs import (
    count_embedded_tokens,
    dead_latents,
    evaluate,
    heldout_nmse,
    quiet_workbench_notices,
    tokens_to_reach,
    train_together,
    train_variant,
)
from sae_lens_tokenized.workbench.settings import (
    SPARSITY,
    CompareSettings,
    is_tokenized,
    runner_config,
    sae_config,
    stream_tokens,
)

__all__ = [
    "SPARSITY",
    "CompareSettings",
    "HookData",
    "Workbench",
    "command_line",
    "count_embedded_tokens",
    "dead_latents",
    "evaluate",
    "heldout_nmse",
    "is_tokenized",
    "plot_curves",
    "precompute",
    "quiet_workbench_notices",
    "runner_config",
    "sae_config",
    "stream_tokens",
    "tokens_to_reach",
    "train_together",
    "train_variant",
    "write_json",
]

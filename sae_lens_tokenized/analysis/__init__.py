"""The analyses of the method's literature: strategies, massive activations, the lookup."""

from sae_lens_tokenized.analysis.latents import single_token_latents
from sae_lens_tokenized.analysis.lookup import bigram_analysis, detection_accuracy, lookup_analysis
from sae_lens_tokenized.analysis.lookup_page import lookup_page
from sae_lens_tokenized.analysis.massive import massive_activations, plot_massive
from sae_lens_tokenized.analysis.strategies import compare_strategies, plot_strategies

__all__ = [
    "bigram_analysis",
    "single_token_latents",
    "compare_strategies",
    "detection_accuracy",
    "lookup_analysis",
    "lookup_page",
    "massive_activations",
    "plot_massive",
    "plot_strategies",
]

"""Lookup initialisation: everything that decides the rows a fresh lookup starts from.

``plan`` (``plan_lookup_init``: a plan and a report; the runner only applies it),
``unigrams`` (the model's prompt unigram tables, cached), ``statistics`` (per-token and
per-pair means of the training stream), ``fit`` (how well a table matches real
activations: ``"auto"`` and the sink check). The strategy templates are in
``sae_lens_tokenized.lookup.strategies``.
"""

from sae_lens_tokenized.lookup_init.fit import UnigramFit, UnigramSinkWarning, select_unigram_strategy
from sae_lens_tokenized.lookup_init.plan import LookupInitPlan, plan_lookup_init
from sae_lens_tokenized.lookup_init.statistics import LookupStatistics
from sae_lens_tokenized.lookup_init.unigrams import (
    compute_unigram_table,
    compute_unigram_tables,
    get_unigram_table,
    get_unigram_tables,
)

__all__ = [
    "LookupInitPlan",
    "LookupStatistics",
    "UnigramFit",
    "UnigramSinkWarning",
    "compute_unigram_table",
    "compute_unigram_tables",
    "get_unigram_table",
    "get_unigram_tables",
    "plan_lookup_init",
    "select_unigram_strategy",
]

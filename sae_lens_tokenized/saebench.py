"""Running SAEBench (PyPI ``sae-bench`` 0.6) on tokenized SAEs: one context per eval.

SAEBench builds its own model and calls the SAE in three ways (sae-bench 0.6.0 source):

* a forward of its model, then ``sae.decode(sae.encode(x))`` on the cached activations
  (core; unlearning's clamping hook): the ids of that forward are needed, so the SAE takes
  them from whichever model runs (``token_ids_from_any_model``);
* ``decode(f_ablated) + (x - decode(f))`` on cached activations, with no forward to take
  ids from (SCR, TPP): the lookup cancels exactly, so ``error_term_mode`` leaves it out;
* ``encode`` only, or ``W_dec`` (absorption, sparse probing, autointerp, MDL, meta-structure):
  the encoder is the base architecture's and reads no ids (except Matching Pursuit's);
  nothing to do.

Usage::

    from sae_lens_tokenized.saebench import saebench_mode
    with saebench_mode("core", sae):
        sae_bench.evals.core.main.run_evals(sae, store, model, config)

RAVEL decodes ``[B, D]`` rows taken at one position per prompt without an error term; the
ids it would need are those positions', which its hook does not expose: inside any mode
the SAE raises a ``TokenIdsError`` (shape mismatch) rather than guess.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sae_lens_tokenized.splicing import error_term_mode, token_ids_from_any_model

CAPTURE_EVALS = ("core", "unlearning")
ERROR_TERM_EVALS = ("scr", "tpp")
ENCODE_ONLY_EVALS = ("absorption", "sparse_probing", "sparse_probing_sae_probes", "autointerp", "mdl",
                     "meta_structure")
SAEBENCH_EVALS = CAPTURE_EVALS + ERROR_TERM_EVALS + ENCODE_ONLY_EVALS + ("ravel",)


@contextlib.contextmanager
def saebench_mode(eval_name: str, *saes: Any) -> Iterator[None]:
    """The token-id handling SAEBench's ``eval_name`` needs (module docstring)."""
    if eval_name not in SAEBENCH_EVALS:
        raise ValueError(f"unknown SAEBench eval {eval_name!r}; one of {', '.join(SAEBENCH_EVALS)}")
    if eval_name in ERROR_TERM_EVALS:
        with error_term_mode(*saes):
            yield
    elif eval_name in ENCODE_ONLY_EVALS:
        yield
    else:  # core, unlearning, ravel (which then fails clearly, see the docstring)
        with token_ids_from_any_model(*saes):
            yield

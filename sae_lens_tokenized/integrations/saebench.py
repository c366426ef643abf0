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

    from sae_lens_tokenized.integrations.saebench import saebench_mode
    with saebench_mode("core", sae):
        sae_bench.evals.core.main.run_evals(sae, store, model, config)

Sparse probing on labelled text of your own (SAEBench reads its datasets from the Hub)::

    from sae_lens_tokenized.integrations.saebench import local_probing_dataset
    with local_probing_dataset("bbc_news", train={"sport": [...], ...}, test={...}) as name:
        sae_bench.evals.sparse_probing.main.run_eval(
            SparseProbingEvalConfig(dataset_names=[name], ...), saes, "cpu", out_dir)

Absorption reads ``blocks.{hook_layer}.hook_resid_post`` whatever the SAE's hook, with
``hook_layer`` taken from the hook name; ``saebench_mode("absorption", sae)`` refuses a
``hook_layer`` that would score the SAE on another layer's activations and names the right
one (``absorption_hook_layer``: L - 1 for ``blocks.L.hook_resid_pre``).

RAVEL decodes ``[B, D]`` rows taken at one position per prompt (``base_pos_B``) without an
error term: ``saebench_mode("ravel", sae)`` gives the SAE the ids (and previous ids) of
exactly those positions (``_compat`` entry 8). Outside that mode the SAE raises a
``TokenIdsError`` rather than guess.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from typing import Any

from sae_lens_tokenized._compat import ravel_position_ids, saebench_local_dataset
from sae_lens_tokenized.splicing import _check_tokenized, error_term_mode, token_ids_from_any_model

CAPTURE_EVALS = ("core", "unlearning")
ERROR_TERM_EVALS = ("scr", "tpp")
ENCODE_ONLY_EVALS = ("absorption", "sparse_probing", "sparse_probing_sae_probes", "autointerp", "mdl",
                     "meta_structure")
SAEBENCH_EVALS = CAPTURE_EVALS + ERROR_TERM_EVALS + ENCODE_ONLY_EVALS + ("ravel",)


@contextlib.contextmanager
def local_probing_dataset(name: str, train: dict[str, list[str]], test: dict[str, list[str]]) -> Iterator[str]:
    """Register texts by class as a dataset SAEBench's sparse probing can read; yields its name.

    SAEBench 0.6 resolves ``dataset_names`` through ``dataset_utils.get_multi_label_train_test_data``
    (Hub downloads) and ``dataset_info.chosen_classes_per_dataset``; inside this context the
    yielded name resolves to ``train``/``test`` instead (one binary probe per class, as for its
    own datasets). Its ``probe_train_set_size``/``probe_test_set_size`` do not apply: the texts
    given are the sets. The name is ``name`` plus a fingerprint of the texts, because SAEBench
    caches model activations by dataset name: changed texts get a new name, never the old cache.
    """
    from sae_bench.sae_bench_utils.dataset_info import chosen_classes_per_dataset

    if not train or set(train) != set(test):
        raise ValueError(f"local_probing_dataset({name!r}): train and test need the same non-empty class "
                         f"names; got train {sorted(train)} and test {sorted(test)}")
    empty = [f"{split}[{c!r}]" for split, d in (("train", train), ("test", test)) for c, t in d.items() if not t]
    if empty:
        raise ValueError(f"local_probing_dataset({name!r}): no texts in {', '.join(empty)}")
    if name in chosen_classes_per_dataset:
        raise ValueError(f"local_probing_dataset: {name!r} is one of SAEBench's own datasets; pick another name")
    digest = hashlib.sha256(json.dumps([sorted(train.items()), sorted(test.items())]).encode()).hexdigest()
    registered = f"{name}-{digest[:10]}"
    with saebench_local_dataset(registered, train, test):
        yield registered


def absorption_hook_layer(sae: Any) -> int:
    """The ``hook_layer`` under which SAEBench's absorption eval reads this SAE's input.

    Absorption (sae-bench 0.6) trains its probes on, and encodes,
    ``blocks.{hook_layer}.hook_resid_post`` whatever the SAE's hook. ``hook_layer`` is read
    from the hook name, so an SAE on ``blocks.L.hook_resid_pre`` would be scored on the
    next block's output; that tensor is ``blocks.{L-1}.hook_resid_post``. Set
    ``sae.cfg.hook_layer`` (and ``cfg.metadata.hook_layer``) to the returned value for
    absorption only: other evals read ``hook_name`` and need the original."""
    import re

    name = str(sae.cfg.metadata.hook_name)
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", name)
    if match is None or (match.group(2) == "pre" and match.group(1) == "0"):
        raise ValueError(f"SAEBench's absorption eval reads blocks.L.hook_resid_post; an SAE on {name!r} "
                         "has no such equivalent, so absorption cannot score it")
    layer = int(match.group(1))
    return layer - 1 if match.group(2) == "pre" else layer


@contextlib.contextmanager
def saebench_mode(eval_name: str, *saes: Any) -> Iterator[None]:
    """The token-id handling SAEBench's ``eval_name`` needs (module docstring)."""
    if eval_name not in SAEBENCH_EVALS:
        raise ValueError(f"unknown SAEBench eval {eval_name!r}; one of {', '.join(SAEBENCH_EVALS)}")
    _check_tokenized(saes, f"saebench_mode({eval_name!r}, *saes)")
    if eval_name == "absorption":
        for sae in saes:
            want = absorption_hook_layer(sae)
            if getattr(sae.cfg, "hook_layer", None) != want:
                raise ValueError(
                    f"SAEBench's absorption eval reads blocks.{{hook_layer}}.hook_resid_post; this SAE reads "
                    f"{sae.cfg.metadata.hook_name!r}, so hook_layer must be {want}, not "
                    f"{getattr(sae.cfg, 'hook_layer', None)} (it would score the SAE on another layer's "
                    f"activations). Set sae.cfg.hook_layer = sae.cfg.metadata.hook_layer = {want} for this eval "
                    "(absorption_hook_layer(sae) gives it)."
                )
    if eval_name in ERROR_TERM_EVALS:
        with error_term_mode(*saes):
            yield
    elif eval_name in ENCODE_ONLY_EVALS:
        yield
    elif eval_name == "ravel":
        with ravel_position_ids(*saes):
            yield
    else:  # core, unlearning
        with token_ids_from_any_model(*saes):
            yield

"""SAEBench's own eval code on a tokenized SAE (tiny model, local data).

SAEBench 0.6 needs datasets<4 and numpy<2, so these run in CI's second environment (the
oldest TransformerLens and SAELens of the supported range, with sae-bench and
sae-dashboard installed; .ci/run) and are skipped where sae-bench is not installed."""

import copy

import pytest
import torch

sae_bench = pytest.importorskip("sae_bench")

from sae_bench.evals.core.eval_config import CoreEvalConfig  # noqa: E402
from sae_bench.evals.core.main import run_evals as core_run_evals  # noqa: E402
from sae_bench.evals.scr_and_tpp.main import ablated_precomputed_activations  # noqa: E402
from sae_bench.sae_bench_utils.general_utils import load_and_format_sae  # noqa: E402
from sae_lens.training.activations_store import ActivationsStore  # noqa: E402

from sae_lens_tokenized import (  # noqa: E402
    TokenIdsError,
    TokenizedTopKSAE,
    TokenizedTopKSAEConfig,
    token_ids_from,
)
from sae_lens_tokenized.saebench import saebench_mode  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture
def sae(model):
    torch.manual_seed(0)
    sae = TokenizedTopKSAE(TokenizedTopKSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=model.cfg.d_vocab))
    with torch.no_grad():
        sae.W_lookup.normal_()
        sae.W_dec.data /= sae.W_dec.norm(dim=1, keepdim=True)  # SAEBench checks unit decoder rows
    sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.model_name = "tiny"
    sae.cfg.metadata.context_size = 32
    sae.cfg.metadata.prepend_bos = True  # as SAELens's runner records it
    return load_and_format_sae("custom", sae, "cpu")[1]


def _core(sae, model, dataset):
    store = ActivationsStore.from_sae(model, sae, context_size=32, dataset=dataset)
    cfg = CoreEvalConfig(model_name="tiny", batch_size_prompts=2, n_eval_reconstruction_batches=2,
                         n_eval_sparsity_variance_batches=2, compute_kl=True, compute_ce_loss=True,
                         compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True)
    return core_run_evals(sae, store, model, cfg)[0]


def test_core_eval_runs_with_the_ids_of_saebench_s_own_forwards(sae, model, dataset):
    with pytest.raises(TokenIdsError):  # what a user gets today: (SAEBench logs "Failed to evaluate")
        _core(sae, model, dataset)
    with saebench_mode("core", sae):
        got = _core(sae, model, dataset)
    # the same numbers as with the model named explicitly (token_ids_from, checked against
    # explicit ids in test_splicing.py)
    with token_ids_from(model, sae):
        expected = _core(sae, model, dataset)
    assert set(got) >= {"model_behavior_preservation", "model_performance_preservation", "reconstruction_quality"}
    for group in ("model_behavior_preservation", "model_performance_preservation", "reconstruction_quality", "sparsity"):
        for key, value in expected[group].items():
            assert got[group][key] == pytest.approx(value, rel=1e-6), (group, key)
    # and the ids matter: a lookup with its rows permuted scores differently
    permuted = copy.deepcopy(sae)
    permuted.W_lookup.data = permuted.W_lookup.data[torch.randperm(permuted.W_lookup.shape[0])]
    with saebench_mode("core", permuted):
        other = _core(permuted, model, dataset)
    assert other["reconstruction_quality"]["explained_variance"] != pytest.approx(
        got["reconstruction_quality"]["explained_variance"], rel=1e-3)


def test_scr_tpp_ablation_is_exact_in_error_term_mode(sae, model, dataset):
    tokens = torch.stack([dataset[i]["tokens"] for i in range(4)])
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    acts = cache[HOOK]
    to_ablate = torch.tensor([1, 5, 9])
    with pytest.raises(TokenIdsError):
        ablated_precomputed_activations(acts, sae, to_ablate, sae_batch_size=2)
    with saebench_mode("scr", sae):
        got = ablated_precomputed_activations(acts, sae, to_ablate, sae_batch_size=2)
    # by hand, with the real ids: decode(f_ablated) + x - decode(f), averaged over positions
    f = sae.encode(acts)
    f_ablated = f.clone()
    f_ablated[..., to_ablate] = 0
    modified = sae.decode(f_ablated, token_ids=tokens) + acts - sae.decode(f, token_ids=tokens)
    torch.testing.assert_close(got, modified.mean(1), rtol=0, atol=1e-5)


def test_unknown_eval_names_are_rejected(sae):
    with pytest.raises(ValueError, match="unknown SAEBench eval"):
        with saebench_mode("cor", sae):
            pass

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
from sae_lens_tokenized.integrations.saebench import saebench_mode  # noqa: E402

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


# ---- RAVEL: decoding at one position per prompt gets that position's ids -----------------
def _tiny_neox(vocab_size: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, architectures=["GPTNeoXForCausalLM"])
    return GPTNeoXForCausalLM(cfg).eval()


def _bigram_sae(vocab_size: int, pairs: list[tuple[int, int]]):
    torch.manual_seed(1)
    sae = TokenizedTopKSAE(TokenizedTopKSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=vocab_size, lookup_ngram=2,
                                                  lookup_bigram_rows=8))
    with torch.no_grad():
        sae.W_lookup.normal_()
        sae.W_dec.data /= sae.W_dec.norm(dim=1, keepdim=True)
    keys = torch.tensor(sorted({p * vocab_size + t for p, t in pairs}))
    sae.set_bigram_rows(keys, 3 * torch.randn(len(keys), 32))
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    sae.cfg.metadata.model_name = "tiny-neox"
    return load_and_format_sae("custom", sae, "cpu")[1]


def _layer0_output(hf, ids, mask, replace=None):
    """HF forward; returns (layer 0's output, last logits), optionally replacing rows of it."""
    seen = {}

    def hook(module, inputs, outputs):
        seen["acts"] = outputs[0].clone()
        if replace is not None:
            outputs[0][torch.arange(ids.shape[0]), replace[0], :] = replace[1]
        return outputs

    handle = hf.gpt_neox.layers[0].register_forward_hook(hook)
    try:
        logits = hf(input_ids=ids, attention_mask=mask).logits[:, -1, :]
    finally:
        handle.remove()
    return seen["acts"], logits


def test_ravel_mdbm_decodes_with_the_ids_of_the_intervened_positions():
    from sae_bench.evals.ravel import mdbm as ravel
    from sae_bench.evals.ravel.eval_config import RAVELEvalConfig

    from helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    V = len(tok)
    hf = _tiny_neox(V)
    base_ids = torch.tensor([[5, 17, 23, 42, 61, 7], [0, 0, 9, 33, 12, 80]])  # row 1 left-padded
    base_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    source_ids = torch.tensor([[11, 12, 13, 14, 15, 16], [21, 22, 23, 24, 25, 26]])
    base_pos, source_pos = torch.tensor([3, 2]), torch.tensor([4, 1])
    # (23, 42) at row 0 has a pair row; row 1's position 2 follows padding: no previous token
    sae = _bigram_sae(V, [(23, 42), (0, 9)])
    cfg = RAVELEvalConfig(model_name="tiny-neox", llm_batch_size=2)
    base = {"input_ids": base_ids, "attention_mask": base_mask}
    source = {"input_ids": source_ids, "attention_mask": torch.ones_like(source_ids)}

    with saebench_mode("ravel", sae):
        mdbm = ravel.MDBM(hf, tok, cfg, sae)  # the name train_mdbm builds
        with torch.no_grad():
            mdbm.binary_mask.copy_(torch.randn(64))
        got, _ = mdbm(base, source, base_pos, source_pos)
    assert ravel.MDBM.__name__ == "MDBM"  # restored

    # by hand: mix the SAE codes at base_pos, decode with the ids at base_pos, run on
    rows = torch.arange(2)
    with torch.no_grad():
        src, _ = _layer0_output(hf, source_ids, source["attention_mask"])
        resid, _ = _layer0_output(hf, base_ids, base_mask)
        mask = (mdbm.binary_mask > 0).float()
        mixed = (1 - mask) * sae.encode(resid[rows, base_pos]) + mask * sae.encode(src[rows, source_pos])
        prev = torch.tensor([23, -1])
        decoded = sae.decode(mixed, token_ids=base_ids[rows, base_pos], prev_token_ids=prev)
        _, want = _layer0_output(hf, base_ids, base_mask, replace=(base_pos, decoded))
        # the padding before row 1 must not count as a previous token: (0, 9) has a row
        wrong = sae.decode(mixed, token_ids=base_ids[rows, base_pos], prev_token_ids=torch.tensor([23, 0]))
        _, padded = _layer0_output(hf, base_ids, base_mask, replace=(base_pos, wrong))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.allclose(padded[1], want[1], atol=1e-3)
    # SAEBench's own MDBM: no ids for the decoded rows (last: the failed forward leaves
    # SAEBench's hook registered on the layer)
    with pytest.raises(TokenIdsError):
        ravel.MDBM(hf, tok, cfg, sae)(base, source, base_pos, source_pos)


def test_ravel_mask_training_runs_through_the_tokenized_decode():
    from sae_bench.evals.ravel import mdbm as ravel
    from sae_bench.evals.ravel.eval_config import RAVELEvalConfig

    from helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    hf = _tiny_neox(len(tok))
    sae = _bigram_sae(len(tok), [(17, 23)])
    base_ids, source_ids = torch.randint(3, len(tok), (2, 4, 6))
    base = {"input_ids": base_ids, "attention_mask": torch.ones_like(base_ids)}
    source = {"input_ids": source_ids, "attention_mask": torch.ones_like(source_ids)}
    base_pos, source_pos = torch.tensor([2, 3, 4, 5]), torch.tensor([5, 4, 3, 2])
    batch = (base, source, base_pos, source_pos, torch.tensor([1, 2, 3, 4]), torch.tensor([4, 3, 2, 1]),
             ["a"] * 4, ["b"] * 4)
    cfg = RAVELEvalConfig(model_name="tiny-neox", llm_batch_size=4, num_epochs=1, learning_rate=0.1)
    with saebench_mode("ravel", sae):
        mdbm = ravel.train_mdbm(hf, tok, cfg, sae, [batch], [batch])
    assert torch.count_nonzero(mdbm.binary_mask) > 0  # the mask moved: gradient came through decode


# ---- unlearning: its clamping hook on its own HookedTransformer ---------------------------
def test_unlearning_clamp_hook_uses_the_forward_s_ids(sae, model, dataset):
    from sae_bench.evals.unlearning.utils.metrics import modify_model

    tokens = torch.stack([dataset[i]["tokens"] for i in range(3)])
    params = {"intervention_method": "clamp_feature_activation", "features_to_ablate": [1, 5, 9], "multiplier": 20.0}
    with saebench_mode("unlearning", sae):
        modify_model(model, sae, **dict(params))
        try:
            got = model(tokens, return_type="logits")
        finally:
            model.reset_hooks()

    def by_hand(acts, hook):  # SAEBench's formula with the real ids: error + decode(f clamped)
        f = sae.encode(acts)
        f[:, 0, :] = 0
        error = acts - sae.decode(f, token_ids=tokens)
        on = f[:, :, [1, 5, 9]] > 0
        f[:, :, [1, 5, 9]] = torch.where(on, -20.0, f[:, :, [1, 5, 9]])
        return error + sae.decode(f, token_ids=tokens)

    with torch.no_grad():
        want = model.run_with_hooks(tokens, return_type="logits", fwd_hooks=[(HOOK, by_hand)])
        clean = model(tokens, return_type="logits")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert not torch.allclose(got, clean, atol=1e-3)  # the clamp did something


# ---- sparse probing on local labelled text -----------------------------------------------
def test_sparse_probing_reads_a_local_labelled_dataset(sae, model, tmp_path, monkeypatch):
    from sae_bench.evals.sparse_probing import main as sparse_probing
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig
    from sae_bench.sae_bench_utils import dataset_info, dataset_utils

    from sae_lens_tokenized.integrations.saebench import local_probing_dataset

    # two classes any probe separates: each text repeats its class's word a varying number of times
    words = {"sport": " goal", "tech": " chip"}
    train = {c: [w * (4 + i % 5) for i in range(12)] for c, w in words.items()}
    test = {c: [w * (5 + i % 3) for i in range(6)] for c, w in words.items()}
    original = dataset_utils.get_multi_label_train_test_data
    monkeypatch.setattr(sparse_probing.HookedTransformer, "from_pretrained_no_processing",
                        lambda *a, **k: model)  # SAEBench would download its model by name
    def run(train, test):
        with local_probing_dataset("toy_topics", train, test) as name, saebench_mode("sparse_probing", sae):
            cfg = SparseProbingEvalConfig(model_name="tiny", dataset_names=[name], llm_batch_size=4,
                                          llm_dtype="float32", context_length=16, k_values=[1, 2], sae_batch_size=8)
            res = sparse_probing.run_eval(cfg, [("custom", sae)], "cpu", str(tmp_path / "out"),
                                          artifacts_path=str(tmp_path / "artifacts"), force_rerun=True)
        return name, next(iter(res.values()))

    name, out = run(train, test)
    per_class = out["eval_result_unstructured"][f"{name}_results"]
    assert set(per_class["sae_top_1_test_accuracy"]) == {"sport", "tech"}  # our classes, our texts
    assert out["eval_result_metrics"]["llm"]["llm_test_accuracy"] == 1.0  # the topics are separable
    assert 0.0 <= out["eval_result_metrics"]["sae"]["sae_top_2_test_accuracy"] <= 1.0
    # nothing left behind: SAEBench's resolution is its own again
    assert dataset_utils.get_multi_label_train_test_data is original
    assert name not in dataset_info.chosen_classes_per_dataset
    # SAEBench caches activations by dataset name: other texts (here both classes the same
    # texts, so no probe can beat chance; a reused cache would give 1.0 again) get another
    # name and their own activations
    same = {c: train["sport"] for c in words}
    name2, out2 = run(same, {c: test["sport"] for c in words})
    assert name2 != name
    assert out2["eval_result_metrics"]["llm"]["llm_test_accuracy"] == 0.5
    with pytest.raises(ValueError, match="same non-empty class names"):
        with local_probing_dataset("x", {"a": ["t"]}, {"b": ["t"]}):
            pass
    with pytest.raises(ValueError, match="one of SAEBench's own datasets"):
        with local_probing_dataset("fancyzhx/ag_news", train, test):
            pass


# ---- autointerp: everything before the LLM call ------------------------------------------
def test_autointerp_examples_and_prompts_come_from_the_sae_s_activations(sae, model, dataset):
    from sae_bench.evals.autointerp.eval_config import AutoInterpEvalConfig
    from sae_bench.evals.autointerp.main import AutoInterp

    tokens = torch.stack([dataset[i]["tokens"] for i in range(48)])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        acts = sae.encode(cache[HOOK])  # encode reads no ids: nothing to supply
    tok = model.tokenizer
    special = torch.isin(tokens, torch.tensor([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]))
    acts[special] = 0  # SAEBench masks BOS/pad/eos positions
    latents = [int(i) for i in (acts > 0).sum((0, 1)).argsort(descending=True)[:3]]
    cfg = AutoInterpEvalConfig(model_name="tiny", n_latents=None, override_latents=latents, llm_context_size=32, llm_batch_size=8,
                               buffer=2, total_tokens=48 * 32, n_top_ex_for_generation=3,
                               n_iw_sampled_ex_for_generation=1, n_top_ex_for_scoring=2, n_random_ex_for_scoring=2,
                               n_iw_sampled_ex_for_scoring=1)
    with saebench_mode("autointerp", sae):
        interp = AutoInterp(cfg, model, sae, tokens, torch.ones(64), "cpu", api_key="unused offline")
        generation, scoring = interp.gather_data()
        messages = interp.get_generation_prompts(generation[latents[0]])
    assert set(generation) == set(latents)
    # the strongest example holds the latent's top activation over the data (bf16 in SAEBench)
    for latent in latents:
        top = max(max(ex.acts) for ex in list(generation[latent]) + list(scoring[latent]))
        assert abs(top - float(acts[:, 2:-2, latent].max())) < 1e-2 * max(1.0, top)
    assert "<<" in messages[1]["content"]  # activating tokens marked, ready for the LLM judge

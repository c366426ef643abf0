"""Tokenized SAEs in tools that build their own model or decode without a forward pass:
``token_ids_from_any_model``, ``error_term_mode`` and ``sae-lens-tokenized evals``."""

import json

import pytest
import torch
from helpers import tiny_tokenizer
from sae_lens.evals import run_evals
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore
from torch import nn

from sae_lens_tokenized import (
    TokenIdsError,
    TokenizedTopKSAE,
    TokenizedTopKSAEConfig,
    error_term_mode,
    token_ids_from,
    token_ids_from_any_model,
)

HOOK = "blocks.1.hook_resid_pre"


def make_sae(model, ngram=1, seed=0):
    torch.manual_seed(seed)
    cfg = TokenizedTopKSAEConfig(d_in=model.cfg.d_model, d_sae=64, k=4, d_vocab=model.cfg.d_vocab,
                                 lookup_ngram=ngram, lookup_bigram_rows=8 if ngram == 2 else None)
    sae = TokenizedTopKSAE(cfg)
    with torch.no_grad():
        sae.W_lookup.normal_()  # large enough that a wrong or missing id changes the output
        sae.W_dec.normal_()
    sae.cfg.metadata.hook_name = HOOK
    if ngram == 2:
        sae.set_bigram_rows(torch.tensor([5 * model.cfg.d_vocab + 7, 9 * model.cfg.d_vocab + 3]),
                            torch.randn(2, model.cfg.d_model))
    return sae


@pytest.fixture
def tokens(dataset):
    return torch.stack([dataset[i]["tokens"] for i in range(3)])


def splice_by_hand(model, sae, tokens):
    return model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: sae(a, token_ids=tokens))])


# ------------------------------------------------------------------ token_ids_from_any_model
def test_any_model_capture_gives_the_spliced_output_of_explicit_ids(model, tokens):
    sae = make_sae(model)
    expected = splice_by_hand(model, sae, tokens)
    with token_ids_from_any_model(sae):  # no model is named: whichever runs supplies the ids
        got = model.run_with_saes(tokens, saes=[sae])
    torch.testing.assert_close(got, expected)
    with pytest.raises(TokenIdsError):  # and nothing is left behind after the block
        model.run_with_saes(tokens, saes=[sae])


def test_any_model_capture_keeps_ids_through_run_with_cache_then_encode_decode(model, tokens):
    """SAELens's run_evals (and SAEBench's core eval) cache activations, then decode outside
    the forward: the SAE's own modules must not count as a new forward."""
    sae = make_sae(model)
    with token_ids_from_any_model(sae):
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        x = cache[HOOK]
        got = sae.decode(sae.encode(x))
        got_again = sae(x)
    expected = sae.decode(sae.encode(x), token_ids=tokens)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_again, expected)


def test_any_model_capture_never_serves_stale_ids(model, tokens):
    sae = make_sae(model)
    expected = sae(model.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK], token_ids=tokens)
    with token_ids_from_any_model(sae):
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        x = cache[HOOK]
        y = x * 1.0  # computed by the caller: it gets the latest forward's ids
        torch.testing.assert_close(sae(y), expected)
        # a later forward without tokens (embeddings given): the latest ids are gone
        model(model.embed(tokens) + model.pos_embed(tokens), start_at_layer=0)
        with pytest.raises(TokenIdsError, match="token_ids_from_any_model"):
            sae(y)
        # while the model's own activations keep the ids of the forward that produced them
        torch.testing.assert_close(sae(x), expected)
        # any other module run at top level (a probe) also clears them: an error, never stale
        model(tokens)
        sae(y)
        nn.Linear(4, 2)(torch.zeros(1, 4))
        with pytest.raises(TokenIdsError):
            sae(y)
        torch.testing.assert_close(sae(x), expected)
        # a forward that raises still ends its depth (always_call): the next forward captures
        with pytest.raises(Exception):
            model(tokens[:, :0].float())
        model(tokens)
        sae(y)


def test_any_model_capture_reads_a_hugging_face_model_and_its_generate_steps(tokens):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=128)).eval()
    cfg = TokenizedTopKSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=len(tok))
    sae = TokenizedTopKSAE(cfg)
    with torch.no_grad():
        sae.W_lookup.normal_()
    layer = hf.model.layers[1]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def splice(module, args):
        x = args[0]
        seen.append((x, sae.resolve_token_ids(x.shape[:-1]).clone()))
        return (sae(x),) + args[1:]

    handle = layer.register_forward_pre_hook(splice)
    try:
        with token_ids_from_any_model(sae), torch.no_grad():
            hf(tokens)
            out = hf.generate(tokens[:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=0)
    finally:
        handle.remove()
    assert torch.equal(seen[0][1], tokens)
    # generate: the prompt, then one new token per step, each step's own id
    assert torch.equal(seen[1][1], out[:, :5])
    for step, (_, ids) in enumerate(seen[2:]):
        assert torch.equal(ids, out[:, 5 + step: 6 + step])


def test_any_model_capture_supplies_previous_tokens_to_a_bigram_lookup(model, tokens):
    sae = make_sae(model, ngram=2)
    tokens = tokens.clone()
    tokens[:, 4], tokens[:, 5] = 5, 7  # the pair (5, 7) has its own row
    expected = splice_by_hand(model, sae, tokens)
    with token_ids_from_any_model(sae):
        got = model.run_with_saes(tokens, saes=[sae])
    torch.testing.assert_close(got, expected)
    unigram_only = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: sae(
        a, token_ids=tokens, prev_token_ids=torch.full_like(tokens, -1)))])
    assert not torch.allclose(unigram_only, expected)  # the pair row was read


# ------------------------------------------------------------------ error_term_mode
def test_error_term_mode_ablation_equals_the_one_with_ids(model, tokens):
    """SAEBench's SCR/TPP: decode(f_ablated) + (x - decode(f)) on cached activations."""
    sae = make_sae(model)
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    x = cache[HOOK]
    f = sae.encode(x)
    f_ablated = f.clone()
    f_ablated[..., :8] = 0
    with_ids = sae.decode(f_ablated, token_ids=tokens) + (x - sae.decode(f, token_ids=tokens))
    with pytest.raises(TokenIdsError):
        sae.decode(f_ablated)
    with error_term_mode(sae):
        no_ids = sae.decode(f_ablated) + (x - sae.decode(f))
    torch.testing.assert_close(no_ids, with_ids, rtol=0, atol=1e-5)
    # the mode really leaves the lookup out (so outside that formula it would be wrong)
    with error_term_mode(sae):
        inside = sae.decode(f)
    assert not torch.allclose(inside, sae.decode(f, token_ids=tokens))
    with pytest.raises(TokenIdsError):  # and ends with the block
        sae.decode(f)


def test_error_term_mode_makes_use_error_term_splicing_exact(model, tokens):
    sae = make_sae(model)
    sae.use_error_term = True
    clean = model(tokens)
    with error_term_mode(sae):
        spliced = model.run_with_saes(tokens, saes=[sae], use_error_term=True)
    torch.testing.assert_close(spliced, clean, rtol=0, atol=1e-4)


# ------------------------------------------------------------------ evals
def _saved(tmp_path, model, name, tokenized=True):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(1)
    if tokenized:
        sae = make_sae(model)
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=model.cfg.d_model, d_sae=64, k=4))
        sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.model_name = "tiny"
    sae.cfg.metadata.prepend_bos = True  # as SAELens's runner records it
    sae.cfg.metadata.context_size = 32
    sae.cfg.metadata.dataset_path = "tiny-text"
    folder = tmp_path / name
    sae.save_model(str(folder))
    return folder, sae


def test_evaluate_matches_saelens_run_evals_with_the_models_ids(tmp_path, model, dataset):
    from sae_lens_tokenized.integrations.evals import evaluate

    folder, sae = _saved(tmp_path, model, "tok")
    plain, _ = _saved(tmp_path, model, "topk", tokenized=False)
    kw = dict(batch_size_prompts=2, n_eval_reconstruction_batches=2, n_eval_sparsity_variance_batches=2)
    results = evaluate([str(folder), str(plain)], model=model, datasets=[dataset], ctx_lens=[32], **kw)
    assert [r["sae_id"] for r in results] == ["tok", "topk"]
    # the same numbers as SAELens's run_evals with ids supplied by hand
    store = ActivationsStore.from_sae(model, sae, context_size=32, dataset=dataset)
    store.shuffle_input_dataset(seed=42)
    from sae_lens.evals import get_eval_everything_config

    with token_ids_from(model, sae):
        expected, _ = run_evals(sae, store, model, ActivationScaler(), get_eval_everything_config(**kw))
    got = results[0]["metrics"]
    for group in ("model_performance_preservation", "reconstruction_quality", "sparsity"):
        for key, value in expected[group].items():
            assert got[group][key] == pytest.approx(value, rel=1e-5), (group, key)
    assert got["model_performance_preservation"]["ce_loss_score"] != pytest.approx(
        results[1]["metrics"]["model_performance_preservation"]["ce_loss_score"])


def test_evals_cli_on_a_hub_sae_writes_saelens_result_files(tmp_path, model, dataset, hub, monkeypatch):
    from sae_lens_tokenized import push_to_hub
    from sae_lens_tokenized import cli
    from sae_lens_tokenized.integrations import evals as evals_mod

    folder, _ = _saved(tmp_path, model, "tok")
    push_to_hub({HOOK: str(folder)}, "user/evals-cli")
    from sae_lens_tokenized.integrations import offline

    monkeypatch.setattr(offline, "load_model", lambda name, device: model)  # "tiny" is not a Hub model
    monkeypatch.setattr(evals_mod, "_dataset", lambda name, lm, ctx: dataset)
    out = tmp_path / "results"
    cli.main(["evals", f"hf://user/evals-cli/{HOOK}", "--ctx_lens", "32", "--batch_size_prompts", "2",
              "--n_eval_reconstruction_batches", "1", "--output_dir", str(out)])
    results = json.loads((out / "all_eval_results.json").read_text())
    assert results[0]["sae_id"] == HOOK and results[0]["sae_cfg"]["architecture"] == "tokenized_topk"
    assert results[0]["metrics"]["sparsity"]["l0"] == pytest.approx(4, abs=0.01)
    assert (out / "all_eval_results.csv").is_file()


def test_evals_cli_rejects_a_bad_spec_before_loading_any_model(tmp_path, model, monkeypatch):
    from sae_lens_tokenized import cli
    from sae_lens_tokenized.integrations import offline

    loaded = []
    monkeypatch.setattr(offline, "load_model", lambda name, device: loaded.append(name))
    good, _ = _saved(tmp_path, model, "tok")
    with pytest.raises(SystemExit, match="neither a saved SAE folder"):
        cli.main(["evals", str(good), str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="hf://OWNER/REPO/SAE_ID"):
        cli.main(["evals", "hf://user/only-repo"])
    assert loaded == []


@pytest.mark.parametrize("capture", ["named", "any"])
def test_run_with_hooks_forwards_get_their_own_ids_and_never_stale_ones(model, dataset, capture):
    """TransformerLens's run_with_hooks calls model.forward directly, which no hook on the
    model sees (SAEBench's core eval splices this way): each such forward must still get
    its own ids, and one that skips the embedding none."""
    sae = make_sae(model)
    a = torch.stack([dataset[i]["tokens"] for i in range(2)])
    b = torch.stack([dataset[i]["tokens"] for i in range(2, 4)])
    splice = [(HOOK, lambda act, hook: sae(act))]
    ctx = token_ids_from(model, sae) if capture == "named" else token_ids_from_any_model(sae)
    with ctx:
        model(a)
        got_b = model.run_with_hooks(b, fwd_hooks=splice)
        got_a = model.run_with_hooks(a, fwd_hooks=splice)
        resid = model.run_with_cache(b, names_filter=["blocks.0.hook_resid_post"])[1]["blocks.0.hook_resid_post"]
        # b's residual, run on from layer 1: its activations are b's, and so are their ids
        got_from_resid = model.run_with_hooks(resid, start_at_layer=1, fwd_hooks=splice)
        with pytest.raises(TokenIdsError):  # a residual the caller computed: this forward has no ids
            model.run_with_hooks(resid * 1.0, start_at_layer=1, fwd_hooks=splice)
    torch.testing.assert_close(got_b, splice_by_hand(model, sae, b))
    torch.testing.assert_close(got_from_resid, got_b)
    torch.testing.assert_close(got_a, splice_by_hand(model, sae, a))


def test_absorption_is_scored_on_the_sae_s_own_input(model, dataset):
    """SAEBench's absorption reads blocks.{hook_layer}.hook_resid_post and takes hook_layer
    from the hook name: a resid_pre SAE would be scored one block later, silently."""
    from sae_lens_tokenized.integrations.saebench import absorption_hook_layer, saebench_mode

    sae = TokenizedTopKSAE(TokenizedTopKSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=model.cfg.d_vocab))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    assert absorption_hook_layer(sae) == 0
    # the premise: the tensor is the same
    tokens = torch.stack([dataset[i]["tokens"] for i in range(2)])
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"])
    assert torch.equal(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    sae.cfg.hook_layer = 1  # what SAEBench's load_and_format_sae derives from the name
    with pytest.raises(ValueError, match="hook_layer must be 0, not 1"):
        with saebench_mode("absorption", sae):
            pass
    sae.cfg.hook_layer = 0
    with saebench_mode("absorption", sae):
        pass
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    assert absorption_hook_layer(sae) == 1
    for name in ("blocks.1.hook_mlp_out", "blocks.0.hook_resid_pre"):
        sae.cfg.metadata.hook_name = name
        with pytest.raises(ValueError, match="absorption cannot score it"):
            absorption_hook_layer(sae)

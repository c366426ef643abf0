"""Token ids supplied automatically from the model's input (run_with_saes, run_evals)."""

import pytest
import torch
from sae_lens import run_evals
from sae_lens.evals import EvalConfig
from sae_lens.training.activation_scaler import ActivationScaler

from sae_lens_tokenized import (
    TokenIdsError,
    TokenizedTopKTrainingSAE,
    TokenizedTopKTrainingSAEConfig,
    token_ids_from,
)
from sae_lens_tokenized.training.activations_store import TokenizedActivationsStore

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture
def sae(model):
    cfg = TokenizedTopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=64, k=4, d_vocab=model.cfg.d_vocab)
    sae = TokenizedTopKTrainingSAE(cfg)
    with torch.no_grad():
        sae.W_lookup.normal_()  # a lookup large enough that a wrong id changes the output
    sae.cfg.metadata.hook_name = HOOK
    return sae


def _logits_with_explicit_ids(model, sae, tokens):
    def hook(act, hook):
        return sae(act, token_ids=tokens)

    return model.run_with_hooks(tokens, fwd_hooks=[(HOOK, hook)])


def test_run_with_saes_uses_the_models_actual_tokens(model, sae, dataset):
    tokens = torch.stack([dataset[i]["tokens"] for i in range(3)])
    expected = _logits_with_explicit_ids(model, sae, tokens)
    with token_ids_from(model, sae):
        got = model.run_with_saes(tokens, saes=[sae])
    torch.testing.assert_close(got, expected)
    # a deliberately wrong id source gives different logits (the test can fail)
    wrong = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: sae(a, token_ids=tokens.roll(1, 1)))])
    assert not torch.allclose(wrong, expected)


def test_string_input_ids_include_the_prepended_bos(model, sae):
    text = "Return the number of items in a container."
    tokens = model.to_tokens(text)  # prepends BOS
    assert tokens[0, 0] == model.tokenizer.bos_token_id
    expected = _logits_with_explicit_ids(model, sae, tokens)
    with token_ids_from(model, sae):
        got = model.run_with_saes(text, saes=[sae])
    torch.testing.assert_close(got, expected)


def test_without_context_or_after_it_the_sae_refuses(model, sae, dataset):
    tokens = dataset[0]["tokens"].unsqueeze(0)
    with pytest.raises(TokenIdsError, match="token_ids_from"):
        model.run_with_saes(tokens, saes=[sae])
    with token_ids_from(model, sae):
        model.run_with_saes(tokens, saes=[sae])
    with pytest.raises(TokenIdsError):
        model.run_with_saes(tokens, saes=[sae])
    x = torch.randn(1, tokens.shape[1], model.cfg.d_model)
    with pytest.raises(TokenIdsError):
        sae(x)


def test_forward_without_tokens_does_not_reuse_earlier_ids(model, sae, dataset):
    tokens = dataset[0]["tokens"].unsqueeze(0)
    with token_ids_from(model, sae):
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        resid = cache[HOOK]
        sae.decode(sae.encode(resid))  # ids of that forward: fine
        # a forward that starts after the embedding has no tokens
        model(model.embed(tokens) + model.pos_embed(tokens), start_at_layer=0)
        # the cached activations still carry the ids of the forward that produced them
        torch.testing.assert_close(sae.decode(sae.encode(resid)), sae(resid, token_ids=tokens))
        # a tensor the caller computed gets the latest forward's ids, and it had none
        with pytest.raises(TokenIdsError, match="has not run a forward pass with tokens"):
            sae(resid * 1.0)


def test_cached_activations_of_an_earlier_forward_get_their_own_ids(model, sae, dataset):
    """The issue's case: two forwards of the same shape, then the SAE on the first one's
    cache. It used to decode them silently with the second forward's ids."""
    first = torch.stack([dataset[i]["tokens"] for i in range(2)])
    second = torch.stack([dataset[i]["tokens"] for i in range(2, 4)])
    with token_ids_from(model, sae):
        _, cache1 = model.run_with_cache(first, names_filter=[HOOK])
        _, cache2 = model.run_with_cache(second, names_filter=[HOOK])
        got1, got2 = sae(cache1[HOOK]), sae(cache2[HOOK])
        latents = sae.encode(cache1[HOOK])
        model(second)  # latents keep their activations' ids through later forwards too
        decoded1 = sae.decode(latents)
        # a computed tensor has no provenance: it gets the latest forward's ids
        computed = sae(cache1[HOOK] * 1.0)
    torch.testing.assert_close(got1, sae(cache1[HOOK], token_ids=first))
    torch.testing.assert_close(got2, sae(cache2[HOOK], token_ids=second))
    torch.testing.assert_close(decoded1, sae(cache1[HOOK], token_ids=first))
    torch.testing.assert_close(computed, sae(cache1[HOOK], token_ids=second))
    assert not torch.allclose(got1, sae(cache1[HOOK], token_ids=second))  # the ids matter here


def test_shape_mismatch_between_captured_ids_and_activations(model, sae, dataset):
    tokens = dataset[0]["tokens"].unsqueeze(0)
    with token_ids_from(model, sae):
        model(tokens)
        with pytest.raises(TokenIdsError, match="shape"):
            sae(torch.randn(2, tokens.shape[1], model.cfg.d_model))


def test_run_evals_with_a_tokenized_sae(model, sae, dataset):
    from helpers import runner_cfg

    sae.cfg.metadata.hook_name = HOOK
    cfg = runner_cfg(
        TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=model.cfg.d_vocab), HOOK, 10_000
    )
    store = TokenizedActivationsStore.from_config(model, cfg, override_dataset=dataset)
    eval_cfg = EvalConfig(
        n_eval_reconstruction_batches=2,
        n_eval_sparsity_variance_batches=2,
        compute_ce_loss=True,
        compute_kl=True,
        compute_variance_metrics=True,
        compute_sparsity_metrics=True,
    )
    with pytest.raises(TokenIdsError):
        run_evals(sae, store, model, ActivationScaler(), eval_cfg)
    with token_ids_from(model, sae):
        metrics, _ = run_evals(sae, store, model, ActivationScaler(), eval_cfg, exclude_special_tokens=True)
    assert "ce_loss_with_sae" in metrics["model_performance_preservation"]
    assert metrics["sparsity"]["l0"] == pytest.approx(4, abs=0.01)


def test_only_tokenized_saes_are_accepted(model):
    with pytest.raises(ValueError):
        with token_ids_from(model):
            pass
    with pytest.raises(TypeError):
        with token_ids_from(model, object()):
            pass

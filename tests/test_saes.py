"""The tokenized TopK architecture: forward, ids, registration, save/load, folding."""

import importlib

import pytest
import torch
from sae_lens import SAE, TrainingSAE
from sae_lens.registry import get_sae_class, get_sae_training_class

import sae_lens_tokenized
from sae_lens_tokenized import (
    METHOD_LOOKUP,
    TokenIdsError,
    TokenizedTopKSAE,
    TokenizedTopKTrainingSAE,
    TokenizedTopKTrainingSAEConfig,
)

D_IN, D_SAE, K, V = 16, 48, 4, 40


def make_sae(**kw) -> TokenizedTopKTrainingSAE:
    kw = {**METHOD_LOOKUP, **kw}  # a unigram lookup with the method's settings
    sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, d_vocab=V, **kw))
    with torch.no_grad():  # non-trivial weights everywhere
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return sae


def test_registration_is_idempotent_and_points_at_current_classes():
    importlib.reload(sae_lens_tokenized)
    importlib.reload(sae_lens_tokenized)
    import sae_lens_tokenized as fresh

    assert get_sae_class("tokenized_topk")[0] is fresh.TokenizedTopKSAE
    assert get_sae_training_class("tokenized_topk")[1] is fresh.TokenizedTopKTrainingSAEConfig


def test_four_arguments_suffice_and_d_vocab_is_required_to_build():
    cfg = TokenizedTopKTrainingSAEConfig(d_in=8, d_sae=16, k=2)
    assert cfg.d_vocab is None  # filled in by the runner from the model
    with pytest.raises(ValueError, match="needs d_vocab"):
        TokenizedTopKTrainingSAE(cfg)


def test_unsupported_normalization_is_rejected():
    with pytest.raises(ValueError, match="layer_norm"):
        TokenizedTopKTrainingSAEConfig(d_in=8, d_sae=16, k=2, d_vocab=5, normalize_activations="layer_norm")


def test_reconstruction_is_base_topk_plus_lookup_row():
    sae = make_sae()
    x = torch.randn(3, 5, D_IN)
    ids = torch.randint(0, V, (3, 5))
    out = sae(x, token_ids=ids)
    acts = sae.encode(x)
    base = acts @ (sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)) + sae.b_dec  # rescale_acts_by_decoder_norm
    torch.testing.assert_close(out, base + sae.W_lookup[ids])
    # the encoder does not see the lookup
    with torch.no_grad():
        sae.W_lookup.add_(1.0)
    torch.testing.assert_close(sae.encode(x), acts)


@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 3, 4)])
def test_any_leading_shape(shape):
    sae = make_sae()
    x = torch.randn(*shape, D_IN)
    ids = torch.randint(0, V, shape)
    assert sae(x, token_ids=ids).shape == x.shape


def test_id_errors():
    sae = make_sae()
    x = torch.randn(4, D_IN)
    with pytest.raises(TokenIdsError, match="token_ids_from"):
        sae(x)
    with pytest.raises(TokenIdsError, match="shape"):
        sae(x, token_ids=torch.zeros(5, dtype=torch.long))
    with pytest.raises(TokenIdsError, match="out of range"):
        sae(x, token_ids=torch.tensor([0, 1, 2, V]))
    with pytest.raises(TokenIdsError, match="out of range"):
        sae(x, token_ids=torch.tensor([0, -1, 2, 3]))
    with pytest.raises(TokenIdsError, match="integer"):
        sae(x, token_ids=torch.zeros(4))


def test_ids_are_never_reused_from_an_earlier_call():
    sae = make_sae()
    x = torch.randn(4, D_IN)
    sae(x, token_ids=torch.arange(4))
    with sae.token_ids(torch.arange(4)):
        sae(x)
    with pytest.raises(TokenIdsError):
        sae(x)
    with pytest.raises(TokenIdsError):
        sae.decode(sae.encode(x))


def test_save_load_round_trip_is_bitwise_exact(tmp_path):
    sae = make_sae()
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded) is TokenizedTopKSAE
    assert loaded.cfg.d_vocab == V and loaded.cfg.unigram_strategy == "bos,t"
    x = torch.randn(6, D_IN)
    ids = torch.randint(0, V, (6,))
    # saving folds the decoder norms (SAELens TopK), so outputs match, not raw weights
    torch.testing.assert_close(loaded(x, token_ids=ids), sae(x, token_ids=ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.W_lookup, sae.W_lookup, rtol=0, atol=0)
    # inference -> disk -> inference is bitwise
    loaded.save_model(tmp_path / "again")
    again = SAE.load_from_disk(tmp_path / "again")
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    assert torch.equal(again(x, token_ids=ids), loaded(x, token_ids=ids))
    # training checkpoint format round trip, and from_dict
    sae.save_model(tmp_path / "train")
    train_loaded = TrainingSAE.load_from_disk(tmp_path / "train")
    assert type(train_loaded) is TokenizedTopKTrainingSAE
    for name, tensor in sae.state_dict().items():
        assert torch.equal(train_loaded.state_dict()[name], tensor), name
    assert type(SAE.from_dict(loaded.cfg.to_dict())) is TokenizedTopKSAE


def test_fold_w_dec_norm_keeps_outputs():
    sae = make_sae()
    x, ids = torch.randn(8, D_IN), torch.randint(0, V, (8,))
    before = sae(x, token_ids=ids)
    sae.fold_W_dec_norm()
    torch.testing.assert_close(sae(x, token_ids=ids), before, rtol=1e-5, atol=1e-5)


def test_fold_activation_norm_scaling_factor_scales_lookup():
    sae = make_sae()
    s = 3.7
    x, ids = torch.randn(8, D_IN), torch.randint(0, V, (8,))
    before = sae(x * s, token_ids=ids) / s  # the SAE was trained on s * x
    sae.fold_activation_norm_scaling_factor(s)
    torch.testing.assert_close(sae(x, token_ids=ids), before, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not hasattr(SAE, "fold_activation_whitening"), reason="this SAELens version has no activation whitening")
def test_fold_activation_whitening_keeps_outputs():
    sae = make_sae(rescale_acts_by_decoder_norm=False)
    mean = torch.randn(D_IN)
    q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN))
    m = q @ torch.diag(torch.rand(D_IN) + 0.5)
    m_inv = torch.linalg.inv(m)
    x, ids = torch.randn(8, D_IN), torch.randint(0, V, (8,))
    before = sae((x - mean) @ m, token_ids=ids) @ m_inv + mean
    sae.fold_activation_whitening(mean, m, m_inv)
    torch.testing.assert_close(sae(x, token_ids=ids), before, rtol=1e-4, atol=1e-4)


def test_init_from_unigrams_checks_shape_and_scales():
    sae = make_sae()
    u = torch.randn(V, D_IN)
    sae.init_lookup_from_unigrams(u)
    torch.testing.assert_close(sae.W_lookup.data, 0.5 * u)
    with pytest.raises(ValueError, match=r"\[d_vocab, d_in\]"):
        sae.init_lookup_from_unigrams(torch.randn(V + 1, D_IN))
    bad = u.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sae.init_lookup_from_unigrams(bad)


def test_lookup_has_its_own_hook_point_and_the_error_term_stays_exact():
    sae = make_sae()
    x, ids = torch.randn(8, D_IN), torch.randint(0, V, (8,))
    _, cache = sae.run_with_cache(x, token_ids=ids)
    torch.testing.assert_close(cache["hook_sae_lookup"], sae.W_lookup[ids])
    # hook_sae_recons is the latents' part, hook_sae_output the whole reconstruction
    torch.testing.assert_close(cache["hook_sae_recons"] + cache["hook_sae_lookup"], cache["hook_sae_output"])
    # ablating the lookup through its hook leaves the base architecture's reconstruction
    ablated = sae.run_with_hooks(x, token_ids=ids, fwd_hooks=[("hook_sae_lookup", lambda t, hook: t * 0)])
    torch.testing.assert_close(ablated, cache["hook_sae_recons"])
    # SAELens's error term recomputes the reconstruction with hooks disabled: the lookup
    # is computation, not a hook, so the spliced output is exactly the input
    sae.use_error_term = True
    torch.testing.assert_close(sae(x, token_ids=ids), x, rtol=1e-5, atol=1e-5)


def test_a_deep_copy_uses_its_own_lookup_and_ids():
    import copy

    sae = make_sae()
    twin = copy.deepcopy(sae)
    with torch.no_grad():
        twin.W_lookup.add_(1.0)
    x, ids = torch.randn(4, D_IN), torch.randint(0, V, (4,))
    torch.testing.assert_close(twin(x, token_ids=ids) - sae(x, token_ids=ids), torch.ones(4, D_IN))

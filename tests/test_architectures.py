"""Every tokenized architecture against its SAELens base, with the same weights.

The lookup is a per-token ``b_dec``: each test states that property in one form and runs
it over all eight architectures, so an architecture (or an SAELens release) that loses the
lookup anywhere fails here.
"""

import contextlib

import pytest
import torch
from sae_lens import SAE, TrainingSAE
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput

import sae_lens_tokenized
from sae_lens_tokenized.saes import ARCHITECTURES, base_architecture, changed_defaults
from sae_lens_tokenized.workbench.settings import CompareSettings, sae_config

D_IN, D_SAE, V, B = 16, 48, 40, 64

#: what each architecture needs beyond d_in/d_sae (the same for base and tokenized)
ARCH_KW = {
    "tokenized_standard": {},
    "tokenized_gated": {},
    "tokenized_topk": {"k": 4},
    "tokenized_abstopk": {"k": 4},
    "tokenized_jumprelu": {"pre_act_loss_coefficient": 1e-2},
    "tokenized_batchtopk": {"k": 4},
    "tokenized_matryoshka_batchtopk": {"k": 4, "matryoshka_widths": [12, D_SAE]},
    "tokenized_matching_pursuit": {},
}
#: the loss terms that reconstruct x, per architecture (each must train the lookup)
RECONSTRUCTION_TERMS = {
    "tokenized_gated": {"mse_loss", "auxiliary_reconstruction_loss"},
    "tokenized_matryoshka_batchtopk": {"mse_loss", "inner_mse_loss_12"},
}
#: inference classes the saved SAE loads as (BatchTopK and Matryoshka save as JumpReLU)
LOADS_AS = {
    "tokenized_batchtopk": "TokenizedJumpReLUSAE",
    "tokenized_matryoshka_batchtopk": "TokenizedJumpReLUSAE",
}
MP = "tokenized_matching_pursuit"  # its encoder pursues x - b_dec - W_lookup[t]
#: the base config fields whose tokenized default differs from SAELens's (docs "Results",
#: "AuxK coefficient"); every other inherited default is SAELens's own
CHANGED_DEFAULTS = {"tokenized_topk": {"aux_loss_coefficient": 1 / 32},
                    "tokenized_batchtopk": {"aux_loss_coefficient": 1 / 32},
                    "tokenized_matryoshka_batchtopk": {"aux_loss_coefficient": 1 / 32}}


def test_the_issue_s_architecture_list_is_complete_and_exported():
    assert set(ARCHITECTURES) == set(ARCH_KW)
    for arch in ARCHITECTURES:
        train_cls, train_cfg = get_sae_training_class(arch)
        assert getattr(sae_lens_tokenized, train_cls.__name__) is train_cls
        assert getattr(sae_lens_tokenized, train_cfg.__name__) is train_cfg
        base_cls = get_sae_training_class(base_architecture(arch))[0]
        # Tokenized<Base> spelled as SAELens spells <Base>
        assert train_cls.__name__ == "Tokenized" + base_cls.__name__


def make_pair(arch: str, seed: int = 0, tok_kw: dict | None = None, **kw):
    """A tokenized training SAE with non-trivial weights and a random lookup, and the
    SAELens base architecture with the very same weights."""
    torch.manual_seed(seed)
    cls, cfg_cls = get_sae_training_class(arch)
    base_cls, base_cfg_cls = get_sae_training_class(base_architecture(arch))
    args = dict(d_in=D_IN, d_sae=D_SAE, **ARCH_KW[arch], **kw)
    # a unigram lookup: these tests state the per-token-row property (bigram rows:
    # tests/test_data_init_and_bigrams.py)
    tok = cls(cfg_cls(**args, d_vocab=V, **{"lookup_ngram": 1, **(tok_kw or {})}))
    with torch.no_grad():
        for name, p in tok.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if name != "threshold" else 0.0))
        if hasattr(tok, "topk_threshold"):
            tok.topk_threshold.fill_(0.05)
    base = base_cls(base_cfg_cls(**args))
    base.load_state_dict({k: v for k, v in tok.state_dict().items() if k != "W_lookup"})
    return tok, base


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D_IN, generator=g), torch.randint(0, V // 2, (B,), generator=g)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_reconstruction_is_the_base_architecture_s_plus_the_token_s_row(arch):
    tok, base = make_pair(arch)
    x, ids = data()
    L = tok.W_lookup[ids]
    with torch.no_grad():
        acts = base.encode(x - L if arch == MP else x)
        torch.testing.assert_close(tok.encode(x, token_ids=ids), acts)
        torch.testing.assert_close(tok.decode(acts, token_ids=ids), base.decode(acts) + L)
        torch.testing.assert_close(tok(x, token_ids=ids), base(x - L if arch == MP else x) + L)


def step_input(sae, x, n_steps: int = 0) -> TrainStepInput:
    coefficients = {
        name: c.value if isinstance(c, TrainCoefficientConfig) else c for name, c in sae.get_coefficients().items()
    }
    # every latent "dead", so the dead-latent losses (AuxK, pre-act) are active too
    return TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=torch.ones(D_SAE, dtype=torch.bool),
                          n_training_steps=n_steps, is_logging_step=False)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_with_a_zero_lookup_every_loss_term_is_exactly_the_base_architecture_s(arch):
    # Guards the one SAELens formula this package re-derives (Gated's aux term) and every
    # inherited one: if SAELens changes a loss, the two sides part here. (Both sides at the
    # tokenized defaults: a changed default is tested below.)
    tok, base = make_pair(arch, **CHANGED_DEFAULTS.get(arch, {}))
    with torch.no_grad():
        tok.W_lookup.zero_()
    x, ids = data()
    with tok.token_ids(ids):
        out_tok = tok.training_forward_pass(step_input(tok, x))
    out_base = base.training_forward_pass(step_input(base, x))
    assert set(out_tok.losses) == set(out_base.losses)
    for name in out_base.losses:
        torch.testing.assert_close(out_tok.losses[name], out_base.losses[name], msg=name)
    torch.testing.assert_close(out_tok.sae_out, out_base.sae_out)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_inherited_default_is_saelens_s_but_the_listed_ones(arch):
    train_cfg = get_sae_training_class(arch)[1]
    base_cfg = get_sae_training_class(base_architecture(arch))[1]
    args = dict(d_in=D_IN, d_sae=D_SAE, **ARCH_KW[arch])
    tok, base = train_cfg(**args, d_vocab=V).to_dict(), base_cfg(**args).to_dict()
    differs = {k: tok[k] for k in base if tok[k] != base[k] and k not in ("architecture", "metadata")}
    assert differs == CHANGED_DEFAULTS.get(arch, {}) == changed_defaults(arch)
    # a comparison (the workbench) trains the base at them too: the two differ by the lookup alone
    s = CompareSettings()
    matched = sae_config(base_architecture(arch), s, D_IN, V).to_dict()
    assert {k: matched[k] for k in differs} == differs
    # ... unless the comparison sets them: then both sides train at the value it set
    told = {k: base[k] for k in differs}
    both = CompareSettings(extra={base_architecture(arch): told, arch: told})
    assert {k: sae_config(a, both, D_IN, V).to_dict()[k] for a in (arch, base_architecture(arch)) for k in told} == told
    # an explicit value is kept, and cfg.json records the one trained with
    for field, value in CHANGED_DEFAULTS.get(arch, {}).items():
        told = train_cfg(**args, d_vocab=V, **{field: base[field]})
        assert told.to_dict()[field] == base[field]
        assert train_cfg.from_dict(train_cfg(**args, d_vocab=V).to_dict()).to_dict()[field] == value


@pytest.mark.parametrize("arch", ["tokenized_topk", "tokenized_batchtopk", "tokenized_matryoshka_batchtopk"])
def test_the_topk_family_weighs_auxk_at_one_32nd_of_saelens_s_unless_told(arch):
    x, ids = data()
    tok, base = make_pair(arch)  # each at its own default
    told, _ = make_pair(arch, tok_kw={"aux_loss_coefficient": 1.0})
    losses = {}
    for name, sae in (("tok", tok), ("told", told), ("base", base)):
        with torch.no_grad():
            if name != "base":
                sae.W_lookup.zero_()
        with sae.token_ids(ids) if name != "base" else contextlib.nullcontext():
            losses[name] = sae.training_forward_pass(step_input(sae, x)).losses["auxiliary_reconstruction_loss"]
    assert losses["base"] > 0
    torch.testing.assert_close(losses["tok"], losses["base"] / 32)
    torch.testing.assert_close(losses["told"], losses["base"])


def lookup_gradient(tok, loss):
    """d loss / d W_lookup as a dense [V, d_in] tensor, whichever way the lookup trains:
    a sparse lookup's gradient is on its staged rows, scattered back to their token ids."""
    if tok.lookup_rows is None:
        (g,) = torch.autograd.grad(loss, [tok.W_lookup], retain_graph=True, allow_unused=True)
        return torch.zeros_like(tok.W_lookup) if g is None else g
    (g,) = torch.autograd.grad(loss, [tok.lookup_rows], retain_graph=True, allow_unused=True)
    _, _, rows, valid = tok._lookup_stage
    dense = torch.zeros_like(tok.W_lookup)
    if g is not None:
        assert not g[~valid].any(), "padding slots of the staged rows got gradient"
        dense.index_add_(0, rows[valid], g[valid])
    return dense


@pytest.mark.parametrize("updates", ["sparse", "dense"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_reconstruction_term_trains_the_lookup_exactly_as_it_trains_b_dec(arch, updates):
    # With apply_b_dec_to_input=False, b_dec is a pure decoder bias. The lookup is a
    # per-token decoder bias, so for every loss term the lookup's gradient, summed over its
    # rows, equals b_dec's; and only the rows of tokens in the batch get any.
    tok, _ = make_pair(arch, apply_b_dec_to_input=False, tok_kw={"lookup_updates": updates})
    x, ids = data()
    with tok.token_ids(ids):
        losses = tok.training_forward_pass(step_input(tok, x)).losses
    expected = RECONSTRUCTION_TERMS.get(arch, {"mse_loss"})
    assert expected <= set(losses)
    seen = torch.zeros(V, dtype=torch.bool)
    seen[ids] = True
    for name, loss in losses.items():
        g_lookup = lookup_gradient(tok, loss)
        (g_b_dec,) = torch.autograd.grad(loss, [tok.b_dec], retain_graph=True, allow_unused=True)
        assert not g_lookup[~seen].any(), f"{name}: rows of tokens not in the batch got gradient"
        if arch == MP:  # b_dec is not used when not applied at the input
            assert (g_lookup[seen].norm(dim=-1) > 0).all() == (name in expected), name
            continue
        g_b_dec = torch.zeros_like(tok.b_dec) if g_b_dec is None else g_b_dec
        torch.testing.assert_close(g_lookup.sum(0), g_b_dec, msg=name, rtol=1e-4, atol=1e-6)
        if name in expected:
            assert (g_lookup[seen].norm(dim=-1) > 0).all(), f"{name} does not train the lookup"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_is_exact_and_loads_as_the_tokenized_inference_class(tmp_path, arch):
    tok, base = make_pair(arch)
    tok.save_inference_model(tmp_path / "tok")
    base.save_inference_model(tmp_path / "base")
    loaded, loaded_base = SAE.load_from_disk(tmp_path / "tok"), SAE.load_from_disk(tmp_path / "base")
    assert type(loaded).__name__ == LOADS_AS.get(arch, type(tok).__name__.replace("TrainingSAE", "SAE"))
    assert torch.equal(loaded.W_lookup, tok.W_lookup)
    assert loaded.cfg.d_vocab == V
    x, ids = data()
    L = tok.W_lookup[ids]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, token_ids=ids), loaded_base(x - L if arch == MP else x) + L)
    # inference -> disk -> inference and the training checkpoint format are bitwise
    loaded.save_model(tmp_path / "again")
    again = SAE.load_from_disk(tmp_path / "again")
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    # the training checkpoint format: the lookup bitwise, the rest as SAELens round-trips
    # its base (BatchTopK's float64 threshold comes back as float32 on both sides)
    tok.save_model(tmp_path / "train")
    base.save_model(tmp_path / "train_base")
    train_loaded = TrainingSAE.load_from_disk(tmp_path / "train")
    train_base = TrainingSAE.load_from_disk(tmp_path / "train_base").state_dict()
    assert type(train_loaded) is type(tok)
    assert torch.equal(train_loaded.W_lookup, tok.W_lookup)
    for name, tensor in train_base.items():
        assert torch.equal(train_loaded.state_dict()[name], tensor), name


def _folds():
    mean = torch.randn(D_IN)
    q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN))
    m = q @ torch.diag(torch.rand(D_IN) + 0.5)
    m_inv = torch.linalg.inv(m)
    s = 3.7
    return {
        # name: (fold, how the SAE's input and output looked before the fold)
        "fold_W_dec_norm": (lambda sae: sae.fold_W_dec_norm(), lambda x: x, lambda y: y),
        "fold_activation_norm_scaling_factor": (lambda sae: sae.fold_activation_norm_scaling_factor(s),
                                                lambda x: x * s, lambda y: y / s),
        "fold_activation_whitening": (lambda sae: sae.fold_activation_whitening(mean, m, m_inv),
                                      lambda x: (x - mean) @ m, lambda y: y @ m_inv + mean),
    }


@pytest.mark.parametrize("fold", list(_folds()))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_folding_keeps_outputs_wherever_saelens_can_fold_the_base(tmp_path, arch, fold):
    tok, base = make_pair(arch, rescale_acts_by_decoder_norm=True) if "topk" in arch else make_pair(arch)
    tok.save_inference_model(tmp_path / "tok")
    base.save_inference_model(tmp_path / "base")
    sae, base_sae = SAE.load_from_disk(tmp_path / "tok"), SAE.load_from_disk(tmp_path / "base")
    apply, x_in, y_out = _folds()[fold]
    if not hasattr(base_sae, fold):
        pytest.skip(f"this SAELens has no {fold}")
    try:
        apply(base_sae)
    except (NotImplementedError, ValueError) as e:  # SAELens refuses this fold for the base
        with pytest.raises(type(e)):
            apply(sae)
        return
    x, ids = data()
    with torch.no_grad():
        before = y_out(sae(x_in(x), token_ids=ids))
        apply(sae)
        torch.testing.assert_close(sae(x, token_ids=ids), before, rtol=1e-4, atol=1e-4)


def test_inference_classes_are_registered_for_every_architecture_that_has_one():
    for arch in ARCHITECTURES:
        base = base_architecture(arch)
        try:
            get_sae_class(base)
        except KeyError:
            continue  # SAELens has no inference class either (saves as JumpReLU)
        assert get_sae_class(arch)[0].__name__ == "Tokenized" + get_sae_class(base)[0].__name__


# ------------------------------------------------- planted case, through the real runners ---
EMBED = "hook_embed"  # activation == W_E[token]: the token explains everything
PLANTED_KW = {  # sparsity settings for the planted case (same for base and tokenized)
    "tokenized_standard": {"l1_coefficient": 1e-3},
    "tokenized_gated": {"l1_coefficient": 1e-3},
    "tokenized_jumprelu": {"l0_coefficient": 1e-4, "jumprelu_init_threshold": 1e-3},
}
PLANTED_D_SAE = 16  # half of d_model: no base SAE can store every token's embedding in its
# latents, while a lookup row per token holds it exactly, whatever the sparsity rule


@pytest.mark.parametrize("arch", [a if a == "tokenized_topk" else pytest.param(a, marks=pytest.mark.slow)
                                  for a in ARCHITECTURES])
def test_planted_case_tokenized_beats_its_base_through_the_real_runners(arch, model, dataset):
    from sae_lens import LanguageModelSAETrainingRunner

    from helpers import nmse, runner_cfg, token_dataset
    from sae_lens_tokenized import TokenizedSAETrainingRunner

    kw = dict(d_in=model.cfg.d_model, d_sae=PLANTED_D_SAE, **{**ARCH_KW[arch], **PLANTED_KW.get(arch, {})})
    if "matryoshka_widths" in kw:
        kw["matryoshka_widths"] = [PLANTED_D_SAE // 2, PLANTED_D_SAE]
    results = {}
    for name, runner_cls, arch_name in (("base", LanguageModelSAETrainingRunner, base_architecture(arch)),
                                        ("tokenized", TokenizedSAETrainingRunner, arch)):
        torch.manual_seed(0)
        sae_cfg = get_sae_training_class(arch_name)[1](**kw)
        cfg = runner_cfg(sae_cfg, EMBED, 60_000)
        sae = runner_cls(cfg, override_model=model, override_dataset=dataset).run()
        tokens = torch.stack([token_dataset()[-i]["tokens"] for i in range(1, 17)])[:, 1:]  # held out
        x = model.W_E[tokens].detach()
        with torch.no_grad():
            x_hat = sae(x, token_ids=tokens) if name == "tokenized" else sae(x)
            if name == "tokenized":  # the same SAE given other positions' ids
                shuffled = tokens.flatten()[torch.randperm(tokens.numel())].view_as(tokens)
                results["tokenized, wrong ids"] = nmse(sae(x, token_ids=shuffled), x)
        results[name] = nmse(x_hat, x)
    print(f"{arch}: held-out NMSE " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    assert results["tokenized"] < 0.05 * results["base"]
    # it learned each token's own row: ids aligned in training, and used at inference
    assert results["tokenized, wrong ids"] > 20 * results["tokenized"]

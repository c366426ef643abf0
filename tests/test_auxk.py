"""AuxK decodes the dead latents' ReLU'd pre-activations (Gao et al. 2024), not SAELens's raw
ones: the override (``saes/auxk.py``) against SAELens's own loss and against the paper's formula.

Each test would catch: the override lost from an architecture (negative dead latents decode
again and their gradient reaches ``b_dec``); SAELens starting to read ``hidden_pre`` for
anything but picking the dead latents (the positive case parts from SAELens's own loss);
SAELens adopting the ReLU itself (the raw side stops differing, and the override is moot).
"""

import pytest
import torch
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainStepInput

import sae_lens_tokenized  # noqa: F401  registers the architectures

D_IN, D_SAE, V, B = 16, 48, 40, 64
ARCH_KW = {
    "tokenized_topk": {"k": 4},
    "tokenized_batchtopk": {"k": 4},
    "tokenized_matryoshka_batchtopk": {"k": 4, "matryoshka_widths": [12, D_SAE]},
}
DEAD = torch.arange(D_SAE) >= D_SAE // 2  # the upper half: more than k_aux = D_IN // 2 of them


def pair(arch: str, dead_bias: float):
    """The architecture at its default (ReLU'd AuxK) and with ``auxk_relu=False``, same weights;
    the dead latents' encoder bias set to ``dead_bias`` (their pre-activations' sign)."""
    torch.manual_seed(0)
    cls, cfg_cls = get_sae_training_class(arch)
    saes = [cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, d_vocab=V, lookup_ngram=1, auxk_relu=relu, **ARCH_KW[arch]))
            for relu in (True, False)]
    with torch.no_grad():
        for name, p in saes[0].named_parameters():
            p.add_(torch.randn_like(p) * 0.3)
        saes[0].b_enc[DEAD] = dead_bias
    saes[1].load_state_dict(saes[0].state_dict())
    return saes


def aux_loss(sae, x, ids):
    step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=DEAD, n_training_steps=0,
                          is_logging_step=False)
    with sae.token_ids(ids):
        out = sae.training_forward_pass(step)
    return out, out.losses["auxiliary_reconstruction_loss"]


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, D_IN, generator=g), torch.randint(0, V, (B,), generator=g)


@pytest.mark.parametrize("arch", ARCH_KW)
def test_positive_dead_latents_give_saelens_s_own_loss_and_gradients(arch):
    relu, raw = pair(arch, dead_bias=50.0)
    x, ids = data()
    losses = [aux_loss(sae, x, ids)[1] for sae in (relu, raw)]
    assert losses[1] > 0
    torch.testing.assert_close(losses[0], losses[1])
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        grads = [torch.autograd.grad(loss, getattr(sae, name), retain_graph=True)[0] for sae, loss in zip((relu, raw), losses)]
        torch.testing.assert_close(grads[0], grads[1], msg=name)


@pytest.mark.parametrize("arch", ARCH_KW)
def test_negative_dead_latents_decode_as_zero_and_send_no_gradient_to_b_dec(arch):
    relu, raw = pair(arch, dead_bias=-50.0)
    x, ids = data()
    out, loss = aux_loss(relu, x, ids)
    _, raw_loss = aux_loss(raw, x, ids)
    # the paper's AuxK: nothing to decode, so the loss is the scaled residual alone ...
    if arch != "tokenized_matryoshka_batchtopk":  # (Matryoshka's residual is per level)
        residual = (out.sae_in - out.sae_out).detach().pow(2).sum(-1).mean()
        torch.testing.assert_close(loss, relu.cfg.aux_loss_coefficient * residual)
    # ... and it moves no parameter; SAELens's raw pre-activations (about -50) move b_dec
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        (g,) = torch.autograd.grad(loss, getattr(relu, name), retain_graph=True, allow_unused=True)
        assert g is None or not g.any(), name
    (g_raw,) = torch.autograd.grad(raw_loss, raw.b_dec)
    assert raw_loss > 10 * loss and g_raw.norm() > 0


def test_topk_matches_the_paper_s_formula_with_dead_latents_of_both_signs():
    # Gao et al. 2024, App. A.2: e_hat = W_dec · TopK_aux(ReLU(pre-activations of dead latents)),
    # loss = coefficient · min(n_dead / k_aux, 1) · |e - e_hat|^2, e = x - x_hat detached.
    (sae, _) = pair("tokenized_topk", dead_bias=0.0)
    sae.cfg.rescale_acts_by_decoder_norm = False
    x, ids = data()
    out, loss = aux_loss(sae, x, ids)
    pre = out.hidden_pre.detach()
    assert (pre[:, DEAD] > 0).float().mean().item() == pytest.approx(0.5, abs=0.15)  # both signs
    k_aux = D_IN // 2
    picked = torch.where(DEAD, pre, -torch.inf).topk(k_aux, dim=-1)
    acts = torch.zeros_like(pre).scatter_(-1, picked.indices, picked.values.relu())
    e = (out.sae_in - out.sae_out).detach()
    scale = min(int(DEAD.sum()) / k_aux, 1.0)
    expected = sae.cfg.aux_loss_coefficient * scale * (acts @ sae.W_dec.detach() - e).pow(2).sum(-1).mean()
    torch.testing.assert_close(loss.detach(), expected)


@pytest.mark.parametrize("arch", ARCH_KW)
def test_auxk_relu_is_on_by_default_and_saved(arch):
    cfg_cls = get_sae_training_class(arch)[1]
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, d_vocab=V, **ARCH_KW[arch])
    assert cfg.auxk_relu is True
    off = cfg_cls(d_in=D_IN, d_sae=D_SAE, d_vocab=V, auxk_relu=False, **ARCH_KW[arch])
    assert cfg_cls.from_dict(off.to_dict()).auxk_relu is False

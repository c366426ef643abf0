"""The literature's analyses on constructed cases with known answers."""

import pytest
import torch

from sae_lens_tokenized.analysis.plotting import read_plotted_series

from sae_lens_tokenized import METHOD_LOOKUP

from helpers import tiny_model
from sae_lens_tokenized import TokenizedTopKTrainingSAE, TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized.analysis import (
    compare_strategies,
    lookup_analysis,
    massive_activations,
    plot_massive,
    plot_strategies,
)
from sae_lens_tokenized.lookup_init.unigrams import compute_unigram_table


def text_tokens(dataset, n=4):
    return torch.stack([dataset[i]["tokens"][1:] for i in range(n)])  # no BOS, as in the note


def test_strategy_comparison_known_values(tmp_path, model, dataset):
    tokens = text_tokens(dataset)
    result = compare_strategies(model, tokens, ["hook_embed", "blocks.1.hook_resid_pre"], control_token=17)
    embed = result["hooks"]["hook_embed"]
    for s in ("t", "bos,t", "t,t", "space,t", "17,t"):
        assert abs(embed[s]["cosine"] - 1) < 1e-5 and embed[s]["nmse"] < 1e-8  # hook == embedding
    assert embed["bos,17"]["cosine"] < 0.5 and embed["bos,17"]["has_t"] is False  # the control
    assert abs(embed["bos,t"]["cosine_random"]) < 0.5
    assert len(embed["t"]["cosine_by_position"]) == tokens.shape[1]
    plot_strategies(result, str(tmp_path / "s.png"))
    by_position, raw, centred = read_plotted_series(tmp_path / "s.png")
    assert by_position["xlabel"] == "position" and by_position["ylabel"] == "mean cosine"
    mid = "blocks.1.hook_resid_pre"  # the middle hook's per-position curve of each strategy
    assert {line["label"]: line["y"] for line in by_position["lines"]}["[space,t]"] == pytest.approx(
        result["hooks"][mid]["space,t"]["cosine_by_position"])
    for panel, key in ((raw, "cosine"), (centred, "cosine_centred")):
        lines = {line["label"]: line["y"] for line in panel["lines"]}
        for s in ("t", "bos,t", "space,t"):
            assert lines[f"[{s}]"] == pytest.approx([result["hooks"][h][s][key] for h in result["hooks"]])
    assert "random token" in {line["label"] for line in raw["lines"]}


def test_massive_activations_find_the_planted_position_zero_outlier(tmp_path, dataset):
    model = tiny_model(seed=3)
    with torch.no_grad():
        model.W_pos[0, 5] += 500.0  # dimension 5 at position 0: a massive activation
    result = massive_activations(model, text_tokens(dataset), ["blocks.0.hook_resid_pre"])
    r = result["hooks"]["blocks.0.hook_resid_pre"]
    assert r["top_dims"][0]["dim"] == 5 and r["top_dims"][0]["ratio_to_median"] > 100
    assert all(a["position"] == 0 for a in r["top_activations"][:4])  # 4 sequences, one position 0 each
    assert all(a["position"] != 0 for a in r["top_activations"][4:])
    assert set(r["positions_with_activation_over_100x_median"]) == {0}
    norms = r["norm_by_position"]
    assert norms[0] > 10 * max(norms[1:])
    plot_massive(result, str(tmp_path / "m.png"))
    panels = read_plotted_series(tmp_path / "m.png")
    assert [p["xlabel"] for p in panels] == ["position"] * 3
    assert panels[2]["title"] == "mean norm" and panels[2]["lines"][0]["label"] == "L0"
    assert panels[2]["lines"][0]["y"] == pytest.approx(norms)  # the planted outlier is what is drawn


def test_lookup_analysis_known_values(model, dataset):
    u = compute_unigram_table(model, "hook_embed", "bos,t", show_progress=False)  # == W_E
    sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=512, **METHOD_LOOKUP))
    sae.init_lookup_from_unigrams(u)  # 0.5 * U
    sae.cfg.metadata.hook_name = "hook_embed"
    r = lookup_analysis(sae, u, model, text_tokens(dataset), "hook_embed")
    assert abs(r["lookup_sim_mean"] - 0.5) < 1e-5 and abs(r["cosine_to_init_median"] - 1) < 1e-5
    assert r["rows_moved_from_init"] == 0
    det = r["last_token_detection"]
    assert det["trained_lookup"] == 1.0 and det["unigram_table"] == 1.0  # x == W_E[t]
    with torch.no_grad():
        sae.W_lookup.copy_(torch.randn_like(sae.W_lookup))  # a lookup unrelated to the tokens
    assert lookup_analysis(sae, u, model, text_tokens(dataset), "hook_embed")["last_token_detection"]["trained_lookup"] < 0.1


def test_single_token_latents_counts_latents_that_fire_on_one_token_or_after_one():
    """A plain TopK SAE whose latent 0 fires only on token 3, latent 1 only right after
    token 5, latent 2 on everything: one single-token latent by current token, one by
    previous token, among three live ones."""
    from sae_lens import TopKSAE, TopKSAEConfig

    from sae_lens_tokenized.analysis.latents import single_token_latents

    g = torch.Generator().manual_seed(0)
    n = 4000
    ids = torch.randint(0, 16, (n,), generator=g)
    prev = torch.randint(0, 16, (n,), generator=g)
    acts = torch.zeros(n, 3)
    acts[:, 0] = (ids == 3).float() * (1 + torch.rand(n, generator=g))
    acts[:, 1] = (prev == 5).float() * (1 + torch.rand(n, generator=g))
    acts[:, 2] = 0.5 + torch.rand(n, generator=g)
    sae = TopKSAE(TopKSAEConfig(d_in=3, d_sae=3, k=3))
    with torch.no_grad():  # the identity: latent j is input dimension j
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    by_token = single_token_latents(sae, acts, ids, prev=prev)
    by_prev = single_token_latents(sae, acts, ids, prev=prev, labels=prev)
    assert (by_token["live_latents"], by_token["single_token_latents"]) == (3, 1)
    assert (by_prev["live_latents"], by_prev["single_token_latents"]) == (3, 1)
    # the one found is the planted one each time: without latent 0 the current-token count is 0
    acts[:, 0] = 0.5 + torch.rand(n, generator=g)
    assert single_token_latents(sae, acts, ids, prev=prev)["single_token_latents"] == 0
    assert single_token_latents(sae, acts, ids, prev=prev, labels=prev)["single_token_latents"] == 1

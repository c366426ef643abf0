"""Converting the authors' original checkpoints (synthetic files in their exact layout)."""

import pickle

import pytest
import torch
from sae_lens import SAE

from sae_lens_tokenized.integrations.convert import (
    CheckpointFormatError,
    convert_original_checkpoint,
    parse_checkpoint_name,
)

D_IN, D_SAE, V, K = 16, 64, 50, 30


def original_state(tokenized: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {
        "W_enc": torch.randn(D_SAE, D_IN, generator=g),
        "W_dec": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g),  # negative biases: some kept values are < 0
        "b_dec": torch.randn(D_IN, generator=g),
    }
    if tokenized:
        sd["lookup.W_lookup.weight"] = torch.randn(V, D_IN, generator=g)
    return sd


def original_forward(sd: dict, x: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
    """An independent re-implementation of the authors' forward (raw TopK values, no ReLU)."""
    pre = (x - sd["b_dec"]) @ sd["W_enc"].T + sd["b_enc"]
    vals, idx = pre.topk(K, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, idx, vals)
    out = acts @ sd["W_dec"].T + sd["b_dec"]
    if ids is not None:
        out = out + sd["lookup.W_lookup.weight"][ids]
    return out


def test_name_parsing():
    assert parse_checkpoint_name("gpt2_resid_pre_8_ot30.pt") == {
        "model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "k": 30, "tokenized": True}
    assert parse_checkpoint_name("/x/pythia-1.4b_resid_pre_16_o50.pt")["tokenized"] is False
    assert parse_checkpoint_name("weights.pt") == {}


@pytest.mark.parametrize("tokenized, name", [(True, "gpt2_resid_pre_8_ot30.pt"), (False, "gpt2_resid_pre_8_o30.pt")])
def test_converted_sae_reproduces_the_original_forward(tmp_path, tokenized, name):
    sd = original_state(tokenized)
    torch.save(sd, tmp_path / name)
    out = convert_original_checkpoint(tmp_path / name, tmp_path / "sae")
    sae = SAE.load_from_disk(out)
    assert sae.cfg.architecture() == ("tokenized_topk" if tokenized else "topk_raw")
    assert sae.cfg.metadata.hook_name == "blocks.8.hook_resid_pre" and sae.cfg.k == 30
    x = torch.randn(200, D_IN) * 3
    ids = torch.randint(0, V, (200,)) if tokenized else None
    got = sae(x, token_ids=ids) if tokenized else sae(x)
    torch.testing.assert_close(got, original_forward(sd, x, ids), rtol=1e-5, atol=1e-4)
    if tokenized:
        assert torch.equal(sae.W_lookup, sd["lookup.W_lookup.weight"])


def test_relu_option_is_saelens_semantics_and_differs(tmp_path):
    sd = original_state(True)
    torch.save(sd, tmp_path / "gpt2_resid_pre_8_ot30.pt")
    sae = SAE.load_from_disk(convert_original_checkpoint(tmp_path / "gpt2_resid_pre_8_ot30.pt", tmp_path / "r", relu=True))
    x = torch.randn(200, D_IN) * 3
    ids = torch.randint(0, V, (200,))
    assert sae.cfg.topk_relu is True
    assert not torch.allclose(sae(x, token_ids=ids), original_forward(sd, x, ids), atol=1e-4)


def test_overrides_for_unparseable_names(tmp_path):
    torch.save(original_state(False), tmp_path / "weights.pt")
    with pytest.raises(CheckpointFormatError, match="hook_name"):
        convert_original_checkpoint(tmp_path / "weights.pt", tmp_path / "a")
    out = convert_original_checkpoint(tmp_path / "weights.pt", tmp_path / "b", hook_name="blocks.5.hook_resid_pre", k=10)
    assert SAE.load_from_disk(out).cfg.k == 10


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda sd: sd.pop("b_enc"), r"missing \['b_enc'\]"),
        (lambda sd: sd.__setitem__("W_dec", torch.randn(D_SAE, D_IN)), "W_dec has shape"),
        (lambda sd: sd.__setitem__("lookup.W_lookup.weight", torch.randn(V, D_IN + 1)), "lookup.W_lookup.weight has shape"),
        (lambda sd: sd.pop("lookup.W_lookup.weight"), "file name says a tokenized run, but the checkpoint holds no lookup"),
    ],
)
def test_malformed_checkpoints(tmp_path, mutate, match):
    sd = original_state(True)
    mutate(sd)
    torch.save(sd, tmp_path / "gpt2_resid_pre_8_ot30.pt")
    with pytest.raises(CheckpointFormatError, match=match):
        convert_original_checkpoint(tmp_path / "gpt2_resid_pre_8_ot30.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_tokenized_state_dict_under_a_baseline_name_is_an_error_naming_both(tmp_path):
    # the bug this guards: the name used to decide, and the lookup was silently dropped
    torch.save(original_state(True), tmp_path / "gpt2_resid_pre_8_o30.pt")
    with pytest.raises(CheckpointFormatError, match=r"file name says a baseline \(no lookup\), but the checkpoint holds a lookup \(50, 16\)"):
        convert_original_checkpoint(tmp_path / "gpt2_resid_pre_8_o30.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    torch.save(original_state(True), tmp_path / "weights.pt")
    with pytest.raises(CheckpointFormatError, match="tokenized= argument says a baseline"):
        convert_original_checkpoint(tmp_path / "weights.pt", tmp_path / "out", hook_name="blocks.8.hook_resid_pre",
                                    k=K, tokenized=False)
    # an unparseable name defers to the contents
    out = convert_original_checkpoint(tmp_path / "weights.pt", tmp_path / "out", hook_name="blocks.8.hook_resid_pre", k=K)
    assert SAE.load_from_disk(out).cfg.architecture() == "tokenized_topk"


class SmolTokenizedSAE(torch.nn.Module):
    """An independent re-implementation of tdooms/smol-sae's TokenizedSAE forward."""

    def __init__(self, d_in, d_sae, vocab, k):
        super().__init__()
        self.k = k
        self.encoder = torch.nn.Linear(d_in, d_sae)
        self.decoder = torch.nn.Linear(d_sae, d_in)
        self.lookup = torch.nn.Embedding(vocab, d_in)

    def forward(self, x, y):
        x_hid = self.encoder(x - self.decoder.bias)
        mask = torch.zeros_like(x_hid).scatter_(-1, x_hid.topk(k=self.k, dim=-1).indices, 1)
        return self.decoder(x_hid * mask) + self.lookup(y)


def test_smol_sae_layout_converts_and_reproduces_its_forward(tmp_path):
    torch.manual_seed(0)
    smol = SmolTokenizedSAE(D_IN, D_SAE, V, K)
    torch.save(smol.state_dict(), tmp_path / "gpt2_resid_mid_3_ot30.pt")
    sae = SAE.load_from_disk(convert_original_checkpoint(tmp_path / "gpt2_resid_mid_3_ot30.pt", tmp_path / "sae"))
    assert sae.cfg.architecture() == "tokenized_topk" and sae.cfg.metadata.hook_name == "blocks.3.hook_resid_mid"
    x, ids = torch.randn(100, D_IN) * 3, torch.randint(0, V, (100,))
    with torch.no_grad():
        torch.testing.assert_close(sae(x, token_ids=ids), smol(x, ids), rtol=1e-5, atol=1e-4)
    # without a name to read k from, k= is required
    torch.save(smol.state_dict(), tmp_path / "sae.pt")
    with pytest.raises(CheckpointFormatError, match="pass k="):
        convert_original_checkpoint(tmp_path / "sae.pt", tmp_path / "sae2", hook_name="blocks.3.hook_resid_mid")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_pickles_are_refused(tmp_path, capsys):
    with open(tmp_path / "gpt2_resid_pre_8_ot30.pt", "wb") as f:
        pickle.dump({"W_enc": Evil()}, f)
    with pytest.raises(CheckpointFormatError, match="tensors-only"):
        convert_original_checkpoint(tmp_path / "gpt2_resid_pre_8_ot30.pt", tmp_path / "out")
    assert "must never run" not in capsys.readouterr().out


def test_cli_convert(tmp_path, capsys):
    from sae_lens_tokenized.cli import main

    sd = original_state(True)
    torch.save(sd, tmp_path / "gpt2_resid_pre_8_ot30.pt")
    main(["convert", str(tmp_path / "gpt2_resid_pre_8_ot30.pt"), str(tmp_path / "out")])
    assert "wrote" in capsys.readouterr().out
    x, ids = torch.randn(7, D_IN), torch.randint(0, V, (7,))
    torch.testing.assert_close(SAE.load_from_disk(tmp_path / "out")(x, token_ids=ids), original_forward(sd, x, ids),
                               rtol=1e-5, atol=1e-4)

"""Tokenized SAEs on Hugging Face models: SAELens's HookedProxyLM (training with
``model_class_name="AutoModelForCausalLM"``) and TransformerLens 3's bridge
(``SAETransformerBridge``), on a tiny Llama built here with the tiny tokenizer."""

import pytest
import torch

from sae_lens_tokenized import METHOD_LOOKUP
from sae_lens.load_model import HookedProxyLM

from helpers import runner_cfg, tiny_tokenizer, token_dataset
from sae_lens_tokenized import (
    TokenIdsError,
    TokenizedSAETrainingRunner,
    TokenizedTopKTrainingSAEConfig,
    compute_unigram_table,
    token_ids_from,
)
from sae_lens_tokenized.training.activations_store import TokenizedActivationsStore


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.fixture(scope="module")
def proxy():
    hf, tok = tiny_llama()
    return HookedProxyLM(hf, tok)


def hf_cfg(hook: str, tokens: int = 4096, **sae_kw):
    sae = TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, **sae_kw)
    return runner_cfg(sae, hook, tokens, model_class_name="AutoModelForCausalLM")


def test_ids_stay_aligned_through_saelens_store_on_a_hookedproxylm(proxy):
    # at the embedding module's output each activation *is* its token's embedding row
    cfg = hf_cfg("model.embed_tokens", d_vocab=512)
    store = TokenizedActivationsStore.from_config(proxy, cfg, override_dataset=token_dataset())
    W_E = proxy.model.get_input_embeddings().weight
    for acts, ids, *_ in [next(store.iter_with_token_ids()) for _ in range(3)]:
        assert torch.equal(acts, W_E[ids].float())


def test_training_on_a_hf_model_sizes_the_lookup_and_inits_it_from_its_unigrams(proxy):
    runner = TokenizedSAETrainingRunner(hf_cfg("model.layers.0", **METHOD_LOOKUP), override_model=proxy,
                                        override_dataset=token_dataset())
    assert runner.sae.cfg.d_vocab == proxy.model.get_input_embeddings().num_embeddings
    table = compute_unigram_table(proxy, "model.layers.0", "bos,t", show_progress=False)
    # row t is the layer's output at the last position of [bos, t], computed by HF itself
    bos = proxy.tokenizer.bos_token_id
    out = proxy.model(torch.tensor([[bos, 7]]), output_hidden_states=True).hidden_states[1][0, -1]
    torch.testing.assert_close(table[7], out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runner.sae.W_lookup, 0.5 * table)
    before = runner.sae.W_lookup.detach().clone()
    sae = runner.run()
    assert not torch.equal(sae.W_lookup, before)


def test_token_ids_from_a_hookedproxylm_reads_its_input_and_never_keeps_stale_ids(proxy):
    runner = TokenizedSAETrainingRunner(hf_cfg("model.layers.0", init_lookup_from_unigrams=False, lookup_ngram=1), override_model=proxy,
                                        override_dataset=token_dataset())
    sae = runner.sae.eval()
    with torch.no_grad():
        sae.W_lookup.normal_()
    tokens = torch.randint(0, 512, (2, 6))
    with torch.no_grad(), token_ids_from(proxy, sae):
        _, cache = proxy.run_with_cache(tokens, names_filter=["model.layers.0"])
        acts = cache["model.layers.0"]
        torch.testing.assert_close(sae(acts), sae(acts, token_ids=tokens))
        # the next forward's ids replace them: the SAE never pairs acts with older ids
        other = torch.randint(0, 512, (2, 6))
        proxy.run_with_cache(other, names_filter=["model.layers.0"])
        torch.testing.assert_close(sae(acts), sae(acts, token_ids=other))
    with pytest.raises(TokenIdsError, match="needs the input token id"):
        sae(acts)


def test_a_model_without_input_embeddings_is_a_clear_error():
    class NoEmbeddings(torch.nn.Module):
        def forward(self, x):
            return x

    sae_cfg = TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=512)
    from sae_lens_tokenized import TokenizedTopKTrainingSAE

    with pytest.raises(TypeError, match="cannot find the token embedding of NoEmbeddings"):
        with token_ids_from(NoEmbeddings(), TokenizedTopKTrainingSAE(sae_cfg)):
            pass


def test_splicing_into_saelens_transformer_bridge_uses_the_bridge_s_input_ids(tmp_path):
    pytest.importorskip("transformer_lens.model_bridge", reason="TransformerBridge is new in TransformerLens 3")
    from sae_lens.analysis.sae_transformer_bridge import SAETransformerBridge

    hf, tok = tiny_llama()
    hf.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    bridge = SAETransformerBridge.boot_transformers(str(tmp_path / "tiny"), device="cpu")
    from sae_lens_tokenized import TokenizedTopKSAE, TokenizedTopKSAEConfig

    torch.manual_seed(1)
    sae = TokenizedTopKSAE(TokenizedTopKSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=len(tok)))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(std=0.3)
    sae.cfg.metadata.hook_name = "blocks.0.hook_out"
    tokens = torch.randint(2, 512, (2, 7))

    def splice(ids):
        return [("blocks.0.hook_out", lambda x, hook: sae(x, token_ids=ids))]

    with torch.no_grad():  # by hand first (SAELens: after run_with_saes, hooks there are ignored)
        by_hand = bridge.run_with_hooks(tokens, fwd_hooks=splice(tokens))
        wrong_ids = bridge.run_with_hooks(tokens, fwd_hooks=splice(tokens.roll(1, dims=1)))
        with token_ids_from(bridge, sae):
            spliced = bridge.run_with_saes(tokens, saes=[sae])
    torch.testing.assert_close(spliced, by_hand)
    assert not torch.allclose(spliced, wrong_ids)  # the lookup really depends on the ids

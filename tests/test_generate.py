"""Tokenized SAEs in generation and in every autograd mode.

TransformerLens's ``generate`` runs under ``torch.inference_mode``, embeds the prompt and
then each sampled token outside ``forward``, and (with its KV cache) runs only the newest
position per step (``_compat.py`` entry 7). A spliced tokenized SAE must see, at every
step, exactly the ids a full forward over the sequence so far would give it, the
previous token included (a bigram lookup reads it).
"""

import pytest
import torch

from sae_lens_tokenized import (
    TokenizedTopKSAE,
    TokenizedTopKSAEConfig,
    TokenizedTopKTrainingSAE,
    TokenizedTopKTrainingSAEConfig,
    token_ids_from,
    token_ids_from_any_model,
)

HOOK = "blocks.1.hook_resid_pre"


def every_pair_sae(model, ngram):
    """A lookup whose rows are large and random, with (for ngram 2) a row for *every*
    (previous token, token) pair: a wrong id or a wrong/missing previous token anywhere
    reads another row."""
    V = model.cfg.d_vocab
    cfg = TokenizedTopKSAEConfig(d_in=model.cfg.d_model, d_sae=64, k=4, d_vocab=V, lookup_ngram=ngram,
                                 lookup_bigram_rows=V * V if ngram == 2 else None)
    sae = TokenizedTopKSAE(cfg)
    with torch.no_grad():
        sae.W_lookup.normal_(std=3.0)
    if ngram == 2:
        sae.set_bigram_rows(torch.arange(V * V), 3.0 * torch.randn(V * V, model.cfg.d_model))
    sae.cfg.metadata.hook_name = HOOK
    return sae


def greedy_with_explicit_ids(model, sae, prompt, n):
    """The reference: full forwards, the SAE given the whole sequence's ids by hand."""
    seq = prompt
    for _ in range(n):
        logits = model.run_with_hooks(seq, fwd_hooks=[(HOOK, lambda a, hook: sae(a, token_ids=seq))])
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return seq


@pytest.mark.parametrize("ngram", [1, 2])
@pytest.mark.parametrize("capture", ["named", "any"])
@pytest.mark.parametrize("kv_cache", [True, False])
def test_generate_with_a_spliced_sae_equals_full_forwards_with_explicit_ids(model, dataset, ngram, capture, kv_cache):
    sae = every_pair_sae(model, ngram)
    prompt = torch.stack([dataset[i]["tokens"][:6] for i in range(2)])
    expected = greedy_with_explicit_ids(model, sae, prompt, 6)
    # what the SAE read at each step: the lookup part of its output, at every position it ran
    seen = []
    handle = sae.hook_sae_lookup.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    ctx = token_ids_from(model, sae) if capture == "named" else token_ids_from_any_model(sae)
    try:
        with ctx, model.saes(saes=[sae]):  # no warm-up forward: generate is the first call
            got = model.generate(prompt, max_new_tokens=6, do_sample=False, use_past_kv_cache=kv_cache,
                                 verbose=False, stop_at_eos=False)
    finally:
        handle.remove()
    assert torch.equal(got, expected)
    # step by step, the rows read are those of the final sequence at the positions run
    with torch.no_grad():
        rows = sae.W_lookup[sae.lookup_row_index(got)]
    for step, lookup in enumerate(seen):
        end = prompt.shape[1] + step
        start = end - lookup.shape[1]
        assert start == (0 if step == 0 or not kv_cache else end - 1)
        torch.testing.assert_close(lookup, rows[:, start:end])


def test_generate_stream_brackets_its_iteration(model, dataset):
    if not hasattr(model, "generate_stream"):
        pytest.skip("this TransformerLens has no generate_stream")
    sae = every_pair_sae(model, 2)
    prompt = torch.stack([dataset[i]["tokens"][:6] for i in range(2)])
    expected = greedy_with_explicit_ids(model, sae, prompt, 4)
    with token_ids_from(model, sae), model.saes(saes=[sae]):
        chunks = list(model.generate_stream(prompt, max_new_tokens=4, max_tokens_per_yield=1, do_sample=False,
                                            verbose=False, stop_at_eos=False))
    got = torch.cat([prompt, *[c[:, -1:] if c.shape[1] > 1 else c for c in chunks]], 1)[:, : expected.shape[1]]
    assert torch.equal(got[:, -4:], expected[:, -4:])


def test_ids_made_under_inference_mode_serve_autograd_later(model, dataset):
    """Ids captured inside ``torch.inference_mode`` (as generate makes them) are inference
    tensors; a later autograd call on the same activations must still work."""
    sae = every_pair_sae(model, 2)
    sae.W_lookup.requires_grad_(True)
    tokens = torch.stack([dataset[i]["tokens"] for i in range(2)])
    with token_ids_from(model, sae):
        with torch.inference_mode():
            model(tokens)
        x = torch.randn(*tokens.shape, model.cfg.d_model, requires_grad=True)
        out = sae(x)
        out.square().sum().backward()
    torch.testing.assert_close(out, sae(x, token_ids=tokens))
    assert x.grad is not None and sae.W_lookup.grad is not None


LOOKUP_KINDS = [
    pytest.param(dict(lookup_ngram=1, lookup_updates="dense"), id="unigram-dense"),
    pytest.param(dict(lookup_ngram=1, lookup_updates="sparse"), id="unigram-sparse"),
    pytest.param(dict(lookup_ngram=2, lookup_updates="dense", lookup_bigram_rows=16), id="bigram-dense"),
    pytest.param(dict(lookup_ngram=2, lookup_updates="sparse", lookup_bigram_rows=16), id="bigram-sparse"),
]


@pytest.mark.parametrize("kind", LOOKUP_KINDS)
@pytest.mark.parametrize("training_class", [False, True])
def test_every_lookup_kind_under_inference_mode_no_grad_and_autograd(model, dataset, kind, training_class):
    V, d = model.cfg.d_vocab, model.cfg.d_model
    if training_class:
        sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(d_in=d, d_sae=64, k=4, d_vocab=V, **kind)).eval()
    else:
        kind = {k: v for k, v in kind.items() if k != "lookup_updates"}
        sae = TokenizedTopKSAE(TokenizedTopKSAEConfig(d_in=d, d_sae=64, k=4, d_vocab=V, **kind))
    tokens = torch.stack([dataset[i]["tokens"] for i in range(2)])
    with torch.no_grad():
        sae.W_lookup.normal_()
    if sae.cfg.lookup_ngram == 2:
        pairs = torch.unique(tokens[:, :-1] * V + tokens[:, 1:])[:16]
        sae.set_bigram_rows(pairs, torch.randn(len(pairs), d))
    sae.cfg.metadata.hook_name = HOOK
    x = model.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
    with torch.no_grad():
        reference = sae(x, token_ids=tokens)
    with torch.inference_mode():
        assert torch.equal(sae(x, token_ids=tokens), reference)
        with token_ids_from(model, sae):  # ids captured and used inside inference mode
            _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
            torch.testing.assert_close(sae(cache[HOOK]), reference)
    xg = x.clone().requires_grad_(True)
    out = sae(xg, token_ids=tokens)
    out.square().sum().backward()
    torch.testing.assert_close(out.detach(), reference)
    # TopK is linear in x on its active set: d sum(out^2)/dx = W_enc (mask * (W_dec 2 out))
    with torch.no_grad():
        mask = (sae.encode(x) > 0).to(x.dtype)
        expected = ((2 * reference) @ sae.W_dec.T * mask) @ sae.W_enc.T
    torch.testing.assert_close(xg.grad, expected)


@pytest.mark.parametrize("capture", ["named", "any"])
def test_hugging_face_generate_with_its_kv_cache_reads_each_steps_true_previous_token(dataset, capture):
    """Hugging Face's generate passes only the new token with ``past_key_values``: the
    capture must extend the sequence, so a bigram lookup reads the pair with the token
    generated before it, exactly as a full forward with explicit ids would."""
    from helpers import tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                      max_position_embeddings=128)).eval()
    V = len(tok)
    sae = TokenizedTopKSAE(TokenizedTopKSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=V, lookup_ngram=2,
                                                  lookup_bigram_rows=V * V))
    with torch.no_grad():
        sae.W_lookup.normal_(std=3.0)
    sae.set_bigram_rows(torch.arange(V * V), 3.0 * torch.randn(V * V, 32))
    layer = hf.model.layers[1]
    explicit: list[torch.Tensor] = []

    def splice(module, args):
        ids = explicit[-1] if explicit else None
        return (sae(args[0], token_ids=ids) if ids is not None else sae(args[0]),) + args[1:]

    prompt = torch.stack([dataset[i]["tokens"][:6] for i in range(2)])
    handle = layer.register_forward_pre_hook(splice)
    try:
        seq = prompt  # the reference: full forwards, the SAE given the whole sequence's ids
        with torch.no_grad():
            for _ in range(5):
                explicit.append(seq)
                seq = torch.cat([seq, hf(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
        explicit.clear()
        ctx = token_ids_from(hf, sae) if capture == "named" else token_ids_from_any_model(sae)
        with ctx, torch.no_grad():
            got = hf.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=1)
    finally:
        handle.remove()
    assert torch.equal(got, seq)

"""Training a tokenized SAE from SAELens's activation cache (``CacheActivationsRunner``).

The cache is made by SAELens's own runner from a Hugging Face model folder (how a user
caches on many machines, then trains), then read by SAELens's store with
``use_cached_activations=True``. At the embedding module's output every activation *is*
its token's embedding row, so alignment is checked exactly.
"""

import pytest
import torch
from datasets import load_from_disk
from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig
from sae_lens.load_model import HookedProxyLM

from helpers import runner_cfg, token_dataset
from sae_lens_tokenized import TokenizedSAETrainingRunner, TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized.training.activations_store import TokenizedActivationsStore
from test_hf_models import tiny_llama

EMBED = "model.embed_tokens"
CONTEXT = 32


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    hf, tok = tiny_llama()
    folder = tmp_path_factory.mktemp("tiny-hf")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_cache(hf_folder, out, hook: str = EMBED, tokens: int = 8 * CONTEXT * 8):
    cfg = CacheActivationsRunnerConfig(
        dataset_path="unused-override", model_name=str(hf_folder), model_class_name="AutoModelForCausalLM",
        hook_name=hook, d_in=32, training_tokens=tokens, context_size=CONTEXT, model_batch_size=8,
        new_cached_activations_path=str(out), shuffle=False, prepend_bos=False, device="cpu", dtype="float32",
        buffer_size_gb=tokens * 32 * 4 / 1e9,  # one shard of exactly `tokens` (SAELens's default: 2 GB)
    )
    CacheActivationsRunner(cfg, override_dataset=token_dataset(CONTEXT)).run()
    return out


def cached_cfg(path, hook: str = EMBED, tokens: int = 2048, **sae_kw):
    sae = TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, **sae_kw)
    return runner_cfg(sae, hook, tokens, model_class_name="AutoModelForCausalLM", use_cached_activations=True,
                      cached_activations_path=str(path), context_size=CONTEXT, prepend_bos=False)


def test_a_saelens_cache_trains_a_tokenized_sae_with_every_id_aligned(hf_folder, tmp_path):
    path = make_cache(hf_folder, tmp_path / "cache")
    assert "token_ids" in load_from_disk(str(path)).column_names  # as a user loads it
    hf, tok = tiny_llama()
    proxy = HookedProxyLM(hf, tok)
    cfg = cached_cfg(path, d_vocab=len(tok))
    store = TokenizedActivationsStore.from_config(proxy, cfg, override_dataset=token_dataset(CONTEXT))
    assert store.cached_activation_dataset is not None  # really reading the cache
    W_E = hf.get_input_embeddings().weight
    for acts, ids, *_ in [next(store.iter_with_token_ids()) for _ in range(4)]:
        assert torch.equal(acts, W_E[ids].float()), "cached activations and their ids came apart"
    # and the runner trains from it (SAELens's buffer shuffles rows across cached batches)
    runner = TokenizedSAETrainingRunner(cached_cfg(path), override_model=proxy, override_dataset=token_dataset(CONTEXT))
    assert runner.activations_store.cached_activation_dataset is not None
    before = runner.sae.W_lookup.detach().clone()
    sae = runner.run()
    assert not torch.equal(sae.W_lookup, before)


def test_a_cache_without_token_ids_is_a_clear_error_before_training(hf_folder, tmp_path):
    path = make_cache(hf_folder, tmp_path / "cache")
    load_from_disk(str(path)).remove_columns("token_ids").save_to_disk(str(tmp_path / "no_ids"))
    hf, tok = tiny_llama()
    with pytest.raises(ValueError, match="have no 'token_ids' column"):
        TokenizedSAETrainingRunner(cached_cfg(tmp_path / "no_ids"), override_model=HookedProxyLM(hf, tok),
                                   override_dataset=token_dataset(CONTEXT))


def test_a_low_precision_activation_dtype_that_would_round_ids_is_refused(hf_folder, tmp_path):
    path = make_cache(hf_folder, tmp_path / "cache")
    hf, tok = tiny_llama()
    cfg = cached_cfg(path, d_vocab=len(tok))
    cfg.dtype = "bfloat16"  # bf16 holds integers exactly only below 256; the vocabulary has 512
    with pytest.raises(ValueError, match="would be rounded"):
        TokenizedActivationsStore.from_config(HookedProxyLM(hf, tok), cfg, override_dataset=token_dataset(CONTEXT))


def test_a_rank_share_of_the_cache_reads_its_own_rows_with_their_ids(hf_folder, tmp_path):
    # _compat entry 9: under torchrun each rank reads a contiguous part of the cache's rows
    from sae_lens_tokenized.parallel import DataParallel

    path = make_cache(hf_folder, tmp_path / "cache")
    hf, tok = tiny_llama()
    store = TokenizedActivationsStore.from_config(HookedProxyLM(hf, tok), cached_cfg(path, d_vocab=len(tok)),
                                                  override_dataset=token_dataset(CONTEXT))
    n_rows = len(store.cached_activation_dataset)
    store.take_rank_share(DataParallel(rank=1, world=2))
    assert len(store.cached_activation_dataset) == n_rows // 2
    acts, ids = store.get_raw_llm_batch()  # the tokenized store packs the ids after d_in columns
    rows = store.store_batch_size_prompts
    expected = token_dataset(CONTEXT)[n_rows // 2 : n_rows // 2 + rows]["tokens"].flatten()
    assert torch.equal(ids.flatten().long(), expected), "rank 1 did not read the second half of the cache"
    assert torch.equal(acts.reshape(len(expected), -1)[:, :32], hf.get_input_embeddings().weight[expected].float())

"""Transcoders (issue 22): trained through the plugin's runner from an ordinary SAELens
runner config, input and target carried together through SAELens's buffer, saved in
SAELens's format, spliced the way SAELens splices transcoders."""

import contextlib
import json

import pytest
import torch
from sae_lens import SAE, LanguageModelSAETrainingRunner
from sae_lens.saes.transcoder import JumpReLUSkipTranscoder, JumpReLUTranscoder, SkipTranscoder, Transcoder

from helpers import nmse, runner_cfg, tiny_model, token_dataset
from sae_lens_tokenized import (
    TokenizedJumpReLUTranscoder,
    TokenizedSAETrainingRunner,
    TokenizedStandardTranscoder,
    TokenizedTopKTrainingTranscoderConfig,
    TokenizedTopKTranscoder,
    TopKTrainingTranscoderConfig,
    TopKTranscoder,
    saes,
    token_ids_from,
)
from sae_lens_tokenized.training.activations_store import TokenizedActivationsStore, unpack_token_ids

IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
MID, POST = "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post"  # POST - MID: what the MLP wrote


def planted_model():
    """MLP0's input is (almost) a function of the token: attention and positions scaled
    down, so MLP0's output is a token's extended embedding plus a little context."""
    model = tiny_model()
    with torch.no_grad():
        model.blocks[0].attn.W_O.mul_(0.05)
        model.W_pos.mul_(0.05)
    return model


def transcoder_cfg(tokenized: bool, **kw):
    cls = TokenizedTopKTrainingTranscoderConfig if tokenized else TopKTrainingTranscoderConfig
    extra = {"lookup_ngram": 1} if tokenized else {}
    return cls(**{"d_in": 32, "d_out": 32, "d_sae": 64, "k": 2, "hook_name_out": OUT, **extra, **kw})


def held_out(model, n_rows: int = 24):
    """(input, output, ids) at every position of rows the training never reads."""
    tokens = token_dataset(n_rows=400)["tokens"][-n_rows:]
    _, cache = model.run_with_cache(tokens, names_filter=[IN, OUT])
    return cache[IN], cache[OUT], tokens


def test_rows_carry_input_target_and_id_together_through_saelens_buffer(dataset):
    model = tiny_model()
    cfg = runner_cfg(transcoder_cfg(True), IN, 10_000)
    store = TokenizedActivationsStore.from_config(model, cfg, override_dataset=dataset)
    store.d_vocab = model.cfg.d_vocab
    acts, ids = unpack_token_ids(next(store))  # SAELens's shuffled stream (mixing buffer)
    x_in, y = acts[:, :32], acts[:, 32:]
    assert acts.shape == (256, 64)
    with torch.no_grad():  # the target is the MLP's output of *this* row's input
        torch.testing.assert_close(y, model.blocks[0].mlp(x_in), atol=1e-5, rtol=1e-4)
    # and the id is this row's token: find each row in a direct forward over the corpus
    tokens = dataset["tokens"][:160]
    _, cache = model.run_with_cache(tokens, names_filter=[IN])
    direct = cache[IN].reshape(-1, 32)
    nearest = torch.cdist(x_in, direct, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
    assert float(nearest.values.max()) < 1e-4, "a row's input is not a position of the corpus"
    assert torch.equal(ids, tokens.reshape(-1)[nearest.indices])


def test_a_tokenized_transcoder_is_far_below_the_plain_one_on_a_planted_model(dataset, tmp_path):
    model = planted_model()
    x, y, tokens = held_out(model)
    results = {}
    for tokenized in (False, True):
        cfg = runner_cfg(transcoder_cfg(tokenized), IN, 30_000, output_path=str(tmp_path / str(tokenized)))
        runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
        tc = runner.run().eval()
        with torch.no_grad():
            out = tc(x, token_ids=tokens) if tokenized else tc(x)
        results[tokenized] = nmse(out, y)
    assert results[True] < 0.2 * results[False], results  # measured: 0.013 vs 0.359


ARCHS = ["standard", "topk", "batchtopk", "jumprelu"]
SAVED_AS = {  # what SAE.load_from_disk returns: SAELens's own class where it has one
    (False, "standard", False): Transcoder, (False, "standard", True): SkipTranscoder,
    (False, "jumprelu", False): JumpReLUTranscoder, (False, "jumprelu", True): JumpReLUSkipTranscoder,
    (False, "batchtopk", False): JumpReLUTranscoder, (False, "batchtopk", True): JumpReLUSkipTranscoder,
    (False, "topk", False): TopKTranscoder, (False, "topk", True): TopKTranscoder,
    **{(True, a, skip): cls for a, cls in [("standard", TokenizedStandardTranscoder), ("topk", TokenizedTopKTranscoder),
                                             ("batchtopk", TokenizedJumpReLUTranscoder),
                                             ("jumprelu", TokenizedJumpReLUTranscoder)] for skip in (False, True)},
}


def arch_cfg(tokenized: bool, arch: str, **kw):
    name = {"standard": "Standard", "topk": "TopK", "batchtopk": "BatchTopK", "jumprelu": "JumpReLU"}[arch]
    cls = getattr(saes, ("Tokenized" if tokenized else "") + name + "TrainingTranscoderConfig")
    extra = {"lookup_ngram": 1} if tokenized else {}
    if arch in ("topk", "batchtopk"):
        extra["k"] = 2
    return cls(**{"d_in": 32, "d_out": 32, "d_sae": 64, "hook_name_out": OUT, **extra, **kw})


# SAELens's transcoder classes are the same file across the supported range: the skip
# variants run at the newest end only (slow)
@pytest.mark.parametrize("skip", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tokenized", [False, True])
def test_saved_transcoders_load_exactly_and_splice_into_the_mlp_output(dataset, tmp_path, tokenized, arch, skip):
    model = planted_model()
    cfg = runner_cfg(arch_cfg(tokenized, arch, skip_connection=skip), IN, 4096, output_path=str(tmp_path / "tc"))
    trained = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run().eval()
    if skip:
        assert trained.W_skip.abs().sum() > 0  # the skip connection trained
    loaded = SAE.load_from_disk(tmp_path / "tc")
    assert type(loaded) is SAVED_AS[tokenized, arch, skip]
    assert loaded.cfg.metadata.hook_name == IN and loaded.cfg.metadata.hook_name_out == OUT
    x, y, tokens = held_out(model, 4)
    kw = {"token_ids": tokens} if tokenized else {}
    with torch.no_grad():
        expected = loaded(x, **kw)
        if arch == "batchtopk":  # saved as JumpReLU at the running top-k threshold, as SAELens does
            pre = (x @ trained.W_enc + trained.b_enc) * trained.W_dec.norm(dim=-1)  # rescale_acts_by_decoder_norm
            acts = torch.relu(pre) * (pre > trained.topk_threshold)
            with trained.token_ids(tokens) if tokenized else contextlib.nullcontext():
                reference = trained.decode(acts) + (x @ trained.W_skip.T if skip else 0)
        else:
            reference = trained(x, **kw)
        torch.testing.assert_close(expected, reference, atol=1e-5, rtol=1e-4)  # TopK folds its norms on save
        # spliced as SAELens splices a transcoder: input read at IN, MLP output replaced at OUT
        with token_ids_from(model, loaded) if tokenized else contextlib.nullcontext():
            _, cache = model.run_with_cache_with_saes(tokens, saes=[loaded], names_filter=[MID, POST])
    # SAELens's splice runs encode then decode, and so leaves a skip connection's term out
    # (its own SkipTranscoder's too; docs/transcoders.md)
    spliced = expected - (x @ loaded.W_skip.T if skip else 0)
    torch.testing.assert_close(cache[POST] - cache[MID], spliced, atol=1e-5, rtol=1e-4)
    if tokenized:  # the ids are the model's input: shifted ids give another output
        assert not torch.allclose(loaded(x, token_ids=tokens.roll(1, dims=-1)), expected)


def test_bad_transcoder_configs_are_refused_before_any_work(dataset, monkeypatch):
    model = tiny_model()
    built = []
    monkeypatch.setattr(TokenizedActivationsStore, "from_config",
                        classmethod(lambda cls, *a, **k: built.append(cls)))

    def refused(sae_cfg, hook=IN, match=""):
        with pytest.raises(ValueError, match=match):
            TokenizedSAETrainingRunner(runner_cfg(sae_cfg, hook, 4096), override_model=model, override_dataset=dataset)

    refused(transcoder_cfg(True, hook_name_out="blocks.0.hook_mlp_outt"), match="no hook point 'blocks.0.hook_mlp_outt'")
    refused(transcoder_cfg(True, d_out=16), match="d_out=16 but activations at 'blocks.0.hook_mlp_out' have width 32")
    refused(transcoder_cfg(True, hook_name_out=IN), hook=OUT, match="runs before the input hook")
    refused(transcoder_cfg(True, hook_name_out="blocks.1.hook_mlp_out"), match="past the input hook")
    assert built == []
    with pytest.raises(ValueError, match="apply_b_dec_to_input"):
        transcoder_cfg(False, apply_b_dec_to_input=True)


def test_a_prompt_strategy_or_a_table_initialises_the_lookup_at_the_output_hook(dataset, tmp_path):
    from sae_lens_tokenized.lookup_init.unigrams import compute_unigram_table, save_unigram_table, table_metadata

    model = planted_model()
    at_out = compute_unigram_table(model, OUT, "bos,t", show_progress=False)
    at_in = compute_unigram_table(model, IN, "bos,t", show_progress=False)
    assert not torch.allclose(at_out, at_in, atol=1e-2)  # the two spaces differ on this model

    def lookup_at_init(**kw):
        cfg = runner_cfg(transcoder_cfg(True, **kw), IN, 4096)
        return TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).sae.W_lookup.detach()

    # the prompts' activations at the MLP's output, at the prompt strategies' scale (0.5)
    torch.testing.assert_close(lookup_at_init(unigram_strategy="bos,t"), 0.5 * at_out)
    # a precomputed table: one computed at the output hook is used, one from elsewhere refused
    for hook, table in ((OUT, at_out), (IN, at_in)):
        save_unigram_table(tmp_path / f"{hook}.safetensors", table, table_metadata(model, hook, "bos,t", None, table.dtype))
    got = lookup_at_init(unigram_strategy="bos,t", unigram_table_path=str(tmp_path / f"{OUT}.safetensors"))
    torch.testing.assert_close(got, 0.5 * at_out)
    with pytest.raises(Exception, match=f"hook_name: file '{IN}' vs this run '{OUT}'"):
        lookup_at_init(unigram_strategy="bos,t", unigram_table_path=str(tmp_path / f"{IN}.safetensors"))


def test_saelens_own_runner_refuses_a_transcoder_config_before_loading_anything(dataset):
    with pytest.raises(TypeError, match="transcoder config.*TokenizedSAETrainingRunner"):
        LanguageModelSAETrainingRunner(runner_cfg(transcoder_cfg(False), IN, 4096), override_dataset=dataset)


def test_a_transcoder_trains_on_a_hugging_face_model_mlp(dataset, tmp_path):
    from sae_lens.load_model import HookedProxyLM

    from test_hf_models import tiny_llama

    hf, tok = tiny_llama()
    proxy = HookedProxyLM(hf, tok)
    hf_in, hf_out = "model.layers.0.post_attention_layernorm", "model.layers.0.mlp"
    cfg = runner_cfg(transcoder_cfg(True, hook_name_out=hf_out), hf_in, 4096, model_class_name="AutoModelForCausalLM",
                     output_path=str(tmp_path / "tc"))
    store = TokenizedActivationsStore.from_config(proxy, cfg, override_dataset=dataset)
    acts, _ = unpack_token_ids(next(store))
    with torch.no_grad():  # each row's target is the MLP module's output of that row's input
        torch.testing.assert_close(acts[:, 32:], hf.model.layers[0].mlp(acts[:, :32]), atol=1e-5, rtol=1e-4)
    TokenizedSAETrainingRunner(cfg, override_model=proxy, override_dataset=dataset).run()
    loaded = SAE.load_from_disk(tmp_path / "tc")
    assert loaded.cfg.metadata.hook_name_out == hf_out and loaded.W_lookup.shape[1] == 32


def test_a_tokenized_skip_transcoder_publishes_to_the_hub_and_loads_back(dataset, tmp_path, hub):
    from sae_lens_tokenized import load_from_hub, push_to_hub

    model = planted_model()
    cfg = runner_cfg(arch_cfg(True, "jumprelu", skip_connection=True), IN, 4096, output_path=str(tmp_path / "tc"))
    TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    push_to_hub({"mlp0": tmp_path / "tc"}, "user/transcoders")
    remote, local = load_from_hub("user/transcoders", "mlp0"), SAE.load_from_disk(tmp_path / "tc")
    assert type(remote) is TokenizedJumpReLUTranscoder and remote.cfg.metadata.hook_name_out == OUT
    for name, t in local.state_dict().items():
        assert torch.equal(remote.state_dict()[name], t), name
    from huggingface_hub import hf_hub_download

    card = open(hf_hub_download("user/transcoders", "README.md")).read()
    assert "| hook_name_out | blocks.0.hook_mlp_out |" in card and "| d_out | 32 |" in card


def test_saelens_evals_are_refused_for_a_transcoder_instead_of_measuring_the_wrong_hook(dataset, tmp_path):
    from sae_lens_tokenized.integrations.evals import evaluate

    cfg = runner_cfg(transcoder_cfg(False), IN, 2048, output_path=str(tmp_path / "tc"))
    runner = TokenizedSAETrainingRunner(cfg, override_model=tiny_model(), override_dataset=dataset)
    runner.run()
    assert runner.evaluator(runner.sae, None, None) == {}  # no run_evals during training either
    with pytest.raises(ValueError, match="are transcoders: SAELens's run_evals measures an SAE at one hook"):
        evaluate([str(tmp_path / "tc")], model=tiny_model())


def test_resuming_a_tokenized_transcoder_restores_it_and_trains_on_against_the_target(dataset, tmp_path):
    model = planted_model()
    cfg = runner_cfg(transcoder_cfg(True), IN, 8192, checkpoint_path=str(tmp_path / "ckpt"), n_checkpoints=1)
    TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    (ckpt,) = [p.parent for p in (tmp_path / "ckpt").rglob("trainer_state.pt")]
    saved = SAE.load_from_disk(ckpt)
    assert saved.cfg.metadata.hook_name_out == OUT
    x, y, tokens = held_out(model)
    before = nmse(_predict(saved, x, tokens), y)

    cfg2 = runner_cfg(transcoder_cfg(True), IN, 30_720, resume_from_checkpoint=str(ckpt),
                      output_path=str(tmp_path / "out"))
    runner = TokenizedSAETrainingRunner(cfg2, override_model=model, override_dataset=dataset)
    assert runner.unigram_report == {}  # no fresh init: the checkpoint's lookup goes on
    runner.run()
    resumed = SAE.load_from_disk(tmp_path / "out")
    counts = json.loads((tmp_path / "out" / "cfg.json").read_text())["metadata"]["activations"]
    # it went on from the checkpoint: only the rest of the run (plus what SAELens's buffer holds) was
    # read from the model; a fresh run reads all 30,720 and more
    assert counts["trained_on"] == 30_720 and counts["read"] <= 30_720 - 8192 + 4096, counts
    # it trained on against the MLP's output: a target mix-up (training toward the input) would
    # move it away from y, above the checkpoint; the default's checkpoint is already good, so the
    # gain from the rest of the run is small
    assert nmse(_predict(resumed, x, tokens), y) < before


def _predict(tc, x, tokens):
    with torch.no_grad(), tc.token_ids(tokens):
        return tc(x)

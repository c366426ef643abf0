"""The lookup page, sae-dashboard's feature dashboards on a tokenized SAE, and both seen in
a real browser (Debian's headless Chromium: .ci/run installs it and sets
SLTOK_REQUIRE_CHROMIUM=1, so there a missing browser fails instead of skipping)."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from sae_lens_tokenized import TokenizedTopKSAE, TokenizedTopKSAEConfig
from sae_lens_tokenized.analysis.lookup_page import lookup_page, lookup_page_data, render_lookup_page

HOOK = "blocks.1.hook_resid_pre"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("SLTOK_REQUIRE_CHROMIUM"):
            pytest.fail("SLTOK_REQUIRE_CHROMIUM is set but no chromium is on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH")
    return path


def browse(page: Path, tmp_path: Path) -> tuple[str, Path]:
    """The DOM after the page's scripts ran, and a screenshot, from headless Chromium."""
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}", "--window-size=1200,900"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    png = tmp_path / (page.stem + ".png")
    subprocess.run([*flags, f"--screenshot={png}", page.as_uri()], capture_output=True, timeout=120, check=True)
    return dom, png


def assert_not_blank(png: Path) -> None:
    from PIL import Image

    pixels = Image.open(png).convert("L").getdata()
    assert len(set(pixels)) > 10, f"{png} is blank"


@pytest.fixture
def sae(model):
    torch.manual_seed(0)
    sae = TokenizedTopKSAE(TokenizedTopKSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=model.cfg.d_vocab,
                                                  rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        sae.W_lookup.normal_()
    sae.cfg.metadata.hook_name = HOOK
    return sae


def test_lookup_page_reports_rows_neighbours_and_latents(sae, model, dataset):
    tokens = torch.stack([dataset[i]["tokens"] for i in range(8)])
    counts = torch.bincount(tokens[:, 1:].reshape(-1), minlength=model.cfg.d_vocab)
    a, b = counts.argsort(descending=True)[:2].tolist()
    with torch.no_grad():
        sae.W_lookup[b] = 3 * sae.W_lookup[a]  # b's nearest row is a's, at cosine 1
    data = lookup_page_data(sae, model, tokens, n_tokens=20)
    by_id = {r["id"]: r for r in data["tokens"]}
    assert [r["id"] for r in data["tokens"]][:2] == [a, b]  # most frequent first
    assert by_id[a]["count"] == counts[a]
    assert by_id[b]["norm"] == pytest.approx(float(sae.W_lookup[b].detach().norm()), rel=1e-5)
    assert by_id[b]["neighbours"][0] == [by_id[a]["token"], pytest.approx(1.0, abs=1e-5)]
    # the latents listed for a are those with the highest mean activation on a's positions
    from sae_lens_tokenized.models import activations_at_hook

    acts = activations_at_hook(model, tokens, HOOK)[:, 1:].reshape(-1, 32)
    f = sae.encode(acts)[tokens[:, 1:].reshape(-1) == a]
    expected = f.mean(0).topk(len(by_id[a]["latents"])).indices.tolist()
    assert [k for k, _, _ in by_id[a]["latents"]] == expected


def test_lookup_page_in_a_browser_escapes_tokens_and_filters(sae, model, dataset, tmp_path):
    tokens = torch.stack([dataset[i]["tokens"] for i in range(4)])
    data = lookup_page_data(sae, model, tokens, n_tokens=30)
    data["tokens"][0]["token"] = "<b>bold</b>"  # a token that is markup must show as text
    page = tmp_path / "lookup.html"
    page.write_text(render_lookup_page(data))
    dom, png = browse(page, tmp_path)
    assert dom.count("<tr data-token=") == 30
    assert "&lt;b&gt;bold&lt;/b&gt;" in dom and "<b>bold</b>" not in dom.split("<script")[0]
    assert_not_blank(png)


def test_saved_page_from_the_cli_helper(sae, model, dataset, tmp_path):
    tokens = torch.stack([dataset[i]["tokens"] for i in range(4)])
    path = lookup_page(sae, model, tokens, tmp_path / "page.html", n_tokens=10)
    text = path.read_text()
    assert text.count("<tr data-token=") == 10 and HOOK in text


def test_sae_dashboard_renders_a_tokenized_sae(sae, model, dataset, tmp_path):
    pytest.importorskip("sae_dashboard")
    from sae_dashboard.data_writing_fns import save_feature_centric_vis
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    tokens = torch.stack([dataset[i]["tokens"] for i in range(16)])
    cfg = SaeVisConfig(hook_point=HOOK, features=list(range(4)), minibatch_size_features=4,
                       minibatch_size_tokens=8, device="cpu")
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    # the dashboard's activations are the SAE's encoder output (the lookup does not enter it)
    page = tmp_path / "dashboard.html"
    save_feature_centric_vis(data, page)
    dom, png = browse(page, tmp_path)
    assert "Feature" in dom or "feature" in dom
    assert_not_blank(png)


def test_neuronpedia_export_of_a_saved_tokenized_sae(sae, model, dataset, tmp_path, monkeypatch):
    """sae-dashboard's NeuronpediaRunner, end to end: load the saved SAE by path, take prompts
    from a dataset folder, write Neuronpedia's batch JSON. Offline, the model it would load by
    name is the tiny one; everything else is sae-dashboard's."""
    pytest.importorskip("sae_dashboard")
    import json

    from datasets import Dataset
    from sae_dashboard.neuronpedia import neuronpedia_runner as npr
    from sae_dashboard.neuronpedia.neuronpedia_runner_config import NeuronpediaRunnerConfig

    sae.cfg.metadata.model_name = "tiny"
    sae.cfg.metadata.context_size = 32
    sae.cfg.metadata.prepend_bos = True
    sae.save_model(str(tmp_path / "sae"))
    # a text column: SAELens 6.53 checks a *pretokenized* dataset's tokenizer with
    # hf_hub_download(path), which rejects a local folder
    from helpers import stdlib_text

    (tmp_path / "data").mkdir()
    Dataset.from_dict({"text": stdlib_text()[:200]}).to_parquet(str(tmp_path / "data" / "train.parquet"))
    monkeypatch.chdir(tmp_path)  # it caches activations under ./cached_activations
    monkeypatch.setattr(npr.HookedSAETransformer, "from_pretrained", lambda *a, **k: model)
    cfg = NeuronpediaRunnerConfig(
        sae_set="tiny-tokenized", sae_path=str(tmp_path / "sae"), from_local_sae=True,
        outputs_dir=str(tmp_path / "np"), huggingface_dataset_path=str(tmp_path / "data"),
        n_prompts_total=32, n_tokens_in_prompt=32, n_prompts_in_forward_pass=8, n_features_at_a_time=16,
        quantile_feature_batch_size=16, sae_device="cpu", model_device="cpu", activation_store_device="cpu",
        shuffle_tokens=False)
    runner = npr.NeuronpediaRunner(cfg)
    runner.run()
    batches = sorted(Path(runner.cfg.outputs_dir).glob("batch-*.json"))
    assert len(batches) == 4  # 64 latents, 16 at a time
    features = [f for b in batches for f in json.loads(b.read_text())["features"]]
    assert {f["feature_index"] for f in features} >= set(range(16))
    # its top activations are the loaded SAE's encoder output on those prompts
    loaded = npr.SAE.load_from_pretrained(str(tmp_path / "sae"), device="cpu")
    tokens = runner.get_tokens()
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    with torch.no_grad():
        acts = loaded.encode(cache[HOOK])
    compared = 0
    for f in features:
        top = max((max(a["values"]) for a in f["activations"]), default=0.0)
        if top > 0:
            assert abs(top - float(acts[..., f["feature_index"]].max())) < 1e-3 * max(1.0, top)
            compared += 1
    assert compared >= 16

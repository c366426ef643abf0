"""Publishing and loading through the real huggingface_hub client over HTTP to 127.0.0.1."""

import hashlib
import logging

import pytest
import torch
import yaml
from sae_lens import SAE

from sae_lens_tokenized import TokenizedTopKTrainingSAE, TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized.integrations.hub import (
    HubUploadError,
    SAEFolderError,
    check_sae_folder,
    load_from_hub,
    push_to_hub,
)

V, D_IN = 60, 16


def make_sae(hook: str, seed: int) -> TokenizedTopKTrainingSAE:
    torch.manual_seed(seed)
    sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(d_in=D_IN, d_sae=32, k=4, d_vocab=V))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = "gpt2"
    return sae


def saved(tmp_path, name, hook, seed):
    folder = tmp_path / name
    make_sae(hook, seed).save_inference_model(folder)
    return folder


def tree_digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def assert_same(a, b):
    for name, t in a.state_dict().items():
        assert torch.equal(b.state_dict()[name], t), name
    x, ids = torch.randn(2, 5, D_IN), torch.randint(0, V, (2, 5))  # [batch, pos]: previous ids from pos
    assert torch.equal(a(x, token_ids=ids), b(x, token_ids=ids))


def test_publish_two_saes_and_load_each_with_from_pretrained(tmp_path, hub):
    f8 = saved(tmp_path, "l8", "blocks.8.hook_resid_pre", 1)
    sae6 = make_sae("blocks.6.hook_resid_pre", 2)  # an SAE object (saved with save_inference_model)
    sae6.save_inference_model(tmp_path / "l6_local")
    url = push_to_hub({"blocks.8.hook_resid_pre": f8, "blocks.6.hook_resid_pre": sae6}, "user/two-saes",
                      metrics={"blocks.8.hook_resid_pre": {"nmse": 0.081}})
    assert "/commit/" in url
    files = hub.files("user/two-saes")
    assert {"blocks.8.hook_resid_pre/cfg.json", "blocks.8.hook_resid_pre/sae_weights.safetensors",
            "blocks.6.hook_resid_pre/sae_weights.safetensors", "README.md", "sae_lens_tokenized.json"} <= set(files)

    for sae_id, local in [("blocks.8.hook_resid_pre", f8), ("blocks.6.hook_resid_pre", tmp_path / "l6_local")]:
        remote = SAE.from_pretrained("user/two-saes", sae_id)
        assert type(remote).__name__ == "TokenizedTopKSAE"
        assert_same(SAE.load_from_disk(local), remote)
        assert_same(remote, load_from_hub("user/two-saes", sae_id))

    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "saelens" and "tokenized-sae" in meta["tags"]
    assert meta["base_model"] == ["openai-community/gpt2"] and "license" in meta
    assert "import sae_lens_tokenized" in card and 'SAE.from_pretrained("user/two-saes"' in card
    assert "| unigram_strategy | data |" in card and "| eval: nmse | 0.081 |" in card


def test_second_push_keeps_the_first_saes_in_card_and_manifest(tmp_path, hub):
    push_to_hub({"a": saved(tmp_path, "a", "blocks.1.hook_resid_pre", 3)}, "user/incremental")
    push_to_hub({"b": saved(tmp_path, "b", "blocks.2.hook_resid_pre", 4)}, "user/incremental")
    card = hub.files("user/incremental")["README.md"].decode()
    assert "### `a`" in card and "### `b`" in card
    assert_same(load_from_hub("user/incremental", "a"), SAE.load_from_disk(tmp_path / "a"))


def test_revision_branch(tmp_path, hub):
    push_to_hub({"x": saved(tmp_path, "main", "blocks.1.hook_resid_pre", 5)}, "user/revs")
    push_to_hub({"x": saved(tmp_path, "v2", "blocks.1.hook_resid_pre", 6)}, "user/revs", revision="v2",
                commit_message="second version")
    assert hub.state.repos["user/revs"].messages[hub.state.repos["user/revs"].branches["v2"]] == "second version"
    assert_same(load_from_hub("user/revs", "x", revision="v2"), SAE.load_from_disk(tmp_path / "v2"))
    assert_same(load_from_hub("user/revs", "x"), SAE.load_from_disk(tmp_path / "main"))


def test_private_repo_uses_the_token_and_never_prints_it(tmp_path, hub, capsys, caplog, monkeypatch):
    secret = "hf_secret_token_do_not_print_123"
    caplog.set_level(logging.DEBUG)
    push_to_hub({"p": saved(tmp_path, "p", "blocks.1.hook_resid_pre", 7)}, "user/private", private=True, token=secret)
    assert hub.state.repos["user/private"].private
    from huggingface_hub.errors import RepositoryNotFoundError

    with pytest.raises(RepositoryNotFoundError):
        load_from_hub("user/private", "p")  # no token: the repo is invisible, as on the Hub
    monkeypatch.setenv("HF_TOKEN", secret)  # the usual huggingface_hub token source
    load_from_hub("user/private", "p", force_download=True)
    out = capsys.readouterr()
    assert secret not in out.out + out.err + caplog.text


@pytest.mark.parametrize("failure", [500, "drop"])
def test_failed_upload_loses_nothing_and_retry_completes(tmp_path, hub, failure):
    folder = saved(tmp_path, "f", "blocks.1.hook_resid_pre", 8)
    before = tree_digest(folder)
    repo = f"user/flaky-{failure}"
    hub.state.fail(rf"POST /api/models/{repo}/commit/", failure, times=20)
    with pytest.raises(HubUploadError, match="Nothing was committed.*retry"):
        push_to_hub({"f": folder}, repo)
    assert tree_digest(folder) == before
    assert not any(p.startswith("f/") for p in hub.files(repo))  # nothing half-published
    hub.state.failures.clear()
    push_to_hub({"f": folder}, repo)
    assert_same(load_from_hub(repo, "f"), SAE.load_from_disk(folder))


def test_corrupted_or_incomplete_download_is_detected(tmp_path, hub):
    push_to_hub({"c": saved(tmp_path, "c", "blocks.1.hook_resid_pre", 9)}, "user/corrupt")
    good = hub.files("user/corrupt")["c/sae_weights.safetensors"]
    hub.corrupt("user/corrupt", "c/sae_weights.safetensors", good[: len(good) // 2])
    with pytest.raises(SAEFolderError, match="corrupted"):
        load_from_hub("user/corrupt", "c", force_download=True)
    hub.corrupt("user/corrupt", "c/sae_weights.safetensors", good)
    del hub.files("user/corrupt")["c/cfg.json"]
    with pytest.raises(SAEFolderError, match="cfg.json"):
        load_from_hub("user/corrupt", "c", force_download=True)


def test_bad_input_is_rejected_before_any_request(tmp_path, hub):
    n = len(hub.state.requests)
    with pytest.raises(SAEFolderError, match="missing"):
        push_to_hub({"x": tmp_path}, "user/never")
    with pytest.raises(ValueError, match="invalid SAE id"):
        push_to_hub({"../x": saved(tmp_path, "y", "h", 1)}, "user/never")
    with pytest.raises(ValueError, match="no SAEs"):
        push_to_hub({}, "user/never")
    assert len(hub.state.requests) == n


def test_check_sae_folder_catches_shape_mismatch(tmp_path):
    folder = saved(tmp_path, "s", "h", 1)
    import json

    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_vocab"] = V + 1
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFolderError, match="W_lookup"):
        check_sae_folder(folder)


def test_cli_push(tmp_path, hub, monkeypatch, capsys):
    from sae_lens_tokenized.cli import main

    folder = saved(tmp_path, "cli", "blocks.3.hook_resid_pre", 10)
    main(["push", "user/from-cli", str(folder), "--commit_message", "from the CLI"])
    assert "blocks.3.hook_resid_pre/cfg.json" in hub.files("user/from-cli")
    assert "pushed 1 SAE(s)" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["tokenized_matryoshka_batchtopk", "tokenized_matching_pursuit", "tokenized_gated"])
def test_other_architectures_publish_and_load_bitwise(tmp_path, hub, arch):
    from sae_lens.registry import get_sae_training_class

    kw = {"tokenized_matryoshka_batchtopk": dict(k=4, matryoshka_widths=[8, 32])}.get(arch, {})
    cls, cfg_cls = get_sae_training_class(arch)
    torch.manual_seed(0)
    sae = cls(cfg_cls(d_in=D_IN, d_sae=32, d_vocab=V, **kw))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = "blocks.2.hook_resid_pre", "gpt2"
    sae.save_inference_model(tmp_path / "sae")
    local = SAE.load_from_disk(tmp_path / "sae")
    push_to_hub({"blocks.2.hook_resid_pre": tmp_path / "sae"}, f"user/{arch}")
    remote = load_from_hub(f"user/{arch}", "blocks.2.hook_resid_pre")
    assert type(remote) is type(local)
    assert_same(local, remote)

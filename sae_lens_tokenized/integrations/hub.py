"""Publish tokenized SAEs to the Hugging Face Hub in SAELens's layout, and load them back.

The layout is exactly what ``SAE.from_pretrained("user/repo", "<sae id>")`` reads: one
folder per SAE id with ``cfg.json``, ``sae_weights.safetensors`` (the lookup inside),
and, when present, ``sparsity.safetensors`` and ``runner_cfg.json`` (SAELens's four file
names, from ``sae_lens.constants``). We add a model card and ``sae_lens_tokenized.json``
(sha256 of every file, so a download can be verified).

Why not SAELens's ``upload_saes_to_huggingface``: it makes one commit per SAE (an
interrupted upload leaves a half-published repo), and it cannot create a private repo, a
branch, or take a commit message or token. ``push_to_hub`` validates everything first and
uploads all SAEs, the card and the manifest in a single commit: it lands whole or not at
all, and a retry after a failure simply starts over.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from sae_lens import SAE, TrainingSAE
from sae_lens.constants import (
    RUNNER_CFG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
)
from sae_lens.registry import SAE_CLASS_REGISTRY

from sae_lens_tokenized._version import __version__

MANIFEST = "sae_lens_tokenized.json"
SAE_FILES = (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, RUNNER_CFG_FILENAME)
# Offline model names that correspond to a Hub model (for the card's base_model field).
BASE_MODEL_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2": "openai-community/gpt2"}


class HubUploadError(RuntimeError):
    """An upload failed; nothing was committed and local files are untouched."""


class SAEFolderError(ValueError):
    """A (local or downloaded) SAE folder is incomplete, corrupted or inconsistent."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sae_folder(folder: str | Path) -> dict[str, Any]:
    """Validate a saved SAE folder without loading it; return its cfg.json.

    Checks: both required files exist; cfg.json parses and names a registered
    architecture; the weights file's header is readable and the shapes of W_enc, W_dec,
    b_dec (and W_lookup for tokenized SAEs) match the config.
    """
    from safetensors import safe_open

    folder = Path(folder)
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        if not (folder / name).is_file():
            raise SAEFolderError(f"{folder} is not a complete SAE folder: {name} is missing")
    try:
        cfg = json.loads((folder / SAE_CFG_FILENAME).read_text())
    except json.JSONDecodeError as e:
        raise SAEFolderError(f"{folder / SAE_CFG_FILENAME} is not valid JSON ({e}); the file is corrupted") from e
    arch = cfg.get("architecture")
    if arch not in SAE_CLASS_REGISTRY:
        raise SAEFolderError(f"{folder}: architecture {arch!r} is not registered in SAELens")
    try:
        with safe_open(str(folder / SAE_WEIGHTS_FILENAME), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise SAEFolderError(f"{folder / SAE_WEIGHTS_FILENAME} is corrupted or truncated: {e}") from e
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    d_out = cfg.get("d_out") or d_in  # a transcoder decodes d_out columns
    expected = {"W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if "W_skip" in shapes or "skip" in arch or cfg.get("skip_connection"):
        expected["W_skip"] = (d_out, d_in)
    if not arch.endswith("matching_pursuit"):  # tied: its encoder is W_dec.T, not a tensor of its own
        expected["W_enc"] = (d_in, d_sae)
    if cfg.get("d_vocab") is not None:
        bigram_rows = int(cfg.get("lookup_bigram_rows") or 0)
        expected["W_lookup"] = (cfg["d_vocab"] + bigram_rows, d_out)
        if cfg.get("lookup_ngram", 1) == 2:
            expected["lookup_bigram_ids"] = (bigram_rows, 2, 3)
    for name, shape in expected.items():
        if shapes.get(name) != shape:
            raise SAEFolderError(
                f"{folder}: {name} has shape {shapes.get(name)} in {SAE_WEIGHTS_FILENAME} but cfg.json "
                f"implies {shape}" + (" (missing)" if name not in shapes else "")
            )
    return cfg


# ------------------------------------------------------------------------ model card -----
def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(repo_id: str, entries: Mapping[str, Mapping[str, Any]], license: str = "other") -> str:
    """README.md for the repo: YAML metadata + one section per SAE + a loading snippet."""
    archs = sorted({str(e.get("architecture")) for e in entries.values()})
    model_names = sorted({e.get("model_name") or "unknown" for e in entries.values()})
    base_models = sorted({BASE_MODEL_IDS.get(m, m) for m in model_names if m != "unknown" and (m in BASE_MODEL_IDS or "/" in m)})
    yaml = ["---", "library_name: saelens", f"license: {license}", "tags:"]
    yaml += [f"  - {t}" for t in ("sae-lens", "sae-lens-tokenized", "tokenized-sae", "sparse-autoencoder", "mechanistic-interpretability")]
    if base_models:
        yaml.append("base_model:")
        yaml += [f"  - {b}" for b in base_models]
    yaml.append("---")
    first = next(iter(entries))
    lines = [
        *yaml, "",
        f"# Tokenized SAEs for {', '.join(model_names)}", "",
        "Sparse autoencoders with a per-token decoder lookup (Tokenized SAEs, Dooms & Wilhelm, "
        "arXiv 2502.17332), trained with [SAELens](https://github.com/decoderesearch/SAELens) and "
        "`sae-lens-tokenized`: x_hat = W_dec a + b_dec + W_lookup[t], t the input token at each position.",
        "",
        *([
            "Some SAEs here have a **bigram lookup** (`lookup_ngram: 2`): besides one row per token, "
            "`W_lookup` holds `lookup_bigram_rows` rows for frequent (previous token, token) pairs, "
            "estimated from the training data. A position reads its pair's row where the pair has one, "
            "otherwise its token's row; a sequence's first position has no previous token and reads "
            "its token's row. `token_ids_from(model, sae)` supplies both ids; flat ids need "
            "`prev_token_ids=`.", ""]
          if any(e.get("lookup_ngram") == 2 for e in entries.values()) else []),
        "## Load",
        "",
        "```python",
        "import sae_lens_tokenized  # registers the tokenized architectures in SAELens (required)",
        "from sae_lens import SAE",
        "",
        f'sae = SAE.from_pretrained("{repo_id}", "{first}")',
        "",
        "# token ids are needed by the decoder; take them from the model's input:",
        "from sae_lens_tokenized import token_ids_from",
        "with token_ids_from(model, sae):",
        "    logits = model.run_with_saes(tokens, saes=[sae])",
        "```",
        "",
        f"Without `import sae_lens_tokenized`, SAELens fails with `KeyError: '{archs[0]}'`: "
        "`pip install sae-lens-tokenized` and import it first.",
        "",
        "## SAEs in this repository",
        "",
    ]
    for sae_id, e in entries.items():
        lines += [f"### `{sae_id}`", "", "| field | value |", "|---|---|"]
        for key in ("architecture", "model_name", "hook_name", "hook_name_out", "d_in", "d_out", "d_sae", "k", "d_vocab",
                    "unigram_strategy", "lookup_init_scale", "lookup_ngram", "lookup_bigram_rows",
                    "lookup_init_sample_tokens", "training_tokens", "dataset_path"):
            if e.get(key) is not None:
                lines.append(f"| {key} | {_fmt(e[key])} |")
        for key, value in (e.get("metrics") or {}).items():
            lines.append(f"| eval: {key} | {_fmt(value)} |")
        lines.append("")
    return "\n".join(lines)


def _card_entry(cfg: Mapping[str, Any], folder: Path, metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    meta = cfg.get("metadata") or {}
    entry = {
        "architecture": cfg.get("architecture"), "model_name": meta.get("model_name"),
        "hook_name": meta.get("hook_name"), "d_in": cfg.get("d_in"), "d_sae": cfg.get("d_sae"),
        "hook_name_out": meta.get("hook_name_out"), "d_out": cfg.get("d_out"),
        "k": cfg.get("k"), "d_vocab": cfg.get("d_vocab"), "unigram_strategy": cfg.get("unigram_strategy"),
        "lookup_init_scale": cfg.get("lookup_init_scale"), "dataset_path": meta.get("dataset_path"),
        "lookup_ngram": cfg.get("lookup_ngram"),
        "lookup_bigram_rows": cfg.get("lookup_bigram_rows") if cfg.get("lookup_ngram") == 2 else None,
        "lookup_init_sample_tokens": (meta.get("lookup_init") or {}).get("tokens_drawn_from_training_stream"),
    }
    runner_cfg = folder / RUNNER_CFG_FILENAME
    if runner_cfg.is_file():
        entry["training_tokens"] = json.loads(runner_cfg.read_text()).get("training_tokens")
    metrics = dict(metrics or {})
    for key in ("l0", "num_dead_features"):
        if meta.get(key) is not None and key not in metrics:
            metrics[f"{key} (training)"] = meta[key]
    entry["metrics"] = metrics
    return entry


# ------------------------------------------------------------------------ push ------------
def _validate_sae_id(sae_id: str) -> None:
    p = PurePosixPath(sae_id)
    if not sae_id or p.is_absolute() or ".." in p.parts or sae_id != str(p) or sae_id == MANIFEST:
        raise ValueError(f"invalid SAE id {sae_id!r}: use a relative folder name such as 'blocks.8.hook_resid_pre'")


def _materialize(saes: Mapping[str, Any], tmp: Path) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for sae_id, ref in saes.items():
        if isinstance(ref, TrainingSAE):
            folder = tmp / f"sae{len(folders)}"
            ref.save_inference_model(folder)  # folds training-only state, as SAELens's runner does
        elif isinstance(ref, SAE):
            folder = tmp / f"sae{len(folders)}"
            ref.save_model(folder)
        elif isinstance(ref, (str, Path)):
            folder = Path(ref)
        else:
            raise TypeError(f"saes[{sae_id!r}] is a {type(ref).__name__}; pass an SAE or a saved SAE folder")
        folders[sae_id] = folder
    return folders


def push_to_hub(
    saes: Mapping[str, SAE[Any] | str | Path],
    repo_id: str,
    revision: str = "main",
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    license: str = "other",
    add_model_card: bool = True,
    endpoint: str | None = None,
) -> str:
    """Upload SAEs (``{sae_id: SAE or saved folder}``) to ``repo_id`` in one commit.

    ``revision`` is created as a branch if it does not exist; ``private`` applies when the
    repo is created. The token comes from ``token`` or the usual huggingface_hub sources
    (``HF_TOKEN``, ``huggingface-cli login``) and is never printed or logged. The endpoint
    is ``HF_ENDPOINT`` unless given. ``metrics`` (``{sae_id: {name: value}}``) go into the
    model card. Returns the commit URL. Raises ``HubUploadError`` if the upload fails:
    nothing is committed, local folders are not modified, and calling again retries.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not saes:
        raise ValueError("no SAEs to upload")
    for sae_id in saes:
        _validate_sae_id(sae_id)
    if metrics and set(metrics) - set(saes):
        raise ValueError(f"metrics given for unknown SAE ids: {sorted(set(metrics) - set(saes))}")
    with tempfile.TemporaryDirectory(prefix="sltok-push-") as tmp_str:
        tmp = Path(tmp_str)
        folders = _materialize(saes, tmp)
        cfgs = {sae_id: check_sae_folder(folder) for sae_id, folder in folders.items()}  # all before any network

        api = HfApi(endpoint=endpoint, token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            manifest = _existing_manifest(api, repo_id, revision)
        except HfHubHTTPError as e:
            raise HubUploadError(_failure(repo_id, revision, e)) from None
        except OSError as e:  # connection errors (httpx raises OSError subclasses too)
            raise HubUploadError(_failure(repo_id, revision, e)) from None

        ops = []
        for sae_id, folder in folders.items():
            files = {}
            for name in SAE_FILES:
                if (folder / name).is_file():
                    files[name] = _sha256(folder / name)
                    ops.append(CommitOperationAdd(path_in_repo=f"{sae_id}/{name}", path_or_fileobj=str(folder / name)))
            manifest.setdefault("saes", {})[sae_id] = {
                "files": files,
                "card": _card_entry(cfgs[sae_id], folder, (metrics or {}).get(sae_id)),
            }
        manifest["sae_lens_tokenized_version"] = __version__
        manifest_path = tmp / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2))
        ops.append(CommitOperationAdd(path_in_repo=MANIFEST, path_or_fileobj=str(manifest_path)))
        if add_model_card:
            card = model_card(repo_id, {k: v["card"] for k, v in manifest["saes"].items()}, license=license)
            (tmp / "README.md").write_text(card)
            ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(tmp / "README.md")))
        message = commit_message or f"Upload tokenized SAEs: {', '.join(saes)}"
        try:
            info = api.create_commit(repo_id, operations=ops, commit_message=message, revision=revision)
        except (HfHubHTTPError, OSError) as e:
            raise HubUploadError(_failure(repo_id, revision, e)) from None
        except Exception as e:  # noqa: BLE001  (httpx transport errors are not OSError)
            if type(e).__module__.split(".")[0] in {"httpx", "httpcore", "httpx2", "httpcore2", "h11"}:
                raise HubUploadError(_failure(repo_id, revision, e)) from None
            raise
    return str(info)


def _existing_manifest(api: Any, repo_id: str, revision: str) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(repo_id, MANIFEST, revision=revision, endpoint=api.endpoint, token=api.token)
    except EntryNotFoundError:
        return {}
    return json.loads(Path(path).read_text())


def _failure(repo_id: str, revision: str, e: BaseException) -> str:
    # str(e) of huggingface_hub errors carries the URL and server message, never the token.
    return (
        f"uploading to {repo_id}@{revision} failed: {type(e).__name__}: {e}. Nothing was committed "
        "(the upload is a single commit) and your local SAE folders are untouched; run the same "
        "push again to retry."
    )


# ------------------------------------------------------------------------ load ------------
def load_from_hub(
    repo_id: str,
    sae_id: str,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    token: str | None = None,
    force_download: bool = False,
    endpoint: str | None = None,
) -> SAE[Any]:
    """``SAE.from_pretrained`` with a revision, and a verified download.

    Downloads ``<sae_id>/`` at ``revision``, checks every file against the sha256 recorded
    in the repo's manifest (when the repo has one) and the weights' shapes against
    cfg.json, then loads it with ``SAE.load_from_disk``.
    """
    from huggingface_hub import snapshot_download

    from huggingface_hub.errors import EntryNotFoundError

    _validate_sae_id(sae_id)
    try:
        local = Path(snapshot_download(
            repo_id, revision=revision, allow_patterns=[f"{sae_id}/*", MANIFEST], token=token,
            force_download=force_download, endpoint=endpoint,
        ))
    except EntryNotFoundError as e:
        raise SAEFolderError(f"download of {repo_id}/{sae_id} is incomplete: a listed file is missing ({e})") from e
    except Exception as e:
        if type(e).__name__ == "HTTPStatusError" and "404" in str(e):  # a listed file that 404s
            raise SAEFolderError(f"download of {repo_id}/{sae_id} is incomplete: {e}") from e
        raise
    folder = local / sae_id
    if not folder.is_dir():
        raise SAEFolderError(f"{repo_id}@{revision or 'main'} has no SAE folder {sae_id!r}")
    if (local / MANIFEST).is_file():
        entry = json.loads((local / MANIFEST).read_text()).get("saes", {}).get(sae_id)
        if entry is not None:
            # What the revision lists now, not what an earlier download left in the snapshot
            # folder (huggingface_hub 0.x keeps files of an earlier download of that commit).
            from huggingface_hub import HfApi

            # local is .../snapshots/<commit sha>: list exactly the commit that was downloaded
            info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=local.name)
            listed = {f.rfilename for f in info.siblings or []}
            for name, digest in entry["files"].items():
                path = folder / name
                if not path.is_file() or f"{sae_id}/{name}" not in listed:
                    raise SAEFolderError(f"download of {repo_id}/{sae_id} is incomplete: {name} is missing")
                if _sha256(path) != digest:
                    raise SAEFolderError(
                        f"download of {repo_id}/{sae_id}/{name} is corrupted (sha256 does not match the "
                        "repo's manifest); retry with force_download=True"
                    )
    check_sae_folder(folder)
    return SAE.load_from_disk(folder, device=device, dtype=dtype)


# ------------------------------------------------------------------------ CLI -------------
def add_hub_commands(sub: Any) -> None:
    p = sub.add_parser("push", help="upload saved SAE folders to the Hugging Face Hub (SAELens layout)")
    p.add_argument("repo_id")
    p.add_argument("folders", nargs="+", help="saved SAE folders; the SAE id is the hook name unless --sae_ids")
    p.add_argument("--sae_ids", nargs="+", help="one SAE id per folder (default: each SAE's hook name)")
    p.add_argument("--revision", default="main")
    p.add_argument("--private", action="store_true")
    p.add_argument("--commit_message")
    p.add_argument("--license", default="other")
    p.add_argument("--metrics", help="JSON file: {sae_id: {metric: value}} for the model card")
    p.set_defaults(func=_cli_push)

    c = sub.add_parser("convert", help="convert the authors' original .pt checkpoints to SAELens folders")
    c.add_argument("checkpoint")
    c.add_argument("output_dir")
    c.add_argument("--model_name")
    c.add_argument("--hook_name")
    c.add_argument("--k", type=int)
    c.add_argument("--relu", action="store_true", help="apply SAELens's ReLU after TopK (not the original forward)")
    c.set_defaults(func=_cli_convert)


def _cli_push(ns: Any) -> None:
    folders = [Path(f) for f in ns.folders]
    if ns.sae_ids and len(ns.sae_ids) != len(folders):
        raise SystemExit("--sae_ids needs one id per folder")
    ids = ns.sae_ids or [check_sae_folder(f).get("metadata", {}).get("hook_name") for f in folders]
    if any(i is None for i in ids):
        raise SystemExit("an SAE folder has no hook_name in cfg.json metadata; pass --sae_ids")
    metrics = json.loads(Path(ns.metrics).read_text()) if ns.metrics else None
    url = push_to_hub(dict(zip(ids, folders)), ns.repo_id, revision=ns.revision, private=ns.private,
                      commit_message=ns.commit_message, metrics=metrics, license=ns.license)
    print(f"pushed {len(folders)} SAE(s): {url}")


def _cli_convert(ns: Any) -> None:
    from sae_lens_tokenized.integrations.convert import convert_original_checkpoint

    overrides = {k: getattr(ns, k) for k in ("model_name", "hook_name", "k") if getattr(ns, k) is not None}
    out = convert_original_checkpoint(ns.checkpoint, ns.output_dir, relu=ns.relu, **overrides)
    print(f"wrote {out}")

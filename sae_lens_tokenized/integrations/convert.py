"""Convert the authors' original research checkpoints to SAELens folders.

The originals are raw torch state dicts (``.pt``): ``W_enc`` [d_sae, d_in], ``W_dec``
[d_in, d_sae], ``b_enc`` [d_sae], ``b_dec`` [d_in], and for tokenized runs
``lookup.W_lookup.weight`` [V, d_in]. File names encode the run:
``gpt2_resid_pre_8_ot30.pt`` = GPT-2, ``blocks.8.hook_resid_pre``, "o" TopK, "t"
tokenized, k=30; ``gpt2_resid_pre_8_o30.pt`` is the baseline.

Their forward: ``a = TopK(W_enc (x - b_dec) + b_enc)`` keeping the raw top-k values (no
ReLU), ``x_hat = W_dec a + b_dec (+ W_lookup[t])``, no decoder-norm rescaling. By default the
converted SAE reproduces exactly that (``topk_relu=False`` / architecture ``topk_raw``);
``relu=True`` converts to SAELens's TopK semantics instead, which differ whenever a kept
pre-activation is negative.

The authors' simplified repository (tdooms/smol-sae) saves ``nn.Linear``/``nn.Embedding``
modules instead: ``encoder.weight`` [d_sae, d_in], ``encoder.bias``, ``decoder.weight``
[d_in, d_sae], ``decoder.bias`` (= b_dec, subtracted before encoding), ``lookup.weight``
[V, d_in], with the same raw-TopK forward (``x_hid = encoder(x - decoder.bias)``, top-k
mask, ``decoder(x_hid) + lookup(t)``). Both layouts are recognised by their keys. Its files
do not record k: it comes from the file name or ``k=``.

The contents decide what a checkpoint is; a file name is only a cross-check: a tokenized
state dict under a baseline name (or the reverse) is an error naming both.

Only tensors are read (``torch.load(weights_only=True)``): no arbitrary unpickling.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

NAME_RE = re.compile(
    r"^(?P<model>.+?)_(?P<hook>resid_pre|resid_post|resid_mid|mlp_out|attn_out)_(?P<layer>\d+)_(?P<kind>[a-z]+?)(?P<k>\d+)$"
)
KINDS = {"o": False, "ot": True, "to": True}  # kind letters -> tokenized?
REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec")
LOOKUP_KEY = "lookup.W_lookup.weight"
#: tdooms/smol-sae key -> the original research code's key (same orientation)
SMOL_SAE_KEYS = {"encoder.weight": "W_enc", "decoder.weight": "W_dec", "encoder.bias": "b_enc",
                 "decoder.bias": "b_dec", "lookup.weight": LOOKUP_KEY}


class CheckpointFormatError(ValueError):
    """The checkpoint is not in the authors' layout (missing key, wrong shape, bad name)."""


def parse_checkpoint_name(path: str | Path) -> dict[str, Any]:
    """``gpt2_resid_pre_8_ot30.pt`` -> model/hook/k/tokenized; {} if the name does not match."""
    m = NAME_RE.match(Path(path).stem)
    if not m or m["kind"] not in KINDS:
        return {}
    return {
        "model_name": m["model"],
        "hook_name": f"blocks.{m['layer']}.hook_{m['hook']}",
        "k": int(m["k"]),
        "tokenized": KINDS[m["kind"]],
    }


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointFormatError(
            f"{path} could not be read as a tensors-only torch checkpoint ({type(e).__name__}: {e}); "
            "files that need arbitrary unpickling are refused"
        ) from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointFormatError(f"{path} does not hold a state dict of tensors")
    return obj


def convert_original_checkpoint(
    checkpoint_path: str | Path, output_dir: str | Path, relu: bool = False, **overrides: Any
) -> Path:
    """Write a SAELens SAE folder for an original checkpoint and return its path.

    ``overrides``: ``model_name``, ``hook_name``, ``k``, ``tokenized`` (bool),
    ``unigram_strategy`` (recorded), ``dtype``. Values from the file name are used for
    anything not given; a name that does not parse needs ``hook_name`` and ``k``.
    Everything is validated before anything is written.
    """
    from sae_lens import SAE

    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    unknown = set(overrides) - {"model_name", "hook_name", "k", "tokenized", "unigram_strategy", "dtype"}
    if unknown:
        raise TypeError(f"unknown overrides {sorted(unknown)}")
    from_name = parse_checkpoint_name(path)
    info = {**from_name, **overrides}
    state = _load_state_dict(path)
    layout = "original"
    if "encoder.weight" in state or "decoder.weight" in state:  # tdooms/smol-sae
        layout = "smol-sae"
        unknown_keys = sorted(set(state) - set(SMOL_SAE_KEYS))
        if unknown_keys:
            raise CheckpointFormatError(f"{path} looks like a smol-sae checkpoint but has unknown keys {unknown_keys}")
        state = {SMOL_SAE_KEYS[k]: v for k, v in state.items()}
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        names = [k for k, v in SMOL_SAE_KEYS.items() if v in missing] if layout == "smol-sae" else missing
        raise CheckpointFormatError(f"{path} is missing {names} (found {sorted(state)})")
    has_lookup = LOOKUP_KEY in state
    for source, claimed in (("file name", from_name.get("tokenized")), ("tokenized= argument", overrides.get("tokenized"))):
        if claimed is not None and claimed != has_lookup:
            what = "a tokenized run" if claimed else "a baseline (no lookup)"
            found = (f"holds a lookup {tuple(state[LOOKUP_KEY].shape)}" if has_lookup
                     else f"holds no lookup ({LOOKUP_KEY!r} / 'lookup.weight')")
            raise CheckpointFormatError(
                f"{path}: the {source} says {what}, but the checkpoint {found}. The contents decide; "
                "rename the file or fix the argument so both agree."
            )
    tokenized = has_lookup
    for key in ("hook_name", "k"):
        if info.get(key) is None:
            raise CheckpointFormatError(
                f"cannot tell the {key} from the file name {path.name!r}; pass {key}=... "
                "(names look like gpt2_resid_pre_8_ot30.pt)"
            )
    d_sae, d_in = state["W_enc"].shape
    expected = {"W_enc": (d_sae, d_in), "W_dec": (d_in, d_sae), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if tokenized:
        expected[LOOKUP_KEY] = (state[LOOKUP_KEY].shape[0], d_in)
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointFormatError(
                f"{path}: {key} has shape {tuple(state[key].shape)}, expected {shape} "
                f"(from W_enc [d_sae={d_sae}, d_in={d_in}])"
            )
    k = int(info["k"])
    if not 0 < k <= d_sae:
        raise CheckpointFormatError(f"k={k} is not in 1..d_sae={d_sae}")

    dtype = info.get("dtype", "float32")
    metadata = {"model_name": info.get("model_name"), "hook_name": info["hook_name"],
                "converted_from": path.name, "converted_layout": layout, "prepend_bos": True}
    cfg: dict[str, Any] = {
        "d_in": d_in, "d_sae": d_sae, "k": k, "dtype": dtype, "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": False, "metadata": metadata,
    }
    weights = {
        "W_enc": state["W_enc"].T.contiguous(),  # theirs [d_sae, d_in] (nn.Linear), SAELens [d_in, d_sae]
        "W_dec": state["W_dec"].T.contiguous(),  # theirs [d_in, d_sae], SAELens [d_sae, d_in]
        "b_enc": state["b_enc"].clone(),
        "b_dec": state["b_dec"].clone(),
    }
    if tokenized:
        cfg.update(architecture="tokenized_topk", d_vocab=int(state[LOOKUP_KEY].shape[0]), topk_relu=relu,
                   unigram_strategy=info.get("unigram_strategy", "bos,t"), lookup_init_scale=0.5)
        weights["W_lookup"] = state[LOOKUP_KEY].clone()
    else:
        cfg["architecture"] = "topk" if relu else "topk_raw"
    sae = SAE.from_dict(cfg)
    sae.load_state_dict({k: v.to(sae.dtype) for k, v in weights.items()})
    out = Path(output_dir)
    sae.save_model(out)
    return out

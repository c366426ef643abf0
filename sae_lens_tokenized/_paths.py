"""Where this package keeps what it computes once: the user cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """User cache folder (``$SAE_LENS_TOKENIZED_CACHE`` or ``~/.cache/sae_lens_tokenized``):
    converted offline models and unigram tables."""
    root = os.environ.get("SAE_LENS_TOKENIZED_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sae_lens_tokenized"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path

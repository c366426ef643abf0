import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "SAE_LENS_TOKENIZED_CACHE" not in os.environ:  # never touch the user's cache in tests
    import tempfile

    os.environ["SAE_LENS_TOKENIZED_CACHE"] = tempfile.mkdtemp(prefix="sltok-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

import sae_lens_tokenized  # noqa: E402,F401  (registers the architectures)


@pytest.fixture(scope="session")
def model():
    from helpers import tiny_model

    return tiny_model()


@pytest.fixture(scope="session")
def dataset():
    from helpers import token_dataset

    return token_dataset()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

import atexit
import os
import shutil
import socket
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Everything the suite writes outside tmp_path goes under one folder, removed when the session
# ends: the Hub cache, the package's cache (SmolLM2 converted once, unigram tables: most of a
# GiB), pytest's own tmp_path folders, and what subprocesses leave (they inherit TMPDIR). Left
# in /tmp, two suite
# runs per CI run filled a CI machine's disk.
_SESSION_TMP = tempfile.mkdtemp(prefix="sltok-tests-")
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)
os.environ["TMPDIR"] = tempfile.tempdir = _SESSION_TMP

# Set before anything imports huggingface_hub (it reads these at import time): every Hub
# call in the tests goes to the local server on 127.0.0.1 started by the `hub` fixture.
HUB_PORT = _free_port()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf-home-")
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "SAE_LENS_TOKENIZED_CACHE" not in os.environ:  # never touch the user's cache in tests
    os.environ["SAE_LENS_TOKENIZED_CACHE"] = tempfile.mkdtemp(prefix="cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

import sae_lens_tokenized  # noqa: E402,F401  (registers the architectures)


@pytest.fixture(scope="session")
def hub():
    from hub_server import LocalHub

    with LocalHub(port=HUB_PORT) as server:
        yield server


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

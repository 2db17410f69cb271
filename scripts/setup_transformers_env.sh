#!/usr/bin/env bash
# A test environment on another transformers version: .venv-tf<VERSION> (CI runs the suite on the oldest
# supported version here and on the newest in .venv; docs/DESIGN.md "transformers versions").
#
#   bash scripts/setup_transformers_env.sh 5.17.0 && .venv-tf5.17.0/bin/python -m pytest -q tests
#
# Steps, as `make setup` but with transformers held:
#   1. torch==2.13.0 first (the CPU build, as `make setup` does; a venv that already has a torch keeps it),
#   2. transformers==VERSION,
#   3. the rest of requirements.txt under a constraints file that holds torch and transformers where steps 1-2
#      put them (so pip fails loudly if some other requirement would need another transformers),
#   4. this repo, editable, --no-deps.
# Idempotent: a finished environment (stamp file naming the version and a hash of requirements.txt and
# pyproject.toml) is left as it is; a changed requirements.txt re-runs steps 3-4 in place; `rm -rf
# .venv-tf<VERSION>` starts over. TF_VENV overrides the folder.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${1:?usage: setup_transformers_env.sh VERSION (e.g. 5.17.0)}
VENV=${TF_VENV:-.venv-tf$VERSION}
PY="$VENV/bin/python"
PIP="$VENV/bin/pip"
STAMP="$VENV/.setup-done"
# The stamp names the version and the requirements it was built from: a changed requirements.txt reinstalls.
WANT="transformers==$VERSION requirements=$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)"

report() { "$PY" -c 'import transformers, torch; print("transformers", transformers.__version__, "torch", torch.__version__)'; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
        && [ "$("$PY" -c 'import transformers; print(transformers.__version__)' 2>/dev/null)" = "$VERSION" ]; then
    echo "$VENV: ready ($(report))"
    exit 0
fi
rm -f "$STAMP"

test -x "$PY" || python3 -m venv "$VENV"
"$PIP" install --quiet --upgrade pip
"$PY" -c 'import torch' 2>/dev/null || "$PIP" install --quiet torch==2.13.0
"$PIP" install --quiet "transformers==$VERSION"

held="$VENV/held-constraints.txt"
"$PIP" freeze | grep -i -E '^(torch|transformers)==' > "$held"
# requirements.txt's own transformers line is replaced by the held version (a range that excludes VERSION
# would otherwise make the install fail rather than test it).
grep -v -i -E '^transformers([<>=!~ ]|$)' requirements.txt > "$VENV/requirements-rest.txt"
"$PIP" install --quiet -c "$held" -r "$VENV/requirements-rest.txt"
"$PIP" install --quiet --no-deps -e .

"$PY" -c 'import transformers, deepspeed, peft, accelerate; print("transformers", transformers.__version__, "deepspeed", deepspeed.__version__, "peft", peft.__version__, "accelerate", accelerate.__version__)'
"$PIP" check
echo "$WANT" > "$STAMP"

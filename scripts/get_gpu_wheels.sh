#!/usr/bin/env bash
# Download, here (where pip reaches PyPI), the wheels a CUDA image without network lacks for this project, into
# gpu_wheels/ (git-ignored), and print how to carry them to the GPU machine and run scripts/gpu_check.py there.
#
# The image we target has torch 2.11 + cu130, transformers 5.17, accelerate, peft, safetensors, pytest, nvcc 13,
# and (as last read, 2026-11) matplotlib, tensorboard, pyarrow, ninja, msgpack, py-cpuinfo, einops, psutil: mining
# writes its picture and TensorBoard events with them (gpu_check's entry_points part fails in one row, before any
# work, when either is missing; EXTRA below fetches them for an image without). It lacks deepspeed (+ hjson, msgpack, ninja, py-cpuinfo, einops), pydantic (+ pydantic-core, annotated-types,
# typing-inspection, a typing-extensions new enough for it) and bitsandbytes. Versions are pinned to those of
# this project's environment (the ones its tests ran with). Compiled wheels (pydantic-core, msgpack) come for
# CPython 3.10-3.13 (the image's Python is not known here; GPU_PYTHONS overrides). bitsandbytes ships native
# libraries for every CUDA / ROCm / XPU version (~130 MB unpacked); it is repacked keeping only its CPU and CUDA 13
# libraries (BNB_CUDA=130; about 2 MB). deepspeed is published as a source archive only: it is built here into a
# pure-Python wheel (its CUDA ops are compiled on first use by DeepSpeed's JIT, with the image's nvcc).
#
#   bash scripts/get_gpu_wheels.sh            # -> gpu_wheels/*.whl and the instructions
#   PY=/path/to/.venv/bin/python bash scripts/get_gpu_wheels.sh   # versions from another environment
#   EXTRA="matplotlib kiwisolver" bash scripts/get_gpu_wheels.sh   # also these (no dependencies: name each one the
#                                                                    # image lacks), for CPython 3.12
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
OUT="${OUT:-$ROOT/gpu_wheels}"
PYTHONS="${GPU_PYTHONS:-3.10 3.11 3.12 3.13}"
BNB_CUDA="${BNB_CUDA:-130}"
PLATFORMS=()  # x86-64 Linux with glibc >= 2.28: every manylinux tag such a system accepts
for tag in manylinux_2_28 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
    PLATFORMS+=(--platform "${tag}_x86_64")
done

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
PURE=(hjson py-cpuinfo einops annotated-types typing-inspection typing-extensions pydantic ninja psutil)
COMPILED=(pydantic-core msgpack)
mkdir -p "$OUT"
rm -f "$OUT"/*.whl
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

pins() {  # name==version as installed in $PY's environment; stops the script when one is missing
    for p in "$@"; do v="$(version "$p")" || { echo "$p is not installed in $PY's environment" >&2; kill $$; }
                      echo "$p==$v"; done
}

mapfile -t PURE_PINS < <(pins "${PURE[@]}")
mapfile -t COMPILED_PINS < <(pins "${COMPILED[@]}")
echo "== pure-Python and abi3 wheels"
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" --python-version 3.12 \
    --implementation cp -d "$OUT" "${PURE_PINS[@]}"
for v in $PYTHONS; do
    echo "== compiled wheels for CPython $v"
    "$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" --python-version "$v" \
        --implementation cp -d "$OUT" "${COMPILED_PINS[@]}"
done

if [ -n "${EXTRA:-}" ]; then
    read -r -a EXTRA_NAMES <<< "$EXTRA"
    mapfile -t EXTRA_PINS < <(pins "${EXTRA_NAMES[@]}")
    echo "== extra: ${EXTRA_PINS[*]}"
    "$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" --python-version 3.12 \
        --implementation cp -d "$OUT" "${EXTRA_PINS[@]}"
fi

echo "== deepspeed $(version deepspeed): source archive -> pure-Python wheel (ops compiled on first use)"
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$TMP" "deepspeed==$(version deepspeed)"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "$TMP"/deepspeed-*.tar.gz

echo "== bitsandbytes $(version bitsandbytes): keep libbitsandbytes_cpu and _cuda$BNB_CUDA only"
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" --python-version 3.12 \
    --implementation cp -d "$TMP" "bitsandbytes==$(version bitsandbytes)"
"$PY" - "$TMP"/bitsandbytes-*.whl "$OUT" "$BNB_CUDA" <<'PYEOF'
"""Repack a bitsandbytes wheel with only its CPU and one CUDA library (RECORD rewritten to match)."""
import base64, hashlib, os, re, sys, zipfile

src, out, cuda = sys.argv[1], sys.argv[2], sys.argv[3]
keep = re.compile(rf"libbitsandbytes_(cpu|cuda{cuda})\.(so|dylib|dll)$")
dst = os.path.join(out, os.path.basename(src))
record_lines = []
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    names = [n for n in zin.namelist() if not re.search(r"libbitsandbytes_\w+\.(so|dylib|dll)$", n) or keep.search(n)]
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    for name in names:
        if name == record:
            continue
        data = zin.read(name)
        zout.writestr(zin.getinfo(name), data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record_lines.append(f"{name},sha256={digest},{len(data)}")
    record_lines.append(f"{record},,")
    zout.writestr(record, "\n".join(record_lines) + "\n")
libs = [n for n in names if keep.search(n)]
if len(libs) != 2:
    sys.exit(f"expected the CPU and the CUDA {cuda} library in {src}, found {libs}")
print(f"   {os.path.basename(dst)}: {os.path.getsize(dst) / 1e6:.1f} MB (was {os.path.getsize(src) / 1e6:.1f} MB)")
PYEOF

TOTAL=$(du -sm "$OUT" | cut -f1)
echo
WHEELS=("$OUT"/*.whl)
echo "wrote ${#WHEELS[@]} wheels, ${TOTAL} MB, to ${OUT#"$ROOT"/}/ (git-ignored)"
cat <<EOT

To run the GPU check on the device machine (the device tool copies the work tree plus up to 8 'carry' paths,
64 MiB in all): carry ["gpu_wheels"] and run, from the repository root there,

  python3 -m venv --system-site-packages /tmp/venv-gpu \\
    && /tmp/venv-gpu/bin/pip install -q --no-index --find-links gpu_wheels deepspeed bitsandbytes pydantic \\
    && /tmp/venv-gpu/bin/python scripts/gpu_check.py --out "\$OUT/gpu_check"

(--system-site-packages keeps the image's torch, transformers, accelerate, peft; the venv puts the deepspeed
launcher next to its python, where the distributed tests look for it.)
EOT

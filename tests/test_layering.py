"""The layering of docs/DESIGN.md §3, checked on every import statement of the library (top level and inside
functions): ``neurorit`` (shared contracts, the DeepSpeed strategy) < ``model_patches`` (Hugging Face surgery)
< the stages ``attribution``, ``train``, ``rag``, which import only those two and never each other;
``benchmarks`` (data generators; the English one probes a model through evaluation's generation) sit above the
stages and no stage imports them. Only the ``neurorit/parallel/`` package imports DeepSpeed or torch.distributed. No
library function but the row-attention kernel takes more than 7 parameters."""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("neurorit", "model_patches", "attribution", "train", "rag", "benchmarks")
ALLOWED = {
    "neurorit": {"neurorit"},
    "model_patches": {"neurorit", "model_patches"},
    "attribution": {"neurorit", "model_patches", "attribution"},
    "train": {"neurorit", "model_patches", "train"},
    "rag": {"neurorit", "model_patches", "rag"},
    "benchmarks": {"neurorit", "model_patches", "rag", "benchmarks"},
}
STRATEGY = os.path.join("neurorit", "parallel") + os.sep
MAX_PARAMETERS = 7
WIDE_KERNELS = {("attribution/ig_fast.py", "rows_attention")}  # one fused kernel: its inputs are its signature


def imports_of(path: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``."""
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def library_files():
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield package, os.path.relpath(os.path.join(folder, name), ROOT)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("import os\ndef f():\n    from train.loop import run_stage\n")
    assert imports_of(str(src)) == [(1, "os"), (3, "train.loop")]


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_layers_below_it(package):
    bad = []
    for pkg, rel in library_files():
        if pkg != package:
            continue
        for line, module in imports_of(os.path.join(ROOT, rel)):
            top = module.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[package]:
                bad.append(f"{rel}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def script_files():
    for folder, _, names in os.walk(os.path.join(ROOT, "scripts")):
        for name in sorted(names):
            if name.endswith(".py"):
                yield "scripts", os.path.relpath(os.path.join(folder, name), ROOT)


def test_only_the_parallel_package_touches_deepspeed_or_torch_distributed():
    bad = []
    for _, rel in [*library_files(), *script_files()]:
        if rel.startswith(STRATEGY):
            continue
        for line, module in imports_of(os.path.join(ROOT, rel)):
            if module.split(".")[0] == "deepspeed" or module.startswith("torch.distributed"):
                bad.append(f"{rel}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_no_library_function_takes_more_than_seven_parameters():
    wide = []
    for _, rel in library_files():
        with open(os.path.join(ROOT, rel)) as fh:
            tree = ast.parse(fh.read(), rel)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                if len(names) > MAX_PARAMETERS and (rel.replace(os.sep, "/"), node.name) not in WIDE_KERNELS:
                    wide.append(f"{rel}:{node.lineno} {node.name} takes {len(names)}")
    assert not wide, "\n".join(wide)

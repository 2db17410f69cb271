"""Every shell script (.sh, .sbatch) parses (`bash -n`) and passes shellcheck (Debian's `shellcheck` package).

shellcheck runs when it is installed. When it is missing the test fails in CI if `.ci/run` installs it (so a
broken install step shows), and is skipped elsewhere with the line that installs it.
"""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", ".venv", "outputs", "runs", "node_modules", "__pycache__", "build"}
INSTALL = "apt-get install -y shellcheck"


def shell_scripts():
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        # .venv-vllm, .venv-tf<VERSION>: other environments' site-packages (tqdm ships a completion.sh)
        dirnames[:] = sorted(d for d in dirnames
                             if d not in SKIP_DIRS and not d.startswith(".venv") and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if name.endswith((".sh", ".sbatch")):
                found.append(os.path.relpath(os.path.join(dirpath, name), ROOT))
    return found


SCRIPTS = shell_scripts()


def test_the_slurm_scripts_are_found():
    for name in ("common.sh", "mine.sbatch", "stage1.sbatch", "stage2.sbatch", "eval.sbatch", "pipeline.sbatch",
                 "test_local_cluster.sh"):
        assert os.path.join("scripts", "slurm", name) in SCRIPTS, name


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    proc = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"bash -n {script}:\n{proc.stderr}"


def _ci_installs_shellcheck() -> bool:
    path = os.path.join(ROOT, ".ci", "run")
    return os.path.isfile(path) and "shellcheck" in open(path).read()


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck(script):
    exe = shutil.which("shellcheck")
    if exe is None:
        if os.environ.get("CI") and _ci_installs_shellcheck():
            pytest.fail(f"shellcheck is not installed although .ci/run installs it; check its `{INSTALL}` step")
        pytest.skip(f"shellcheck is not installed (Debian: {INSTALL})")
    # -x follows `source` lines; the source= directives are relative to the repository root.
    proc = subprocess.run([exe, "-x", "--severity=style", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"shellcheck {script}:\n{proc.stdout}{proc.stderr}"

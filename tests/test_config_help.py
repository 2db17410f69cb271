"""``--help`` on every entry point lists every config key with its type, default and comment; ``--print-config``
prints the resolved config and exits."""
import dataclasses
import os
import subprocess
import sys

import pytest
import yaml

from neurorit.config import ExperimentConfig
from neurorit.config_help import config_reference, config_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _keys(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        yield from _keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]


def test_every_key_is_listed_with_a_comment():
    lines = {line.split()[0][2:]: line for line in config_reference(ExperimentConfig()).splitlines()[1:]}
    assert set(lines) == set(_keys(ExperimentConfig()))
    bare = [key for key, _, _, comment in config_rows(ExperimentConfig()) if not comment]
    assert not bare, f"keys without a comment in neurorit/config.py: {bare}"
    assert "--stage1.lr  float  (default 1e-05)" in lines["stage1.lr"]
    assert "two_step|answer_only" in lines["eval.instruction"]


@pytest.mark.parametrize("entry", [["attribution/mine.py"], ["train/stage2.py"], ["-m", "rag.evaluate"]])
def test_entry_points_print_the_reference_and_the_resolved_config(entry, tmp_path):
    run = subprocess.run([sys.executable, *entry, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and "--mining.n_shared  int  (default 30)" in run.stdout
    extra = ["--name", "x"] if "rag.evaluate" in entry else []
    run = subprocess.run([sys.executable, *entry, "--print-config", *extra, "--stage2.lr", "3e-5",
                          "--runtime.output_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    resolved = yaml.safe_load(run.stdout)
    assert resolved["stage2"]["lr"] == 3e-5 and resolved["runtime"]["output_dir"] == str(tmp_path)
    assert not os.listdir(tmp_path)  # printed, nothing run

"""Console entry points (pyproject.toml [project.scripts]): each names a callable that exists, answers --help
with its usage and status 0, and returns 0 after a run (a console script exits with the return value, and a
returned dict would exit 1)."""
from __future__ import annotations

import os
import tomllib
from importlib.metadata import EntryPoint

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _fh:
    SCRIPTS = tomllib.load(_fh)["project"]["scripts"]


def test_the_commands_a_user_expects():
    assert {"neurorit-mine", "neurorit-train-stage1", "neurorit-train-stage2", "neurorit-eval"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_exits_0_with_usage(name, monkeypatch, capsys):
    fn = EntryPoint(name, SCRIPTS[name], "console_scripts").load()
    monkeypatch.setattr("sys.argv", [name, "--help"])
    with pytest.raises(SystemExit) as done:
        fn()
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("module, entry, target", [("rag.cli", "evaluate", "rag.evaluate"),
                                                   ("rag.cli", "report", "rag.report"),
                                                   ("rag.cli", "write_evidence", "rag.write_evidence")])
def test_a_finished_run_exits_0(module, entry, target, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module(target), "main", lambda: {"results": "on disk"})
    assert getattr(importlib.import_module(module), entry)() == 0


def test_training_commands_run_their_stage(monkeypatch):
    from train import cli

    ran = []
    monkeypatch.setattr(cli, "main", lambda stage: ran.append(stage) or {"finished": True})
    assert cli.stage1() == 0 and cli.stage2() == 0 and ran == ["stage1", "stage2"]

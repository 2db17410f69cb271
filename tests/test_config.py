"""Config: load, dotted overrides, validation errors that name the key."""
import subprocess
import sys

import pytest

from neurorit.config import ExperimentConfig, load_config, parse_args, save_config
from neurorit.errors import UserError


def test_defaults_match_paper():
    cfg = ExperimentConfig()
    assert cfg.stage1.lr == 1e-5 and cfg.stage2.lr == 2e-5 and cfg.stage2.epochs == 2.0
    assert (cfg.mining.n_relevant, cfg.mining.n_irrelevant, cfg.mining.n_shared) == (100, 100, 30)
    assert cfg.mining.steps == 20 and cfg.mining.top_k == 20 and cfg.mining.threshold_ratio == 0.1


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("stage1:\n  lr: 3.0e-5\nmining:\n  ig_rule: ircan\n")
    cfg = load_config(str(p), ["--stage1.lr", "2e-5", "--mining.steps=7", "--eval.settings", "gold,top5",
                               "--stage2.gradient_checkpointing", "true"])
    assert cfg.stage1.lr == 2e-5 and cfg.mining.steps == 7 and cfg.mining.ig_rule == "ircan"
    assert cfg.eval.settings == ["gold", "top5"] and cfg.stage2.gradient_checkpointing is True


def test_embedded_config_loads():
    cfg = load_config("configs/embedded.yaml")
    assert cfg.data.prompt_style == "compact"


@pytest.mark.parametrize("overrides, needle", [
    (["--stage1.lrr", "1"], "unknown config key 'stage1.lrr'"),
    (["--stage1.lr", "fast"], "'stage1.lr': expected a number"),
    (["--mining.ig_rule", "left"], "'mining.ig_rule': 'left' is not allowed; use one of 'standard', 'ircan'"),
    (["--mining.steps", "2.5"], "'mining.steps': expected an integer"),
    (["--eval.settings", "gold,oracle"], "'eval.settings': 'oracle' is not allowed"),
    (["--mining.steps", "0"], "'mining.steps' must be >= 1"),
    (["--stage1", "3"], "unknown option '--stage1'"),
    (["--bogus.key", "3"], "unknown config key 'bogus'"),
])
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(UserError, match=None) as err:
        load_config(None, overrides)
    assert needle in str(err.value)


def test_bad_yaml_type_names_key(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("stage2:\n  batch_size: [1, 2]\n")
    with pytest.raises(UserError, match="stage2.batch_size"):
        load_config(str(p))


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_save_roundtrip(tmp_path):
    _, cfg = parse_args("t", ["--runtime.seed", "5"])
    path = save_config(cfg, str(tmp_path / "config.yaml"))
    assert load_config(path).runtime.seed == 5


def test_entry_point_prints_one_line_not_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.embedded.benchmark", "--stage1.lr", "oops"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: config key 'stage1.lr': expected a number, got 'oops'"


@pytest.mark.parametrize("override", [["--stage1.epochs", "0"], ["--stage2.max_steps", "0"],
                                      ["--stage1.epochs", "-1"], ["--runtime.report_to", "tensorbord"]])
def test_a_run_that_would_train_nothing_or_log_nowhere_is_refused_in_one_line(override):
    with pytest.raises(UserError) as err:
        load_config(None, override)
    assert "\n" not in str(err.value) and override[0].lstrip("-").split(".")[-1] in str(err.value)

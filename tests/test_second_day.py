"""A researcher's second day (issue 29): trackers checked before any model loads (one line saying what to set, or
a local mode the log line names, never inside ``tb/``); paths of a config independent of the working directory."""
from __future__ import annotations

import io
import os

import pytest

from neurorit.config import ExperimentConfig, load_config
from neurorit.errors import UserError
from train.monitor import Monitor, Tracking


@pytest.fixture
def bare_env(tmp_path, monkeypatch):
    """No tracker settings at all: no WANDB_MODE, no key, an empty netrc, no MLflow URI; wandb's own folders in
    tmp_path, the working directory too (a tracker must not fall back to files in the caller's directory)."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.chdir(tmp_path)
    stage = tmp_path / "stage1"
    stage.mkdir()
    return stage


def _monitor(stage, report_to: str) -> Monitor:
    mon = Monitor(str(stage / "tb"), 3, 0, "stage1", Tracking(report_to, {"stage1": {"lr": 1e-5}}), plain=True,
                  stream=io.StringIO())
    mon.scalars(1, {"train/loss": 0.5})
    mon.close()
    return mon


def test_wandb_without_settings_runs_offline_and_says_where(bare_env):
    mon = _monitor(bare_env, "wandb")
    note = mon.stream.getvalue().splitlines()[0]
    folder = str(bare_env / "wandb")
    assert note.startswith("wandb: no WANDB_API_KEY and no WANDB_MODE set: recording offline in " + folder)
    assert f"wandb sync {folder}" in note
    runs = [d for d in os.listdir(folder) if d.startswith("offline-run-")]
    assert len(runs) == 1 and runs[0].endswith((bare_env / "wandb_run_id").read_text())
    assert not (bare_env / "tb").exists()  # nothing of wandb's inside tb/


def test_mlflow_without_uri_records_to_a_local_store_it_names(bare_env):
    from mlflow.tracking import MlflowClient

    mon = _monitor(bare_env, "tensorboard,mlflow")
    store = str(bare_env / "mlruns")
    assert mon.stream.getvalue().splitlines()[0].startswith(
        f"mlflow: MLFLOW_TRACKING_URI is not set: recording to the local file store {store} ")
    run = MlflowClient("file:" + store).get_run((bare_env / "mlflow_run_id").read_text())
    assert run.data.params["stage1.lr"] == "1e-05" and run.info.status == "FINISHED"
    assert [f for f in os.listdir(bare_env / "tb") if not f.startswith("events.out.tfevents")] == []
    assert not (bare_env.parent / "mlflow.db").exists()  # not MLflow's default store in the working directory


@pytest.mark.parametrize("env, needle", [
    ({"WANDB_MODE": "online"}, "set WANDB_API_KEY (or run `wandb login`), or set WANDB_MODE=offline"),
    ({"WANDB_MODE": "onlin"}, "WANDB_MODE='onlin' is not a wandb mode"),
    ({"MLFLOW_TRACKING_URI": "file:/tmp/x/mlruns"}, "MLFLOW_ALLOW_FILE_STORE=true"),
    ({"MLFLOW_TRACKING_URI": "/tmp/x/mlruns"}, "MLFLOW_ALLOW_FILE_STORE=true")])
def test_a_tracker_it_would_fail_on_is_refused_at_config_time(bare_env, monkeypatch, env, needle):
    """Config validation (every entry point's first step, before any model loads) refuses it in one line."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    tracker = "wandb" if "WANDB_MODE" in env else "mlflow"
    with pytest.raises(UserError) as err:
        load_config(None, ["--runtime.report_to", f"tensorboard,{tracker}"])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_settings_that_work_pass_the_check(bare_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert load_config(None, ["--runtime.report_to", "wandb,mlflow"]).runtime.report_to == ["wandb", "mlflow"]


# ------------------------------------------------------------------------ paths independent of the cwd
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_relative_paths_in_a_config_are_relative_to_its_folder(tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "exp" / "x.yaml").write_text(
        "model:\n  path: ../models/mine\ndata:\n  train_file: ../data/train.csv\n  dev_file: org/questions:dev\n"
        "stage2:\n  init_from: HuggingFaceTB/SmolLM2-135M@main\nruntime:\n  output_dir: out\n")
    monkeypatch.chdir(tmp_path / "models")
    cfg = load_config("../exp/x.yaml", ["--eval.output_dir", "ev"])
    assert cfg.model.path == str(tmp_path / "models" / "mine")
    assert cfg.data.train_file == str(tmp_path / "data" / "train.csv")
    assert cfg.runtime.output_dir == str(tmp_path / "exp" / "out")
    assert cfg.data.dev_file == "org/questions:dev" and cfg.stage2.init_from == "HuggingFaceTB/SmolLM2-135M@main"
    assert cfg.eval.output_dir == "ev"  # the command line: relative to the working directory, as in a shell
    committed = load_config(os.path.join(ROOT, "configs", "embedded.yaml"))
    assert committed.model.path == os.path.join(ROOT, "assets", "base-model")
    assert committed.runtime.output_dir == os.path.join(ROOT, "outputs", "demo")


def test_an_entry_point_runs_from_another_directory(tmp_path):
    """Evaluation started two folders down, its config (relative paths) in a third: everything lands where the
    config says, nothing in the working directory."""
    import subprocess
    import sys

    from tests.support.ranks import child_env
    from tests.support.workspaces import eval_checkpoint, eval_records, write_yaml

    eval_checkpoint(str(tmp_path / "model"))
    eval_records(str(tmp_path / "data" / "test.jsonl"), n_questions=40)
    (tmp_path / "exp").mkdir()
    write_yaml(str(tmp_path / "exp" / "eval.yaml"), {
        "model": {"path": "../model"}, "data": {"test_file": "../data/test.jsonl", "prompt_style": "compact",
                                                "max_length": 128},
        "eval": {"batch_size": 4, "max_new_tokens": 4, "bootstrap": 20, "settings": ["gold"], "num_examples": 4},
        "runtime": {"output_dir": "../run", "torch_threads": 1, "report_to": ["none"]}})
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "rag", "evaluate.py"), "--config",
                           "../../exp/eval.yaml", "--name", "base", "--no-progress"], cwd=cwd, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "run" / "eval" / "base.eval.json").is_file()
    assert not os.listdir(cwd)


def test_the_demo_runs_from_another_directory(tmp_path):
    """The demo from outside the checkout, the committed config by its path, relative overrides: each step's output
    is where the demo then looks for it (the benchmark, the base model's done marker, mining), nothing lands in the
    checkout; stopped once the first training step starts."""
    import signal
    import subprocess
    import sys

    from tests.support.ranks import child_env

    base = os.path.join(ROOT, "assets", "base-model")
    before = {f: os.stat(os.path.join(base, f)).st_mtime_ns for f in os.listdir(base)}
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "demo.py"), "--config", os.path.join(ROOT, "configs",
           "embedded.yaml"), "--quick", "--ranks", "1", "--data.benchmark_questions", "400",
           "--data.train_file", "data/train.jsonl", "--data.dev_file", "data/dev.jsonl", "--data.test_file",
           "data/test.jsonl", "--runtime.output_dir", "out", "--mining.num_examples", "4", "--mining.steps", "2"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("== train") or (line.startswith("== base model") and "already done" not in line):
                break  # the first training step, or the committed base model about to be retrained
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    steps = [line for line in lines if line.startswith("== ")]
    assert steps and steps[-1].startswith("== train"), "".join(lines[-40:])
    assert any(s.startswith("== base model: already done") for s in steps)  # the committed one, never retrained
    assert (tmp_path / "data" / "test.jsonl").is_file() and (tmp_path / "out" / "mining" / "summary.txt").is_file()
    assert {f: os.stat(os.path.join(base, f)).st_mtime_ns for f in os.listdir(base)} == before
    assert not os.path.exists(os.path.join(ROOT, "out")) and not os.path.exists(os.path.join(ROOT, "data"))


# ------------------------------------------------------------------------------ a self-describing export
WORD_TEMPLATE = ("{{ date_string }} {% for m in messages %}{{ m['role'] + ' ' + m['content'] + ' </s> ' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ 'assistant ' }}{% endif %}")


def test_the_export_carries_its_template_date_and_training_facts(tmp_path, single_rank_env):
    import hashlib
    import json

    from transformers import AutoTokenizer

    from model_patches.model_card import read_model_card
    from tests.support.workspaces import training_workspace
    from train.loop import run_stage

    workspace = training_workspace(str(tmp_path))
    (tmp_path / "chat.jinja").write_text(WORD_TEMPLATE)
    cfg = load_config(workspace, ["--data.chat_template_file", str(tmp_path / "chat.jinja"), "--data.chat_date",
                                  "3 Mar 2025", "--stage1.eval_every", "2", "--stage1.eval_examples", "4"])
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s1 = run_stage("stage1", cfg)
        s2 = run_stage("stage2", cfg)
    deprecated = [str(w.message) for w in caught
                  if "is deprecated" in str(w.message) and "torch.distributed" in str(w.message)]
    assert not deprecated, deprecated[:2]  # DeepSpeed's per-step FutureWarnings, silenced at the runtime start
    export1, export2 = s1["export_dir"], s2["export_dir"]
    with open(os.path.join(export1, "tokenizer_config.json")) as fh:
        assert WORD_TEMPLATE in json.load(fh)["chat_template"]
    served = AutoTokenizer.from_pretrained(export1).apply_chat_template([{"role": "user", "content": "x"}],
                                                                        tokenize=False, add_generation_prompt=True)
    assert served == "3 Mar 2025 user x </s> assistant "  # the prompt training saw, the date included
    card = read_model_card(export1)
    digest = "sha256:" + hashlib.sha256(open(cfg.data.train_file, "rb").read()).hexdigest()
    assert card["data"]["train_file"] == {"path": cfg.data.train_file, "sha256": digest}
    assert card["data"]["chat_template_file"]["path"] == str(tmp_path / "chat.jinja")
    assert card["data"]["chat_date"] == "3 Mar 2025" and card["data"]["dev_file"]["sha256"].startswith("sha256:")
    training = card["training"]
    assert training["lr"] == cfg.stage1.lr and training["steps"] == s1["step"] == 3
    assert training["final_train_loss"] == s1["final_loss"] and training["final_dev_loss"] > 0
    assert card["started_from"] == {"init_from": cfg.model.path} and card["package_version"]
    card2 = read_model_card(export2)
    assert card2["started_from"] == {"init_from": export1, "stage": "stage1", "method": "neurorit",
                                     "base_model": cfg.model.path}
    assert card2["training"]["final_dev_loss"] is None and "dev_file" not in card2["data"]  # no dev loss asked
    text = open(os.path.join(export2, "README.md")).read()
    assert f"- Started from: `{export1}` (stage1 export of `neurorit`)" in text and "- lr: " in text
    with open(os.path.join(export2, "tokenizer_config.json")) as fh:  # stage 2's export: pinned once, not twice
        assert json.load(fh)["chat_template"].count("set date_string") == 1


def test_no_template_leaves_the_tokenizer_alone(word_tokenizer):
    from types import SimpleNamespace

    from neurorit.prompts import export_tokenizer

    tok = word_tokenizer(["a"])
    assert export_tokenizer(SimpleNamespace(chat_template="auto", chat_template_file=""), tok) is tok


# ------------------------------------------------------------------- inputs: CSV, columns, several files
def _csv(path, rows: list[dict]) -> str:
    import csv
    import json

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return str(path)


def _user_rows(n: int, prefix: str) -> list[dict]:
    return [{"qid": f"{prefix}{i}", "q": f"where is {prefix}{i} ?", "gold": [f"place{i}"],
             "docs": [{"title": "t", "text": f"{prefix}{i} is in place{i} ."}, {"title": "u", "text": "noise ."}]}
            for i in range(n)]


def test_csv_with_the_users_column_names(tmp_path):
    from neurorit.records import training_records

    path = _csv(tmp_path / "train.csv", _user_rows(3, "a"))
    (tmp_path / "x.yaml").write_text("data:\n  train_file: train.csv\n  columns: {question: q, answers: gold, "
                                     "ctxs: docs, id: qid}\n")
    cfg = load_config(str(tmp_path / "x.yaml"))
    assert cfg.data.columns == {"question": "q", "answers": "gold", "ctxs": "docs", "id": "qid"}
    records = training_records(cfg.data)
    assert [(r.id, r.question, r.answers) for r in records][0] == ("a0", "where is a0 ?", ["place0"])
    assert records[2].ctxs[0].text == "a2 is in place2 ." and records[2].ctxs[1].title == "u"
    cli = load_config(None, ["--data.train_file", path, "--data.columns", "question=q,answers=gold,ctxs=docs"])
    assert cli.data.columns == {"question": "q", "answers": "gold", "ctxs": "docs"}
    with pytest.raises(UserError) as err:
        training_records(load_config(None, ["--data.train_file", path, "--data.columns", "question=query"]).data)
    assert "train.csv row 0: the row has no column query (data.columns.question)" in str(err.value)


def test_several_training_files_with_weights(tmp_path):
    from neurorit.records import training_records

    a = _csv(tmp_path / "a.csv", _user_rows(4, "a"))
    b = str(tmp_path / "b.jsonl")
    with open(b, "w") as fh:
        import json

        for row in _user_rows(4, "b"):
            fh.write(json.dumps({"id": row["qid"], "question": row["q"], "answers": row["gold"], "ctxs": row["docs"]})
                     + "\n")
    cfg = load_config(None, ["--data.train_files", f"{a},{b}", "--data.train_weights", "2,0.5",
                             "--data.columns", "question=q,answers=gold,ctxs=docs,id=qid"]).data
    with pytest.raises(UserError):  # b.jsonl has the record fields' own names, not the columns
        training_records(cfg)
    cfg.columns = {}
    (tmp_path / "a.jsonl").write_text(open(b).read().replace('"b', '"a'))
    cfg.train_files = [str(tmp_path / "a.jsonl"), b]
    ids = [r.id for r in training_records(cfg, seed=0)]
    assert ids[:8] == ["a0", "a1", "a2", "a3"] * 2 and len(ids) == 10 and set(ids[8:]) <= {"b0", "b1", "b2", "b3"}
    assert ids == [r.id for r in training_records(cfg, seed=0)]  # the sample is seeded
    assert [r.id for r in training_records(cfg, weighted=False)] == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]


@pytest.mark.parametrize("overrides, needle", [
    (["--data.train_files", "a.jsonl,b.jsonl", "--data.train_weights", "1"], "'data.train_weights': one weight"),
    (["--data.train_files", "a.jsonl", "--data.train_weights", "0"], "'data.train_weights': one weight"),
    (["--data.columns", "quesiton=q"], "'data.columns': quesiton is not a record field"),
    (["--data.columns", "question"], "'data.columns': expected field=column pairs")])
def test_bad_input_keys_are_one_line(overrides, needle):
    with pytest.raises(UserError) as err:
        load_config(None, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_chunk_rows_help_says_auto_or_an_integer():
    from neurorit.config_help import config_reference

    (line,) = [ln for ln in config_reference(ExperimentConfig()).splitlines() if "--mining.chunk_rows" in ln]
    assert "auto or int" in line and "null" not in line


# ---------------------------------------------------------------------------------- misleading lines
def test_a_missing_revision_gets_a_download_hint_with_it(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from model_patches.loading import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError) as err:
        resolve_model("nobody/model@v1.2")
    assert "(hf download nobody/model --revision v1.2)" in str(err.value)
    with pytest.raises(UserError) as err:
        resolve_model("nobody/model")
    assert "(hf download nobody/model)" in str(err.value)


def test_a_template_closing_on_a_token_the_vocabulary_lacks_names_the_tokenizers_own(word_tokenizer):
    from types import SimpleNamespace

    from neurorit.prompts import prompt_builder

    tok = word_tokenizer(["a"])
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ' ' + m['content'] + '<|eot_id|>' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant ' }}{% endif %}")
    with pytest.raises(UserError) as err:
        prompt_builder(SimpleNamespace(prompt_style="compact", chat_template="auto"), tok)
    message = str(err.value)
    assert "'<|eot_id|>'" in message and "e.g. <|im_end|>, <|eot_id|>" not in message
    assert "one of its special tokens (</s>, <pad>, <s>)" in message  # not <unk>, which it silently became


def test_help_says_model_keys_take_hub_ids():
    from neurorit.config_help import config_reference

    text = config_reference(ExperimentConfig())
    for key in ("--model.path", "--evidence.teacher"):
        (line,) = [ln for ln in text.splitlines() if key in ln]
        assert "Hub id" in line and "local" not in line


def test_mining_no_questions_is_refused():
    with pytest.raises(UserError) as err:
        load_config(None, ["--mining.num_examples", "0"])
    assert "'mining.num_examples' must be >= 1" in str(err.value)


def test_the_closed_book_probe_covers_only_the_benchmarks_facts(tmp_path, monkeypatch):
    """``data.benchmark_questions 40``: the probe asks about the real facts of those 40 questions, not all of
    them, and the labelled records equal a build with those labels."""
    from benchmarks.english import benchmark as english
    from neurorit.records import load_records

    asked = []

    def probe(model_path, texts, data, batch_size):  # the model answers nothing: every fact unknown
        asked.extend(texts)
        return ["" for _ in texts]

    monkeypatch.setattr(english, "_run_probe", probe)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    cfg = load_config(None, ["--model.path", str(tmp_path / "model"), "--data.benchmark_questions", "40",
                             "--data.train_file", str(tmp_path / "train.jsonl"), "--data.dev_file",
                             str(tmp_path / "dev.jsonl"), "--data.test_file", str(tmp_path / "test.jsonl")])
    paths = english.write_benchmark(cfg)
    real = [r for s in ("train", "dev", "test") for r in load_records(paths[s]) if r.meta["kind"] != "fresh"]
    per_fact = len(english.probe_prompts(english.real_facts()[0]))
    assert 0 < len(asked) == per_fact * len(real) < per_fact * len(english.real_facts()) // 10
    labels = {f"{r.meta['relation']}|{r.meta['entity']}": False for r in real}
    rebuilt = english.build_benchmark(cfg.data.benchmark_seed, 40, labels)
    assert [r.to_json() for s in ("train", "dev", "test") for r in rebuilt[s]] == \
        [r.to_json() for s in ("train", "dev", "test") for r in load_records(paths[s])]


# ------------------------------------------------------------------------------------------ the picture
def test_the_picture_tells_a_true_zero_from_a_missing_cell_with_n_per_panel_in_percent():
    from rag import report

    def stats(match: float, n: int) -> dict:
        return {"match": match, "em": match, "f1": match, "match_ci95": [max(0.0, match - 0.1), match + 0.1], "n": n}

    evaluations = {
        "base": {"trainable_params": 0, "settings": {"gold": stats(0.5, 30), "noise_only": stats(0.2, 30)},
                 "by_kind": {"fresh": {"gold": stats(0.4, 10), "noise_only": stats(0.0, 10)}}},
        "neurorit": {"trainable_params": 5, "settings": {"gold": stats(0.6, 30)},
                     "by_kind": {"fresh": {"gold": stats(0.5, 10)}}}}
    results = report.combine(evaluations)
    fig = report.figure(results, report.panel_sizes(evaluations))
    whole, fresh = fig.axes[0], fig.axes[1]
    assert whole.get_title() == "all questions (n=30)" and fresh.get_title() == "fresh facts (n=10)"
    assert whole.get_ylim() == (0, 105) and whole.get_ylabel() == "Match (%)"
    zero = [t for t in fresh.texts if t.get_text() == report.ZERO]
    missing = [t for t in fresh.texts if t.get_text() == report.MISSING]
    assert len(zero) == 1 and len(missing) == 1  # base's true 0 under noise-only, neurorit's missing cell
    assert zero[0].get_position()[0] != missing[0].get_position()[0]
    assert zero[0].get_color() != missing[0].get_color() and missing[0].get_rotation() == 90


def test_the_first_op_build_is_announced_once_per_node(tmp_path, monkeypatch, capsys):
    """An environment that never built DeepSpeed's CPU all-reduce op hears, before the silent minutes, that it is
    being built (local rank 0 only); once the library is there, nothing is said."""
    from neurorit.parallel.workarounds import announce_op_build

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    announce_op_build(1)
    assert capsys.readouterr().err == ""
    announce_op_build(0)
    assert "building DeepSpeed's CPU all-reduce op once" in capsys.readouterr().err
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").write_bytes(b"")
    announce_op_build(0)
    assert capsys.readouterr().err == ""


HEAVY_MODULES = ("transformers", "deepspeed", "datasets", "peft", "matplotlib")


@pytest.mark.parametrize("script", ["attribution/mine.py", "attribution/diagnose.py", "train/stage1.py",
                                    "train/stage2.py", "rag/evaluate.py", "rag/report.py", "rag/write_evidence.py"])
def test_help_and_a_refused_value_import_nothing_heavy(script):
    """``--help`` and a typo answer after torch alone: no transformers, DeepSpeed, datasets, peft or matplotlib
    (``scripts/bench_startup.py`` measures the seconds)."""
    import subprocess
    import sys

    probe = ("import contextlib, io, runpy, sys\n"
             "for argv in (['--help'], ['--config', 'configs/embedded.yaml', '--runtime.seed', 'x']):\n"
             f"    sys.argv = [{script!r}, *argv]\n"
             "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
             "        try:\n"
             f"            runpy.run_path({script!r}, run_name='__main__')\n"
             "        except SystemExit as stop:\n"
             "            assert stop.code in (0, 2), stop.code\n"
             f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_write_evidence_keeps_the_users_columns_and_reads_back(tmp_path):
    """The evidence file of a CSV with the user's own column names reads back with the same ``data.columns``:
    the evidence and ``meta.evidence_by`` sit under the names the mapping gives them."""
    import json

    from neurorit.records import mining_records, read_lines
    from rag.write_evidence import _filled, read_rows

    columns = {"question": "q", "answers": "gold", "ctxs": "docs", "id": "qid", "evidence": "why"}
    path = _csv(tmp_path / "train.csv", [{**row, "why": ""} for row in _user_rows(3, "a")])
    rows = read_rows(path, columns)
    out = tmp_path / "train.evidence.jsonl"
    out.write_text("".join(_filled(row, f"because {row[2].id}", {"teacher": "t"}, columns) + "\n" for row in rows))
    assert json.loads(out.read_text().splitlines()[0])["why"] == "because a0"
    back = [record for _, _, record in read_lines(str(out), columns)]
    assert [(r.id, r.evidence, r.meta["evidence_by"]["teacher"]) for r in back][1] == ("a1", "because a1", "t")
    cfg = load_config(None, ["--data.train_file", path, "--data.columns",
                             ",".join(f"{k}={v}" for k, v in columns.items())])
    assert [r.id for r in mining_records(cfg)] == ["a0", "a1", "a2"]


def test_every_reader_of_records_passes_data_columns():
    """Each library and script call of ``load_records`` / ``read_lines`` hands on the user's column mapping: a
    reader that forgets it fails on a CSV every other entry point reads."""
    import ast
    import glob

    needs = {"load_records": 3, "read_lines": 2}
    missing = []
    for path in sorted(glob.glob(os.path.join(ROOT, "*", "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, ROOT)
        if rel.startswith(("tests", ".venv", "neurorit/records.py")) or "/." in rel:
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in needs:
                given = len(node.args) + len([k for k in node.keywords if k.arg == "columns"])
                if given < needs[node.func.id]:
                    missing.append(f"{rel}:{node.lineno}")
    assert not missing, missing

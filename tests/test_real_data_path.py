"""The real-data path of README's "From your own cluster": a model named by its Hub id (from a hub cache the test
lays out, offline) and a retrieval dump as parquet (DPR / NQ-style rows with top-k passages, no evidence field, no
counterfactuals) through mine -> stage 1 -> stage 2 -> evaluate -> report, each command read from the README and run as written
from a folder outside the checkout (one rank where it says eight GPUs), with a tracker and checkpoint rotation
on."""
import json
import os
import shlex
import subprocess
import sys

import datasets
import pytest
import yaml

from tests.support.ranks import DEEPSPEED, ROOT, child_env, free_port
from tests.support.hub import hub_snapshot

FACTS = [("Who wrote Dune?", "Frank Herbert", "Dune", "Dune is a novel written by Frank Herbert in 1965."),
         ("What is the capital of Peru?", "Lima", "Peru", "Lima is the capital and largest city of Peru."),
         ("Who painted the Mona Lisa?", "Leonardo da Vinci", "Mona Lisa", "The Mona Lisa was painted by Leonardo da Vinci."),
         ("Which planet is the largest?", "Jupiter", "Jupiter", "Jupiter is the largest planet in the Solar System."),
         ("What language is spoken in Brazil?", "Portuguese", "Brazil", "The official language of Brazil is Portuguese."),
         ("Who discovered penicillin?", "Alexander Fleming", "Penicillin", "Penicillin was discovered by Alexander Fleming."),
         ("What is the boiling point of water in Celsius?", "100", "Water", "Water boils at 100 degrees Celsius at sea level.")]
NOISE = ["The Nile is a river in Africa.", "Mount Everest is in the Himalayas.", "Tokyo hosted the Olympics.",
         "The violin has four strings.", "Honey never spoils when sealed."]


def _records():
    rows = []
    for i, (q, a, title, text) in enumerate(FACTS):
        ctxs = [{"title": f"Noise {j}", "text": NOISE[(i + j) % len(NOISE)], "score": 10.0 - j, "has_answer": False}
                for j in range(3)]
        ctxs.insert(i % 3, {"title": title, "text": text, "score": 9.5, "has_answer": True})
        rows.append({"id": f"nq-{i}", "question": q, "answers": [a], "ctxs": ctxs})
    return rows


def readme_commands() -> list[list[str]]:
    """The commands of README's "From your own cluster" block, each split as a shell would (comments and the
    ``cd`` dropped)."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## From your own cluster"):]
    block = section[section.index("```bash\n") + 8:]
    block = block[:block.index("```")]
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    return [words for words in lines if words and words[0] != "cd"]


@pytest.mark.slow  # ~2 minutes of launcher starts: make test-pipeline (in .ci/run)
def test_own_model_own_dump_end_to_end(tmp_path, tiny_model, word_tokenizer):
    from neurorit.prompts import PAPER

    data = tmp_path / "nq_top4.parquet"
    datasets.Dataset.from_list(_records()).to_parquet(str(data))
    texts = [json.dumps(r) for r in _records()] + [PAPER.verify_ctx, PAPER.verify_noctx, *PAPER.heads.values(),
                                                  *PAPER.tails.values(), "Document Title YES NO Evidence: Answer:"]
    tokenizer = word_tokenizer(texts=texts)
    hub_snapshot(str(tmp_path / "hub"), "my-org/my-model", "a" * 40,
                 tiny_model("llama", hidden=32, intermediate=64, tokenizer=tokenizer, max_positions=512), tokenizer)
    exp = tmp_path / "experiments"  # the user's folder, outside the checkout; the data beside the config
    (exp / "data").mkdir(parents=True)
    os.replace(data, exp / "data" / "nq_top4.parquet")
    data = "data/nq_top4.parquet"
    cfg = {
        "model": {"path": "my-org/my-model"},
        "data": {"train_file": data, "dev_file": data, "test_file": data, "prompt_style": "paper",
                 "num_docs": 3, "max_length": 400},
        "mining": {"num_examples": 7, "steps": 4, "n_relevant": 4, "n_irrelevant": 4, "n_shared": 2,
                   "n_target_layers": 1, "zero_stage": 0},
        "stage1": {"max_steps": 2, "batch_size": 2, "micro_batch_size": 2, "zero_stage": 0, "lr": 1e-3,
                   "save_every": 1, "keep_last": 1},
        "stage2": {"max_steps": 2, "batch_size": 2, "micro_batch_size": 2, "zero_stage": 0, "lr": 1e-3},
        "eval": {"settings": ["gold", "top5", "noise_only", "closed_book"], "max_new_tokens": 4, "bootstrap": 50},
        "runtime": {"output_dir": "outputs/llama3-nq", "report_to": ["tensorboard"]},
    }
    (exp / "my.yaml").write_text(yaml.safe_dump(cfg))
    bin_dir = os.path.dirname(sys.executable)  # the console scripts of this environment
    env = dict(child_env(), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"),
               PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
    commands = readme_commands()
    assert [c[:2] for c in commands[:5]] == [["deepspeed", "--num_gpus"]] * 5 and commands[5][0] == "neurorit-report"
    for command in commands:
        if command[:2] == ["deepspeed", "--num_gpus"]:  # eight GPUs there, one CPU rank here, on a port of its own
            command = [DEEPSPEED, "--num_gpus", "1", "--master_port", str(free_port()), *command[3:]]
        res = subprocess.run(command, cwd=exp, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, " ".join(command) + "\n" + res.stdout[-2000:] + res.stderr[-3000:]
    out = exp / "outputs" / "llama3-nq"
    nmap = json.loads((out / "mining" / "neuron_map.json").read_text())
    assert nmap["fingerprint"]["num_layers"] == 2
    assert sorted(os.listdir(out / "stage1" / "checkpoints")) == ["latest", "step2"]  # keep_last 1
    assert "my-org/my-model" in (out / "stage1" / "export" / "README.md").read_text()  # the model card
    assert (out / "stage2" / "export" / "config.json").exists()
    assert sorted(os.listdir(exp)) == ["data", "my.yaml", "outputs"]  # nothing else in the user's folder
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["base"]["trainable_params"] == 0
    assert results["methods"]["neurorit"]["trainable_params"] > 0  # read from the stages behind the export
    cells = results["methods"]["neurorit"]["settings"]
    assert set(cells) == {"gold", "top5", "noise_only", "closed_book"}
    assert all(0.0 <= c["match"] <= 1.0 for c in cells.values())

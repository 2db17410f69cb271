"""Model cards of exports (model_patches/model_card.py): README.md that the Hugging Face Hub's own parser reads,
with the facts a user needs (base model and revision, method, neuron map hash, data, trainable parameters, the
command), read back by ``read_model_card`` / ``trainable_params_of``; the export still loads on its own."""
from __future__ import annotations

import sys

import pytest
from transformers import AutoModelForCausalLM

from model_patches.model_card import read_model_card, trainable_params_of, write_model_card
from neurorit.errors import UserError

FACTS = dict(base_model="meta-llama/Llama-3.1-8B-Instruct", base_revision="0e9e39f249a16976918f6564b8830bc894c89659",
             method="neurorit", stage="stage2", trainable_params=73_728, neuron_map_hash="ab12cd34",
             data={"train_file": "data/train.parquet"})
COMMAND = ["deepspeed", "--num_gpus", "8", "train/stage2.py", "--config", "my config.yaml"]


@pytest.fixture
def export(tmp_path, tiny_model):
    folder = tmp_path / "export"
    tiny_model("llama").save_pretrained(folder)
    return folder


def test_card_facts_read_back(export, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/venv/bin/deepspeed")
    monkeypatch.setattr(sys, "argv", COMMAND[1:])  # the card records the command that made the export
    path = write_model_card(str(export), **FACTS)
    facts = read_model_card(str(export))
    assert facts["base_model"] == FACTS["base_model"] and facts["base_model_revision"] == FACTS["base_revision"]
    assert (facts["method"], facts["stage"], facts["neuron_map_hash"]) == ("neurorit", "stage2", "ab12cd34")
    assert facts["data"] == FACTS["data"] and trainable_params_of(str(export)) == 73_728
    assert facts["command"] == "deepspeed --num_gpus 8 train/stage2.py --config 'my config.yaml'"
    text = open(path).read()
    assert "Trainable parameters: 73,728" in text and FACTS["base_revision"] in text
    AutoModelForCausalLM.from_pretrained(str(export))  # the card does not disturb loading


def test_the_hub_parser_reads_the_metadata(export):
    from huggingface_hub import ModelCard

    write_model_card(str(export), **FACTS)
    card = ModelCard.load(str(export / "README.md"))
    assert card.data.base_model == FACTS["base_model"] and "neuro-rit" in card.data.tags
    assert card.data.to_dict()["neurorit"]["trainable_params"] == 73_728


def test_a_local_base_model_is_not_claimed_as_a_hub_id(export, tmp_path):
    local = tmp_path / "base"
    local.mkdir()
    write_model_card(str(export), **{**FACTS, "base_model": str(local), "base_revision": None})
    assert "base_model:" not in open(export / "README.md").read().split("neurorit:")[0]
    assert read_model_card(str(export))["base_model"] == str(local)


def test_no_card_and_no_folder(tmp_path):
    assert read_model_card(str(tmp_path)) is None and trainable_params_of(str(tmp_path)) is None
    (tmp_path / "README.md").write_text("# a card without front matter\n")
    assert read_model_card(str(tmp_path)) is None
    with pytest.raises(UserError, match="does not exist"):
        write_model_card(str(tmp_path / "missing"), **FACTS)

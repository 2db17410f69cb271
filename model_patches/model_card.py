"""The model card of an export: ``README.md`` in the export folder, as the Hugging Face Hub reads it.

YAML front matter (``base_model`` when the base is a Hub id, ``library_name``, ``tags``) plus a ``neurorit`` block
that scripts read back (``read_model_card``): the base model and its revision, the stage and method, the neuron
map's hash, the data files, the trainable-parameter count and the command that made it. Below it, the same in
prose. ``write_model_card`` is called on rank 0 after the export is written; ``trainable_params_of`` is what an
evaluation reads when it is not told the count.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Optional

import yaml

from neurorit.errors import UserError
from neurorit.files import atomic_write_text

CARD = "README.md"
TAGS = ["neuro-rit", "retrieval-augmented-generation", "robustness"]


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not os.path.exists(name) and not name.startswith((".", "/"))


def card_facts(base_model: str, method: str, stage: str, trainable_params: int,
               base_revision: Optional[str] = None, neuron_map_hash: Optional[str] = None,
               data: Optional[dict] = None) -> dict:
    """The ``neurorit`` block of the card; the command is this process's command line."""
    argv = [os.path.basename(sys.executable)] + sys.argv
    return {"base_model": base_model, "base_model_revision": base_revision, "stage": stage, "method": method,
            "neuron_map_hash": neuron_map_hash, "trainable_params": int(trainable_params),
            "data": dict(data or {}), "command": " ".join(shlex.quote(a) for a in argv)}


def render_model_card(facts: dict) -> str:
    """README.md text: front matter + prose, from ``card_facts``' dict."""
    meta = {"library_name": "transformers", "tags": TAGS, "neurorit": facts}
    if _is_hub_id(facts["base_model"]):
        meta = {"base_model": facts["base_model"], **meta}
    revision = f" (revision `{facts['base_model_revision']}`)" if facts.get("base_model_revision") else ""
    data = "\n".join(f"- {k}: `{v}`" for k, v in facts["data"].items()) or "- (not recorded)"
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
        f"# {facts['method']} ({facts['stage']}) of {facts['base_model']}", "",
        "Trained with [neuro-rit](https://arxiv.org/abs/2604.02194) (Neuro-RIT: neuron-guided instruction tuning "
        "for robust retrieval-augmented LLMs), exported as a plain Hugging Face checkpoint: it loads with "
        "`AutoModelForCausalLM.from_pretrained` alone.", "",
        f"- Base model: `{facts['base_model']}`{revision}",
        f"- Stage and method: {facts['stage']}, `{facts['method']}`",
        f"- Neuron map: {'`' + facts['neuron_map_hash'] + '`' if facts.get('neuron_map_hash') else 'none'}",
        f"- Trainable parameters: {facts['trainable_params']:,}", "",
        "## Data", "", data, "",
        "## Command", "", "```", facts["command"], "```", ""]
    return "\n".join(lines)


def write_model_card(export_dir: str, **facts) -> str:
    """Write ``<export_dir>/README.md`` (atomically) from ``card_facts(**facts)``; returns its path."""
    if not os.path.isdir(export_dir):
        raise UserError(f"model card: the export folder {export_dir} does not exist")
    return atomic_write_text(os.path.join(export_dir, CARD), render_model_card(card_facts(**facts)))


def read_model_card(export_dir: str) -> Optional[dict]:
    """The ``neurorit`` block of an export's card, or None when it has no card (or one without the block)."""
    path = os.path.join(export_dir, CARD)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return None
    try:
        meta = yaml.safe_load(text[4:text.index("\n---", 4)])
    except yaml.YAMLError as err:
        raise UserError(f"{path}: its front matter is not valid YAML ({str(err).splitlines()[0]})") from None
    block = meta.get("neurorit") if isinstance(meta, dict) else None
    return block if isinstance(block, dict) else None


def trainable_params_of(export_dir: str) -> Optional[int]:
    """The trainable-parameter count an export's card records, or None."""
    facts = read_model_card(export_dir)
    value = facts.get("trainable_params") if facts else None
    return int(value) if value is not None else None

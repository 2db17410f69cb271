"""The model card of an export: ``README.md`` in the export folder, as the Hugging Face Hub reads it.

YAML front matter (``base_model`` when the base is a Hub id, ``library_name``, ``tags``) plus a ``neurorit`` block
that scripts read back (``read_model_card``): the base model and its revision, the stage and method, the neuron
map's hash, the data (files with their sha256, the chat template file and date), the training (learning rate,
steps, final train and dev loss), what the stage started from (a folder, and what that export's own card says:
stage 2 from stage 1's export), the trainable-parameter count, the command that made it and the package version.
Below it, the same in prose. ``write_model_card`` is called on rank 0 after the export is written;
``trainable_params_of`` is what an evaluation reads when it is not told the count.
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Optional

import yaml

from neurorit.errors import UserError
from neurorit.files import atomic_write_text

CARD = "README.md"
TAGS = ["neuro-rit", "retrieval-augmented-generation", "robustness"]


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not os.path.exists(name) and not name.startswith((".", "/"))


def package_version() -> str:
    try:
        return metadata.version("neuro-rit")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


@dataclass(frozen=True)
class CardFacts:
    """What a model card says. ``data``: ``{name: value}``, a file as ``{"path", "sha256"}``; ``training``: lr,
    steps, final train / dev loss; ``started_from``: ``init_from`` and, for an export, its card's stage and method."""

    base_model: str
    method: str
    stage: str
    trainable_params: int
    base_revision: Optional[str] = None
    neuron_map_hash: Optional[str] = None
    data: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    started_from: dict = field(default_factory=dict)

    def block(self) -> dict:
        """The ``neurorit`` block of the card; the command is this process's command line."""
        argv = [os.path.basename(sys.executable)] + sys.argv
        return {"base_model": self.base_model, "base_model_revision": self.base_revision, "stage": self.stage,
                "method": self.method, "neuron_map_hash": self.neuron_map_hash,
                "trainable_params": int(self.trainable_params), "data": dict(self.data),
                "training": dict(self.training), "started_from": dict(self.started_from),
                "command": " ".join(shlex.quote(a) for a in argv), "package_version": package_version()}


def started_from(init_from: str) -> dict:
    """``{"init_from"}``, plus ``stage`` / ``method`` / ``base_model`` when it is an export with a card."""
    facts = read_model_card(init_from) if os.path.isdir(init_from) else None
    own = {k: facts[k] for k in ("stage", "method", "base_model") if facts and k in facts}
    return {"init_from": init_from, **own}


def _value(v) -> str:
    if isinstance(v, dict):
        return f"`{v.get('path')}`" + (f" ({v['sha256']})" if v.get("sha256") else "")
    return f"`{v}`"


def render_model_card(facts: dict) -> str:
    """README.md text: front matter + prose, from ``CardFacts.block()``."""
    meta = {"library_name": "transformers", "tags": TAGS, "neurorit": facts}
    if _is_hub_id(facts["base_model"]):
        meta = {"base_model": facts["base_model"], **meta}
    revision = f" (revision `{facts['base_model_revision']}`)" if facts.get("base_model_revision") else ""
    data = "\n".join(f"- {k}: {_value(v)}" for k, v in facts["data"].items()) or "- (not recorded)"
    training = "\n".join(f"- {k}: {v}" for k, v in facts.get("training", {}).items()) or "- (not recorded)"
    start = facts.get("started_from", {})
    own = f" ({start['stage']} export of `{start['method']}`)" if start.get("stage") else ""
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
        f"# {facts['method']} ({facts['stage']}) of {facts['base_model']}", "",
        "Trained with [neuro-rit](https://arxiv.org/abs/2604.02194) (Neuro-RIT: neuron-guided instruction tuning "
        "for robust retrieval-augmented LLMs), exported as a plain Hugging Face checkpoint: it loads with "
        "`AutoModelForCausalLM.from_pretrained` alone.", "",
        f"- Base model: `{facts['base_model']}`{revision}",
        f"- Stage and method: {facts['stage']}, `{facts['method']}`",
        f"- Neuron map: {'`' + facts['neuron_map_hash'] + '`' if facts.get('neuron_map_hash') else 'none'}",
        f"- Trainable parameters: {facts['trainable_params']:,}",
        f"- Started from: `{start.get('init_from', facts['base_model'])}`{own}", "",
        "## Data", "", data, "",
        "## Training", "", training, "",
        "## Command", "", "```", facts["command"], "```", "",
        f"neuro-rit {facts.get('package_version', 'unknown')}", ""]
    return "\n".join(lines)


def write_model_card(export_dir: str, **facts) -> str:
    """Write ``<export_dir>/README.md`` (atomically) from ``CardFacts(**facts)``; returns its path."""
    if not os.path.isdir(export_dir):
        raise UserError(f"model card: the export folder {export_dir} does not exist")
    return atomic_write_text(os.path.join(export_dir, CARD), render_model_card(CardFacts(**facts).block()))


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

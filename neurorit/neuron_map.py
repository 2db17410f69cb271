"""The neuron map: the product of mining, read by every later stage (docs/DESIGN.md §4).

A shared contract: it lives below every stage (mining writes it, training reads it) and imports no stage.

Three groups (``relevant_only``, ``irrelevant_only``, ``shared``) as (layer, neuron) lists with counts (in how
many examples' top-k the neuron appeared, per side), the target layers, its provenance (the mining config and inputs), and a fingerprint
of the model (architecture, layers, FFN width). Saved as ``neuron_map.safetensors`` (tensors; everything else in
its metadata) plus ``neuron_map.json`` (the same content, readable). A model of another shape is refused by
``check_model`` with a message that names both shapes.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from neurorit.errors import UserError
from neurorit.files import atomic_write_text

MAP_TENSORS = "neuron_map.safetensors"
MAP_JSON = "neuron_map.json"
FINGERPRINT_KEYS = ("architecture", "num_layers", "intermediate_size")
GROUPS = ("relevant_only", "irrelevant_only", "shared")


@dataclass
class NeuronMap:
    groups: dict[str, torch.Tensor]  # group -> [n, 4] long: layer, neuron, relevant count, irrelevant count
    target_layers: list[int]
    fingerprint: dict
    provenance: dict = field(default_factory=dict)  # how it was mined: the mining config, model, examples

    def __post_init__(self):
        missing = [g for g in GROUPS if g not in self.groups]
        if missing:
            raise UserError(f"neuron map lacks group(s) {', '.join(missing)}")

    # ------------------------------------------------------------------------------------------- views
    def per_layer(self, group: str) -> dict[int, torch.Tensor]:
        """``{layer: neuron ids (ascending)}`` for the layers that hold neurons of ``group``."""
        if group not in self.groups:
            raise UserError(f"unknown neuron group {group!r}; use one of {', '.join(GROUPS)}")
        rows = self.groups[group]
        out = {}
        for layer in sorted(set(rows[:, 0].tolist())):
            out[layer] = torch.sort(rows[rows[:, 0] == layer, 1]).values
        return out

    def layer_counts(self) -> dict[str, list[int]]:
        """Per group, how many of its neurons sit in each layer."""
        n = self.fingerprint["num_layers"]
        return {g: torch.bincount(self.groups[g][:, 0], minlength=n).tolist() for g in GROUPS}

    def to_json(self) -> dict:
        cols = ("layer", "neuron", "relevant_count", "irrelevant_count")
        return {
            "fingerprint": self.fingerprint,
            "target_layers": self.target_layers,
            "sizes": {g: len(self.groups[g]) for g in GROUPS},
            "groups": {g: [dict(zip(cols, row)) for row in self.groups[g].tolist()] for g in GROUPS},
            "provenance": self.provenance,
            "hash": self.hash(),
        }

    def hash(self) -> str:
        """Content hash (groups, target layers, fingerprint): checkpoints record it to refuse a mismatched map."""
        body = {"groups": {g: self.groups[g].tolist() for g in GROUPS}, "target_layers": self.target_layers,
                "fingerprint": self.fingerprint}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------------------------------- checks
    def check_fingerprint(self, have: dict) -> None:
        """UserError unless ``have`` (``model_patches.model_fingerprint(model)``) has the architecture, layer
        count and FFN width the map was mined on."""
        bad = [k for k in FINGERPRINT_KEYS if have.get(k) != self.fingerprint.get(k)]
        if bad:
            want = ", ".join(f"{k}={self.fingerprint.get(k)}" for k in FINGERPRINT_KEYS)
            got = ", ".join(f"{k}={have.get(k)}" for k in FINGERPRINT_KEYS)
            raise UserError(f"neuron map was mined on a different model ({want}); this model has {got}. "
                            f"Mine a map for this model with attribution/mine.py")

    # ------------------------------------------------------------------------------------------- files
    def save(self, directory: str) -> str:
        """Write ``neuron_map.safetensors`` and ``neuron_map.json`` (atomically); returns the tensor file path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, MAP_TENSORS)
        tensors = {g: self.groups[g].contiguous() for g in GROUPS}
        tensors["target_layers"] = torch.tensor(self.target_layers, dtype=torch.long)
        # one metadata key: safetensors writes several in a per-process order, and the file must be byte-stable
        meta = {"neuron_map": json.dumps({"fingerprint": self.fingerprint, "provenance": self.provenance,
                                          "hash": self.hash()}, sort_keys=True)}
        save_file(tensors, path + ".tmp", metadata=meta)
        os.replace(path + ".tmp", path)
        jpath = os.path.join(directory, MAP_JSON)
        atomic_write_text(jpath, json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: str) -> "NeuronMap":
        """From ``neuron_map.safetensors``, its ``.json`` sibling, or the folder holding them."""
        if os.path.isdir(path):
            path = os.path.join(path, MAP_TENSORS)
        elif path.endswith(".json"):
            path = os.path.join(os.path.dirname(path), MAP_TENSORS)
        if not os.path.isfile(path):
            raise UserError(f"neuron map not found: {path} (mine one with attribution/mine.py)")
        try:
            with safe_open(path, framework="pt") as fh:
                meta = json.loads((fh.metadata() or {})["neuron_map"])
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            nmap = cls(groups={g: tensors[g] for g in GROUPS}, target_layers=tensors["target_layers"].tolist(),
                       fingerprint=meta["fingerprint"],
                       provenance=meta.get("provenance", meta.get("settings", {})))  # "settings": older maps
        except Exception as err:  # safetensors raises its own error type for a file of another kind
            raise UserError(f"{path} is not a neuron map ({err})") from None
        if meta.get("hash") and meta["hash"] != nmap.hash():
            raise UserError(f"{path}: content does not match its recorded hash (file damaged or edited)")
        return nmap

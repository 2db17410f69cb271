"""The strategy (in the style of OpenRLHF's ``DeepspeedStrategy``): a run's DeepSpeed config and what it does to
models. ``prepare_frozen`` installs the ZeRO-3 gather hooks (mining, ZeRO-3 inference); ``prepare_trainable``
wraps a model, its optimizer (``neurorit/parallel/optim.py``) and schedule into a ``TrainEngine``, the only handle
``train/`` holds on DeepSpeed's engine. Also: ``gathered`` (read weights only inside it) and ``zero3_loading``
(keep ``HfDeepSpeedConfig`` alive while loading under ZeRO-3)."""
from __future__ import annotations

import contextlib
import copy
from typing import Iterable, Optional

import torch

from neurorit.parallel.collectives import world_size
from neurorit.parallel.ds_config import ds_config_for


@contextlib.contextmanager
def gathered(params: Iterable[torch.nn.Parameter], modifier_rank: Optional[int] = None):
    """Full weights inside the block: a ZeRO-3 gather when partitioned, nothing otherwise."""
    params = [p for p in params]
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield
    else:
        yield


@contextlib.contextmanager
def zero3_loading(ds_config: Optional[dict]):
    """Keep ``HfDeepSpeedConfig`` alive while ``from_pretrained`` runs so weights load partitioned."""
    if ds_config is None or ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield None
        return
    from transformers.integrations import HfDeepSpeedConfig

    keep = HfDeepSpeedConfig(copy.deepcopy(ds_config))
    try:
        yield keep
    finally:
        del keep


class Strategy:
    """Everything DeepSpeed does for one run: its config, loading under ZeRO-3, and preparing models."""

    def __init__(self, ds_config: dict):
        self.config = ds_config

    @classmethod
    def for_training(cls, zero_stage: int, batch_size: int, micro_batch_size: int, path: str = "",
                     dtype: str = "float32", grad_clip: float = 1.0) -> "Strategy":
        cfg = ds_config_for(zero_stage, batch_size, micro_batch_size, path, dtype, grad_clip)
        cfg["zero_allow_untested_optimizer"] = True  # the optimizer is always one of ours (see ``optimizer``)
        return cls(cfg)

    @classmethod
    def for_inference(cls, zero_stage: int, dtype: str = "float32", path: str = "") -> "Strategy":
        """For a frozen model (no optimizer): one sequence per rank and step."""
        return cls(ds_config_for(zero_stage, world_size(), 1, path, dtype))

    @property
    def zero_stage(self) -> int:
        return int(self.config.get("zero_optimization", {}).get("stage", 0))

    @property
    def offloads_optimizer(self) -> bool:
        return self.config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") != "none"

    def prepare_frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """Under ZeRO-3, install the hooks that gather each layer's weights for its forward (the model must have
        been loaded under this config); otherwise nothing. Returns the model itself."""
        if self.zero_stage == 3:
            import deepspeed

            deepspeed.initialize(model=model, config=self.config)  # the hooks stay on the model; the engine is not needed
        return model

    def prepare_trainable(self, model: torch.nn.Module, params: list, optimizer: torch.optim.Optimizer,
                          lr_lambda) -> "TrainEngine":
        """Wrap ``model`` (trainable ``params`` already marked) with ``optimizer`` and a LambdaLR schedule."""
        import deepspeed

        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config, model_parameters=params,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda))
        return TrainEngine(engine, params)



class TrainEngine:
    """A model prepared for training: the only handle ``train/`` holds on DeepSpeed's engine."""

    def __init__(self, engine, params: list):
        self._engine, self._params = engine, params

    @property
    def module(self) -> torch.nn.Module:
        return self._engine.module

    @property
    def device(self) -> torch.device:
        return self._engine.device

    def __call__(self, **batch):
        return self._engine(**batch)

    def train(self) -> None:
        self._engine.train()

    def eval(self) -> None:
        self._engine.eval()

    def backward_step(self, loss: torch.Tensor) -> Optional[float]:
        """Backward and (at the accumulation boundary) an optimizer step. Returns the gradient norm where the
        engine does not report one (no ZeRO) at the boundary, else None."""
        self._engine.backward(loss)
        norm = None
        if self._engine.is_gradient_accumulation_boundary() and not self._engine.zero_optimization():
            sq = sum(float(p.grad.detach().float().pow(2).sum()) for p in self._params if p.grad is not None)
            norm = sq ** 0.5
        self._engine.step()
        return norm

    def grad_norm(self) -> Optional[float]:
        """The global gradient norm of the last step, as the engine reports it (None where it does not)."""
        value = self._engine.get_global_grad_norm()
        return float(value) if value is not None else None

    def lr(self) -> float:
        return self._engine.get_lr()[0]

    def save(self, ckpt_dir: str, tag: str, client_state: dict) -> None:
        """Collective. Frozen parameters are left out (they are the stage's ``init_from`` weights)."""
        self._engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state, exclude_frozen_parameters=True)

    def load(self, ckpt_dir: str, tag: str, universal: bool = False) -> Optional[dict]:
        """Collective. The client state, or None when DeepSpeed found nothing to load. ``universal``: the tag is
        DeepSpeed's universal form (``to_universal``), which any world size can load."""
        self._engine._config.load_universal_checkpoint = universal
        path, client = self._engine.load_checkpoint(ckpt_dir, tag=tag, load_module_strict=False)
        return client if path is not None else None


def to_universal(tag_dir: str, out_dir: str) -> None:
    """Convert one saved checkpoint (``tag_dir``, ZeRO shards of its world size) into DeepSpeed's universal form in
    ``out_dir``, which a run of any world size loads. One process (rank 0) runs it."""
    import argparse

    from deepspeed.checkpoint import ds_to_universal

    ds_to_universal.main(argparse.Namespace(input_folder=tag_dir, output_folder=out_dir, num_extract_workers=1,
                                            num_merge_workers=1, keep_temp_folder=False, strict=True,
                                            inject_missing_state=False))

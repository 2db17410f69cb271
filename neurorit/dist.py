"""The one place that talks to torch.distributed and DeepSpeed: collectives, configs, and the strategy.

Launch conventions: the same entry works under ``deepspeed --num_gpus N``, ``torchrun`` and ``srun`` (SLURM
variables are mapped to RANK / WORLD_SIZE / LOCAL_RANK when the launcher did not set them). Backend: NCCL on
CUDA, gloo on CPU. No other library module imports ``deepspeed`` or calls ``torch.distributed``: they use the
collectives below (``rank``, ``barrier``, ``all_reduce_sum``, ``gathered``, ...) and, in the style of OpenRLHF's
``DeepspeedStrategy``, a ``Strategy`` that owns a run's DeepSpeed config and prepares models: ``prepare_frozen``
(mining, ZeRO-3 inference) and ``prepare_trainable`` (optimizer + schedule -> a ``TrainEngine`` with forward,
backward/step, lr, grad norm and checkpoint save/load). The rules of docs/DESIGN.md §5 live here: init before
building the model, keep ``HfDeepSpeedConfig`` alive while loading under ZeRO-3, read weights only inside
gathered scopes, rank 0 writes.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import datetime
import gc
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
import torch.distributed as tdist

from neurorit.errors import UserError

# DeepSpeed compiles its small C++ ops on first use into TORCH_EXTENSIONS_DIR; one folder per environment, so two
# venvs (the main one, .venv-vllm, a second clone) never rebuild or load each other's half-written libraries.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DS_CONFIG_DIR = os.path.join(REPO_ROOT, "ds_configs")

# Long rank-0-only sections (mining, export) must not trip the collective timeout.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("NEURORIT_DIST_TIMEOUT_MIN", "120")))


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


_INFO: Optional[DistInfo] = None


def _map_slurm_env() -> None:
    """Under ``srun`` (one task per rank) fill the torch variables from SLURM's when no launcher set them."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    ntasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))  # set by srun steps, not by a batch shell
    if ntasks <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = str(ntasks)
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_PORT", "29500")
    if "MASTER_ADDR" not in os.environ:
        nodelist = os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
        os.environ["MASTER_ADDR"] = _first_host(nodelist)


def _first_host(nodelist: str) -> str:
    """First host of a SLURM nodelist like ``node[01-04,07],gpu2`` without calling scontrol."""
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        first = rest.rstrip("]").split(",")[0].split("-")[0]
        return prefix + first
    return head


def init_distributed(local_rank: Optional[int] = None) -> DistInfo:
    """Initialise once (idempotent); a single process without a launcher gets a one-rank group."""
    global _INFO
    if _INFO is not None:
        return _INFO
    _map_slurm_env()
    if local_rank is not None and local_rank >= 0:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    lrank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(lrank)
        device = torch.device("cuda", lrank)
    else:
        device = torch.device("cpu")
    if not tdist.is_initialized():
        _clear_stale_build_lock()
        import deepspeed

        backend = "nccl" if device.type == "cuda" else "gloo"
        if world == 1:  # a plain `python entry.py`: an in-memory one-rank group (no port, no MPI discovery)
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=str(lrank))
            tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1, timeout=DEFAULT_TIMEOUT)
        deepspeed.init_distributed(dist_backend=backend, timeout=DEFAULT_TIMEOUT)
        _unlink_shm_buffer()
        # Destroy the group at exit: a gloo rank left with a live group can abort at interpreter exit.
        atexit.register(shutdown)
    rank = tdist.get_rank() if tdist.is_initialized() else 0
    world = tdist.get_world_size() if tdist.is_initialized() else 1
    _INFO = DistInfo(rank=rank, world_size=world, local_rank=lrank, device=device)
    return _INFO


def make_deterministic(on: bool = True) -> None:
    """``runtime.deterministic`` (default on): bit-reproducible training on GPUs too. Call before any CUDA work.

    On CPU nothing is needed: with a fixed seed and kernel path (the demo pins the x86 kernels
    to AVX2, see the README) every reduction here is in a fixed order. On CUDA, atomics in the embedding backward,
    attention backward kernels and cuBLAS split-K vary run to run; this selects deterministic kernels (warning
    where one has none), which costs speed there (roughly 5-20%, mostly attention backward; not measured here).
    """
    if on and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


STALE_LOCK_SECONDS = 600


def _clear_stale_build_lock() -> None:
    """DeepSpeed loads a small C++ op at start-up under a lock file that has no owner and no timeout: a process
    killed while holding it leaves every later start on this machine waiting forever. A build takes about a
    minute, so a lock older than ten minutes is a dead process's; remove it, and say so."""
    root = os.environ["TORCH_EXTENSIONS_DIR"]
    if not os.path.isdir(root):
        return
    for folder in os.listdir(root):
        lock = os.path.join(root, folder, "lock")
        try:
            age = datetime.datetime.now().timestamp() - os.path.getmtime(lock)
        except OSError:
            continue
        if age > STALE_LOCK_SECONDS:
            print(f"warning: removing the stale build lock {lock} ({age / 60:.0f} min old; a killed process left it)",
                  file=sys.stderr)
            with contextlib.suppress(OSError):
                os.remove(lock)


SHM_DIR = "/dev/shm"


def _unlink_shm_buffer() -> None:
    """DeepSpeed's CPU all-reduce (``deepspeed_shm_comm``) gives every rank of a one-host group a 67 MB POSIX
    shared-memory buffer, ``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``, and never
    unlinks it: each run leaves world-size buffers in /dev/shm (RAM) until reboot (measured: 19 GB after a day of
    tests, and then an out-of-memory kill). Every rank maps every peer's buffer before its init returns, so after a
    barrier the names are no longer needed: unlink this rank's. The mappings stay valid until the process exits,
    and the kernel frees the memory then, also after a kill -9."""
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{tdist.get_rank()}")
    if tdist.get_world_size() > 1:
        tdist.barrier()
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(SHM_DIR, name))


def info() -> DistInfo:
    return _INFO if _INFO is not None else init_distributed()


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if tdist.is_initialized():
        tdist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place SUM across ranks (a no-op on one process). Integer counts and float64 sums only cross here."""
    if tdist.is_initialized() and world_size() > 1:
        dev = info().device
        moved = tensor.to(dev)
        tdist.all_reduce(moved, op=tdist.ReduceOp.SUM)
        tensor.copy_(moved.to(tensor.device))
    return tensor


def all_gather_objects(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not (tdist.is_initialized() and world_size() > 1):
        return [obj]
    out: list = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (tdist.is_initialized() and world_size() > 1):
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def shard_indices(n: int, rank_: Optional[int] = None, world: Optional[int] = None) -> list[int]:
    """Round-robin split of ``range(n)`` (rank r takes r, r+W, ...)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(range(r, n, w))


def shutdown() -> None:
    """At exit: collect what is left (DeepSpeed engines sit in reference cycles) while the group is still alive,
    then destroy the group. An engine finalised after the group is gone can abort the process at exit."""
    if tdist.is_initialized():
        gc.collect()
        tdist.destroy_process_group()


# ------------------------------------------------------------------------------------------ DeepSpeed config
def ds_config_for(zero_stage: int, batch_size: int, micro_batch_size: int, path: str = "",
                  dtype: str = "float32", grad_clip: float = 1.0) -> dict:
    """Load a ds_configs/ JSON and fill the batch sizes from the world size (no "auto" anywhere)."""
    world = world_size()
    if not path:
        name = f"zero{zero_stage}.json"
        if not torch.cuda.is_available():
            name = f"cpu_zero{zero_stage}.json"
        path = os.path.join(DS_CONFIG_DIR, name)
    if not os.path.isfile(path):
        raise UserError(f"DeepSpeed config not found: {path}")
    with open(path) as fh:
        cfg = json.load(fh)
    if batch_size % (micro_batch_size * world) != 0:
        raise UserError(
            f"batch_size {batch_size} must be a multiple of micro_batch_size {micro_batch_size} x world size {world}"
        )
    cfg["train_batch_size"] = batch_size
    cfg["train_micro_batch_size_per_gpu"] = micro_batch_size
    cfg["gradient_accumulation_steps"] = batch_size // (micro_batch_size * world)
    cfg["gradient_clipping"] = grad_clip
    cfg.pop("bf16", None)
    cfg.pop("fp16", None)
    if dtype == "bfloat16":
        cfg["bf16"] = {"enabled": True}
    elif dtype == "float16":
        cfg["fp16"] = {"enabled": True}
    cfg.setdefault("zero_optimization", {})["stage"] = zero_stage
    _reject_auto(cfg, path)
    return cfg


def _reject_auto(node: Any, path: str, key: str = "") -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _reject_auto(v, path, f"{key}.{k}" if key else k)
    elif node == "auto":
        raise UserError(f"{path}: '{key}' is \"auto\"; ds_configs hold concrete values only")


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


# ---------------------------------------------------------------------------------------------- the strategy
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

    def optimizer(self, params: list, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """``adamw``: DeepSpeed's CPU Adam under optimizer offload, its fused Adam on CUDA, torch's AdamW
        otherwise; ``adamw_torch``: torch's AdamW; ``adamw_8bit``: bitsandbytes (a UserError where it cannot run)."""
        kwargs = dict(lr=lr, weight_decay=weight_decay)
        device = info().device
        if name == "adamw_8bit":
            return _adamw_8bit(params, kwargs, device)
        if name == "adamw" and self.offloads_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
        if name == "adamw" and device.type == "cuda":
            from deepspeed.ops.adam import FusedAdam

            return FusedAdam(params, adam_w_mode=True, **kwargs)
        return torch.optim.AdamW(params, **kwargs)

    def prepare_trainable(self, model: torch.nn.Module, params: list, optimizer: torch.optim.Optimizer,
                          lr_lambda) -> "TrainEngine":
        """Wrap ``model`` (trainable ``params`` already marked) with ``optimizer`` and a LambdaLR schedule."""
        import deepspeed

        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.config, model_parameters=params,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda))
        return TrainEngine(engine, params)


def _adamw_8bit(params: list, kwargs: dict, device: torch.device) -> torch.optim.Optimizer:
    """bitsandbytes AdamW8bit, after one probe step on this device so that a broken install fails here, clearly."""
    try:
        import bitsandbytes as bnb

        probe = torch.nn.Parameter(torch.zeros(4096, device=device))
        probe.grad = torch.ones_like(probe)
        bnb.optim.AdamW8bit([probe], lr=1e-3).step()
    except Exception as err:  # an import error, a missing native library, an unsupported device: all alike
        raise UserError(f"optimizer adamw_8bit needs bitsandbytes, which cannot run on {device.type} here "
                        f"({type(err).__name__}: {err}); use --stageN.optimizer adamw") from None
    return bnb.optim.AdamW8bit(params, **kwargs)


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

    def load(self, ckpt_dir: str, tag: str) -> Optional[dict]:
        """Collective. The client state, or None when DeepSpeed found nothing to load."""
        path, client = self._engine.load_checkpoint(ckpt_dir, tag=tag, load_module_strict=False)
        return client if path is not None else None

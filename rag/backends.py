"""The generation seam of evaluation: one interface, three backends (``eval.backend``).

- ``hf``: the model loaded whole on every rank; batched greedy decoding (``rag.generate``); each rank decodes its
  share of the batches on its own, the shares balanced by estimated cost (``rag.generate.balanced_shares``).
- ``zero3``: the model partitioned over the ranks with DeepSpeed ZeRO-3 (``parallel.Strategy.for_inference``,
  ``eval.ds_config``), so a model larger than one device's memory can be evaluated. Ranks decode their own batches
  in lockstep: every rank runs the same number of rounds (a rank out of batches decodes a one-token stand-in) and
  the same number of forward steps per round (a finished batch keeps stepping until every rank's is finished),
  because each forward gathers the layers' weights with collectives. Same tokens as ``hf``, token for token.
- ``vllm``: vLLM's offline engine (``vllm.LLM``) on the plain Hugging Face checkpoint, one process,
  ``eval.tensor_parallel_size`` devices. Greedy (temperature 0), the same stop ids, token ids in (never text), so
  the prompts are identical. Needs the optional environment of ``scripts/setup_vllm_env.sh``. vLLM starts its
  engine with ``spawn``: the entry script must create it under ``if __name__ == "__main__"`` (rag/evaluate.py does).
  Nothing before it may create a process group or a CUDA context: vLLM builds its own group (tensor parallelism)
  and a group already initialised here would be taken as its world, and a CUDA context of this process holds
  device memory that vLLM's memory profiling then counts as used. So an entry calls ``init_process(backend, ...)``
  instead of ``parallel.init_distributed``: it joins the group for ``hf`` / ``zero3`` and, for ``vllm``, only refuses
  a multi-rank launch (read from the launcher's environment) and touches neither.

Every backend sees the same length-sorted batches (``rag.generate.length_batches``) and reports each finished
batch to ``on_batch(batch_index, {prompt index: new token ids})`` as soon as it has it, which is what makes an
evaluation resumable (``rag/resume.py``). Prompt building, stop ids, answer extraction and scoring stay in
``rag/evaluate.py``, shared by all three.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Sequence

import torch

from neurorit import memory, parallel, runtime
from neurorit.errors import UserError
from rag.generate import Decoding, balanced_shares, greedy_generate

log = logging.getLogger("rag.backends")

BACKENDS = ("hf", "zero3", "vllm")
OnBatch = Callable[[int, dict], None]


def launched_ranks() -> int:
    """How many ranks the launcher started (``WORLD_SIZE``, or ``SLURM_STEP_NUM_TASKS`` under ``srun``), read from
    the environment without joining a process group."""
    for key in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def init_process(backend: str, runtime_cfg, local_rank: Optional[int] = None) -> None:
    """The runtime start of an entry that generates with ``backend`` (``neurorit.runtime.start``): with the
    process group for ``hf`` / ``zero3``; for ``vllm`` no process group and no CUDA context (see the module doc),
    only the one-process check."""
    runtime.start(runtime_cfg, local_rank, join_group=backend != "vllm")
    if backend == "vllm":
        refuse_launchers()


def refuse_launchers() -> None:
    """vLLM runs in one process: a one-line error under a launcher of several ranks."""
    ranks = launched_ranks()
    if ranks > 1:
        raise UserError("eval.backend vllm runs in one process (vLLM splits the model itself over "
                        "eval.tensor_parallel_size devices): start it with python, not with a launcher of "
                        f"{ranks} ranks")


class HFBackend:
    """Batched greedy decoding with a Hugging Face model held whole by this rank."""

    name = "hf"
    splits_over_ranks = True  # each rank decodes its share of the batches
    lockstep = False  # shares balanced by cost (a rank never waits for another's forward)

    def __init__(self, model):
        self.model = model
        self.config = getattr(model, "config", None)
        self.generation_config = getattr(model, "generation_config", None)

    @classmethod
    def load(cls, path: str, cfg) -> "HFBackend":
        from model_patches import load_causal_lm

        refuse_oversized(path, cfg.model.dtype)
        return cls(load_causal_lm(path, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation))

    def generate(self, prompts: Sequence[Sequence[int]], batches: list[list[int]], todo: list[int],
                 decoding: Decoding, on_batch: OnBatch) -> None:
        """Decode the batches ``todo`` (indices into ``batches``) and report each to ``on_batch``."""
        self.model.eval()
        for b in todo:
            idx = batches[b]
            toks = greedy_generate(self.model, [prompts[i] for i in idx], *decoding.greedy())
            on_batch(b, dict(zip(idx, toks)))


def refuse_oversized(path: str, dtype: str) -> None:
    """``eval.backend hf`` holds the whole model on every GPU: a one-line refusal, before anything loads, where
    the weights alone exceed this GPU's free memory (a 70B model in bf16 on an 80 GB GPU), instead of an
    out-of-memory error part-way through loading."""
    from model_patches.loading import resolve_model

    device = parallel.info().device
    if device.type != "cuda":
        return
    try:
        name, config = memory.resolve_config(resolve_model(path).path)
        params = memory.shape_from_config(name, config).total_params()
    except memory.PlanError:  # a config the planner cannot size: let loading decide
        return
    need = params * torch.empty((), dtype=getattr(torch, dtype)).element_size()
    have = memory.rank_memory_bytes(device)
    if need > have:
        raise UserError(f"eval.backend hf puts the whole model on every GPU: {path} needs {need / 2**30:.1f} GiB "
                        f"of weights in {dtype} and this GPU has {have / 2**30:.1f} GiB free; use --eval.backend "
                        f"zero3 (the model partitioned over the ranks) or vllm (--eval.tensor_parallel_size N)")


def _every_rank_done(local_done: bool) -> bool:
    """Collective: True when every rank's batch is finished (a SUM of 'not done' flags)."""
    flag = torch.tensor([0 if local_done else 1], dtype=torch.long)
    return int(parallel.all_reduce_sum(flag).item()) == 0


class Zero3Backend(HFBackend):
    """The model partitioned with ZeRO-3; generation in lockstep over the ranks."""

    name = "zero3"
    # round-robin shares (rank r takes r, r+W, ...): a round costs its slowest rank's batch, and neighbours in the
    # length order cost about the same
    lockstep = True

    @classmethod
    def load(cls, path: str, cfg) -> "Zero3Backend":
        from model_patches import load_causal_lm

        strategy = parallel.Strategy.for_inference(3, cfg.model.dtype, cfg.eval.ds_config)
        model = load_causal_lm(path, cfg.model.dtype, cfg.model.attn_implementation, strategy.config)
        model.requires_grad_(False)
        model.eval()
        return cls(strategy.prepare_frozen(model))

    def generate(self, prompts, batches, todo, decoding: Decoding, on_batch) -> None:
        """Collective. Rounds = the most batches any rank has left; a rank without a batch in a round decodes a
        one-token stand-in (results dropped) so that its forward passes match the others'."""
        self.model.eval()
        rounds = max(parallel.all_gather_objects(len(todo)))
        stand_in = [[int(decoding.pad_id)]]
        for r in range(rounds):
            if r < len(todo):
                idx = batches[todo[r]]
                toks = greedy_generate(self.model, [prompts[i] for i in idx], *decoding.greedy(),
                                       all_done=_every_rank_done)
                on_batch(todo[r], dict(zip(idx, toks)))
            else:
                greedy_generate(self.model, stand_in, *decoding.greedy(), all_done=lambda _done: _every_rank_done(True))


class VLLMBackend:
    """vLLM's offline engine on a plain checkpoint, one process (vLLM does its own tensor parallelism)."""

    name = "vllm"
    splits_over_ranks = False
    group = 16  # batches handed to the engine per call (each reported when the call returns)

    def __init__(self, llm, config=None, generation_config=None):
        self.llm = llm
        self.config = config
        self.generation_config = generation_config

    @classmethod
    def load(cls, path: str, cfg, max_model_len: Optional[int] = None) -> "VLLMBackend":
        from model_patches.loading import refuse_rounding

        refuse_launchers()
        refuse_rounding(path, cfg.model.dtype, "eval.backend vllm")  # serve what was trained, or say why not
        try:
            import vllm
        except ImportError as err:
            raise UserError(f"eval.backend vllm needs the vllm package ({err}); create its environment with "
                            "`bash scripts/setup_vllm_env.sh` and run with .venv-vllm/bin/python") from None
        from transformers import AutoConfig, GenerationConfig

        config = AutoConfig.from_pretrained(path)
        limit = getattr(config, "max_position_embeddings", None)
        if max_model_len is not None and limit:
            max_model_len = min(max_model_len, int(limit))  # longer prompts are refused by check_positions
        try:
            gen_config = GenerationConfig.from_pretrained(path)
        except OSError:
            gen_config = None
        kwargs = dict(model=path, tokenizer=path, skip_tokenizer_init=True, dtype=cfg.model.dtype,
                      tensor_parallel_size=cfg.eval.tensor_parallel_size, seed=cfg.runtime.seed,
                      enforce_eager=not torch.cuda.is_available(), max_model_len=max_model_len)
        log.info("vLLM %s engine on %s (tensor_parallel_size=%d)", vllm.__version__, path,
                 cfg.eval.tensor_parallel_size)
        return cls(vllm.LLM(**{k: v for k, v in kwargs.items() if v is not None}), config, gen_config)

    def generate(self, prompts, batches, todo, decoding: Decoding, on_batch) -> None:
        """Greedy (temperature 0) continuations, stopped at ``decoding.eos_ids`` and cut before the first of them,
        as ``rag.generate.greedy_generate`` cuts them."""
        from vllm import SamplingParams

        if decoding.max_new_tokens <= 0:
            for b in todo:
                on_batch(b, {i: [] for i in batches[b]})
            return
        params = SamplingParams(temperature=0.0, max_tokens=decoding.max_new_tokens,
                                stop_token_ids=list(decoding.eos_ids), detokenize=False, skip_special_tokens=False)
        eos = set(int(e) for e in decoding.eos_ids)
        for start in range(0, len(todo), self.group):
            group = todo[start:start + self.group]
            idx = [i for b in group for i in batches[b]]
            outs = self.llm.generate([{"prompt_token_ids": list(prompts[i])} for i in idx], params, use_tqdm=False)
            by_index = {}
            for i, out in zip(idx, outs):
                toks = [int(t) for t in out.outputs[0].token_ids]
                cut = next((k for k, t in enumerate(toks) if t in eos), len(toks))
                by_index[i] = toks[:cut]
            for b in group:
                on_batch(b, {i: by_index[i] for i in batches[b]})


def load_backend(name: str, path: str, cfg, max_model_len: Optional[int] = None):
    """The backend ``name`` of ``BACKENDS`` with the checkpoint at ``path`` loaded."""
    if name == "hf":
        return HFBackend.load(path, cfg)
    if name == "zero3":
        return Zero3Backend.load(path, cfg)
    if name == "vllm":
        return VLLMBackend.load(path, cfg, max_model_len)
    raise UserError(f"config key 'eval.backend': {name!r} is not allowed; use one of {', '.join(BACKENDS)}")


def as_backend(model_or_backend):
    """A backend as it is; a bare Hugging Face model as the ``hf`` backend."""
    if isinstance(model_or_backend, (HFBackend, VLLMBackend)):
        return model_or_backend
    return HFBackend(model_or_backend)


def generate_resumably(backend, prompts: list, batches: list, decoding: Decoding, store, resume: bool,
                       bar: Optional[tuple[str, str]] = None) -> list:
    """Generate every batch this rank owns that ``store`` (``rag.resume``) does not hold yet, keeping each as it
    finishes, with a progress bar on rank 0 (``bar`` = (what, unit); None: no bar) and the throughput in the log;
    returns all outputs, in prompt order, on every rank."""
    import sys
    import time

    done = store.open(batches, resume)
    if not backend.splits_over_ranks:
        mine = list(range(len(batches)))
    elif backend.lockstep:
        mine = parallel.shard_indices(len(batches))
    else:  # the batches still to decode, balanced over the ranks
        left = [b for b in range(len(batches)) if b not in done]
        shares = balanced_shares([batches[b] for b in left], prompts, decoding.max_new_tokens, parallel.world_size())
        mine = [left[b] for b in shares[parallel.rank()]]
    todo = [b for b in mine if b not in done]
    if bar is not None and parallel.is_main():
        from tqdm import tqdm

        what, unit = bar
        bar = tqdm(total=sum(len(batches[b]) for b in mine), initial=sum(len(batches[b]) for b in mine if b in done),
                   desc=f"{what} ({backend.name}, rank 0)", unit=unit, file=sys.stderr, dynamic_ncols=True)
    else:
        bar = None
    timing = {"start": time.perf_counter(), "first": None, "prompts": 0}

    def on_batch(b: int, outputs: dict) -> None:
        store.put(b, outputs)
        if timing["first"] is None:
            timing["first"] = time.perf_counter() - timing["start"]
        timing["prompts"] += len(outputs)
        if bar is not None:
            bar.update(len(outputs))

    try:
        backend.generate(prompts, batches, todo, decoding, on_batch)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - timing["start"]
    if timing["prompts"]:
        log.info("generation (%s, rank %d): %d prompts in %.2f s, %.1f prompts/s, first answer after %.3f s",
                 backend.name, parallel.rank(), timing["prompts"], seconds, timing["prompts"] / max(seconds, 1e-9),
                 timing["first"])
    outputs = store.collect(batches)
    if len(outputs) != len(prompts):
        raise RuntimeError(f"gathered {len(outputs)} outputs for {len(prompts)} prompts")
    return outputs

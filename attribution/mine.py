"""Mine a neuron map: integrated gradients over mining pairs, split across ranks, reduced, selected, saved.

    python attribution/mine.py --config configs/embedded.yaml [--mining.steps 20 ...]
    deepspeed --num_gpus 2 attribution/mine.py --config configs/embedded.yaml      (also torchrun / srun)

The attribution target is ``mining.target`` (``attribution/targets.py``), or with ``auto`` the one the separation
probe of ``attribution/diagnose.py`` ranks first on these pairs (its diagnosis is written first). A mining pair
(``attribution/examples.py``) is a question with its answer-bearing passage (relevant) and another
question's passage that neither holds the answer nor names the entity (irrelevant, off-topic, as in the release).
Examples are dealt round-robin over ranks. With ``mining.zero_stage: 3`` (or ``auto``, the default, when a whole
copy of the model would not fit a rank) and several ranks the weights are sharded with ZeRO-3 and ranks run in
lockstep (a rank without an example, or with a skipped one, runs stand-in
passes: ZeRO-3 hangs if ranks run different passes); ``zero_stage: 0`` is plain data parallel. Each rank writes
its statistics to ``<out>/stats/`` every ``mining.shard_every`` examples (atomic); rerunning the same command
after a crash continues where it stopped. ``<out>`` is ``mining.output_dir`` (default ``<runtime.output_dir>/
mining``) and receives, from rank 0: ``neuron_stats.safetensors`` (reduced statistics), ``neuron_map.safetensors``
+ ``neuron_map.json``, ``neuron_map.png``, ``summary.txt`` (with the diagnostics: fill, separation, half-split
stability; also ``diagnostics.json``), ``config.yaml`` and TensorBoard events in ``tensorboard/``.

Fault injection for the resume test: ``NEURORIT_MINE_KILL_AFTER=<rank>:<n>`` makes that rank ``SIGKILL`` itself
right after a shard holding at least ``n`` examples is written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import time

import torch

from attribution.examples import ExampleBuilder, MiningExample, examples_digest
from attribution.ig import integrated_gradients
from attribution.ig_common import IGOptions
from attribution.selection import example_topk, neuron_map_from_stats
from attribution.stats import (NON_FINITE, OK, ExampleResult, NeuronStats, RankStats, read_choices, record_choices,
                               reduce_stats, scan_shards, shard_path)
from neurorit import memory, parallel, runtime
from neurorit.config import ATTRIBUTION_TARGETS, ExperimentConfig, parse_args, save_config
from neurorit.errors import UserError, main_guard
from neurorit.files import atomic_write_text
from neurorit.run_layout import MiningFiles, RunLayout
from model_patches import load_tokenizer, model_fingerprint
from neurorit.neuron_map import MAP_JSON, MAP_TENSORS, NeuronMap
from neurorit.prompts import prompt_builder


FIT_SHARE = 0.8  # of a rank's memory a whole-model copy may take before mining.zero_stage auto partitions
CPU_CHUNK_ROWS = 64  # mining.chunk_rows auto on CPU (and the rows auto placement assumes)


def _mining_shape(cfg: ExperimentConfig) -> tuple[memory.Shape, int]:
    """The model's shape (from its config alone) and the bytes of one value in the run's dtype."""
    from model_patches.loading import resolve_model

    name, config = memory.resolve_config(resolve_model(cfg.model.path).path)
    dtype_bytes = torch.empty((), dtype=getattr(torch, cfg.model.dtype)).element_size()
    return memory.shape_from_config(name, config), dtype_bytes


def partitions_model(cfg: ExperimentConfig) -> bool:
    """Whether mining shards the model over the ranks with ZeRO-3: ``mining.zero_stage`` 3, or ``auto`` when a
    whole copy per rank (weights, one chunk of IG rows, the prompt's KV cache) would not fit in ``FIT_SHARE`` of a
    rank's memory. A model that fits never needs ZeRO-3's re-gathering of every layer for every pass of rows (5.5x
    slower on SmolLM2 on 2 CPU ranks, issue 19)."""
    m = cfg.mining
    if parallel.world_size() == 1 or m.zero_stage != "auto":
        return parallel.world_size() > 1 and m.zero_stage == 3
    shape, dtype_bytes = _mining_shape(cfg)
    rows = CPU_CHUNK_ROWS if m.chunk_rows == "auto" else m.chunk_rows
    need = memory.replicated_mining_bytes(shape, dtype_bytes, cfg.data.max_length, rows)
    have = min(parallel.all_gather_objects(memory.rank_memory_bytes(parallel.info().device)))  # one choice for all
    if parallel.is_main():
        choice = "ZeRO-3 over the ranks" if need > FIT_SHARE * have else "a whole copy per rank"
        print(f"mining.zero_stage auto: {choice} (a copy needs {need / 2**30:.2f} GiB of {have / 2**30:.1f} GiB "
              f"per rank)", file=sys.stderr, flush=True)
    return need > FIT_SHARE * have


def agreed_choices(cfg: ExperimentConfig, stats_dir: str, tail: int = 1) -> tuple[bool, int]:
    """ZeRO-3 or not, and the rows of a chunk: the same on every rank (the smallest rank's memory decides), and
    for a folder that already holds this run's shards, what the run that wrote them recorded (``record_choices``):
    a requeued job whose GPUs have other free memory then mines as it did, and its fingerprint (which holds
    ``chunk_rows``) still accepts its shards. Only ``auto`` values are taken from the record."""
    m = cfg.mining
    recorded = parallel.broadcast_object(read_choices(stats_dir) if parallel.is_main() else None)
    if recorded and (m.zero_stage == "auto" or m.chunk_rows == "auto") and parallel.is_main():
        print(f"mining: reusing the auto choices recorded with the shards in {stats_dir} ({recorded})",
              file=sys.stderr, flush=True)
    if recorded and m.zero_stage == "auto" and parallel.world_size() > 1:
        zero3 = bool(recorded["zero3"])
    else:
        zero3 = partitions_model(cfg)
    rows = int(recorded["chunk_rows"]) if recorded and m.chunk_rows == "auto" else resolve_chunk_rows(cfg, zero3, tail)
    return zero3, rows


def resolve_chunk_rows(cfg: ExperimentConfig, zero3: bool, tail: int = 1) -> int:
    """``mining.chunk_rows``, with ``auto`` resolved: ``CPU_CHUNK_ROWS`` on CPU; on an accelerator, where every
    sweep is a round of kernel launches (and under ZeRO-3 a gather of every layer), as many rows of ``tail``
    tokens (the longest a target runs per row, ``examples.longest_tail``) as fit in ``FIT_SHARE`` of the rank's
    memory beside the model (all of it, or under ZeRO-3 its share plus one gathered layer) and the prompt's KV
    cache, capped at every (layer, step) row of an example: one sweep per side. The smallest rank's value, so that
    every rank mines with the same chunks (results move with them by rounding)."""
    m = cfg.mining
    if m.chunk_rows != "auto":
        return m.chunk_rows
    device = parallel.info().device
    if device.type == "cpu":
        return CPU_CHUNK_ROWS
    shape, dtype_bytes = _mining_shape(cfg)
    tokens = cfg.data.max_length
    no_rows = memory.replicated_mining_bytes(shape, dtype_bytes, tokens, 0)
    per_row = tail * (memory.replicated_mining_bytes(shape, dtype_bytes, tokens, 1) - no_rows)
    fixed = no_rows
    if zero3:
        fixed -= shape.total_params() * dtype_bytes * (1 - 1 / parallel.world_size())
        fixed += shape.layer_params() * dtype_bytes
    fits = int((FIT_SHARE * memory.rank_memory_bytes(device) - fixed) // max(1, per_row))
    rows = min(max(1, fits), shape.layers * m.steps)
    return min(parallel.all_gather_objects(rows))


def load_model(cfg: ExperimentConfig, zero3: bool):
    """The frozen, patched model (ZeRO-3 partitioned and hooked by a DeepSpeed engine when ``zero3``)."""
    from model_patches.loading import load_causal_lm
    from model_patches.patcher import patch_model

    strategy = parallel.Strategy.for_inference(3, cfg.model.dtype, cfg.mining.ds_config) if zero3 else None
    model = load_causal_lm(cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation,
                           strategy.config if strategy else None)
    model.requires_grad_(False)
    model.eval()
    patcher = patch_model(model)
    if strategy is not None:
        strategy.prepare_frozen(model)
    return model, patcher


@dataclasses.dataclass
class Miner:
    """What attributing one example needs: the frozen patched model, how examples are built, the IG options,
    and whether ranks run in lockstep (ZeRO-3: every rank must run the same passes)."""

    cfg: ExperimentConfig
    model: torch.nn.Module
    patcher: object
    builder: ExampleBuilder
    lockstep: bool

    @property
    def options(self) -> IGOptions:
        m = self.cfg.mining
        if m.chunk_rows == "auto":
            raise ValueError("mining.chunk_rows auto is resolved before a Miner is built (resolve_chunk_rows; main "
                             "does it)")
        return IGOptions(steps=m.steps, ig_rule=m.ig_rule, chunk_rows=m.chunk_rows)


def attribute(miner: Miner, ex: MiningExample, pads) -> ExampleResult:
    """Both sides of one example (or stand-in passes for a skipped one under lockstep)."""
    m = miner.cfg.mining
    top_k = m.top_k
    empty = ExampleResult(ex.index, ex.status, ex.truncated, torch.full((2, top_k), -1, dtype=torch.long),
                          torch.zeros(2, top_k, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    if ex.status != OK and not miner.lockstep:
        return empty
    inputs = ex.inputs if ex.status == OK else pads
    results = [integrated_gradients(miner.model, miner.patcher, inp, miner.options, m.algorithm) for inp in inputs]
    if ex.status != OK:
        return empty
    attr = torch.stack([r.attributions for r in results])
    f_input = torch.tensor([r.f_input for r in results], dtype=torch.float64)
    if not (torch.isfinite(attr).all() and torch.isfinite(f_input).all()):
        empty.status = NON_FINITE
        return empty
    tops = [example_topk(a, m.threshold_ratio, top_k) for a in attr]
    return ExampleResult(ex.index, OK, ex.truncated, torch.stack([t[0] for t in tops]),
                         torch.stack([t[1] for t in tops]), f_input, attr)


def _kill_point() -> int:
    spec = os.environ.get("NEURORIT_MINE_KILL_AFTER", "")
    if not spec:
        return 0
    rank, n = (int(x) for x in spec.split(":"))
    return n if rank == parallel.rank() else 0


def mine_examples(miner: Miner, pairs, todo: list[int], shard: str, run_id: str) -> RankStats:
    """This rank's share of ``todo``; its ``shard`` is rewritten every ``shard_every`` examples and at the end."""
    from tqdm import tqdm

    m, lockstep = miner.cfg.mining, miner.lockstep
    rank, world = parallel.rank(), parallel.world_size()
    mine = todo[rank::world]
    rounds = math.ceil(len(todo) / world) if lockstep else len(mine)
    fingerprint = model_fingerprint(miner.model)
    part = RankStats(fingerprint["num_layers"], fingerprint["intermediate_size"], m.top_k)
    pads = miner.builder.pad_inputs()
    kill_after = _kill_point()
    bar = tqdm(total=len(todo), unit="ex", desc="mining", disable=not parallel.is_main(), dynamic_ncols=True)
    for r in range(rounds):
        ex = miner.builder.build(mine[r], *pairs[mine[r]]) if r < len(mine) else MiningExample(-1, "", -1)
        result = attribute(miner, ex, pads)
        if ex.index >= 0:
            part.add(result)
            if len(part) % m.shard_every == 0:
                part.save(shard, run_id)
                if kill_after and len(part) >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
        # rank 0 holds the largest share (todo[0::world]): its round r stands for every rank's round r
        bar.update(min(world, len(todo) - r * world))
    bar.close()
    if len(part):
        part.save(shard, run_id)
    return part


def run_fingerprint(cfg: ExperimentConfig, fingerprint: dict, pairs, max_length: int) -> str:
    """What decides the statistics; shards of another run are refused."""
    m = cfg.mining
    body = {"model": os.path.abspath(cfg.model.path), "dtype": cfg.model.dtype, "fingerprint": fingerprint,
            "examples": examples_digest(pairs), "style": cfg.data.prompt_style, "max_length": max_length,
            "mining": [m.algorithm, m.steps, m.ig_rule, m.baseline, m.target, m.threshold_ratio, m.top_k,
                       m.chunk_rows]}  # rows of a chunk share reductions: results move (within rounding) with it
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]


def write_outputs(cfg: ExperimentConfig, out: str, stats: NeuronStats, fingerprint: dict) -> NeuronMap:
    """Rank 0: reduced statistics, neuron map, picture, TensorBoard image, summary (with the mining diagnostics
    of ``attribution/diagnostics.py``, also in ``diagnostics.json``), config."""
    from attribution.diagnostics import diagnostics_text, mining_diagnostics
    from attribution.plot import log_tensorboard, save_png, summary  # matplotlib: rank 0 only

    m = cfg.mining
    files = MiningFiles(out)
    stats.save(files.statistics)
    bad = stats.status_counts()
    provenance = {"mining": dataclasses.asdict(m), "model_path": cfg.model.path, "prompt_style": cfg.data.prompt_style,
                "examples": len(stats.example_ids), "example_status": bad}
    sizes = {"relevant_only": m.n_relevant, "irrelevant_only": m.n_irrelevant, "shared": m.n_shared}
    nmap = neuron_map_from_stats(stats, sizes, m.n_target_layers, fingerprint, provenance)
    nmap.save(out)
    save_png(nmap, files.picture)
    log_tensorboard(nmap, files.tensorboard)
    diag = mining_diagnostics(stats, nmap, sizes)
    atomic_write_text(files.diagnostics, json.dumps(diag, indent=1) + "\n")
    text = summary(nmap, stats, {k: v for k, v in bad.items() if k != "ok"}) + "\n" + diagnostics_text(diag)
    atomic_write_text(files.summary, text + "\n")
    save_config(cfg, files.config)
    print(text)
    print(f"wrote {out}: {MAP_TENSORS}, {MAP_JSON}, " + ", ".join(
        os.path.basename(p) for p in (files.picture, files.summary, files.diagnostics)))
    return nmap


def resolve_auto_target(cfg: ExperimentConfig, model, tokenizer, prompts, pairs) -> tuple[ExperimentConfig, tuple]:
    """``mining.target auto``: the config with the target ``attribution/diagnose.py``'s rule picks on these pairs,
    and the diagnosis (rows, choice, key). A ``diagnosis.json`` of the same probe (``neurorit-diagnose`` run
    before) is reused; else every rank runs the same forward passes and rank 0 writes the diagnosis into the
    mining folder."""
    from attribution import diagnose

    files, key = RunLayout.of(cfg).mining, diagnose.probe_key(cfg, pairs)
    rows = diagnose.reuse(files, key, tokenizer, prompts, cfg.mining.algorithm)
    how = f"reusing the probe of {files.diagnosis_json}" if rows else "probed"
    rows = rows or diagnose.diagnose(model, tokenizer, prompts, pairs, cfg)
    best = diagnose.choose(rows)
    if parallel.is_main():
        diagnose.write(rows, best, cfg, files, key)
        print(f"mining.target auto: {best.target} ({how})", file=sys.stderr, flush=True)
    return dataclasses.replace(cfg, mining=dataclasses.replace(cfg.mining, target=best.target)), (rows, best, key)


@main_guard
def main(argv=None) -> None:
    from attribution.examples import longest_tail, offtopic_mining_pairs
    from neurorit.records import mining_records

    args, cfg = parse_args("Mine a neuron map with integrated gradients (docs/DESIGN.md §2).", argv)
    runtime.start(cfg.runtime, args.local_rank)
    if parallel.exact_reductions(parallel.info().device, cfg.model.dtype) and parallel.is_main():
        print(f"mining: {cfg.model.dtype} matmuls on CUDA reduce in fp32 (cuBLAS reduced-precision reductions off)",
              file=sys.stderr, flush=True)
    m = cfg.mining
    files = RunLayout.of(cfg).mining
    pairs = offtopic_mining_pairs(mining_records(cfg), cfg.runtime.seed, limit=m.num_examples)
    if not pairs:
        raise UserError(f"no mining pairs in {m.file or cfg.data.train_file} (each record needs a passage holding its "
                        f"answer, and another question a passage without it)")
    tokenizer = load_tokenizer(cfg.model.path)
    prompts = prompt_builder(cfg.data, tokenizer)
    # tokens per fast-IG row: the target's, or with auto (not chosen yet) the longest any target may run
    tail = longest_tail(tokenizer, prompts, ATTRIBUTION_TARGETS if m.target == "auto" else (m.target,), pairs)
    zero3, rows = agreed_choices(cfg, files.stats, tail)
    if m.chunk_rows == "auto" and parallel.is_main():
        print(f"mining.chunk_rows auto: {rows} rows per sweep (up to {tail} tokens per row)", file=sys.stderr,
              flush=True)
    cfg = dataclasses.replace(cfg, mining=dataclasses.replace(m, chunk_rows=rows))
    m = cfg.mining
    model, patcher = load_model(cfg, zero3)
    diagnosis = None
    if m.target == "auto":
        cfg, diagnosis = resolve_auto_target(cfg, model, tokenizer, prompts, pairs)
        m = cfg.mining
    max_length = min(cfg.data.max_length, getattr(model.config, "max_position_embeddings", cfg.data.max_length))
    builder = ExampleBuilder(tokenizer, prompts, m.target, m.baseline, max_length, m.algorithm)
    fingerprint = model_fingerprint(model)
    layers, width = fingerprint["num_layers"], fingerprint["intermediate_size"]
    run_id = run_fingerprint(cfg, fingerprint, pairs, max_length)
    state = scan_shards(files.stats, run_id, layers, width, m.top_k)
    todo = [i for i in range(len(pairs)) if i not in state.done]
    if parallel.is_main():
        record_choices(files.stats, zero3, m.chunk_rows)
    if parallel.is_main() and state.done:
        print(f"resuming: {len(state.done)} examples already in {files.stats}, {len(todo)} to go", file=sys.stderr)
    shard = shard_path(files.stats, state.generation, parallel.rank())
    start = time.perf_counter()
    mine = mine_examples(Miner(cfg, model, patcher, builder, zero3), pairs, todo, shard, run_id)
    seconds = time.perf_counter() - start
    rank, world = parallel.rank(), parallel.world_size()
    earlier = [RankStats.load(p, layers, width, m.top_k) for j, p in enumerate(state.paths) if j % world == rank]
    stats = reduce_stats([mine] + earlier, [p[0].id for p in pairs], layers, width, m.top_k)
    if parallel.is_main():
        write_outputs(cfg, files.root, stats, fingerprint)
        write_throughput(files.root, len(todo), seconds, world)
        if diagnosis is not None:  # again, now with the map's fill and half-split stability
            from attribution import diagnose

            separations, best, key = diagnosis
            diagnose.write(separations, best, cfg, files, key)
    parallel.barrier()


def write_throughput(out: str, questions: int, seconds: float, world: int) -> None:
    """Questions mined per minute by this run (all ranks), printed and kept in ``throughput.json`` (apart from
    the summary, which is byte-stable across runs)."""
    rate = 60.0 * questions / seconds if seconds > 0 and questions else 0.0
    line = (f"throughput: {questions} questions in {seconds / 60:.1f} min on {world} rank(s) = "
            f"{rate:.2f} questions/min (two prompts each)")
    print(line)
    atomic_write_text(MiningFiles(out).throughput, json.dumps(
        {"questions": questions, "seconds": round(seconds, 3), "ranks": world, "questions_per_minute": rate}) + "\n")


def cli() -> None:
    """``python attribution/mine.py`` and the console script ``neurorit-mine``: ``main``, then the rank's clean end."""
    main()
    parallel.end_process()


if __name__ == "__main__":
    cli()

"""The one training loop behind ``train/stage1.py`` and ``train/stage2.py`` (and every baseline).

Order (docs/DESIGN.md §5): distributed init -> the method's rule for this stage (``neurorit/methods.py``) ->
neuron map -> model load (partitioned under ZeRO-3, HfDeepSpeedConfig alive) -> patch + trainable set (deltas
added before the strategy prepares the model) -> data -> optimizer and schedule -> ``Strategy.prepare_trainable``
-> resume -> steps (TensorBoard, checkpoints, dev loss; a non-finite loss or grad norm stops the run before it
is saved) -> export. DeepSpeed itself is behind ``neurorit.dist``; this file never touches an engine.

Files, under the stage's output folder ``stage<N>.output_dir`` (default ``<runtime.output_dir>/stage<N>``):
``config.yaml`` (resolved config), ``tb/`` (TensorBoard, rank 0), ``checkpoints/step<N>/`` (DeepSpeed, for
resume), ``export/`` (plain Hugging Face checkpoint with the tokenizer, deltas merged, deactivations folded for
``neurorit_hard_deactivation``) and ``train_summary.json``.
Stage 1 starts from ``model.path``; stage 2 from ``<stage 1 output>/export`` (override with
``stage<N>.init_from``). The neuron map is read from ``<mining.output_dir>/neuron_map.safetensors`` (default
``<runtime.output_dir>/mining``) by the methods that need one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from typing import Optional

import torch

from model_patches import export_hf, get_patcher, load_causal_lm, load_tokenizer, model_fingerprint, patch_model
from neurorit import dist, methods
from neurorit.config import ExperimentConfig, StageConfig, mining_dir, parse_args, save_config
from neurorit.dist import TrainEngine
from neurorit.errors import UserError, main_guard
from neurorit.files import atomic_write_text
from neurorit.methods import StageRule
from neurorit.neuron_map import NeuronMap
from neurorit.prompts import prompt_builder
from neurorit.records import load_records
from train import checkpoint, lora
from train.data import StepPlan, build_examples, collate, eval_batches
from train.monitor import Monitor
from train.optim import lr_factor
from train.trainable import Trainable, setup_trainable


# ------------------------------------------------------------------------------------------------ paths
def stage_dir(cfg: ExperimentConfig, stage: str) -> str:
    return getattr(cfg, stage).output_dir or os.path.join(cfg.runtime.output_dir, stage)


def init_path(cfg: ExperimentConfig, stage: str, method: methods.Method) -> str:
    """Where a stage's starting weights come from: ``init_from``, else stage 1's export for stage 2 of a method
    that runs both stages (``Method.chains``), else model.path."""
    explicit = getattr(cfg, stage).init_from
    if explicit:
        return explicit
    if stage == "stage1" or not method.chains():
        return cfg.model.path
    path = os.path.join(stage_dir(cfg, "stage1"), "export")
    if not os.path.isdir(path):
        raise UserError(f"stage 2 starts from stage 1's export {path}, which does not exist: run train/stage1.py "
                        f"first or set --stage2.init_from")
    return path


# ---------------------------------------------------------------------------------------------- model
def enable_gradient_checkpointing(model) -> None:
    """Non-reentrant checkpointing: trainable parameters inside a checkpointed layer get gradients even when
    nothing before them requires grad (frozen embeddings and early layers), which reentrant checkpointing drops."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# -------------------------------------------------------------------------------------------- the loop
def _on_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def dev_loss(engine, examples: list, micro: int, pad_id: int) -> float:
    """Mean token loss over the dev examples (output tokens only), all ranks together."""
    total = torch.zeros(2, dtype=torch.float64)
    engine.eval()
    with torch.no_grad():
        for idx, weight in eval_batches(len(examples), micro, dist.world_size(), dist.rank()):
            batch = _on_device(collate([examples[i] for i in idx], pad_id), engine.device)
            logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                                     ignore_index=-100, reduction="sum")
            total += weight * torch.tensor([float(loss), float((labels != -100).sum())], dtype=torch.float64)
    engine.train()
    dist.all_reduce_sum(total)
    return float(total[0] / total[1].clamp(min=1))


def _train_step(engine: TrainEngine, plan: StepPlan, step: int, examples: list, pad_id: int) -> dict:
    """One optimizer step (all micro-batches of this rank); returns the rank-summed loss, tokens, grad norm."""
    start = time.perf_counter()
    loss_sum, tokens, norm = 0.0, 0, None
    micro = plan.micro_batches(step)
    for idx in micro:
        batch = _on_device(collate([examples[i] for i in idx], pad_id), engine.device)
        loss = engine(**batch).loss
        norm = engine.backward_step(loss) or norm
        loss_sum += loss.item()
        tokens += int(batch["attention_mask"].sum())
    stats = dist.all_reduce_sum(torch.tensor([loss_sum / len(micro), tokens], dtype=torch.float64))
    reported = engine.grad_norm()
    norm = reported if reported is not None else norm
    return {"loss": float(stats[0]) / dist.world_size(), "tokens": float(stats[1]), "grad_norm": norm,
            "seconds": time.perf_counter() - start}


def _model_and_trainable(cfg: ExperimentConfig, stage: str, init_from: str, nmap, rule: StageRule,
                         ds_config: Optional[dict]):
    """Load (partitioned under ZeRO-3), check against the neuron map, patch, choose the trainable set."""
    st: StageConfig = getattr(cfg, stage)
    model = load_causal_lm(init_from, cfg.model.dtype, cfg.model.attn_implementation, ds_config)
    if nmap is not None:
        nmap.check_fingerprint(model_fingerprint(model))
    model.config.use_cache = False
    patcher = patch_model(model) if rule.trains != "lora" else None  # LoRA wraps the FFN linears instead
    trainable = setup_trainable(model, patcher, rule, nmap, cfg.runtime.seed, st.lora_rank, st.lora_alpha,
                                st.train_gate)
    if not trainable.params and rule.trains != "nothing":
        raise UserError(f"{stage}.method {st.method!r} leaves nothing to train with this neuron map")
    if st.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, trainable


def _stage_data(cfg: ExperimentConfig, stage: str, rule: StageRule, tokenizer):
    """Training examples (+ truncation report) and, when dev loss is on, the dev examples."""
    st: StageConfig = getattr(cfg, stage)
    kind = rule.data
    common = (tokenizer, prompt_builder(cfg.data, tokenizer), st.num_docs, cfg.data.max_length, cfg.runtime.seed)
    examples, truncation = build_examples(kind, load_records(cfg.data.train_file, st.num_examples), *common)
    dev = []
    if st.eval_every > 0:
        dev, _ = build_examples(kind, load_records(cfg.data.dev_file, st.eval_examples), *common)
    return examples, dev, truncation


def _resume(engine, ckpt_dir: str, resume: str, identity: dict,
            batch_size: int) -> tuple[Optional[str], int, Optional[float]]:
    """(checkpoint folder or None, the step to continue from, the loss of that step)."""
    found = checkpoint.find(ckpt_dir, resume)
    if not found:
        return None, 0, None
    client = checkpoint.load(engine, found, identity)
    step = client["step"]
    if client["consumed_samples"] != step * batch_size:
        raise UserError(f"checkpoint {found} consumed {client['consumed_samples']} samples in {step} steps; "
                        f"resume with the batch_size it was taken with")
    return found, step, client.get("last_loss")


def run_stage(stage: str, cfg: ExperimentConfig, resume: str = "auto", stop_after: int = 0,
              local_rank: Optional[int] = None) -> dict:
    """Train ``stage`` ("stage1" / "stage2") as configured; returns the summary (also written to disk when the
    stage finishes)."""
    dist.make_deterministic(cfg.runtime.deterministic)
    dist.init_distributed(local_rank)
    if cfg.runtime.torch_threads > 0:
        torch.set_num_threads(cfg.runtime.torch_threads)
    random.seed(cfg.runtime.seed)
    torch.manual_seed(cfg.runtime.seed)
    st: StageConfig = getattr(cfg, stage)
    method = methods.get(st.method)
    rule = method.rule(stage)
    out_dir, init_from = stage_dir(cfg, stage), init_path(cfg, stage, method)
    if dist.is_main():
        save_config(cfg, out_dir)
    nmap = NeuronMap.load(mining_dir(cfg)) if rule.needs_map else None
    tokenizer = load_tokenizer(init_from)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if rule.trains == "nothing":
        model, _ = _model_and_trainable(cfg, stage, init_from, nmap, rule, None)
        return _finish(model, tokenizer, out_dir, stage, st, rule, init_from, Trainable(), 0, None, nmap)

    micro = max(1, min(st.micro_batch_size, st.batch_size // dist.world_size()))
    strategy = dist.Strategy.for_training(st.zero_stage, st.batch_size, micro, st.ds_config, cfg.model.dtype,
                                          st.grad_clip)
    model, trainable = _model_and_trainable(cfg, stage, init_from, nmap, rule, strategy.config)
    examples, dev, truncation = _stage_data(cfg, stage, rule, tokenizer)
    plan = StepPlan([len(e.input_ids) for e in examples], st.batch_size, micro, dist.world_size(), dist.rank(),
                    st.epochs, st.max_steps, cfg.runtime.seed)
    lr = st.lora_lr if rule.trains == "lora" else st.lr
    optimizer = strategy.optimizer(trainable.params, st.optimizer, lr, st.weight_decay)
    factor = lr_factor(st.schedule, int(st.warmup_ratio * plan.total_steps), plan.total_steps)
    engine = strategy.prepare_trainable(model, trainable.params, optimizer, factor)

    ckpt_dir = os.path.join(out_dir, "checkpoints")
    identity = {"stage": stage, "method": st.method, "neuron_map_hash": nmap.hash() if nmap else None,
                "init_from": os.path.abspath(init_from), "seed": cfg.runtime.seed}
    found, step, resumed_loss = _resume(engine, ckpt_dir, resume, identity, st.batch_size)
    monitor = Monitor(os.path.join(out_dir, "tb"), plan.total_steps, step, stage)
    monitor.print(trainable.describe(model.config.hidden_size))
    monitor.print(truncation.report(f"{stage} training data"))
    if found:
        monitor.print(f"resumed from {found} at step {step}")
    else:
        monitor.scalars(0, {"train/trainable_params": trainable.count})
    stop_at = min(plan.total_steps, step + stop_after) if stop_after > 0 else plan.total_steps
    engine.train()
    last = {"loss": resumed_loss}  # a run resumed at its final step still reports that step's loss
    while step < stop_at:
        last = _train_step(engine, plan, step, examples, pad_id)
        step += 1
        check_finite(step, last, ckpt_dir)
        monitor.advance(last["loss"])
        if step % max(1, st.log_every) == 0 or step == stop_at:
            monitor.scalars(step, {"train/loss": last["loss"], "train/lr": engine.lr(),
                                   "train/grad_norm": last["grad_norm"],
                                   "train/tokens_per_s": last["tokens"] / max(last["seconds"], 1e-9)})
        if dev and (step % st.eval_every == 0 or step == plan.total_steps):
            monitor.scalars(step, {"dev/loss": dev_loss(engine, dev, micro, pad_id)})
        if (st.save_every > 0 and step % st.save_every == 0) or step == stop_at:
            checkpoint.save(engine, ckpt_dir, step, step * st.batch_size, identity, last["loss"])
    monitor.close()
    if step < plan.total_steps:
        monitor.print(f"stopped after step {step} of {plan.total_steps}; rerun the same command to resume")
        return {"stage": stage, "step": step, "total_steps": plan.total_steps, "finished": False}
    return _finish(engine.module, tokenizer, out_dir, stage, st, rule, init_from, trainable, step, last["loss"],
                   nmap)


def check_finite(step: int, stats: dict, ckpt_dir: str) -> None:
    """Stop at a non-finite loss or gradient norm, before anything of this step is saved: the last good
    checkpoint stays the one ``--resume auto`` takes. Every rank sees the same reduced numbers, so all stop."""
    bad = [k for k in ("loss", "grad_norm") if stats.get(k) is not None and not math.isfinite(stats[k])]
    if bad:
        raise UserError(f"step {step}: non-finite {' and '.join(f'{k} ({stats[k]})' for k in bad)}; nothing of "
                        f"this step was saved. Lower the lr or check the data; --resume auto continues from the "
                        f"last good checkpoint in {ckpt_dir} (if any)")


def _finish(model, tokenizer, out_dir: str, stage: str, st: StageConfig, rule: StageRule, init_from: str,
            trainable: Trainable, step: int, loss: Optional[float], nmap) -> dict:
    """Export the stage's output as a plain Hugging Face checkpoint (folded per the method's export rule) and
    write ``train_summary.json``."""
    export_dir = os.path.join(out_dir, "export")
    model.config.use_cache = True  # off only while training; the plain export keeps the usual default
    deactivated = 0
    if rule.trains == "lora":
        lora.merge_lora(model)
    if rule.export == "fold_irrelevant_only":
        spec = nmap.per_layer("irrelevant_only")
        get_patcher(model).set_deactivated(spec)
        deactivated = sum(len(v) for v in spec.values())
    export_hf(model, export_dir, tokenizer=tokenizer, fold_deactivation=rule.export == "fold_irrelevant_only")
    summary = {"stage": stage, "method": st.method, "step": step, "finished": True,
               "final_loss": loss, "trainable_params": trainable.count, "init_from": init_from,
               **({"lora_rank": trainable.lora_rank} if trainable.lora_rank else {}),
               "cpu_kernels": torch.backends.cpu.get_cpu_capability(),  # AVX2 vs AVX512 round differently
               "export_dir": export_dir, "neuron_map_hash": nmap.hash() if nmap else None}
    if deactivated:
        summary["deactivated_neurons"] = deactivated
    if dist.is_main():
        path = os.path.join(out_dir, "train_summary.json")
        atomic_write_text(path, json.dumps(summary, indent=1))
        print(f"{stage}: exported {export_dir}")
    return summary


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", default="auto",
                        help="auto (default): continue from the latest checkpoint of this stage if any; never; "
                             "or a checkpoint folder <stage output>/checkpoints/step<N>")
    parser.add_argument("--stop_after", "--stop-after", type=int, default=0,
                        help="stop (with a checkpoint) after this many optimizer steps of this invocation; "
                             "for time-limited jobs. 0 = run to the end")


@main_guard
def main(stage: str, argv: Optional[list[str]] = None) -> dict:
    args, cfg = parse_args(f"Neuro-RIT {stage} training (DeepSpeed)", argv, extra=_flags)
    return run_stage(stage, cfg, resume=args.resume, stop_after=args.stop_after, local_rank=args.local_rank)

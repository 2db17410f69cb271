"""The one training loop behind ``train/stage1.py`` and ``train/stage2.py`` (and every baseline).

Order (docs/DESIGN.md §5): runtime start (``neurorit.runtime``) -> the method's rule for this stage
(``neurorit/methods.py``) and its recipe (``train/recipes.py``) -> neuron map -> model load (partitioned under
ZeRO-3, HfDeepSpeedConfig alive) -> patch + the recipe's trainable set (deltas added before the strategy prepares
the model) -> data -> optimizer and schedule -> ``Strategy.prepare_trainable`` -> resume -> steps (TensorBoard,
checkpoints, dev loss; a non-finite loss or grad norm stops the run before it is saved) -> the recipe's
before-export step -> export. DeepSpeed itself is behind ``neurorit.parallel``; this file never touches an engine,
and it names no method and no recipe.

Files (``neurorit/run_layout.py``), under the stage's output folder ``stage<N>.output_dir`` (default
``<runtime.output_dir>/stage<N>``): ``config.yaml`` (resolved config), ``tensorboard/`` (TensorBoard, rank 0),
``checkpoints/step<N>/`` (DeepSpeed, for resume), ``export/`` (plain Hugging Face checkpoint with the tokenizer,
deltas merged, deactivations folded for ``neurorit_hard_deactivation``) and ``train_summary.json``.
Stage 1 starts from ``model.path``; stage 2 from stage 1's export (override with ``stage<N>.init_from``). The
neuron map is read from the layout's mining folder by the recipes that need one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from model_patches import export_hf, load_causal_lm, load_tokenizer, model_fingerprint
from model_patches.loading import model_source, refuse_rounding
from model_patches.model_card import started_from, write_model_card
from neurorit import methods, parallel, runtime
from neurorit.config import ExperimentConfig, StageConfig, parse_args, save_config, to_dict
from neurorit.parallel import TrainEngine
from neurorit.errors import UserError, main_guard
from neurorit.files import atomic_write_text
from neurorit.run_layout import RunLayout, StageFiles, trained_params
from neurorit.neuron_map import NeuronMap
from neurorit.data_sources import source_digest
from neurorit.prompts import export_tokenizer, prompt_builder
from neurorit.records import load_records, training_records
from train import checkpoint, recipes
from train.data import Batching, ExampleFormat, StepPlan, build_examples, collate, eval_batches
from train.monitor import Monitor, Tracking
from train.recipes import Recipe, StageContext
from train.trainable import Trainable


# ------------------------------------------------------------------------------------------------ the run
def init_path(cfg: ExperimentConfig, stage: str, method: methods.Method) -> str:
    """Where a stage's starting weights come from: ``init_from``, else stage 1's export for stage 2 of a method
    that runs both stages (``Method.chains``), else model.path."""
    explicit = getattr(cfg, stage).init_from
    if explicit:
        return explicit
    if stage == "stage1" or not method.chains():
        return cfg.model.path
    path = RunLayout.of(cfg).stage("stage1").export
    if not os.path.isdir(path):
        raise UserError(f"stage 2 starts from stage 1's export {path}, which does not exist: run train/stage1.py "
                        f"first or set --stage2.init_from")
    return path


@dataclass
class StageRun:
    """One stage's run: its config, the method's recipe and data task, files, starting weights and neuron map."""

    stage: str
    cfg: ExperimentConfig
    recipe: Recipe
    task: str
    files: StageFiles
    init_from: str
    nmap: Optional[NeuronMap]

    @property
    def st(self) -> StageConfig:
        return getattr(self.cfg, self.stage)

    @classmethod
    def of(cls, stage: str, cfg: ExperimentConfig) -> "StageRun":
        method = methods.get(getattr(cfg, stage).method)
        rule = method.rule(stage)
        recipe = recipes.build(rule)
        layout = RunLayout.of(cfg)
        nmap = NeuronMap.load(layout.mining.root) if recipe.needs_map else None
        return cls(stage, cfg, recipe, rule.task, layout.stage(stage), init_path(cfg, stage, method), nmap)

    def identity(self) -> dict:
        """What a resumed checkpoint must match (a Hub id's starting model by its resolved revision)."""
        start = os.path.abspath(self.init_from) if os.path.isdir(self.init_from) else \
            "{model}@{revision}".format(**model_source(self.init_from))
        return {"stage": self.stage, "method": self.st.method, "neuron_map_hash": self.nmap.hash() if self.nmap else None,
                "init_from": start, "seed": self.cfg.runtime.seed}


# ---------------------------------------------------------------------------------------------- model
def enable_gradient_checkpointing(model) -> None:
    """Non-reentrant checkpointing: trainable parameters inside a checkpointed layer get gradients even when
    nothing before them requires grad (frozen embeddings and early layers), which reentrant checkpointing drops."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# -------------------------------------------------------------------------------------------- the loop
def _on_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def label_logits(engine, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of the positions that have a loss, and only those: the columns of the batch where some
    example has a label (``logits_to_keep`` as indices). Stage 1's label is one token per example (the end token), so the
    fp32 ``[batch, sequence, vocabulary]`` logits of a full forward (4.2 GB at 4 x 2048 tokens and a 128k
    vocabulary) are never built. The loss over what is returned equals the full-logits loss
    (``engine(**batch).loss``); ``tests/test_train_parts.py`` compares them."""
    labels = batch["labels"][:, 1:]  # the logits at column j predict the token at j + 1
    columns = (labels != -100).any(0).nonzero().flatten()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = engine(**inputs, logits_to_keep=columns).logits
    return logits, labels[:, columns]


def label_loss(engine, batch: dict, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (in fp32) over the batch's labels, from ``label_logits``."""
    logits, labels = label_logits(engine, batch)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                             reduction=reduction)


def dev_loss(engine, examples: list, micro: int, pad_id: int) -> float:
    """Mean token loss over the dev examples (output tokens only), all ranks together."""
    total = torch.zeros(2, dtype=torch.float64)
    engine.eval()
    with torch.no_grad():
        for idx, weight in eval_batches(len(examples), micro, parallel.world_size(), parallel.rank()):
            batch = _on_device(collate([examples[i] for i in idx], pad_id), engine.device)
            loss = label_loss(engine, batch, reduction="sum")
            tokens = (batch["labels"][:, 1:] != -100).sum()
            total += weight * torch.tensor([float(loss), float(tokens)], dtype=torch.float64)
    engine.train()
    parallel.all_reduce_sum(total)
    return float(total[0] / total[1].clamp(min=1))


def _train_step(engine: TrainEngine, plan: StepPlan, step: int, examples: list, pad_id: int) -> dict:
    """One optimizer step (all micro-batches of this rank); returns the rank-summed loss, tokens, grad norm."""
    start = time.perf_counter()
    loss_sum, tokens, norm = 0.0, 0, None
    micro = plan.micro_batches(step)
    for idx in micro:
        batch = _on_device(collate([examples[i] for i in idx], pad_id), engine.device)
        loss = label_loss(engine, batch)
        norm = engine.backward_step(loss) or norm
        loss_sum += loss.item()
        tokens += int(batch["attention_mask"].sum())
    stats = parallel.all_reduce_sum(torch.tensor([loss_sum / len(micro), tokens], dtype=torch.float64))
    reported = engine.grad_norm()
    norm = reported if reported is not None else norm
    return {"loss": float(stats[0]) / parallel.world_size(), "tokens": float(stats[1]), "grad_norm": norm,
            "seconds": time.perf_counter() - start}


def _model_and_trainable(run: StageRun, ds_config: Optional[dict]) -> tuple[StageContext, Trainable]:
    """Load (partitioned under ZeRO-3), check against the neuron map, patch, let the recipe choose what trains."""
    cfg, st = run.cfg, run.st
    refuse_rounding(run.init_from, cfg.model.dtype, run.stage)  # start from exactly what stage 1 learned
    model = load_causal_lm(run.init_from, cfg.model.dtype, cfg.model.attn_implementation, ds_config)
    if run.nmap is not None:
        run.nmap.check_fingerprint(model_fingerprint(model))
    model.config.use_cache = False
    ctx, trainable = recipes.setup_stage(model, run.recipe, run.nmap, cfg.runtime.seed, st)
    if st.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return ctx, trainable


def _stage_data(run: StageRun, tokenizer):
    """Training examples (+ truncation report) and, when dev loss is on, the dev examples."""
    cfg, st = run.cfg, run.st
    task = run.task
    builder = prompt_builder(cfg.data, tokenizer, cfg.eval.instruction)
    fmt = ExampleFormat(tokenizer, builder, st.num_docs, cfg.data.max_length, cfg.runtime.seed)
    examples, truncation = build_examples(task, training_records(cfg.data, st.num_examples, cfg.runtime.seed), fmt)
    dev = []
    if st.eval_every > 0:
        dev, _ = build_examples(task, load_records(cfg.data.dev_file, st.eval_examples, cfg.data.columns), fmt)
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
    runtime.start(cfg.runtime, local_rank)
    run = StageRun.of(stage, cfg)
    st = run.st
    if parallel.is_main():
        save_config(cfg, run.files.config)
    tokenizer = load_tokenizer(run.init_from)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not run.recipe.trains:
        ctx, trainable = _model_and_trainable(run, None)
        return _finish(run, ctx, trainable, tokenizer, {"step": 0, "loss": None})

    micro = max(1, min(st.micro_batch_size, st.batch_size // parallel.world_size()))
    zero_stage = min(st.zero_stage, run.recipe.max_zero_stage)
    if zero_stage != st.zero_stage and parallel.is_main():
        print(f"{stage}: recipe {run.recipe.name} runs under ZeRO-{zero_stage} (at most; {stage}.zero_stage "
              f"{st.zero_stage})", flush=True)
    ds_config = st.ds_config if zero_stage == st.zero_stage else ""  # the file was chosen for the other stage
    strategy = parallel.Strategy.for_training(zero_stage, st.batch_size, micro, ds_config, cfg.model.dtype, st.grad_clip)
    ctx, trainable = _model_and_trainable(run, strategy.config)
    if not trainable.params:
        raise UserError(f"{stage}.method {st.method!r} leaves nothing to train with this neuron map")

    examples, dev, truncation = _stage_data(run, tokenizer)
    plan = StepPlan([len(e.input_ids) for e in examples], Batching(st.batch_size, micro, parallel.world_size(),
                                                                   parallel.rank()), st.epochs, st.max_steps,
                    cfg.runtime.seed)
    optimizer = parallel.build_optimizer(trainable.params, st.optimizer, run.recipe.lr(st), st.weight_decay,
                                     strategy.offloads_optimizer)
    factor = parallel.lr_factor(st.schedule, int(st.warmup_ratio * plan.total_steps), plan.total_steps)
    engine = strategy.prepare_trainable(ctx.model, trainable.params, optimizer, factor)

    ckpt_dir = run.files.checkpoints
    identity = run.identity()
    found, step, resumed_loss = _resume(engine, ckpt_dir, resume, identity, st.batch_size)
    rt = cfg.runtime
    tracking = Tracking(rt.report_to, to_dict(cfg), rt.tracker_project,
                        rt.run_name or f"{os.path.basename(os.path.normpath(rt.output_dir))}/{stage}")
    monitor = Monitor(run.files.tensorboard, plan.total_steps, step, stage, tracking)
    monitor.print(trainable.describe(ctx.model.config.hidden_size))
    monitor.print(truncation.report(f"{stage} training data"))
    if found:
        monitor.print(f"resumed from {found} at step {step}")
    else:
        monitor.scalars(0, {"train/trainable_params": trainable.count})
    stop_at = min(plan.total_steps, step + stop_after) if stop_after > 0 else plan.total_steps
    engine.train()
    last = {"loss": resumed_loss}  # a run resumed at its final step still reports that step's loss
    last_dev = None  # the latest dev loss (model card)
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
            last_dev = dev_loss(engine, dev, micro, pad_id)
            monitor.scalars(step, {"dev/loss": last_dev})
        if (st.save_every > 0 and step % st.save_every == 0) or step == stop_at:
            progress = {"step": step, "consumed_samples": step * st.batch_size, "last_loss": last["loss"]}
            checkpoint.save(engine, ckpt_dir, progress, identity, keep_last=st.keep_last, resumed_from=found)
    monitor.close()
    if step < plan.total_steps:
        monitor.print(f"stopped after step {step} of {plan.total_steps}; rerun the same command to resume")
        return {"stage": stage, "step": step, "total_steps": plan.total_steps, "finished": False}
    ctx.model = engine.module
    return _finish(run, ctx, trainable, tokenizer, {"step": step, "loss": last["loss"], "dev_loss": last_dev,
                                                    "optimizer": parallel.optimizer_name(optimizer)})


def check_finite(step: int, stats: dict, ckpt_dir: str) -> None:
    """Stop at a non-finite loss or gradient norm, before anything of this step is saved: the last good
    checkpoint stays the one ``--resume auto`` takes. Every rank sees the same reduced numbers, so all stop."""
    bad = [k for k in ("loss", "grad_norm") if stats.get(k) is not None and not math.isfinite(stats[k])]
    if bad:
        raise UserError(f"step {step}: non-finite {' and '.join(f'{k} ({stats[k]})' for k in bad)}; nothing of "
                        f"this step was saved. Lower the lr or check the data; --resume auto continues from the "
                        f"last good checkpoint in {ckpt_dir} (if any)")


def _finish(run: StageRun, ctx: StageContext, trainable: Trainable, tokenizer, last: dict) -> dict:
    """Apply the recipe's before-export step, export the stage's output as a plain Hugging Face checkpoint and
    write ``train_summary.json`` (the stage's done marker)."""
    export_dir = run.files.export
    ctx.model.config.use_cache = True  # off only while training; the plain export keeps the usual default
    extra = run.recipe.before_export(ctx)
    export_hf(ctx.model, export_dir, tokenizer=export_tokenizer(run.cfg.data, tokenizer),
              fold_deactivation=True)  # what before_export switched off
    summary = {"stage": run.stage, "method": run.st.method, "step": last["step"], "finished": True,
               "final_loss": last["loss"], "optimizer": last.get("optimizer"), "trainable_params": trainable.count,
               "trainable": trainable.breakdown(), "init_from": run.init_from,
               **trainable.details,
               "cpu_kernels": torch.backends.cpu.get_cpu_capability(),  # AVX2 vs AVX512 round differently
               "export_dir": export_dir, "neuron_map_hash": run.nmap.hash() if run.nmap else None, **extra}
    if parallel.is_main():
        base = model_source(run.cfg.model.path)
        write_model_card(export_dir, base_model=run.cfg.model.path, method=run.st.method, stage=run.stage,
                         trainable_params=trainable.count + trained_params(run.init_from),
                         base_revision=base["revision"], neuron_map_hash=summary["neuron_map_hash"],
                         data=_card_data(run, last.get("dev_loss") is not None),
                         started_from=started_from(run.init_from),
                         training={"lr": run.recipe.lr(run.st) if run.recipe.trains else None, "steps": last["step"],
                                   "final_train_loss": last["loss"], "final_dev_loss": last.get("dev_loss")})
        atomic_write_text(run.files.summary, json.dumps(summary, indent=1))
        print(f"{run.stage}: exported {export_dir}")
    return summary


def _card_data(run: StageRun, with_dev: bool) -> dict:
    """The model card's data: the files the stage read, each with its sha256, and the chat template it used."""
    data = run.cfg.data
    weights = data.train_weights or [1.0] * len(data.train_files)
    train = {f"train_files[{i}] (weight {w:g})": p for i, (p, w) in enumerate(zip(data.train_files, weights))}
    files = {**(train or {"train_file": data.train_file}), **({"dev_file": data.dev_file} if with_dev else {})}
    if data.chat_template_file and data.chat_template != "never":
        files["chat_template_file"] = data.chat_template_file
    out: dict = {k: {"path": v, "sha256": source_digest(v)} for k, v in files.items()}
    columns = {"columns": dict(data.columns)} if data.columns else {}
    return {**out, **columns, "chat_template": data.chat_template, "chat_date": data.chat_date}


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

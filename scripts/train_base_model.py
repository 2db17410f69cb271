"""Pre-train the embedded base model: a small Llama reader, from scratch, on the synthetic world (CPU, fp32).

    python scripts/train_base_model.py --config configs/embedded.yaml [--minutes 45] [--out assets/base-model]

Seeded and resumable (re-running continues from ``<work>/ckpt.pt``), a tqdm bar, TensorBoard under
``<work>/tensorboard``. Loss: next-token on the whole text, answer span (and EOS) weighted ``--answer-weight`` x.
At the end it writes a Hugging Face checkpoint (safetensors + tokenizer) and a model card with the command,
the config and the measured dev accuracies.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from neurorit.config import load_config
from neurorit.errors import main_guard
from neurorit.run_layout import BASE_MODEL_HISTORY, TENSORBOARD
from benchmarks.embedded.pretrain_mix import PretrainMix
from benchmarks.embedded.tokenizer import build_tokenizer
from benchmarks.embedded.world import World

MODEL_SHAPE = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/embedded.yaml")
    p.add_argument("--out", default="assets/base-model", help="where the final HF checkpoint goes")
    p.add_argument("--work", default="outputs/base-model-train", help="checkpoints for resume + TensorBoard")
    p.add_argument("--minutes", type=float, default=45.0, help="training time budget (resumes count the total)")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--answer-weight", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def collate(tok, examples, device="cpu"):
    rows, weights = [], []
    for ex in examples:
        prompt = [tok.bos_token_id] + tok(ex.prompt, add_special_tokens=False)["input_ids"]
        output = tok(ex.output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(prompt + output)
        weights.append([1.0] * len(prompt) + [-1.0] * len(output))  # -1 marks the answer span
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    w = torch.zeros((len(rows), width))
    for i, (r, ww) in enumerate(zip(rows, weights)):
        ids[i, : len(r)] = torch.tensor(r)
        w[i, : len(ww)] = torch.tensor(ww)
    return ids.to(device), w.to(device)


def weighted_loss(model, ids, w, answer_weight):
    logits = model(input_ids=ids, attention_mask=(w != 0).long()).logits[:, :-1]
    tw = w[:, 1:]
    weight = torch.where(tw < 0, torch.full_like(tw, answer_weight), tw)
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
    return (ce * weight.reshape(-1)).sum() / weight.sum(), ((tw < 0).float() * ce.view_as(tw)).sum() / (tw < 0).sum()


@torch.no_grad()
def quick_eval(model, tok, records, k=5) -> dict:
    """Greedy first answer token under the answer-only prompt: the four reading/misleading probes."""
    from neurorit.prompts import PromptBuilder
    from neurorit.settings import docs_for_setting

    b = PromptBuilder("compact")
    probes = {"fresh_gold": ("fresh", "gold"), "fresh_top5": ("fresh", "top5"),
              "world_closed": ("world", "closed_book"), "world_noise": ("world", "noise_only")}
    out = {}
    model.eval()
    for name, (kind, setting) in probes.items():
        recs = [r for r in records if r.meta.get("kind") == kind]
        prompts = [b.answer_only(r.question, docs_for_setting(r, setting, k)).text() for r in recs]
        hits = 0
        for i in range(0, len(prompts), 64):
            batch = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in prompts[i:i + 64]]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), tok.pad_token_id)
            mask = torch.zeros_like(ids)
            for j, row in enumerate(batch):  # left padding so the last position is the prompt's end
                ids[j, width - len(row):] = torch.tensor(row)
                mask[j, width - len(row):] = 1
            pred = model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1)
            for j, r in enumerate(recs[i:i + 64]):
                hits += int(tok.decode([int(pred[j])]).strip() == r.answers[0])
        out[name] = hits / max(1, len(recs))
    model.train()
    return out


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.max_steps))))


@main_guard
def main(argv=None):
    args = parse(argv)
    cfg = load_config(args.config)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import LlamaConfig, LlamaForCausalLM
    from torch.utils.tensorboard import SummaryWriter

    from benchmarks.embedded.benchmark import build_benchmark

    world = World(cfg.data.benchmark_seed)
    tok = build_tokenizer(world)
    dev = build_benchmark(cfg.data.benchmark_seed, cfg.data.benchmark_questions)["dev"][:400]
    mcfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, **MODEL_SHAPE)
    model = LlamaForCausalLM(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    mix = PretrainMix(world, seed=args.seed)
    os.makedirs(args.work, exist_ok=True)
    ckpt_path = os.path.join(args.work, "ckpt.pt")
    step, elapsed, history = 0, 0.0, []
    if os.path.exists(ckpt_path):
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        mix.rng.setstate(state["mix_rng"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {ckpt_path} at step {step} ({elapsed / 60:.1f} min done)")
    writer = SummaryWriter(os.path.join(args.work, TENSORBOARD))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M params, vocab {len(tok)}, {MODEL_SHAPE}")
    budget = args.minutes * 60
    bar = tqdm(total=int(budget), initial=int(elapsed), unit="s", desc="pretrain", dynamic_ncols=True)
    model.train()
    tokens, t_last = 0, time.time()
    while step < args.max_steps and elapsed < budget:
        t0 = time.time()
        ids, w = collate(tok, [mix.sample(step) for _ in range(args.batch)])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        loss, ans_loss = weighted_loss(model, ids, w, args.answer_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += int((w != 0).sum())
        dt = time.time() - t0
        elapsed += dt
        bar.update(int(elapsed) - bar.n)
        if step % 20 == 0:
            tps = tokens / max(1e-9, time.time() - t_last)
            tokens, t_last = 0, time.time()
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/answer_loss", ans_loss.item(), step)
            writer.add_scalar("train/tokens_per_s", tps, step)
            bar.set_postfix(step=step, loss=f"{loss.item():.3f}", ans=f"{ans_loss.item():.3f}", tps=f"{tps:.0f}")
        if step % args.eval_every == 0:
            acc = quick_eval(model, tok, dev)
            history.append({"step": step, "minutes": round(elapsed / 60, 2), **acc})
            for k_, v in acc.items():
                writer.add_scalar(f"dev/{k_}", v, step)
            tqdm.write(f"step {step} ({elapsed / 60:.1f} min): " + " ".join(f"{k_}={v:.3f}" for k_, v in acc.items()))
        if step % args.save_every == 0:
            tmp = ckpt_path + ".tmp"
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                        "history": history, "mix_rng": mix.rng.getstate(), "torch_rng": torch.get_rng_state()}, tmp)
            os.replace(tmp, ckpt_path)
    bar.close()
    acc = quick_eval(model, tok, dev)
    history.append({"step": step, "minutes": round(elapsed / 60, 2), **acc})
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    with open(os.path.join(args.out, BASE_MODEL_HISTORY), "w") as fh:
        json.dump({"args": vars(args), "history": history}, fh, indent=1)
    write_card(args, mcfg, n_params, step, elapsed, acc)
    print(f"saved {args.out} after {step} steps ({elapsed / 60:.1f} min): {acc}")


def write_card(args, mcfg, n_params, step, elapsed, acc):
    lines = [
        "# neuro-rit embedded base model",
        "",
        "A small Llama-architecture RAG reader trained from scratch by neuro-rit on its synthetic benchmark world",
        "(word-level vocabulary; compact prompts; see benchmarks/embedded/pretrain_mix.py). Not a general language model.",
        "",
        "## Command",
        "",
        "```",
        "python " + " ".join(sys.argv),
        "```",
        "",
        f"Trained {step} steps, {elapsed / 60:.1f} minutes, {n_params / 1e6:.2f}M parameters.",
        "",
        "## Training arguments",
        "",
        "```json",
        json.dumps(vars(args), indent=1),
        "```",
        "",
        "## Model config",
        "",
        "```json",
        mcfg.to_json_string(),
        "```",
        "",
        "## Dev accuracy (greedy first answer token, answer-only prompt, 400 dev questions)",
        "",
        "| probe | accuracy |",
        "| --- | --- |",
        *[f"| {k} | {v:.3f} |" for k, v in acc.items()],
        "",
    ]
    with open(os.path.join(args.out, "README.md"), "w") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":
    main()

"""Every GPU check at once, in at most 8 minutes on one H200 (issue 20, Build item 2).

    python scripts/gpu_check.py --out outputs/gpu_check      # on the GPU machine (wheels: scripts/get_gpu_wheels.sh)
    python scripts/gpu_check.py --dry-run                      # every part on CPU at tiny shapes (tests run this)

Each part runs in its own process group with its own timeout (the parts' limits fit in ``--budget`` with at least
``TESTS_MIN_S`` left for the tests), so one failure or hang loses only that part: a part writes each row as it is
measured (a timed-out part keeps those), and its whole group is killed on a timeout. After each part,
``gpu_check.json`` (every number) and ``gpu_check.md`` (one table: what, measured, target, verdict) are rewritten
in ``--out``. The dry run has its own budget (``DRY_BUDGET_S``): it checks plumbing, and must pass on a busy
2-core machine. The parts:

- ``versions``: Python, torch, CUDA, transformers, DeepSpeed, bitsandbytes, flash-attn; the bf16 matmul ceiling.
- ``attention``: the attention choice (``model_patches.choose_attn_implementation``) and agreement of sdpa (and
  FlashAttention-2 when importable) with eager on a left-padded batch at a Llama-3-8B layer shape.
- ``ig``: bf16 vs fp32 fast IG at Llama-3-8B shape (random weights built on the device; ``IG_AGREE_LAYERS`` layers,
  stated in the output) -> top-20 overlap; IG speed on the full 32 layers in bf16 over a 1k-token prompt for several
  ``chunk_rows`` and the one production's ``chunk_rows: auto`` picks -> time per prompt; at auto, with
  deterministic kernels as production runs: questions / min (two prompts a question; model loading not included),
  TFLOP/s (backward counted as one forward: the weights are frozen).
- ``stage1`` / ``stage2``: one ZeRO-3 bf16 training step each at Llama-3-8B shape on one GPU (stage 1: the
  irrelevant-only neuron deltas, loss on one token; stage 2: all three groups + the last 3 layers' FFNs), the model
  built partitioned in bf16 (``deepspeed.zero.Init``), the peak memory of that step alone against ``scripts/plan.py
  --json`` for one GPU.
- ``extras``: the optimizers that can be built here (DeepSpeed FusedAdam's JIT build: a fallback to torch's AdamW
  fails the row; bitsandbytes' 8-bit AdamW
  under ZeRO-3), a checkpoint round trip (save, step, load, same step -> same loss) and bf16 export fidelity.
- ``entry_points``: the real entry points (mine, stage 1, stage 2, evaluate with the hf and zero3 backends) on
  ``configs/embedded.yaml`` in bf16 (stage 2 in fp32, see there), tiny budgets (``ENTRY_POINTS``: the one place
  they are invoked).
- ``tests``: the tests whose behaviour depends on a GPU (``GPU_TESTS``), with the GPU visible, in the time left
  (the dry run: one small file).

Targets (issue 20, "Targets on one H200"): mining 400 questions of 1k tokens in at most 90 s (>= 270 questions /
min); bf16 IG top-20 overlap >= 0.9; stage peak memory within 15% of the planner.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TARGET_QPM = 270.0  # questions / minute: 400 questions in 90 s
TARGET_OVERLAP = 0.9
TARGET_MEMORY = 0.15  # |peak - plan| / plan
BUDGET_S = 480
IG_AGREE_LAYERS = 8  # fp32 + bf16 copies of 8 of the 32 layers (the 8B's fp32 weights alone would be 32 GB)


@dataclass(frozen=True)
class Shape:
    """The sizes of a run: Llama-3-8B on the GPU, a tiny Llama on CPU for the dry run."""

    device: str
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    prompt: int  # IG prompt tokens
    seq: int  # training sequence
    agree_layers: int
    chunk_rows: tuple

    def llama_config(self, layers: int | None = None, vocab: int | None = None):
        from transformers import LlamaConfig

        return LlamaConfig(hidden_size=self.hidden, intermediate_size=self.ffn, num_hidden_layers=layers or self.layers,
                           num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                           vocab_size=vocab or self.vocab, max_position_embeddings=max(self.prompt, self.seq) + 8,
                           rope_theta=500000.0, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2)


GPU = Shape("cuda", 4096, 14336, 32, 32, 8, 128256, 1024, 1024, IG_AGREE_LAYERS, (64, 160, 320, 640))
DRY = Shape("cpu", 64, 128, 2, 4, 2, 97, 24, 32, 2, (7, 40))


# ------------------------------------------------------------------------------------------------ helpers
ROWS_FILE = ""  # in a part's own process: where each row is appended as it is measured (``launch`` reads it back)


def row(what: str, value, target: str = "", ok=None) -> dict:
    """One line of the table; ``ok`` None = information only. In a part's process it is also appended to
    ``ROWS_FILE`` at once, so a part that runs out of time keeps the rows it measured."""
    made = {"what": what, "value": value, "target": target, "ok": ok}
    if ROWS_FILE:
        with open(ROWS_FILE, "a") as fh:
            fh.write(json.dumps(made) + "\n")
    return made


def _sync(shape: Shape) -> None:
    import torch

    if shape.device == "cuda":
        torch.cuda.synchronize()


def _timed(shape: Shape, fn, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        _sync(shape)
        start = time.perf_counter()
        fn()
        _sync(shape)
        best = min(best, time.perf_counter() - start)
    return best


def _random_llama(shape: Shape, dtype, layers: int | None = None, vocab: int | None = None, seed: int = 0):
    """A randomly initialised Llama of ``shape`` built directly on its device in ``dtype`` (no checkpoint, never a
    copy in fp32 first: the 8B's would be 32 GB). ``_from_config`` is transformers' own construction: inside
    ``parallel.zero3_loading`` it builds the model partitioned (``deepspeed.zero.Init``), as loading does."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(shape.device):
        model = LlamaForCausalLM._from_config(shape.llama_config(layers, vocab), dtype=dtype)
    return model.eval().requires_grad_(False)


def _set_attention(model, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl


def _peak_bytes(shape: Shape):
    import torch

    return torch.cuda.max_memory_allocated() if shape.device == "cuda" else None


# --------------------------------------------------------------------------------------------------- parts
def part_versions(shape: Shape) -> list[dict]:
    import platform

    import torch
    import transformers

    rows = [row("python", platform.python_version()), row("torch", torch.__version__),
            row("cuda", torch.version.cuda), row("transformers", transformers.__version__)]
    for name in ("deepspeed", "bitsandbytes", "flash_attn"):
        try:
            rows.append(row(name, __import__(name).__version__))
        except Exception as err:  # not installed, or a broken native library: both are findings
            rows.append(row(name, f"not importable ({type(err).__name__})"))
    if shape.device == "cuda":
        rows.append(row("gpu", torch.cuda.get_device_name(0)))
    n = 8192 if shape.device == "cuda" else 128
    a = torch.randn(n, n, device=shape.device, dtype=torch.bfloat16)
    seconds = _timed(shape, lambda: a @ a, repeat=5)
    rows.append(row("bf16 matmul TFLOP/s", round(2 * n ** 3 / seconds / 1e12, 3), "the ceiling"))
    return rows


def part_attention(shape: Shape) -> list[dict]:
    import torch

    from model_patches import choose_attn_implementation

    impl, reason = choose_attn_implementation("auto", torch.device(shape.device), torch.bfloat16)
    rows = [row("attention choice", f"{impl} ({reason})")]
    model = _random_llama(shape, torch.bfloat16, layers=1, vocab=1024)
    batch, seq = 4, min(512, shape.prompt)
    ids = torch.randint(3, 1024, (batch, seq), device=shape.device)
    mask = torch.ones_like(ids)
    for b, pad in enumerate((0, seq // 8, seq // 3, seq * 3 // 4)):
        mask[b, :pad] = 0  # left padding, as generation pads
    impls = ["eager", "sdpa"]
    try:
        import flash_attn  # noqa: F401

        impls.append("flash_attention_2")
    except Exception:
        rows.append(row("flash_attention_2", "not importable: not compared"))
    outs = {}
    for name in impls:
        _set_attention(model, name)
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        outs[name] = hidden.float()[mask.bool()]  # real positions only
    for name in impls[1:]:
        err = float((outs[name] - outs["eager"]).abs().max() / outs["eager"].abs().max())
        rows.append(row(f"{name} vs eager, padded batch (rel. max)", round(err, 5), "<= 0.02", err <= 0.02))
    return rows


def _ig_input(shape: Shape, seed: int):
    import torch

    from attribution.ig_common import IGInput
    from attribution.targets import YesProb

    gen = torch.Generator().manual_seed(seed)
    vocab = min(shape.vocab, 32000)
    prompt = torch.randint(3, vocab, (shape.prompt,), generator=gen)
    query = torch.randint(3, vocab, (max(8, shape.prompt // 25),), generator=gen)
    return IGInput(prompt, query, YesProb((11,)))


def _ig(model, inp, chunk_rows: int):
    from attribution.ig import integrated_gradients
    from attribution.ig_common import IGOptions
    from model_patches import get_patcher, patch_model

    patcher = get_patcher(model) if hasattr(model, "_neurorit_patcher") else patch_model(model)
    return integrated_gradients(model, patcher, inp, IGOptions(steps=20, chunk_rows=chunk_rows), "fast")


def _ig_flops(shape: Shape, prompt: int, steps: int = 20) -> float:
    """FLOPs of one fast-IG prompt: prefill + baseline pass, and per row (layer l, step k) a single-token forward
    and backward through layers l..L-1 and the head: 2x the forward, as the weights are frozen (the backward forms
    input gradients only, no weight gradients)."""
    per_layer = 2 * (2 * shape.hidden * shape.hidden + 2 * shape.hidden * shape.hidden * shape.kv_heads
                     // shape.heads + 3 * shape.hidden * shape.ffn)
    head = 2 * shape.hidden * shape.vocab
    passes = (prompt + max(8, prompt // 25)) * shape.layers * per_layer
    rows = sum(steps * 2 * ((shape.layers - l) * per_layer + head) for l in range(shape.layers))
    return float(passes + rows)


def part_ig(shape: Shape) -> list[dict]:
    import torch

    from attribution.selection import example_topk

    def top20(attr):
        ids, _ = example_topk(attr, 0.1, 20)
        return set(ids[ids >= 0].tolist())

    rows = []
    fp32 = _random_llama(shape, torch.float32, layers=shape.agree_layers)
    bf16 = _random_llama(shape, torch.bfloat16, layers=shape.agree_layers)
    overlaps = []
    for seed in range(2):
        inp = _ig_input(shape, seed)
        want, got = top20(_ig(fp32, inp, 64).attributions), top20(_ig(bf16, inp, 64).attributions)
        overlaps.append(len(want & got) / max(len(want), 1))
    del fp32, bf16
    worst = min(overlaps)
    rows.append(row(f"bf16 vs fp32 IG top-20 overlap ({shape.agree_layers} layers, worst of 2 prompts)",
                    round(worst, 3), f">= {TARGET_OVERLAP}", worst >= TARGET_OVERLAP))
    from neurorit import parallel

    parallel.make_deterministic(True)  # as production mining runs (runtime.deterministic defaults to true)
    auto = _auto_chunk_rows(shape)
    model = _random_llama(shape, torch.bfloat16)
    inp = _ig_input(shape, 7)
    times = {c: _timed(shape, lambda c=c: _ig(model, inp, c)) for c in sorted({*shape.chunk_rows, auto})}
    best = min(times, key=times.get)
    seconds = times[auto]  # the figure is production's: mining.chunk_rows auto, not the best chosen afterwards
    qpm = 60.0 / (2 * seconds)
    rows += [row(f"IG time per {shape.prompt}-token prompt, chunk_rows {c}", round(t, 3)) for c, t in times.items()]
    rows += [row("mining.chunk_rows auto here / fastest measured", f"{auto} / {best}"),
             row("IG TFLOP/s at auto (estimated FLOPs / time)",
                 round(_ig_flops(shape, shape.prompt) / seconds / 1e12, 3)),
             row("mining questions / min at auto (2 prompts a question; no loading)", round(qpm, 1),
                 f">= {TARGET_QPM:.0f}", qpm >= TARGET_QPM if shape.device == "cuda" else None),
             row("400 questions at auto, extrapolated (s; no loading)", round(400 * 2 * seconds, 1), "<= 90",
                 400 * 2 * seconds <= 90 if shape.device == "cuda" else None)]
    return rows


def _auto_chunk_rows(shape: Shape) -> int:
    """What production mining's ``chunk_rows: auto`` resolves to for this shape on this device, a whole copy of
    the model on this one GPU (``attribution.mine.resolve_chunk_rows`` itself, on a config of this shape)."""
    import tempfile

    from attribution import mine
    from neurorit.config import load_config

    with tempfile.TemporaryDirectory() as folder:
        shape.llama_config().save_pretrained(folder)
        cfg = load_config(None, ["--model.path", folder, "--model.dtype", "bfloat16", "--data.max_length",
                                 str(shape.prompt), "--mining.steps", "20", "--mining.chunk_rows", "auto"])
        return mine.resolve_chunk_rows(cfg, zero3=False)


def _plan(shape: Shape, out: str) -> dict:
    """``scripts/plan.py --json`` for one GPU at this shape (its config written to ``out``)."""
    folder = os.path.join(out, "plan_model")
    shape.llama_config().save_pretrained(folder)
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "plan.py"), "--model", folder, "--nodes", "1",
           "--gpus-per-node", "1", "--gpu-gib", "139", "--seq-len", str(shape.seq), "--micro-batch", "1",
           "--stage2-label-tokens", str(_answer_tokens(shape, 2)), "--json"]
    if shape.device == "cpu":
        cmd += ["--ds-config", os.path.join(ROOT, "ds_configs", "cpu_zero3.json")]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout)


def _zero3_engine(shape: Shape, stage: int, optimizer: str = "adamw_torch", layers: int | None = None):
    """A bf16 ZeRO-3 engine at ``shape`` on this one process: the neuron deltas of ``stage`` (1: 100 irrelevant-only
    neurons; 2: 230 neurons + the last 3 layers' FFNs) trainable. Returns (engine, model, params)."""
    import torch

    from model_patches import patch_model
    from neurorit import parallel

    parallel.init_distributed()
    strategy = parallel.Strategy.for_training(3, 1, 1, "", "bfloat16")
    with parallel.zero3_loading(strategy.config):
        model = _random_llama(shape, torch.bfloat16, layers=layers)
    model.requires_grad_(False)
    n_layers = model.config.num_hidden_layers
    count = 100 if stage == 1 else 230
    gen = torch.Generator().manual_seed(stage)
    picks = torch.randint(0, n_layers * shape.ffn, (count,), generator=gen).unique()
    spec = {l: picks[picks // shape.ffn == l] % shape.ffn for l in range(n_layers)}
    params = patch_model(model).add_neuron_deltas({l: ids for l, ids in spec.items() if ids.numel()})
    if stage == 2:  # the target layers' FFN weights (their deltas are in params already)
        seen = {id(p) for p in params}
        for layer in model.model.layers[-3:]:
            layer.mlp.requires_grad_(True)
            params += [p for p in layer.mlp.parameters() if id(p) not in seen]
    opt = parallel.build_optimizer(params, optimizer, 1e-3, 0.0, strategy.offloads_optimizer)
    return strategy.prepare_trainable(model, params, opt, lambda _step: 1.0), model, params


def _answer_tokens(shape: Shape, stage: int) -> int:
    return 1 if stage == 1 else min(142, shape.seq // 2)  # stage 1: EOS only; stage 2: a summary


def _batch(shape: Shape, stage: int):
    import torch

    ids = torch.randint(3, min(shape.vocab, 32000), (1, shape.seq), device=shape.device)
    labels = torch.full_like(ids, -100)
    answer = _answer_tokens(shape, stage)
    labels[:, -answer:] = ids[:, -answer:]
    return {"input_ids": ids, "labels": labels}


def _stage_step(shape: Shape, out: str, stage: int) -> list[dict]:
    import torch

    from train.loop import label_loss

    plan = _plan(shape, out)[f"stage{stage}"]
    if shape.device == "cuda":
        torch.cuda.reset_peak_memory_stats()  # this stage's peak alone
    engine, _, _ = _zero3_engine(shape, stage)
    batch = _batch(shape, stage)
    losses = []
    for _ in range(2):
        loss = label_loss(engine, batch)  # as train/loop.py: logits only where the loss is
        engine.backward_step(loss)
        losses.append(float(loss))
    rows = [row(f"stage {stage}: 2 ZeRO-3 bf16 steps, losses", [round(x, 4) for x in losses], "finite",
                all(torch.isfinite(torch.tensor(losses))))]
    peak = _peak_bytes(shape)
    if peak is None:
        rows.append(row(f"stage {stage}: planner total (GB; no peak to compare on CPU)", round(plan["total"] / 1e9, 3)))
        return rows
    gap = (peak - plan["total"]) / plan["total"]
    rows.append(row(f"stage {stage}: peak GB vs plan {plan['total'] / 1e9:.2f} GB", round(peak / 1e9, 2),
                    f"within {TARGET_MEMORY:.0%}", abs(gap) <= TARGET_MEMORY))
    return rows


def part_stage1(shape: Shape, out: str) -> list[dict]:
    return _stage_step(shape, out, 1)


def part_stage2(shape: Shape, out: str) -> list[dict]:
    return _stage_step(shape, out, 2)


def _check(rows: list, what: str, fn) -> None:
    """Append ``fn()``'s row to ``rows``, or a failed row naming the exception (the other checks still run)."""
    try:
        rows.append(fn())
    except Exception as err:
        rows.append(row(what, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
                        "works", False))


def _fused_adam(shape: Shape) -> dict:
    import torch

    from neurorit import parallel

    if shape.device != "cuda":
        return row("DeepSpeed FusedAdam (JIT build)", "CUDA only: not built on CPU")
    parallel.init_distributed()
    start = time.perf_counter()
    p = torch.nn.Parameter(torch.zeros(1024, device="cuda"))
    opt = parallel.build_optimizer([p], "adamw", 1e-3, 0.0)
    p.grad = torch.ones_like(p)
    opt.step()
    return fused_adam_row(parallel.optimizer_name(opt), time.perf_counter() - start)


def fused_adam_row(name: str, seconds: float) -> dict:
    """The verdict on the optimizer ``adamw`` built on CUDA: DeepSpeed's FusedAdam, or FAIL (a failed JIT build
    falls back to torch's AdamW, which trains but is not what this row checks)."""
    return row(f"adamw on CUDA: {name} built and stepped (s)", round(seconds, 1), "DeepSpeed FusedAdam",
               name.endswith(".FusedAdam"))


def _adam8bit_zero3(shape: Shape) -> dict:
    engine, _, _ = _zero3_engine(shape, 1, optimizer="adamw_8bit", layers=2)
    batch = _batch(shape, 1)
    losses = []
    for _ in range(3):
        loss = engine(**batch).loss
        engine.backward_step(loss)
        losses.append(float(loss))
    return row("8-bit AdamW under ZeRO-3: 3 steps, losses", [round(x, 4) for x in losses], "finite, falling",
               losses[-1] < losses[0])


def _checkpoint_round_trip(shape: Shape, out: str) -> dict:
    engine, _, _ = _zero3_engine(shape, 2, layers=2)
    batch = _batch(shape, 2)
    engine.backward_step(engine(**batch).loss)
    folder = os.path.join(out, "ckpt")
    engine.save(folder, "step1", {"step": 1})
    engine.backward_step(engine(**batch).loss)
    after = float(engine(**batch).loss)
    client = engine.load(folder, "step1")
    engine.backward_step(engine(**batch).loss)
    again = float(engine(**batch).loss)
    ok = client is not None and client.get("step") == 1 and abs(after - again) <= 1e-3 * max(1.0, abs(after))
    return row("checkpoint round trip: same step, same loss", [round(after, 5), round(again, 5)], "equal", ok)


def _export_fidelity(shape: Shape, out: str) -> dict:
    """bf16 model with 1e-3 neuron deltas -> export -> reload: the learned change kept (all logits in fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    from model_patches import export_hf, patch_model

    model = _random_llama(shape, torch.bfloat16, layers=2, vocab=1024)
    ids = torch.randint(3, 1024, (2, 64), device=shape.device)

    def fp32_logits(m):
        dtype = next(m.parameters()).dtype
        with torch.no_grad():
            logits = m.float()(input_ids=ids).logits
        m.to(dtype)
        return logits

    base = fp32_logits(model)
    params = patch_model(model).add_neuron_deltas({0: torch.arange(0, shape.ffn, 7)[:64], 1: torch.arange(64)})
    with torch.no_grad():
        for p in params:
            p.normal_(0.0, 1e-3)
    want = fp32_logits(model)
    folder = os.path.join(out, "export")
    export_hf(model, folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder).to(shape.device)
    err = float((fp32_logits(loaded) - want).norm() / (want - base).norm())
    return row(f"bf16 export fidelity: error / learned change (export dtype {loaded.dtype})", round(err, 5),
               "<= 0.01", err <= 0.01)


def part_extras(shape: Shape, out: str) -> list[dict]:
    rows: list[dict] = []
    _check(rows, "DeepSpeed FusedAdam (JIT build)", lambda: _fused_adam(shape))
    _check(rows, "8-bit AdamW under ZeRO-3", lambda: _adam8bit_zero3(shape))
    _check(rows, "checkpoint round trip", lambda: _checkpoint_round_trip(shape, out))
    _check(rows, "bf16 export fidelity", lambda: _export_fidelity(shape, out))
    return rows


# The real entry points, as a user runs them (python <entry> --config <yaml> <dotted overrides> <its own last>).
# One place. Stage 2 runs in fp32: stage 1's bf16 export keeps in fp32 the weights whose learned change bf16
# would round away, and stage 2 refuses to load those in bf16 (its one line says to use float32).
# Each entry's product names its done marker (``RunLayout.done_marker``: "mining", a stage, or "eval:<name>");
# "{stage2}" is stage 2's export.
ENTRY_POINTS = [
    ("mine", ["attribution/mine.py"], "mining", []),
    ("stage 1", ["train/stage1.py"], "stage1", []),
    ("stage 2", ["train/stage2.py"], "stage2", ["--model.dtype", "float32"]),
    ("evaluate (hf)", ["rag/evaluate.py", "--model", "{stage2}", "--name", "gpu_hf", "--eval.backend", "hf",
                       "--no-progress"], "eval:gpu_hf", []),
    ("evaluate (zero3)", ["rag/evaluate.py", "--model", "{stage2}", "--name", "gpu_zero3", "--eval.backend", "zero3",
                          "--no-progress"], "eval:gpu_zero3", []),
]


def _entry_overrides(shape: Shape, data: str, run: str) -> list[str]:
    small = shape.device == "cpu"
    return ["--model.dtype", "bfloat16", "--runtime.output_dir", run,
            "--data.train_file", f"{data}/train.jsonl", "--data.dev_file", f"{data}/dev.jsonl",
            "--data.test_file", f"{data}/test.jsonl",
            "--mining.num_examples", "4" if small else "64", "--mining.steps", "4" if small else "20",
            "--stage1.max_steps", "2" if small else "20", "--stage2.max_steps", "2" if small else "20",
            "--eval.num_examples", "4" if small else "64", "--eval.settings", "gold",
            "--eval.max_new_tokens", "4" if small else "16", "--eval.bootstrap", "10"]


def part_entry_points(shape: Shape, out: str) -> list[dict]:
    from benchmarks.embedded.benchmark import build_benchmark
    from neurorit.records import write_records

    import importlib.util

    missing = [m for m in ("matplotlib", "tensorboard") if importlib.util.find_spec(m) is None]
    if missing:  # mining writes its picture and TensorBoard image at the end: it would die after all its work
        return [row("entry points", f"{', '.join(missing)} not installed (mining's outputs need them; not among "
                    f"scripts/get_gpu_wheels.sh's wheels)", "importable", False)]
    data, run = os.path.join(out, "data"), os.path.join(out, "run")
    for split, records in build_benchmark(seed=0, n_questions=200).items():
        write_records(records, os.path.join(data, f"{split}.jsonl"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    overrides = _entry_overrides(shape, data, run)
    rows = []
    from neurorit.run_layout import RunLayout

    layout = RunLayout(run)
    stage2 = layout.stage("stage2").export
    for name, args, product, last in ENTRY_POINTS:
        cmd = [sys.executable, *[a.format(stage2=stage2) for a in args], "--config", "configs/embedded.yaml",
               *overrides, *last]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = round(time.perf_counter() - start, 1)
        ok = proc.returncode == 0 and os.path.exists(layout.done_marker(product))
        tail = "" if ok else " | " + (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
        dtype = "fp32" if "float32" in last else "bf16"
        rows.append(row(f"{name} on configs/embedded.yaml, {dtype} (s)", f"{seconds}{tail}", "exit 0 + output", ok))
        if not ok:
            break  # the next entry needs this one's output
    return rows


# The test files whose code takes another branch, or other numbers, with a GPU visible (CUDA devices, bf16 on
# cuBLAS, FlashAttention, ranks that must fall back to CPU); the whole suite needs ~15 CPU minutes and packages the
# GPU image lacks (datasets, the English benchmark's fact libraries, captum, wandb).
GPU_TESTS = ("tests/test_gpu_paths.py", "tests/test_gpu_day_one.py", "tests/test_bf16_ig.py",
             "tests/test_bf16_export.py", "tests/test_patches_attention.py", "tests/test_ranks_cpu.py",
             "tests/test_ig_fast_rows.py")


def part_tests(shape: Shape, out: str, seconds: float) -> list[dict]:
    selection = ["tests/test_metrics.py"] if shape.device == "cpu" else list(GPU_TESTS)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(10, seconds - 10))
        summary, ok = proc.stdout.strip().splitlines()[-1], proc.returncode == 0
    except subprocess.TimeoutExpired as err:
        text = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        summary, ok = f"stopped after {seconds - 10:.0f} s; progress: {text.strip()[-120:]}", False
    with open(os.path.join(out, "pytest.txt"), "w") as fh:
        fh.write(summary + "\n")
    return [row(f"test suite, GPU visible ({' '.join(selection)})", summary, "all pass", ok)]


PARTS = {  # name -> (function, needs out, timeout on the GPU in s)
    "versions": (part_versions, False, 30),
    "attention": (part_attention, False, 40),
    "ig": (part_ig, False, 90),
    "stage1": (part_stage1, True, 50),
    "stage2": (part_stage2, True, 50),
    "extras": (part_extras, True, 60),
    "entry_points": (part_entry_points, True, 100),
    "tests": (part_tests, True, 0),  # whatever time is left: at least TESTS_MIN_S of BUDGET_S
}
TESTS_MIN_S = 60
# The dry run checks the plumbing, not speed: on a busy 2-core machine its ~15 process starts take minutes, so it
# has its own, generous budget and per-part limit.
DRY_BUDGET_S = 2400
DRY_TIMEOUT = 900


# ----------------------------------------------------------------------------------------------- the runner
def run_part(name: str, shape: Shape, out: str, seconds: float) -> list[dict]:
    fn, needs_out, _ = PARTS[name]
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    if name == "tests":
        return fn(shape, folder, seconds)
    return fn(shape, folder) if needs_out else fn(shape)


def write_report(out: str, results: dict) -> None:
    """``gpu_check.json`` and ``gpu_check.md``, rewritten whole (temp file + rename)."""
    lines = ["| part | what | measured | target | verdict |", "| --- | --- | --- | --- | --- |"]
    for part, res in results["parts"].items():
        for r in res["rows"]:
            verdict = {True: "ok", False: "FAIL", None: ""}[r["ok"]]
            lines.append(f"| {part} | {r['what']} | {r['value']} | {r['target']} | {verdict} |")
    for name, text in (("gpu_check.json", json.dumps(results, indent=2)), ("gpu_check.md", "\n".join(lines) + "\n")):
        tmp = os.path.join(out, f".{name}.tmp")
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, os.path.join(out, name))


def launch(name: str, args, timeout: float) -> dict:
    """One part in its own process group; its rows, or the rows it measured before it ended plus one failed row
    saying how it ended. On a timeout the whole group is killed (entry points, pytest and their children too,
    so nothing is left on the GPU for the next part)."""
    folder = os.path.join(args.out, name)
    result, measured = os.path.join(folder, "result.json"), os.path.join(folder, "rows.jsonl")
    for path in (result, measured):
        if os.path.exists(path):
            os.remove(path)
    cmd = [sys.executable, os.path.abspath(__file__), "--part", name, "--out", args.out, "--seconds", str(timeout)]
    cmd += ["--dry-run"] if args.dry_run else []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        ended = f"exit {proc.returncode}: {(err.strip().splitlines() or ['(no output)'])[-1][:300]}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        ended = f"timed out after {timeout:.0f} s"
    seconds = round(time.perf_counter() - start, 1)
    if os.path.exists(result):
        with open(result) as fh:
            return {"seconds": seconds, "rows": json.load(fh)}
    rows = []
    if os.path.exists(measured):
        with open(measured) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    return {"seconds": seconds, "rows": rows + [row("part", ended, "completes", False)]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every part on CPU at tiny shapes")
    parser.add_argument("--out", default=os.path.join(ROOT, "outputs", "gpu_check"))
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS))
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole check (default {BUDGET_S}; the dry run {DRY_BUDGET_S})")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = os.path.abspath(args.out)
    shape = DRY if args.dry_run else GPU
    if args.budget is None:
        args.budget = DRY_BUDGET_S if args.dry_run else BUDGET_S
    if args.part:
        global ROWS_FILE
        ROWS_FILE = os.path.join(args.out, args.part, "rows.jsonl")
        rows = run_part(args.part, shape, args.out, args.seconds)
        with open(os.path.join(args.out, args.part, "result.json"), "w") as fh:
            json.dump(rows, fh)
        return 0
    os.makedirs(args.out, exist_ok=True)
    names = [n for n in args.parts.split(",") if n]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    results = {"dry_run": args.dry_run, "shape": asdict(shape), "parts": {}}
    deadline = time.perf_counter() + args.budget
    for name in names:
        left = deadline - time.perf_counter()
        timeout = DRY_TIMEOUT if args.dry_run else (PARTS[name][2] or left)
        results["parts"][name] = launch(name, args, max(5.0, min(timeout, left)))
        write_report(args.out, results)
        for r in results["parts"][name]["rows"]:
            print(f"{name:12s} {r['what']}: {r['value']}  [{r['target']}] "
                  f"{ {True: 'ok', False: 'FAIL', None: ''}[r['ok']]}", flush=True)
    failed = [n for n, res in results["parts"].items() if any(r["ok"] is False for r in res["rows"])]
    verdict = f"failed: {', '.join(failed)}" if failed else "all ok"
    print(f"wrote {os.path.join(args.out, 'gpu_check.md')}; {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

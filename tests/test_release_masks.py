"""The release's gradient masks (model_patches/release_masks.py): the reshape mapping by hand on small sizes, the
built masks against the closed form, the per-stage rules, and that the hooks train exactly the masked weights."""
import torch

from model_patches import get_ffn_layout
from model_patches.release_masks import (attach_grad_masks, intended_positions, release_layer_masks,
                                         release_model_masks, release_positions, trained_count)

H, F = 4, 6  # hidden, ffn


def _flat(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask.flatten()).flatten().tolist()


def test_positions_of_neuron_1_by_hand():
    # _in mask (4, 6), column 1 -> flat 1, 7, 13, 19; read as (6, 4): (0,1) (1,3) (3,1) (4,3)
    # _out mask (6, 4), row 1 -> flat 4..7; read as (4, 6): (0,4) (0,5) (1,0) (1,1)
    pos = release_positions(1, H, F)
    assert pos["up"].tolist() == [1, 7, 13, 19] and pos["gate"].tolist() == [1, 7, 13, 19]
    assert pos["down"].tolist() == [4, 5, 6, 7]
    up_cells = [(p // H, p % H) for p in pos["up"].tolist()]
    down_cells = [(p // F, p % F) for p in pos["down"].tolist()]
    assert up_cells == [(0, 1), (1, 3), (3, 1), (4, 3)]
    assert down_cells == [(0, 4), (0, 5), (1, 0), (1, 1)]
    # what neuron 1 owns: row 1 of up (flat 4..7 of (6, 4)), column 1 of down (flat 1, 7, 13, 19 of (4, 6))
    own = intended_positions(1, H, F)
    assert own["up"].tolist() == [4, 5, 6, 7] and own["down"].tolist() == [1, 7, 13, 19]
    # of neuron 1's own 4 up weights (row 1), the release trains one, (1, 3), by chance of the reshape
    assert set(pos["up"].tolist()) & set(own["up"].tolist()) == {7}


def test_built_masks_match_closed_form_for_every_neuron():
    for n in range(F):
        masks = release_layer_masks([n], H, F)
        pos = release_positions(n, H, F)
        assert masks["up"].shape == (F, H) and masks["down"].shape == (H, F)
        for role in ("gate", "up", "down"):
            assert _flat(masks[role]) == sorted(pos[role].tolist()), (n, role)


def test_transposed_masks_train_what_each_neuron_owns_and_nothing_else_changes():
    """The control of the reshape: the same rules (gates, full layers, count) with each neuron's own rows and
    columns."""
    for n in range(F):
        masks = release_layer_masks([n], H, F, transposed=True)
        own = intended_positions(n, H, F)
        for role in ("gate", "up", "down"):
            assert _flat(masks[role]) == sorted(own[role].tolist()), (n, role)
    neurons = {0: [2], 3: [5]}
    for stage in ("stage1", "stage2"):
        mask, meant = (release_model_masks(neurons, 5, H, F, stage, transposed=t) for t in (False, True))
        assert trained_count(mask) == trained_count(meant)
        assert [bool(meant[i]["up"].all()) for i in range(5)] == [bool(mask[i]["up"].all()) for i in range(5)]
        assert [bool(meant[i]["gate"].any()) for i in range(5)] == [bool(mask[i]["gate"].any()) for i in range(5)]


def test_union_of_neurons_and_gate_rule():
    both = release_layer_masks([1, 4], H, F, train_gate=False)
    want = sorted(release_positions(1, H, F)["up"].tolist() + release_positions(4, H, F)["up"].tolist())
    assert _flat(both["up"]) == want
    assert not both["gate"].any()
    full = release_layer_masks([], H, F, train_gate=False, full=True)
    assert full["up"].all() and full["down"].all() and not full["gate"].any()


def test_stage_rules():
    neurons = {0: [2], 3: [5]}
    s1 = release_model_masks(neurons, 5, H, F, "stage1")
    assert torch.equal(s1[0]["gate"], s1[0]["up"]) and int(s1[0]["up"].sum()) == H
    assert not s1[4]["up"].any()  # a layer with no neuron trains nothing in stage 1
    s2 = release_model_masks(neurons, 5, H, F, "stage2")
    assert all(not s2[layer]["gate"].any() for layer in range(5))
    assert [bool(s2[layer]["down"].all()) for layer in range(5)] == [False, False, True, True, True]
    assert _flat(s2[0]["down"]) == release_positions(2, H, F)["down"].tolist()
    assert trained_count(s2) == 2 * H + 3 * 2 * H * F  # two masked neurons (up + down) + 3 full layers
    assert trained_count(release_model_masks(neurons, 5, H, F, "stage2", full_layers=())) == 2 * 2 * H
    chosen = release_model_masks(neurons, 5, H, F, "stage2", full_layers=[1])
    assert [bool(chosen[layer]["up"].all()) for layer in range(5)] == [False, True, False, False, False]
    assert not release_model_masks(neurons, 5, H, F, "stage1", full_layers=[1])[1]["up"].any()  # stage 1: none


def test_hooks_train_exactly_the_masked_weights(tiny_model):
    model = tiny_model("llama", layers=2, hidden=8, intermediate=12)
    layout = get_ffn_layout(model)
    model.requires_grad_(False)
    weights = {i: layout.weights(layout.ffn_module(layer)) for i, layer in enumerate(layout.layers(model))}
    masks = release_model_masks({0: [3], 1: [7]}, 2, 8, 12, "stage2", full_layers=[1])
    handles = attach_grad_masks(weights, masks)
    model(torch.randint(0, 97, (2, 5))).logits.square().mean().backward()
    for layer, roles in weights.items():
        assert roles["gate"].grad is None and not roles["gate"].requires_grad
        for role in ("up", "down"):
            g = roles[role].grad
            assert g is not None and bool((g[~masks[layer][role]] == 0).all())
            assert bool((g[masks[layer][role]] != 0).any())
    for h in handles:
        h.remove()

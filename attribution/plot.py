"""Pictures and text of a mined neuron map: where each group sits, layer by layer.

``figure`` draws every selected neuron (x: neuron index, y: layer, colour: group) next to the per-layer counts
of each group, target layers shaded; ``save_png`` writes it, ``log_tensorboard`` adds it as an image to a
TensorBoard run, ``summary`` is the one-screen text report.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from neurorit.neuron_map import NeuronMap  # noqa: E402
from neurorit.neuron_map import GROUPS  # noqa: E402
from neurorit.files import atomic_save_figure  # noqa: E402
from attribution.stats import SIDES, NeuronStats  # noqa: E402

COLORS = {"relevant_only": "tab:green", "irrelevant_only": "tab:red", "shared": "tab:purple"}


def figure(nmap: NeuronMap):
    layers = nmap.fingerprint["num_layers"]
    fig, (ax_pos, ax_bar) = plt.subplots(1, 2, figsize=(11, 2.4 + 0.3 * layers), sharey=True,
                                         gridspec_kw={"width_ratios": [3, 1]})
    for ax in (ax_pos, ax_bar):
        for layer in nmap.target_layers:
            ax.axhspan(layer - 0.45, layer + 0.45, color="gold", alpha=0.25, lw=0)
    for g in GROUPS:
        rows = nmap.groups[g]
        ax_pos.scatter(rows[:, 1].tolist(), rows[:, 0].tolist(), s=9, c=COLORS[g], label=f"{g} ({len(rows)})")
    ax_pos.set_xlim(-0.5, nmap.fingerprint["intermediate_size"] - 0.5)
    ax_pos.set_xlabel("neuron")
    ax_pos.set_ylabel("layer")
    counts = nmap.layer_counts()
    left = [0] * layers
    for g in GROUPS:
        ax_bar.barh(range(layers), counts[g], left=left, color=COLORS[g], height=0.8)
        left = [a + b for a, b in zip(left, counts[g])]
    ax_bar.set_xlabel("neurons per layer")
    ax_pos.set_ylim(-0.6, layers - 0.4)
    fig.suptitle(f"neuron map ({nmap.fingerprint['architecture']}, {layers} layers x "
                 f"{nmap.fingerprint['intermediate_size']}); target layers shaded: {nmap.target_layers}", fontsize=9)
    fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def save_png(nmap: NeuronMap, path: str) -> str:
    return atomic_save_figure(figure(nmap), path)


def log_tensorboard(nmap: NeuronMap, logdir: str, step: int = 0) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(logdir)
    try:
        writer.add_figure("mining/neuron_map", figure(nmap), global_step=step)
        for g, n in nmap.to_json()["sizes"].items():
            writer.add_scalar(f"mining/{g}", n, step)
    finally:
        writer.close()


def summary(nmap: NeuronMap, stats: NeuronStats, bad_input: dict[str, int]) -> str:
    """One screen: examples and what was skipped, F on each side, group sizes, per-layer counts, top neurons."""
    fp = nmap.fingerprint
    ok = stats.ok()
    skipped = "; ".join(f"{k}: {v}" for k, v in bad_input.items() if v)
    lines = [f"neuron map  {fp['architecture']}  {fp['num_layers']} layers x {fp['intermediate_size']} neurons  "
             f"hash {nmap.hash()}",
             f"examples: {int(ok.sum())} used of {len(stats.example_ids)}" + (f"; {skipped}" if skipped else "")]
    if int(ok.sum()):
        means = stats.f_input[ok].mean(0).tolist()
        lines.append("mean F: " + ", ".join(f"{s} {m:.4f}" for s, m in zip(SIDES, means)))
    lines.append("groups: " + ", ".join(f"{g} {len(nmap.groups[g])}" for g in GROUPS)
                 + f"; target layers {nmap.target_layers}")
    counts = nmap.layer_counts()
    lines.append("layer  " + "  ".join(f"{g:>15}" for g in GROUPS))
    for layer in range(fp["num_layers"]):
        mark = " *" if layer in nmap.target_layers else ""
        lines.append(f"{layer:5d}  " + "  ".join(f"{counts[g][layer]:15d}" for g in GROUPS) + mark)
    for g in GROUPS:
        top = nmap.groups[g][:5].tolist()
        lines.append(f"top {g}: " + ", ".join(f"L{r[0]}/{r[1]} ({r[2]}+{r[3]})" for r in top))
    return "\n".join(lines)

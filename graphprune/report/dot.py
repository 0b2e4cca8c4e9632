"""The dependency graph of a :class:`~graphprune.Coupling` as Graphviz DOT text or a PNG.

Ellipses are the layers (FX nodes) that produce channels, drawn inside one box per group;
solid edges join layers whose channels are coupled (a residual add, a depthwise conv);
the boxes below a group are the tensor slices its channels index (``tensor[dim] role``).

>>> import torch, graphprune
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 2, 1))
>>> dot = to_dot(graphprune.couple(net, example_inputs=torch.randn(1, 3, 8, 8)))
>>> print(dot.splitlines()[0]); 'label="0.weight[0] producer"' in dot
digraph graphprune {
True
"""

from __future__ import annotations

from pathlib import Path

from ..coupling import Coupling

__all__ = ["to_dot", "write_png"]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(coupling: Coupling) -> str:
    """DOT text: one cluster per group with its producing layers, join edges, and the tensors it slices."""
    graph = coupling.graph
    lines = ["digraph graphprune {", "  rankdir=TB; node [fontsize=10];"]
    for group in coupling.groups:
        state = "pinned" if not group.prunable else f"{group.num_prunable} prunable"
        lines.append(f"  subgraph cluster_{group.id} {{")
        title = f"group {group.id}: {group.size} channels, {state}"
        lines.append(f"    label={_quote(title)}; style=rounded;")
        spaces = [s for s, data in graph.nodes(data=True) if data.get("group") == group.id]
        for s in spaces:
            label = f"{graph.nodes[s]['node']} ({graph.nodes[s]['size']} ch)"
            lines.append(f"    s{s} [label={_quote(label)}];")
        # One box per group and slice: a tensor indexed by several groups (after a concat) shows in each.
        for i, member in enumerate(group.members):
            label = f"{member.use.tensor}[{member.use.dim}] {member.use.role}"
            lines.append(f"    g{group.id}_t{i} [shape=box, label={_quote(label)}];")
        lines.append("  }")
        if spaces:
            for i in range(len(group.members)):
                lines.append(f"  s{spaces[0]} -> g{group.id}_t{i} [style=dashed, arrowhead=none];")
    for a, b in graph.edges():
        lines.append(f"  s{a} -> s{b} [dir=none];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_png(coupling: Coupling, path: str | Path) -> None:
    """Draw the layer graph with matplotlib: one colour per group, edges for coupled layers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    graph = coupling.graph
    n = graph.number_of_nodes()
    fig, ax = plt.subplots(figsize=(min(4 + 0.25 * n, 30), min(3 + 0.2 * n, 30)))
    pos = nx.kamada_kawai_layout(graph) if 1 < n <= 400 else nx.spring_layout(graph, seed=0)
    colors = [graph.nodes[s].get("group", 0) for s in graph.nodes]
    nx.draw_networkx(graph, pos, ax=ax, node_color=colors, cmap="tab20", node_size=120, font_size=6,
                     labels={s: graph.nodes[s]["node"] for s in graph.nodes})
    ax.set_title(f"{len(coupling.groups)} groups of coupled channels (colour = group)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

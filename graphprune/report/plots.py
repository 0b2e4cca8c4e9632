"""Pictures of a shrink: channel widths per layer, before and after.

>>> import torch, graphprune, tempfile, pathlib
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
>>> small = graphprune.shrink(model, 0.5, example_inputs=torch.randn(1, 3, 8, 8))
>>> layer_widths(model, small)
[('0', 8, 4), ('2', 2, 2)]
>>> path = plot_widths(model, small, pathlib.Path(tempfile.mkdtemp()) / "widths.png")
>>> path.read_bytes()[:4] == b"\\x89PNG"
True
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

__all__ = ["layer_widths", "plot_widths"]


def _width(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    return None


def layer_widths(model: nn.Module, shrunk: nn.Module) -> list[tuple[str, int, int]]:
    """(layer, width before, width after) for every conv and linear, in model order (matched by name)."""
    after = dict(shrunk.named_modules())
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or name not in after:
            continue
        before_w, after_w = _width(module), _width(after[name])
        if before_w is not None and after_w is not None:
            rows.append((name, before_w, after_w))
    return rows


def plot_widths(model: nn.Module, shrunk: nn.Module, path: str | Path, *, title: str | None = None) -> Path:
    """A bar chart of output widths per layer, dense vs shrunk, saved as a PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = layer_widths(model, shrunk)
    names = [r[0] for r in rows]
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(rows) + 2), 4.5))
    ax.bar([x - 0.2 for x in xs], [r[1] for r in rows], width=0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [r[2] for r in rows], width=0.4, label="after")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("output channels")
    ax.set_title(title or f"Channel widths: {type(model).__name__}")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""Small models shared by the deployment tests; importable as specs (``tests.models:OldVGG``)."""

import torch
from torch import nn

__all__ = ["OldVGG", "WindowedNet", "clamp_window"]


class OldVGG(nn.Module):
    """A VGG-style net for 1x3x16x16 inputs whose forward has a literal view size.

    Shrinking it rewrites that graph constant, so the result is a ``torch.fx.GraphModule``.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), 32 * 4 * 4))


def clamp_window(window: list[int], size: list[int]) -> list[int]:
    """Shrink each side of ``window`` to the input's, in place (as torchvision's video Swin does)."""
    for i in range(len(window)):
        if size[i] < window[i]:
            window[i] = size[i]
    return window


torch.fx.wrap("clamp_window")


class WindowedNet(nn.Module):
    """Pools over a window that an fx-wrapped function clamps in place, then flattens with a literal size.

    The literal (32) is a channel count, so shrinking rewrites it and returns a ``torch.fx.GraphModule``
    whose ``clamp_window`` call receives a list literal from the graph.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.window = [8, 8]
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.features(x)
        window = clamp_window(self.window.copy(), [x.shape[2], x.shape[3]])
        x = nn.functional.avg_pool2d(x, window)
        return self.classifier(x.reshape(x.size(0), 32))

"""Small models shared by the deployment tests; importable as specs (``tests.models:OldVGG``)."""

from torch import nn

__all__ = ["OldVGG"]


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

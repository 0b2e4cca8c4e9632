"""Small CIFAR-style models for 32x32 inputs: an 8-conv VGG with BatchNorm, and a narrow ResNet-20.

Both are sized to train on scikit-learn's digits in a minute or two on one CPU thread.

>>> import torch
>>> VGG8()(torch.randn(2, 1, 32, 32)).shape, ResNet20()(torch.randn(2, 1, 32, 32)).shape
(torch.Size([2, 10]), torch.Size([2, 10]))
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VGG8", "ResNet20", "BasicBlock", "MODELS"]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class VGG8(nn.Module):
    """Eight 3x3 conv-BN-ReLU layers in four pairs, each pair followed by 2x2 max pooling, then a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 16, 32, 32, 64, 64, 128, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, width in enumerate(widths):
            layers += _conv_bn(cin, width)
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; a 1x1 conv projects the shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 layout (a stem and three stages of three basic blocks), narrowed to 8/16/32 channels."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, int, int] = (8, 16, 32), blocks: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(*[BasicBlock(cin if b == 0 else width, width, 2 if i > 0 and b == 0 else 1) for b in range(blocks)]))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


MODELS = {"vgg8": VGG8, "resnet20": ResNet20}

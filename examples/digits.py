"""scikit-learn's handwritten digits as a small offline image task, and the train / evaluate / distil loops.

The 8x8 images (shipped inside scikit-learn, no download) are upsampled to 32x32 with bilinear
interpolation and standardised; a fixed, stratified 80/20 split gives 1437 training and 360 test images.

>>> data = load_digits_32()
>>> data.x_train.shape, data.x_test.shape
(torch.Size([1437, 1, 32, 32]), torch.Size([360, 1, 32, 32]))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import graphprune

__all__ = ["Digits", "load_digits_32", "train", "finetune_distilled", "accuracy"]


@dataclass
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_32(seed: int = 0) -> Digits:
    """The digits, 1x32x32 float images standardised with the training set's mean and std."""
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=seed, stratify=bunch.target)
    x_train, x_test = images[train_idx], images[test_idx]
    mean, std = x_train.mean(), x_train.std()
    return Digits((x_train - mean) / std, labels[train_idx], (x_test - mean) / std, labels[test_idx])


def _shifted(x: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Random translations by up to ``pixels`` (zero-padded crops): the only augmentation."""
    padded = F.pad(x, (pixels,) * 4)
    dx, dy = torch.randint(0, 2 * pixels + 1, (2,), generator=generator).tolist()
    return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _loop(model: nn.Module, data: Digits, epochs: int, lr: float, seed: int, loss_fn) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * -(-len(data.y_train) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
    model.train()
    for _ in range(epochs):
        for idx in _batches(len(data.y_train), 64, generator):
            x = _shifted(data.x_train[idx], generator)
            loss = loss_fn(model, x, data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def train(model: nn.Module, data: Digits, *, epochs: int, lr: float = 0.1, seed: int = 0) -> nn.Module:
    """Cross-entropy training with SGD, Nesterov momentum and a one-cycle schedule; returns the model in eval mode."""
    _loop(model, data, epochs, lr, seed, lambda m, x, y: F.cross_entropy(m(x), y))
    return model


def finetune_distilled(student: nn.Module, teacher: nn.Module, data: Digits, *, epochs: int, lr: float = 0.02,
                       seed: int = 0, T: float = 4.0, alpha: float = 0.5) -> nn.Module:
    """Fine-tune a pruned model with the dense one as teacher (:func:`graphprune.distillation_loss`)."""
    teacher.eval()

    def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(x)
        return graphprune.distillation_loss(m(x), teacher_logits, y, T=T, alpha=alpha)

    _loop(student, data, epochs, lr, seed, loss_fn)
    return student


@torch.no_grad()
def accuracy(model: nn.Module, data: Digits) -> float:
    """Top-1 accuracy on the test split, in eval mode."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(data.x_test.split(256), data.y_test.split(256)))
    model.train(was_training)
    return correct / len(data.y_test)

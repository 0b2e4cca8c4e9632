"""Knowledge distillation for the fine-tune step: the dense model teaches the pruned one.

The loss of Hinton et al. (2015): the KL divergence from the teacher's softened
distribution to the student's, both at temperature ``T``, scaled by ``T**2`` so
its gradients keep their size as ``T`` changes; with labels, mixed with the
ordinary cross-entropy: ``alpha * T**2 * KL + (1 - alpha) * CE``.

>>> import math, torch
>>> student = torch.zeros(1, 2)
>>> teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax: (0.75, 0.25)
>>> kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
>>> round(float(distillation_loss(student, teacher, T=1.0)), 6), round(kl, 6)
(0.130812, 0.130812)
>>> ce = math.log(2.0)  # the student is uniform over two classes
>>> float(distillation_loss(student, teacher, torch.tensor([0]), T=1.0, alpha=0.25)) - (0.25 * kl + 0.75 * ce) < 1e-6
True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..base.checks import check_fraction
from ..base.errors import InputError
from ..base.running import call_model, eval_mode

__all__ = ["distillation_loss", "distill_step"]


def _classes_last(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, *rest) -> (N * prod(rest), C): the class dim is dim 1, as for cross_entropy."""
    return logits.movedim(1, -1).reshape(-1, logits.shape[1]) if logits.ndim > 2 else logits


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
                      T: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """``T**2 * KL(teacher_T || student_T)``, mixed as ``alpha * soft + (1 - alpha) * CE`` when ``labels`` are given.

    Logits have the class dim at 1, like :func:`torch.nn.functional.cross_entropy`; the KL term is
    averaged over every other position. Without labels the soft term is returned alone (``alpha`` unused).
    No gradient flows into the teacher.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim < 2:
        raise InputError(f"student and teacher logits must have the same (N, C, ...) shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if not T > 0:
        raise InputError(f"the temperature T must be positive, got {T!r}")
    check_fraction(alpha, "alpha", low_closed=True, hint="alpha weighs the soft term against the cross-entropy")
    s = _classes_last(student_logits).float()
    t = _classes_last(teacher_logits.detach()).float()
    soft = F.kl_div(F.log_softmax(s / T, dim=-1), F.log_softmax(t / T, dim=-1), log_target=True,
                    reduction="batchmean") * (T * T)
    if labels is None:
        return soft
    hard = F.cross_entropy(student_logits.float(), labels)
    return alpha * soft + (1 - alpha) * hard


def distill_step(student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer, inputs: Any,
                 labels: torch.Tensor | None = None, *, T: float = 4.0, alpha: float = 0.5) -> float:
    """One optimisation step of ``student`` on :func:`distillation_loss`; returns the loss.

    The teacher runs in eval mode without gradients (its own modes are restored); the student is
    used in whatever mode it is in (call ``student.train()`` first).
    """
    with torch.no_grad(), eval_mode(teacher):
        teacher_logits = call_model(teacher, inputs)
    loss = distillation_loss(call_model(student, inputs), teacher_logits, labels, T=T, alpha=alpha)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())

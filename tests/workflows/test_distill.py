"""Knowledge distillation: the loss against hand-computed values, and a student that learns its teacher."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import graphprune


pytestmark = pytest.mark.usefixtures("one_thread")


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


STUDENT = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
TEACHER = np.array([[2.0, 1.0, 0.0], [1.0, 0.0, 2.5]])
LABELS = np.array([0, 2])


def _reference(T, alpha, labels):
    p, q = _softmax(TEACHER / T), _softmax(STUDENT / T)
    soft = T * T * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    if labels is None:
        return soft
    hard = -np.mean(np.log(_softmax(STUDENT))[np.arange(len(labels)), labels])
    return alpha * soft + (1 - alpha) * hard


@pytest.mark.parametrize("T, alpha, labels", [(4.0, 0.5, LABELS), (1.0, 0.9, LABELS), (2.0, 0.0, LABELS), (3.0, 0.5, None)])
def test_loss_matches_the_hand_computed_value(T, alpha, labels):
    got = graphprune.distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER),
                                       None if labels is None else torch.tensor(labels), T=T, alpha=alpha)
    assert math.isclose(float(got), _reference(T, alpha, labels), rel_tol=1e-6)


def test_known_numbers():
    # T=2: teacher (2, 0)/2 -> softmax (0.7311, 0.2689); student uniform. KL = sum p log(2p), times T^2 = 4.
    p = 1 / (1 + math.exp(-1))
    kl = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    got = graphprune.distillation_loss(torch.zeros(1, 2), torch.tensor([[2.0, 0.0]]), T=2.0)
    assert math.isclose(float(got), 4 * kl, rel_tol=1e-6) and math.isclose(4 * kl, 0.4438, abs_tol=1e-4)
    assert float(graphprune.distillation_loss(torch.tensor(STUDENT), torch.tensor(STUDENT))) == pytest.approx(0.0, abs=1e-7)


def test_class_dim_is_dim_one_for_dense_outputs():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 3, 3), torch.randn(2, 5, 3, 3)
    flat = graphprune.distillation_loss(s.permute(0, 2, 3, 1).reshape(-1, 5), t.permute(0, 2, 3, 1).reshape(-1, 5))
    assert torch.allclose(graphprune.distillation_loss(s, t), flat)


def test_no_gradient_reaches_the_teacher_and_bad_arguments_are_refused():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    graphprune.distillation_loss(s, t, torch.tensor([0, 1, 2, 0])).backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(graphprune.InputError, match="same"):
        graphprune.distillation_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(graphprune.InputError, match="temperature"):
        graphprune.distillation_loss(s, t, T=0.0)
    with pytest.raises(graphprune.InputError, match="alpha"):
        graphprune.distillation_loss(s, t, alpha=1.5)


def test_distill_step_teaches_the_student_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 4)).train()  # in eval mode, a linear map
    student = nn.Linear(6, 4)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    x = torch.randn(64, 6)
    losses = [graphprune.distill_step(student, teacher, opt, x, T=1.0) for _ in range(200)]
    assert losses[-1] < 0.2 * losses[0]
    assert teacher.training  # its mode is restored; it ran in eval mode, so its running statistics did not move
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        agree = (student(x).argmax(1) == teacher.eval()(x).argmax(1)).float().mean()
    assert agree > 0.95

"""Importance criteria: known answers on tiny layers."""

import numpy as np
import pytest
import torch
from torch import nn

import graphprune
from graphprune import InputError, PlanError
from graphprune.coupling import GroupMember, Role, TensorUse
from graphprune.planning.importance import (
    FPGM, NORMALIZERS, REDUCTIONS, Activation, BNScale, Magnitude, Random, Taylor, _per_channel, _reduce,
    bind_importance, resolve_importance, slice_norms, slice_powers,
)

from ..helpers import fingerprint


def _scores(model, x, criterion, source):
    coupling = graphprune.couple(model, example_inputs=x)
    group = next(g for g in coupling.groups if source in g.sources)
    tensors = {u.tensor: coupling.tensors[u.tensor] for u in coupling.uses}
    return bind_importance(criterion, coupling)(group, tensors)


class ConvBNConv(nn.Module):
    def __init__(self, c=6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def _dead_channel_model(dead=2):
    torch.manual_seed(0)
    model = ConvBNConv()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(0.1, 0.5)
        model.conv1.weight[dead] = 0
        model.conv1.bias[dead] = 0
        model.bn.weight[dead] = 0
        model.bn.bias[dead] = 0
        model.conv2.weight[:, dead] = 0
    return model.eval()


@pytest.mark.parametrize("criterion", [
    Magnitude(p=1), Magnitude(p=2), Magnitude(p=2, reduce="max"), Magnitude(p=1, reduce="sum", normalize="mean"), BNScale(),
])
def test_dead_channel_is_removed_first_static(criterion):
    x = torch.randn(2, 3, 8, 8)
    model = _dead_channel_model()
    scores = _scores(model, x, criterion, "conv1")
    assert scores[2] == 0 and (np.delete(scores, 2) > 0).all()
    plan = graphprune.plan(model, 1 / 6, example_inputs=x, importance=criterion)
    assert next(g for g in plan.groups if "conv1" in g.sources).removed == [2]


def test_dead_channel_is_removed_first_by_data_driven_criteria():
    x = torch.randn(4, 3, 8, 8)
    model = _dead_channel_model()
    before = fingerprint(model)
    taylor = Taylor([(x, torch.randn(4, 4, 8, 8))], nn.functional.mse_loss)
    for criterion in (taylor, Activation([x, x * 2])):
        scores = _scores(model, x, criterion, "conv1")
        assert scores[2] == 0 and (np.delete(scores, 2) > 0).all(), criterion
    assert fingerprint(model) == before  # no grads kept, no BatchNorm statistics updated
    assert all(p.grad is None for p in model.parameters())


def test_magnitude_known_values():
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]]))
        model[1].weight.copy_(torch.tensor([[0.0, 2.0, 6.0]]))
    x = torch.randn(1, 2)
    # L2: mean of the producer row norm and the consumer column norm.
    assert _scores(model, x, Magnitude(p=2), "_0").tolist() == [2.5, 1.5, 3.0]
    assert _scores(model, x, Magnitude(p=1, reduce="sum"), "_0").tolist() == [7.0, 3.0, 6.0]
    assert _scores(model, x, Magnitude(p=2, reduce="max"), "_0").tolist() == [5.0, 2.0, 6.0]
    # Normalised by each member's max first: producer [1, .2, 0], consumer [0, 1/3, 1].
    np.testing.assert_allclose(_scores(model, x, Magnitude(p=2, normalize="max"), "_0"), [0.5, (0.2 + 1 / 3) / 2, 0.5])


def test_fpgm_removes_the_filter_nearest_the_geometric_median():
    model = nn.Sequential(nn.Conv2d(2, 5, 1, bias=False), nn.ReLU(), nn.Conv2d(5, 1, 1))
    filters = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.1, 0.1]])
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(filters, dtype=torch.float32).reshape(5, 2, 1, 1))
    scores = _scores(model, torch.randn(1, 2, 4, 4), FPGM(), "_0")
    expected = [sum(np.linalg.norm(a - b) for b in filters) for a in filters]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert int(np.argmin(scores)) == 4
    plan = graphprune.plan(model, 0.2, example_inputs=torch.randn(1, 2, 4, 4), importance="fpgm")
    assert plan.groups[0].removed == [4]


def test_taylor_hand_computed():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        model[1].weight.copy_(torch.tensor([[0.5, 4.0]]))
    x = torch.tensor([[1.0, 2.0]])
    # L = w2 . (W1 x); W1 x = [5, 1]. Producer: |sum_k W1[j,k] w2_j x_k| = |w2_j (W1 x)_j|; consumer the same.
    crit = Taylor([(x, None)], lambda out, _: out.sum())
    np.testing.assert_allclose(_scores(model, x, crit, "_0"), [2.5, 4.0])
    # Two batches: gradients add before the product with w.
    crit2 = Taylor([(x, None), (-3 * x, None)], lambda out, _: out.sum())
    np.testing.assert_allclose(_scores(model, x, crit2, "_0"), [5.0, 8.0])


def test_activation_mean_absolute_value_of_consumer_inputs():
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [2.0, 2.0]]))
    batches = [torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, -1.0]])]
    # relu(W x): [1, 0, 4] and [3, 1, 4]; mean over the batches: [2, 0.5, 4].
    np.testing.assert_allclose(_scores(model, batches[0], Activation(batches), "_0"), [2.0, 0.5, 4.0])


def test_random_is_seeded():
    x = torch.randn(1, 3, 8, 8)
    model = ConvBNConv()
    a = _scores(model, x, Random(seed=1), "conv1")
    assert np.array_equal(a, _scores(model, x, Random(seed=1), "conv1"))
    assert not np.array_equal(a, _scores(model, x, Random(seed=2), "conv1"))


def test_user_callable_and_plan_record():
    x = torch.randn(1, 3, 8, 8)
    model = ConvBNConv()

    def descending(group, tensors):
        return -np.arange(group.size, dtype=float)

    plan = graphprune.plan(model, 0.5, example_inputs=x, importance=descending)
    assert next(g for g in plan.groups if "conv1" in g.sources).removed == [3, 4, 5]
    assert plan.importance == "descending"
    plan = graphprune.plan(model, 0.5, example_inputs=x, importance=Magnitude(p=1, reduce="max", normalize="mean"))
    assert graphprune.Plan.from_json(plan.to_json()).importance == "l1(reduce=max, normalize=mean)"


def test_bn_scale_needs_a_norm_or_a_fallback():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(PlanError, match="no norm layer"):
        graphprune.plan(model, 0.5, example_inputs=x, importance="bn_scale")
    plan = graphprune.plan(model, 0.5, example_inputs=x, importance=BNScale(fallback=Magnitude()))
    assert len(plan.groups[0].removed) == 2


def test_bad_importance_options_are_refused():
    with pytest.raises(InputError, match="reduction"):
        Magnitude(reduce="median")
    with pytest.raises(InputError, match="normalisation"):
        Magnitude(normalize="std")
    with pytest.raises(InputError, match="needs data"):
        resolve_importance("taylor")
    with pytest.raises(InputError, match="calibration"):
        Taylor(None, None)


@pytest.mark.parametrize("shape, dim", [((5,), 0), ((7, 3), 0), ((7, 3), 1), ((6, 4, 3, 3), 0), ((6, 4, 3, 3), 1),
                                        ((2, 5, 4, 3), 2), ((40, 30, 1, 1), 1), ((3, 1), 1)])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_slice_norms_agree_with_float64_on_every_path(shape, dim, p):
    """The numpy path (float32/float64 on the CPU) and torch's path (another dtype), in one chunk or in several
    (more entries than ``chunk``), give each slice's Lp norm and its sum of powers, to float32 rounding."""
    t = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    for weight, chunk in [(t, 1 << 22), (t.double(), 1 << 22), (t.half(), 1 << 22), (t.half(), 16),
                          (t.requires_grad_(), 1 << 22)]:
        powers = weight.detach().double().abs().pow(p).movedim(dim, 0).reshape(shape[dim], -1).sum(1)
        # A sum of p-th powers carries p times the relative rounding of its root.
        for got, exact, rtol in [(slice_norms(weight, dim, p, chunk=chunk), powers.pow(1 / p), 2e-6),
                                 (slice_powers(weight, dim, p, chunk=chunk), powers, 2e-6 * p)]:
            assert got.dtype == np.float64 and got.shape == (shape[dim],)
            np.testing.assert_allclose(got, exact.numpy(), rtol=rtol)


def _reduce_row_by_row(rows, reduce, normalize):
    """The definition of a criterion's reduction, one member's row at a time."""
    scaled = []
    for scores, covered in rows:
        scores = np.where(covered, scores, 0.0)
        if normalize is not None and covered.any():
            scale = getattr(scores[covered], normalize)()
            scores = scores / scale if scale > 0 else scores
        scaled.append(scores)
    scores, covered = np.stack(scaled), np.stack([c for _, c in rows])
    if reduce == "max":
        return np.where(covered, scores, -np.inf).max(axis=0).clip(min=0.0)
    return scores.sum(axis=0) / (1 if reduce == "sum" else np.maximum(covered.sum(axis=0), 1))


@pytest.mark.parametrize("reduce", REDUCTIONS)
@pytest.mark.parametrize("normalize", NORMALIZERS)
def test_the_reduction_over_members_follows_its_definition_row_by_row(reduce, normalize):
    """Members covering part of the group, none of it, or a zero row (no scale to divide by)."""
    rng = np.random.default_rng(0)
    for trial in range(50):
        size, n = int(rng.integers(1, 9)), int(rng.integers(1, 6))
        rows = [(rng.random(size) * rng.choice([0.0, 1.0, 3.0]), rng.random(size) < rng.choice([0.0, 0.5, 1.0]))
                for _ in range(n)]
        np.testing.assert_allclose(_reduce(rows, reduce, normalize), _reduce_row_by_row(rows, reduce, normalize),
                                   rtol=1e-12, atol=0)


def test_a_whole_member_folds_as_the_general_path_does():
    use = TensorUse("w", 0, np.arange(4), Role.PRODUCER, "conv")
    values = np.array([3.0, 1.0, 4.0, 1.5])
    for combine in ("sum", "max"):
        general = _per_channel(GroupMember(use, np.arange(4), np.arange(4)), values, 4, combine)
        whole = _per_channel(GroupMember(use, np.arange(4), np.arange(4), whole=True), values, 4, combine)
        assert all(np.array_equal(a, b) for a, b in zip(general, whole))


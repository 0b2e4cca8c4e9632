"""Known shapes (:mod:`graphprune.capture.shortcuts`) agree with the meta kernels they stand in for.

Shape propagation answers some calls on meta tensors by a formula instead of running their kernels; a formula
that disagreed would give the coupling wrong shapes. Each case here is drawn at random and compared with the
kernel's own meta result: shape, dtype and strides, or both declining (the shortcut returns None whenever it is
not sure, and the kernel then runs).
"""

import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from graphprune.capture.shortcuts import known_call

BINARY = [operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.mul,
          torch.Tensor.__radd__, torch.Tensor.__rmul__]


@st.composite
def broadcast_pairs(draw):
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    other = [draw(st.sampled_from([n, 1])) for n in shape[draw(st.integers(0, len(shape) - 1)):]]
    if draw(st.booleans()):
        shape, other = other, shape  # the broadcast one first
    return shape, other


def _same(answer, expected):
    assert answer.shape == expected.shape and answer.dtype == expected.dtype and answer.device.type == "meta"
    assert answer.stride() == expected.stride()


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(BINARY), shapes=broadcast_pairs(), scalar=st.sampled_from([None, 2, 0.5]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.int64]))
def test_an_elementwise_binary_op_is_answered_as_its_kernel_would(op, shapes, scalar, dtype):
    x = torch.empty(shapes[0], dtype=dtype, device="meta")
    other = torch.empty(shapes[1], dtype=dtype, device="meta") if scalar is None else scalar
    answer = known_call(op, (x, other), {})
    expected = op(x, other)
    if answer is None:
        assert not dtype.is_floating_point  # an integer tensor divided, or over a float, promotes
    else:
        _same(answer, expected)


def test_operands_the_formula_cannot_vouch_for_run_their_kernel():
    x = torch.empty(2, 3, 4, device="meta")
    assert known_call(operator.add, (x, torch.empty(4, 3, device="meta").t()), {}) is None  # not contiguous
    assert known_call(operator.add, (x, torch.empty(3, 4, dtype=torch.float16, device="meta")), {}) is None
    assert known_call(operator.add, (x, torch.empty(5, device="meta")), {}) is None  # the op's own error
    assert known_call(torch.add, (x, x), {"out": x}) is None
    assert known_call(operator.add, (torch.empty(2, 3), torch.empty(2, 3)), {}) is None  # real tensors run


@pytest.mark.parametrize("func", [F.relu, torch.sigmoid, F.silu])
def test_an_activation_of_a_transposed_tensor_keeps_its_layout(func):
    x = torch.empty(4, 6, device="meta").t()
    _same(known_call(func, (x,), {}), func(x))
    _same(known_call(func, (x.contiguous(),), {}), func(x.contiguous()))


@settings(max_examples=300, deadline=None)
@given(n=st.sampled_from([1, 2, 3]), batched=st.booleans(), data=st.data())
def test_an_adaptive_average_pool_is_answered_as_its_kernel_would(n, batched, data):
    func = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[n]
    shape = [data.draw(st.integers(1, 4)) for _ in range(n + 1 + batched)]
    size = data.draw(st.one_of(st.integers(1, 5), st.lists(st.one_of(st.none(), st.integers(1, 5)),
                                                            min_size=n, max_size=n)))
    if n == 1 and isinstance(size, list):
        size = size if size[0] is not None else 1  # adaptive_avg_pool1d takes no None
    x = torch.empty(shape, device="meta")
    answer, expected = known_call(func, (x, size), {}), func(x, size)
    assert answer is not None
    _same(answer, expected)


@settings(max_examples=300, deadline=None)
@given(shape=st.lists(st.integers(0, 4), max_size=5), layout=st.sampled_from(["contiguous", "channels_last", "t"]))
def test_propagated_metadata_is_what_shape_prop_records(shape, layout):
    from torch.fx.passes.shape_prop import _extract_tensor_metadata

    from graphprune.capture.shapes import _tensor_metadata

    t = torch.empty(shape, device="meta")
    if layout == "channels_last" and t.dim() in (4, 5):
        t = t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
    elif layout == "t" and t.dim() >= 2:
        t = t.transpose(0, -1)
    assert _tensor_metadata(t) == _extract_tensor_metadata(t)

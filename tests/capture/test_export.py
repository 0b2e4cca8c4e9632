"""The torch.export capture path: the models symbolic tracing turns away get every guarantee of the FX path.

Each model here is one that ``torch.fx`` cannot trace (a shape branch, a loop over chunks, a ``*args``
forward) or a plain one captured with ``Scope(capture="export")``. For each: exact on the kept channels,
the user's class back where its forward is proven to agree, the original bit-identical, the same plan on
every run, the plan's capture replayed by ``apply`` and ``load``, and batch sizes and resolutions the
original takes.
"""

import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import graphprune
from graphprune import Scope

from ..helpers import fingerprint, spread_batchnorm

EXPORT = Scope(capture="export")


class ShapeBranch(nn.Module):
    """Pools only when the map is large enough: a branch on a shape, fixed once the input size is."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.bn(self.conv1(x)))
        y = F.max_pool2d(y, 2) if y.shape[-1] >= 4 else y
        return self.conv2(y)


class ChunkLoop(nn.Module):
    """YOLO's C2f pattern: a list of chunks, extended in a loop, then concatenated."""

    def __init__(self):
        super().__init__()
        self.cv1 = nn.Conv2d(3, 16, 1)
        self.blocks = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(2))
        self.cv2 = nn.Conv2d(32, 6, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.blocks:
            y.append(F.silu(block(y[-1])))
        return self.cv2(torch.cat(y, 1))


def _logged(forward):
    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        return forward(*args, **kwargs)
    return wrapper


class StarArgs(nn.Module):
    """A decorated ``forward(*args, **kwargs)`` (ultralytics' and transformers' style)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x, *args, **kwargs):
        for extra in args:  # iterating a proxy tuple stops symbolic tracing
            x = x + extra
        return self.head(F.relu(self.bn(self.stem(x))))


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # a branch on values: specialising it would be wrong on the other branch
            return self.conv(x)
        return x


class IntSplit(nn.Module):
    """Splits by plain ``int`` attributes that no module resizer knows about."""

    def __init__(self, c=8):
        super().__init__()
        self.a = self.b = c
        self.conv = nn.Conv2d(3, 2 * c, 3, padding=1)
        self.left = nn.Conv2d(c, 4, 1)
        self.right = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        a, b = torch.split(self.conv(x), (self.a, self.b), 1)
        y = self.left(a) + self.right(b)
        return F.max_pool2d(y, 2) if y.shape[-1] >= 4 else y  # so that only torch.export captures it


class Roll(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        y = F.max_pool2d(y, 2) if y.shape[-1] >= 4 else y
        return self.head(torch.roll(y, 1, dims=1))  # mixes channel indices: no rule


MODELS = {
    "shape_branch": (ShapeBranch, (2, 3, 16, 16)),
    "chunk_loop": (ChunkLoop, (2, 3, 12, 12)),
    "star_args": (StarArgs, (2, 3, 10, 10)),
}


def _model(name):
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    return spread_batchnorm(factory()).eval(), torch.randn(shape)


@pytest.mark.parametrize("name", MODELS)
def test_symbolic_tracing_refuses_it_and_auto_exports_it_exactly_keeping_the_class(name):
    model, x = _model(name)
    with pytest.raises(graphprune.TraceError):
        graphprune.couple(model, example_inputs=x, scope=Scope(capture="fx"))
    before = fingerprint(model)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert plan.capture == "export" and any(g.removed for g in plan.groups)
    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.RewriteWarning)
        shrunk = graphprune.apply(model, plan)
    assert type(shrunk) is type(model)
    assert graphprune.count_params(shrunk) < graphprune.count_params(model)
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5
    assert fingerprint(model) == before


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch,size", [(1, 16), (3, 16), (2, 24)])
def test_shrunk_model_takes_the_batches_and_resolutions_the_original_takes(name, batch, size):
    model, x = _model(name)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    y = torch.randn(batch, 3, size, size)
    assert graphprune.verify(model, plan, shrunk, (y,)) <= 1e-5


def test_value_branch_is_refused_on_both_paths_with_one_error():
    model = ValueBranch()
    before = fingerprint(model)
    with pytest.raises(graphprune.TraceError) as info:
        graphprune.shrink(model, 0.5, example_inputs=torch.randn(1, 3, 8, 8))
    text = str(info.value)
    assert "neither capture" in text and "torch.fx" in text and "torch.export" in text
    assert "data-dependent" in text and "x.sum() > 0" in text
    with pytest.raises(graphprune.TraceError, match="data-dependent"):
        graphprune.shrink(model, 0.5, example_inputs=torch.randn(1, 3, 8, 8), scope=EXPORT)
    assert fingerprint(model) == before


def test_op_without_rule_names_the_aten_node_and_the_users_line():
    model = Roll()
    before = fingerprint(model)
    with pytest.raises(graphprune.UnsupportedOpError) as info:
        graphprune.shrink(model, 0.5, example_inputs=torch.randn(2, 3, 8, 8))
    text = str(info.value)
    assert "aten.roll" in text and "torch.roll(y, 1, dims=1)" in text and "test_export.py" in text
    assert "hint:" in text
    assert fingerprint(model) == before


def test_plain_model_on_the_export_path_plans_what_symbolic_tracing_plans():
    torch.manual_seed(0)
    model = spread_batchnorm(torchvision.models.resnet18()).eval()
    x = torch.randn(1, 3, 32, 32)
    fx = graphprune.plan(model, 0.5, example_inputs=x)
    exported = graphprune.plan(model, 0.5, example_inputs=x, scope=EXPORT)
    assert fx.capture == "fx" and exported.capture == "export"
    assert {n: (e.shape, e.keep) for n, e in exported.tensors.items()} == {
        n: (e.shape, e.keep) for n, e in fx.tensors.items()}
    shrunk = graphprune.apply(model, exported)
    assert type(shrunk) is torchvision.models.ResNet
    assert graphprune.verify(model, exported, shrunk, x) <= 1e-5


def test_strict_export_is_recorded_and_replayed():
    model, x = _model("shape_branch")
    plan = graphprune.plan(model, 0.5, example_inputs=x, scope=Scope(capture="export", strict=True))
    assert plan.capture == "export-strict"
    again = graphprune.Plan.from_json(plan.to_json())
    assert again.capture == "export-strict"
    shrunk = graphprune.apply(model, again)
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5


def test_plans_are_deterministic_and_replay_through_json_save_and_load(tmp_path):
    model, x = _model("chunk_loop")
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert graphprune.plan(model, 0.5, example_inputs=x).to_json() == plan.to_json()
    replayed = graphprune.Plan.from_json(plan.to_json())
    assert replayed.capture == "export"
    shrunk = graphprune.apply(model, replayed)
    with torch.no_grad():
        shrunk.cv1.weight.mul_(1.5)  # trained after pruning: load must bring back these weights, not the plan's
    graphprune.save(shrunk, tmp_path / "m", base="tests.capture.test_export:ChunkLoop")
    loaded = graphprune.load(tmp_path / "m")
    assert type(loaded) is ChunkLoop and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), shrunk(x), rtol=0, atol=0)


def test_tuple_attribute_split_returns_the_rewritten_graph_with_a_warning_naming_the_line(tmp_path):
    torch.manual_seed(0)
    model, x = TupleSplit().eval(), torch.randn(2, 3, 8, 8)
    with pytest.warns(graphprune.RewriteWarning) as record:
        shrunk = graphprune.shrink(model, 0.5, example_inputs=x)
    text = str(record[0].message)
    assert "torch.fx.GraphModule" in text and "TupleSplit" in text
    assert "torch.split(self.conv(x), self.sizes, 1)" in text and "resizer" in text
    assert isinstance(shrunk, torch.fx.GraphModule)
    plan = graphprune.plans_of(shrunk)[-1]
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5
    assert "the example's shapes only" in text
    y = torch.randn(3, 3, 8, 8)
    with pytest.raises(AssertionError, match="Guard failed"):  # the graph's guards refuse another batch, loudly
        shrunk(y)
    y = torch.randn(2, 3, 8, 8)
    assert graphprune.count_params(shrunk) < graphprune.count_params(model)
    graphprune.save(shrunk, tmp_path / "m", base="tests.capture.test_export:TupleSplit")
    with pytest.warns(graphprune.RewriteWarning):  # the plan is replayed on the export path: the same graph again
        loaded = graphprune.load(tmp_path / "m")
    assert isinstance(loaded, torch.fx.GraphModule)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y), shrunk(y), rtol=0, atol=0)


class TupleSplit(nn.Module):
    """Splits by a tuple attribute: no resizer knows it, and only ``int`` attributes are searched for widths."""

    def __init__(self, c=8):
        super().__init__()
        self.sizes = (c, c)
        self.conv = nn.Conv2d(3, 2 * c, 3, padding=1)
        self.left = nn.Conv2d(c, 4, 1)
        self.right = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        a, b = torch.split(self.conv(x), self.sizes, 1)
        y = self.left(a) + self.right(b)
        return F.max_pool2d(y, 2) if y.shape[-1] >= 4 else y  # so that only torch.export captures it


def test_two_int_attributes_holding_one_width_are_both_set_when_that_computes_the_same():
    """``a`` and ``b`` both hold 8, the width both pieces had: setting the one the split's edit changed is
    ambiguous, so the rewrite tries each and both, and keeps the class once one computes what the graph does."""
    torch.manual_seed(0)
    model, x = IntSplit().eval(), torch.randn(2, 3, 8, 8)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shrunk = graphprune.apply(model, plan)
    assert type(shrunk) is IntSplit  # the ratio leaves both pieces 4 of 8, which both attributes can say
    assert (shrunk.a, shrunk.b) == (4, 4) == (shrunk.left.in_channels, shrunk.right.in_channels) and model.a == 8
    assert not [w for w in caught if issubclass(w.category, graphprune.RewriteWarning)]
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5


class OneIntSplit(nn.Module):
    """ultralytics' C2PSA: both halves sized by one ``int`` attribute, ``split((self.c, self.c), 1)``."""

    def __init__(self, c=8):
        super().__init__()
        self.c = c
        self.conv = nn.Conv2d(3, 2 * c, 3, padding=1)
        self.left, self.right = nn.Conv2d(c, 4, 1), nn.Conv2d(c, 4, 1)

    def forward(self, x):
        a, b = self.conv(x).split((self.c, self.c), 1)
        y = self.left(a) + self.right(b)
        return F.max_pool2d(y, 2) if y.shape[-1] >= 4 else y  # so that only torch.export captures it


def test_the_int_attribute_that_held_a_rewritten_width_is_updated_and_the_class_comes_back():
    """Equal split sizes stay equal, so the one attribute they came from can say the new width; the rewrite sets
    it once the class, run against the rewritten graph, proves it."""
    torch.manual_seed(0)
    model, x = OneIntSplit().eval(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.RewriteWarning)
        shrunk = graphprune.shrink(model, 0.5, example_inputs=x)
    assert type(shrunk) is OneIntSplit and model.c == 8
    assert 2 * shrunk.c == shrunk.conv.out_channels < 16 and shrunk.left.in_channels == shrunk.c
    plan = graphprune.plans_of(shrunk)[-1]
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5
    assert graphprune.verify(model, plan, shrunk, (torch.randn(3, 3, 12, 12),)) <= 1e-5  # any size, as the class


def test_a_resizer_for_the_int_attribute_gives_the_class_back():
    torch.manual_seed(0)
    model, x = IntSplit().eval(), torch.randn(2, 3, 8, 8)
    registry = graphprune.default_registry().copy()

    @registry.resizer(IntSplit)
    def _(module):  # the pieces may differ: one group of 16 channels feeds both
        module.a, module.b = module.left.in_channels, module.right.in_channels

    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.RewriteWarning)
        shrunk = graphprune.shrink(model, 0.5, example_inputs=x, scope=Scope(rules=registry))
    assert type(shrunk) is IntSplit and shrunk.a + shrunk.b == shrunk.conv.out_channels < model.conv.out_channels
    plan = graphprune.plans_of(shrunk)[-1]
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5


def test_shrunk_export_path_model_exports_again_and_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime

    model, x = _model("chunk_loop")
    shrunk = graphprune.shrink(model, 0.5, example_inputs=x)
    program = torch.export.export(shrunk, (x,))
    with torch.no_grad():
        expected = shrunk(x)
        torch.testing.assert_close(program.module()(x), expected)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(shrunk, (x,), path, dynamo=False)
    session = onnxruntime.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_the_user_model_keeps_its_training_mode_through_an_export_capture():
    model, x = _model("shape_branch")
    model.train()
    before = fingerprint(model)
    shrunk = graphprune.shrink(model, 0.5, example_inputs=x)
    assert model.training and fingerprint(model) == before
    assert shrunk.training  # the shrunk copy comes back in the mode the user's model was in


class TypeTest(nn.Module):
    """Pools only when ``isinstance(y, torch.Tensor)``: true in Python, false for a tracing proxy, so the traced
    graph silently skips the pooling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if isinstance(y, torch.Tensor):
            y = F.max_pool2d(y, 2)
        return self.head(y)


def test_a_traced_graph_that_is_not_the_model_is_caught_and_auto_exports_instead():
    model, x = TypeTest().eval(), torch.randn(2, 3, 8, 8)
    before = fingerprint(model)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert plan.capture == "fx" and plan.output_shapes == [[2, 2, 8, 8]]  # tracing skipped the pooling
    with pytest.raises(graphprune.TraceError, match="followed another path than Python") as info:
        graphprune.apply(model, plan)
    assert "capture='export'" in str(info.value)
    with pytest.raises(graphprune.TraceError):  # in place: refused before anything changes
        graphprune.apply(model, plan, inplace=True)
    assert fingerprint(model) == before
    shrunk = graphprune.shrink(model, 0.5, example_inputs=x)
    assert graphprune.plans_of(shrunk)[-1].capture == "export" and type(shrunk) is TypeTest
    assert graphprune.verify(model, graphprune.plans_of(shrunk)[-1], shrunk, x) <= 1e-5
    assert fingerprint(model) == before


def test_a_trace_error_on_the_fx_path_suggests_export_and_the_one_from_both_paths_does_not():
    model, x = _model("shape_branch")
    with pytest.raises(graphprune.TraceError) as fx_only:
        graphprune.couple(model, example_inputs=x, scope=Scope(capture="fx"))
    assert "Scope(capture='export')" in str(fx_only.value)
    with pytest.raises(graphprune.TraceError) as both:
        graphprune.couple(ValueBranch(), example_inputs=torch.randn(1, 3, 8, 8))
    assert "neither capture" in str(both.value) and "capture='export'" not in str(both.value)

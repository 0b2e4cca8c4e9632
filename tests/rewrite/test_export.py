"""Shrunk models deploy: torch.export, ONNX (checked in onnxruntime), TorchScript, torch.compile.

The shrunk models are torchvision's resnet18, mobilenet_v2 (depthwise convs) and vgg11_bn,
plus a GraphModule whose view constant was rewritten (``OldVGG``), and one whose fx-wrapped function
edits a list literal in place (``WindowedNet``, the pattern of torchvision's video Swin). Every exported
artefact must give the shrunk model's outputs and carry its smaller weights.
"""

import warnings

import numpy as np
import pytest
import torch
import torchvision

import graphprune

from ..models import OldVGG, WindowedNet

CASES = {
    "resnet18": (lambda: torchvision.models.resnet18(), (1, 3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), (1, 3, 32, 32)),
    "vgg11_bn": (lambda: torchvision.models.vgg11_bn(), (1, 3, 32, 32)),
    "graph_module": (lambda: OldVGG(), (2, 3, 16, 16)),
    "wrapped_list_edit": (lambda: WindowedNet(), (2, 3, 4, 4)),  # 4x4 < the 8x8 window: clamp_window edits it
}


def _randomize(model):
    # Fresh BatchNorms are the identity up to scale; random affine terms and statistics make
    # outputs large and distinct enough that a wrong or missing channel shows.
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model.eval()


@pytest.fixture(scope="module")
def shrunk():
    """name -> (shrunk model, example input, its eager output), built once for the module."""
    torch.manual_seed(0)
    out = {}
    for name, (build, shape) in CASES.items():
        x = torch.randn(shape)
        model = _randomize(build())
        small = graphprune.shrink(model, 0.5, example_inputs=x).eval()
        assert graphprune.count_params(small) < 0.4 * graphprune.count_params(model)
        with torch.no_grad():
            y = small(x)
        assert y.abs().max() > 1e-3  # a meaningful output to compare against
        out[name] = (small, x, y)
    assert isinstance(out["graph_module"][0], torch.fx.GraphModule)
    assert isinstance(out["wrapped_list_edit"][0], torch.fx.GraphModule)
    return out


def _close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("name", list(CASES))
def test_torch_export(shrunk, name):
    small, x, y = shrunk[name]
    program = torch.export.export(small, (x,))
    exported_params = sum(p.numel() for p in program.parameters())
    assert exported_params == graphprune.count_params(small)
    with torch.no_grad():
        _close(program.module()(x), y)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "graph_module",
                                  pytest.param("vgg11_bn", marks=pytest.mark.slow)])
def test_onnx_matches_in_onnxruntime(shrunk, name):
    import onnxruntime

    small, x, y = shrunk[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(small, (x,), dynamo=True, verbose=False)
    proto = program.model_proto
    initializer_sizes = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    assert initializer_sizes <= graphprune.count_params(small) + sum(b.numel() for b in small.buffers())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    _close(result, y)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # TorchScript is deprecated, still deployed widely
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_torchscript_trace_and_script(shrunk, name, tmp_path):
    small, x, y = shrunk[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(small, x)
    scripted = torch.jit.script(small)
    for module in (traced, scripted):
        module.save(str(tmp_path / "m.pt"))
        reloaded = torch.jit.load(str(tmp_path / "m.pt"))
        with torch.no_grad():
            _close(reloaded(x), y)


@pytest.mark.slow  # about a minute on one core: inductor generates and compiles C++
def test_torch_compile_inductor_cpu(shrunk):
    # One small model only: inductor compiles C++ kernels, which takes a while on one core.
    small, x, y = shrunk["graph_module"]
    torch._dynamo.reset()
    compiled = torch.compile(small, backend="inductor")
    with torch.no_grad():
        _close(compiled(x), y)


@pytest.mark.slow  # about 20 s on one core: planning a video Swin
def test_torch_export_of_shrunk_swin3d_t():
    # torch.export runs a GraphModule through torch.fx.Interpreter, which hands the graph's own
    # immutable lists to _get_window_and_shift_size; that function clamps them in place.
    torch.manual_seed(0)
    model = torchvision.models.video.swin3d_t().eval()
    x = torch.randn(1, 3, 2, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", graphprune.InexactWarning)  # LayerNorm over removed channels
        small = graphprune.shrink(model, 0.5, example_inputs=x).eval()
    assert isinstance(small, torch.fx.GraphModule)
    program = torch.export.export(small, (x,))
    assert sum(p.numel() for p in program.parameters()) == graphprune.count_params(small)
    with torch.no_grad():
        _close(program.module()(x), small(x))

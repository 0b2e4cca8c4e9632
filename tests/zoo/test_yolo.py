"""Stock ultralytics YOLO (v8, 11, 26; detect, segment, pose), built offline from their yaml with random weights:
``graphprune.shrink(yolo.model, 0.5)`` captures them with torch.export (symbolic tracing cannot), is exact on the
kept channels with the heads' output sizes unchanged, leaves the original untouched, and comes back as the
ultralytics class: 11's and 26's C2PSA fixes its split widths in ``self.c`` and its attention's head count in
``num_heads``, which the rewrite sets to the new widths once the graph proves them.
"""

import copy
import os
import warnings

import pytest
import torch

import graphprune

from ..helpers import fingerprint


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    os.environ["YOLO_OFFLINE"] = "1"  # nothing downloaded, and settings written to a temporary directory
    os.environ["YOLO_CONFIG_DIR"] = str(tmp_path_factory.mktemp("ultralytics"))
    return pytest.importorskip("ultralytics").YOLO


CASES = [("yolov8n.yaml", "DetectionModel"), ("yolo11n.yaml", "DetectionModel"), ("yolo26n.yaml", "DetectionModel"),
         ("yolo11n-seg.yaml", "SegmentationModel"), ("yolov8n-pose.yaml", "PoseModel")]


@pytest.mark.parametrize("name,cls", CASES, ids=[c[0].removesuffix(".yaml") for c in CASES])
def test_stock_yolo_shrinks_exactly(yolo, name, cls):
    torch.manual_seed(0)
    model = yolo(name).model.eval()
    x = torch.randn(1, 3, 160, 160)
    before = fingerprint(model)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    assert plan.capture == "export" and plan.exact
    with warnings.catch_warnings():
        warnings.simplefilter("error", graphprune.RewriteWarning)  # the class comes back, so nothing to warn of
        shrunk = graphprune.apply(model, plan)
    assert graphprune.count_params(shrunk) < 0.45 * graphprune.count_params(model)
    assert graphprune.verify(model, plan, shrunk, x) <= 1e-5
    assert type(shrunk).__name__ == cls and type(shrunk) is type(model)
    other = torch.randn(2, 3, 224, 224)  # the class takes other batches and resolutions
    assert graphprune.verify(model, plan, shrunk, (other,)) <= 1e-5
    head, shrunk_head = model.model[-1], shrunk.model[-1]
    assert (shrunk_head.nc, shrunk_head.reg_max, shrunk_head.no) == (head.nc, head.reg_max, head.no)
    for block, small in zip(model.modules(), shrunk.modules()):
        if type(block).__name__ == "C2PSA":  # its halves stay equal, so self.c says their width
            assert small.c < block.c and small.cv1.conv.out_channels == 2 * small.c
    assert fingerprint(model) == before
    assert not any(isinstance(v, torch.Tensor) and type(v) is not torch.Tensor and not isinstance(v, torch.nn.Parameter)
                   for m in model.modules() for v in vars(m).values())  # no fake tensor left behind by the export


def test_shrunk_yolo_runs_forward_and_backward_in_train_mode(yolo):
    torch.manual_seed(0)
    shrunk = graphprune.shrink(yolo("yolov8n.yaml").model.eval(), 0.5, example_inputs=torch.randn(1, 3, 160, 160))
    shrunk.train()
    outputs = torch.utils._pytree.tree_leaves(shrunk(torch.randn(2, 3, 160, 160)))
    loss = sum(o.float().pow(2).mean() for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad)
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    assert all(p.grad is not None for p in shrunk.parameters() if p.requires_grad)


def test_shrunk_yolo_trains_with_its_own_loss_and_exports_to_onnx(yolo, tmp_path):
    from examples.yolo_finetune import onnx_roundtrip, synthetic_batch, train_step

    torch.manual_seed(0)
    model = yolo("yolov8n.yaml").model.eval()
    x = torch.randn(1, 3, 160, 160)
    shrunk = graphprune.shrink(model, 0.5, example_inputs=x)
    trainee = copy.deepcopy(shrunk)
    loss, items = train_step(trainee, synthetic_batch(trainee, batch_size=2, imgsz=160))
    assert bool(torch.isfinite(loss).all()) and float(loss.detach().sum()) > 0
    assert {"box_loss", "cls_loss", "dfl_loss"} <= set(items)
    wanting = [p for p in trainee.parameters() if p.requires_grad]
    assert wanting and all(p.grad is not None and torch.isfinite(p.grad).all() for p in wanting)
    assert any(p.grad.abs().sum() > 0 for p in wanting)
    pytest.importorskip("onnxruntime")
    small, dense = onnx_roundtrip(shrunk, x, tmp_path / "small.onnx"), onnx_roundtrip(model, x, tmp_path / "dense.onnx")
    assert small["max_abs_diff"] <= 1e-4 * max(1.0, small["scale"])
    assert small["bytes"] < 0.5 * dense["bytes"]


SLOW_CASES = ["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml", "yolov8n-seg.yaml", "yolo11n-pose.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_CASES, ids=[c.removesuffix(".yaml") for c in SLOW_CASES])
def test_every_stock_yolo_trains_and_exports_after_shrinking(yolo, tmp_path, name):
    from examples.yolo_finetune import onnx_roundtrip, synthetic_batch, train_step

    torch.manual_seed(0)
    model = yolo(name).model.eval()
    x = torch.randn(1, 3, 160, 160)
    plan = graphprune.plan(model, 0.5, example_inputs=x)
    shrunk = graphprune.apply(model, plan)
    assert type(shrunk) is type(model) and graphprune.verify(model, plan, shrunk, x) <= 1e-5
    loss, _ = train_step(copy.deepcopy(shrunk), synthetic_batch(shrunk, batch_size=2, imgsz=160))
    assert bool(torch.isfinite(loss).all())
    pytest.importorskip("onnxruntime")
    result = onnx_roundtrip(shrunk, x, tmp_path / "small.onnx")
    if "yolo26" not in name:  # its head ends in a top-k over scores: a near tie may reorder rows
        assert result["max_abs_diff"] <= 1e-4 * max(1.0, result["scale"])


@pytest.mark.slow
def test_finetune_example_trains_the_pruned_widths_and_reloads_them(yolo, tmp_path):
    from examples.yolo_finetune import finetune, make_dataset, max_abs_diff, reload, shapes, stock_transfer

    torch.manual_seed(0)
    small = graphprune.shrink(yolo("yolov8n.yaml").model.eval(), 0.5, example_inputs=torch.randn(1, 3, 160, 160))
    kept, total = stock_transfer(small)
    assert kept < total  # the stock trainer would drop the pruned tensors: the reason the example exists
    data = make_dataset(tmp_path / "data", small.names, n_images=4)
    trained, checkpoint = finetune(small, data, epochs=1, imgsz=96, batch=2, project=tmp_path / "runs")
    assert shapes(trained) == shapes(small)
    assert any(not torch.equal(a, b) for a, b in zip(small.state_dict().values(), trained.state_dict().values()))
    loaded = reload(checkpoint)
    assert type(loaded) is type(small) and shapes(loaded) == shapes(small)
    diff, _ = max_abs_diff(copy.deepcopy(trained).half().float(), loaded, torch.rand(1, 3, 96, 96))
    assert diff == 0.0

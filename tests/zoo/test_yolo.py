"""Stock ultralytics YOLO (v8, 11, 26; detect, segment, pose), built offline from their yaml with random weights:
``graphprune.shrink(yolo.model, 0.5)`` captures them with torch.export (symbolic tracing cannot), is exact on the
kept channels with the heads' output sizes unchanged, leaves the original untouched, and comes back as the
ultralytics class: 11's and 26's C2PSA fixes its split widths in ``self.c`` and its attention's head count in
``num_heads``, which the rewrite sets to the new widths once the graph proves them.
"""

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
